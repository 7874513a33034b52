"""Heuristic baselines (SPEC §6.2): simple, fast, state-based rules that every expert must beat.

Each heuristic returns, for a batch of states, a feasible :class:`~mec_gym.model.decision.Decision`
that respects the scenario's ``controls`` (uncontrolled fields are left to the environment's
rules). Fields a heuristic does not talk about also follow the rules: nearest server, p_max,
equal bandwidth shares, compute ∝ server-side work, full DVFS level, the scenario's fixed
micro-batch count (SPEC §3.2).

Layer placement obeys the same feasibility as decoding (SPEC §3.7): a node never holds more
layers than its memory fits at a full batch; layers that do not fit move to the next node with
room (pipelines) or to the server (single-device baselines); the user side always keeps at
least ``split_min_local`` layers.

=====================  =====================================================================
name                   what it models
=====================  =====================================================================
``random``             uniform random Box actions (decoded and repaired like an RL agent's)
``greedy``             [LZ24] §5 baseline: each user takes the server with the best available rate
``local_only``         [LZ24] Fig. 2 "local-only training": the whole model on the user side
``edge_only``          [LZ24] Fig. 2 "edge-server-only training": α = split_min_local
``equal_share``        nearest server, α = Υ/2, equal bandwidth and compute shares, p_max
``uniform_pipeline``   [CP25] "PipeLine": equal segments over the chain, fixed micro-batches
``vanilla_fl``         [CP25] "VanillaFL": the whole model on one device per cluster, no pipeline
=====================  =====================================================================
"""

from __future__ import annotations

import numpy as np

from agents.base import Policy, restrict_to_controls
from mec_gym.config import SystemConfig
from mec_gym.model import channel
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState, server_totals

# ----------------------------------------------------------------------------- shared rules


def place_layers(config: SystemConfig, state: SystemState, local: np.ndarray, node_weights: np.ndarray,
                 spill_to_devices: bool = True) -> np.ndarray:
    """Split [B, N, K+1] with ``local`` [B, N] layers on the user side, spread over the K chain nodes
    ∝ ``node_weights`` [B, N, K] (largest remainder), the rest on the server (column 0).

    Memory caps (``state.max_layers``) are enforced as the decoder repairs them (SPEC §3.7):
    layers beyond a node's capacity move along the chain to the next node with room and then to
    the server when ``spill_to_devices``, straight to the server otherwise (single-device
    baselines). The user side always keeps ``split_min_local`` layers, placed on the nodes in
    order within their memory (config validation guarantees they fit).
    """
    layers, k = config.num_layers, config.devices_per_user
    local = np.clip(np.asarray(local, dtype=np.int64), config.split_min_local, layers)
    nodes = np.zeros(local.shape + (k,), dtype=np.int64)
    weights = np.broadcast_to(np.asarray(node_weights, dtype=np.float64), local.shape + (k,))
    for total in np.unique(local):  # largest_remainder takes one total; α takes few distinct values
        mask = local == total
        nodes[mask] = decision_model.largest_remainder(weights[mask], int(total))
    capacity = state.max_layers
    carry = np.zeros(local.shape, dtype=np.int64)
    for node in range(k):
        total = nodes[..., node] + carry
        nodes[..., node] = np.minimum(total, capacity[..., node])
        overflow = total - nodes[..., node]
        if spill_to_devices:  # a pipeline re-balances along the chain; single-device baselines do not
            carry = overflow
    deficit = np.maximum(config.split_min_local - nodes.sum(axis=-1), 0)
    nodes = nodes + decision_model.place_local_layers(deficit, capacity - nodes)
    split = np.concatenate([(layers - nodes.sum(axis=-1))[..., None], nodes], axis=-1)
    return split.astype(np.int64)


def equal_shares(config: SystemConfig, server: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Equal shares among the ``eligible`` users of each server (0 for the others), [B, N]."""
    count = server_totals(eligible.astype(np.float64), server, config.num_servers)
    per_user = count[np.arange(server.shape[0])[:, None], server]
    return np.where(eligible, 1.0 / np.maximum(per_user, 1.0), 0.0)


def _batch_shape(state: SystemState) -> tuple[int, int]:
    return state.data_queue.shape


class _StatePolicy(Policy):
    """Base of the heuristics: ``decide`` builds a decision and restricts it to the controls."""

    def decide(self, state: SystemState) -> Decision:
        config = self._require_config()
        return restrict_to_controls(config, self._decide(config, state))

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        raise NotImplementedError


# ----------------------------------------------------------------------------- heuristics


class RandomPolicy(_StatePolicy):
    """Uniform random Box actions, decoded (with repairs) as the environment decodes an agent's.

    Models an untrained RL agent: the floor every learned or optimized policy must clear.
    ``act`` samples the action, ``decide`` returns the decision such an action decodes to.
    Seeded by :meth:`reset`/:meth:`bind` (the benchmark passes the episode seed), so runs repeat.
    """

    name = "random"
    uses_state = False

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)

    def reset(self, env, seed: int | None = None) -> None:
        super().reset(env, seed)
        self.rng = np.random.default_rng(seed)

    def bind(self, config: SystemConfig, seed: int | None = None) -> None:
        super().bind(config, seed)
        self.rng = np.random.default_rng(seed)

    def act(self, obs, info=None) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("policy 'random': call reset(env) before act()")
        space = self.env.action_space
        return self.rng.uniform(-1.0, 1.0, size=space.shape).astype(np.float32)

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        b, n = _batch_shape(state)
        width = decision_model.action_dim_per_user(config) * n
        decision, _ = decision_model.decode(config, state, self.rng.uniform(-1.0, 1.0, size=(b, width)))
        return decision


class GreedyPolicy(_StatePolicy):
    """[LZ24] §5 (Fig. 5) baseline "greedy": each user picks the server with the highest available
    transmission rate.

    Users choose one after another, strongest channel first; a user's available rate on server
    m is the Shannon rate at p_max with an equal share of m's band among the users already there
    plus itself (so crowded servers look slower, [LZ24]'s "subject to bandwidth limits"). Full
    servers (``server.capacity``) are skipped. Everything else follows the rules: α =
    split_min_local (edge-heavy), p_max, equal bandwidth, compute ∝ server work. [LZ24] observes
    that greedy overloads servers with weak compute — the association ignores compute.
    """

    name = "greedy"

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        b, n = _batch_shape(state)
        m = config.num_servers
        radio = config.radio
        noise = channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db)
        capacity = config.server.capacity or n
        count = np.zeros((b, m))
        server = np.zeros((b, n), dtype=np.int64)
        rows = np.arange(b)
        order = np.argsort(-state.gain.max(axis=-1), axis=-1, kind="stable")  # strongest channel first
        for rank in range(n):
            user = order[:, rank]
            gain = state.gain[rows, user]  # [B, M]
            band = config.server.bandwidth_hz / (count + 1.0)
            rate = channel.shannon_rate(band, gain, state.power_max_w[rows, user][:, None], noise)
            rate = np.where(count < capacity, rate, -np.inf)
            choice = np.argmax(rate, axis=-1)
            server[rows, user] = choice
            count[rows, choice] += 1.0
        return Decision(server=server)


class LocalOnlyPolicy(_StatePolicy):
    """[LZ24] Fig. 2 baseline "local-only training": α = Υ, the whole model on the user side.

    With K > 1 chain nodes the layers are spread over the nodes ∝ their compute rates. Layers that
    exceed the devices' memory go to the server (the repair rule), so on small devices this is
    "as local as memory allows". The nearest server still receives the end-of-round adapter
    upload (and the activations when the task head sits on the server, [CP25]).
    """

    name = "local_only"

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        local = np.full(_batch_shape(state), config.num_layers)
        split = place_layers(config, state, local, state.device_rate_flops)
        return Decision(split=split, server=decision_model.nearest_server(config, state))


class EdgeOnlyPolicy(_StatePolicy):
    """[LZ24] Fig. 2 baseline "edge-server-only training": α = split_min_local (raw data stays on
    the device when it is ≥ 1), everything else on the nearest server at the rules.

    This is the scenario's reference policy, the one the reward normalizers come from (SPEC §3.4),
    so its normalized cost is ≈ w_e + w_d + w_s on average.
    """

    name = "edge_only"

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        local = np.full(_batch_shape(state), config.split_min_local)
        k = config.devices_per_user
        first_node = np.zeros(k)
        first_node[0] = 1.0
        return Decision(split=place_layers(config, state, local, first_node),
                        server=decision_model.nearest_server(config, state))


class EqualSharePolicy(_StatePolicy):
    """Static split and fair sharing (SPEC §6.2): nearest server, α = ⌊Υ/2⌋ layers on the user side
    (spread equally over the chain), equal bandwidth and equal compute shares among the server's
    users, p_max. The common "no optimization" baseline of MEC papers.
    """

    name = "equal_share"

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        shape = _batch_shape(state)
        server = decision_model.nearest_server(config, state)
        split = place_layers(config, state, np.full(shape, config.num_layers // 2),
                             np.ones(config.devices_per_user))
        return Decision(split=split, server=server, power=state.power_max_w.copy(),
                        bandwidth=equal_shares(config, server, np.ones(shape, dtype=bool)),
                        compute=equal_shares(config, server, split[..., 0] > 0))


class UniformPipelinePolicy(_StatePolicy):
    """[CP25] baseline "PipeLine": pipeline-parallel training with a fixed, uniform segmentation.

    The Υ layers are cut into equal segments (largest remainder) over the pipeline's stages: the
    K chain nodes when the task head sits on the server ([CP25]: encoder segments on the
    devices, decoder at the base station), else the K nodes and the server (K + 1 stages).
    Segments that exceed a node's memory spill to the next node with room, then to the server.
    No joint optimization: nearest server, p_max, equal bandwidth, the scenario's fixed
    micro-batch count.
    """

    name = "uniform_pipeline"

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        shape = _batch_shape(state)
        k, layers = config.devices_per_user, config.num_layers
        stages = k if config.head_on_server else k + 1
        local = np.full(shape, layers if config.head_on_server else (layers * k) // stages)
        split = place_layers(config, state, local, np.ones(k))
        return Decision(split=split, server=decision_model.nearest_server(config, state))


class VanillaFLPolicy(_StatePolicy):
    """[CP25] baseline "VanillaFL": standard federated learning, each cluster trains the whole model
    on one device — its control unit (node 1, which holds the data) — with no pipeline (Q = 1
    when micro-batches are controlled) and no D2D traffic.

    Layers beyond the device's memory go to the server (the repair rule) rather than to other
    cluster devices — except the ``split_min_local`` layers the user side must keep (all of the
    encoder in ``collapipe``), which fill the next devices in order when one cannot hold them.
    The nearest server receives the aggregation upload (FedAvg).
    """

    name = "vanilla_fl"

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        shape = _batch_shape(state)
        k = config.devices_per_user
        first_node = np.zeros(k)
        first_node[0] = 1.0
        split = place_layers(config, state, np.full(shape, config.num_layers), first_node, spill_to_devices=False)
        return Decision(split=split, server=decision_model.nearest_server(config, state),
                        microbatches=np.ones(shape, dtype=np.int64))


HEURISTICS: dict[str, type[Policy]] = {
    cls.name: cls for cls in (RandomPolicy, GreedyPolicy, LocalOnlyPolicy, EdgeOnlyPolicy, EqualSharePolicy,
                              UniformPipelinePolicy, VanillaFLPolicy)
}
"""Heuristic policies by registry name."""
