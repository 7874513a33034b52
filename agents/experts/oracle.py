"""Exhaustive oracle: the optimal decision of one round on tiny instances (SPEC §6.6).

The oracle is the ground truth the experts' optimality gaps are measured against. For one
system state it returns the decision that maximizes the round's reward (SPEC §3.4), with a
*certified* bound on how far the returned value can be from the optimum.

Method
======

**Integers by enumeration.** Every controlled integer field is enumerated: the association
(capacity-feasible), each user's split over the server and its K chain nodes (Σ = Υ,
α ≥ ``split_min_local``, within each node's memory) and, when controlled, its micro-batch
count Q. When the objective is a sum over users whose only coupling is the per-server share
constraints — the ``weighted`` objective with ``delay_aggregate`` mean or sum, and the ``scr``
objective (whose denominator is a per-user sum) — the search decomposes exactly by server:
each (server, set of users, their splits and Q) is one *sub-problem*, and an association's
value is the sum over its servers (for ``scr``, the ratio of sums, maximized exactly by
Dinkelbach's method over the finite set of combinations). With ``delay_aggregate = "max"``
every full assignment is one sub-problem. Uncontrolled fields follow their rules (SPEC §3.2)
inside each sub-problem.

**Continuous variables: convex in log coordinates.** Fix the integers. Write the remaining
controlled variables in logarithms: q = log p (uplink power), q_k = log p_k (D2D powers),
b = log β (bandwidth share), c = log φ (compute share), v_k = log u_k (DVFS levels). Then
every term of the round cost is convex in (q, q_k, b, c, v_k):

* uplink time s/r with r = βW·log2(1 + g·p/(N0·β·W)):  log(s/r) = log(s/W) − b − ψ(q − b + κ),
  κ = log(g/(N0·W)), ψ(z) = log log2(1 + e^z). ψ is *concave*: ψ = log∘softplus up to a constant,
  and softplus is log-concave because (log sp)'' = (sp·σ(1−σ) − σ²)/sp² ≤ 0 ⟺ log(1+e^z) ≤ e^z,
  true for all z. So log(s/r) is convex and s/r = exp(convex) is convex (log-convex).
* uplink energy p·s/r: log = log(s/W) + q − b − ψ(q − b + κ): convex, same argument. (In the
  original variables (p, β) this term is *not* convex — which is why the oracle works in logs.)
* downlink time and energy (fixed power): as above with q fixed. D2D hops: s/r with
  r = B·log2(1 + g·p_k/(N0·B)): log = log(s/B) − ψ(q_k + κ_k), convex; energy adds q_k.
* server compute time w/(φ(1−ℓ)R) = exp(const − c); server energy is constant (time-shared GPU)
  or ∝ φ² = exp(2c) ([LZ24] eq. 6); device compute time ∝ exp(−v_k), energy ∝ exp(2·v_k).
* stage times τ_j = total_j/Q + t₀ (for stages with work) are convex; the pipeline makespan
  Σ_j τ_j + (Q−1)·max_j τ_j is a non-negative combination of convex functions and a max of
  convex functions; the round latency I·(T_fwd + T_bwd) + T_agg, the energies, the delay
  aggregate (mean, sum or max over users), the budget penalty max(E − Ē, 0) are convex.
* constraints: p ∈ [p_min, p_max] and u ∈ [u_min, 1] are boxes in logs; Σ_n β_n ≤ 1 becomes
  Σ_n e^{b_n} ≤ 1, convex; likewise for φ. Stability and service quality depend on integers only.

Hence for fixed integers the ``weighted`` cost is a convex program; for ``scr`` (no penalties),
maximizing Σ U / Σ (w_d T/T_ref + w_e E/E_ref) with the numerator fixed is minimizing a convex
denominator.

**Certified solution of the convex programs.** ψ is not a DCP atom, so each program is solved
by *outer approximation*: ψ is replaced by the minimum of its tangent lines, y ≤ ψ(z_t) +
ψ'(z_t)(z − z_t). Tangents of a concave function lie above it, so the program with the tangents
is a *relaxation* (its rates are optimistic): its optimal value is a valid **lower bound** on the
sub-problem's optimal cost. It is an exponential-cone program, solved with cvxpy and
**Clarabel** (interior point; SCS as fallback), all sub-problems of a round stacked in one
block-separable program. Its solution, rounded to a feasible decision (shares renormalized,
powers clipped), is evaluated with :func:`mec_gym.model.costs.evaluate` — the env's own
arithmetic — giving an **upper bound**. Rounds re-place the tangents around each solution until
the best upper bound is within ``tolerance`` of the smallest lower bound; sub-problems whose lower
bound cannot beat the incumbent are pruned (their bound stays valid). The result reports the
certified bound: optimal cost ≥ ``bound`` and ``cost − bound`` = ``gap``, up to the interior-point
solver's tolerance (~1e-8 relative; a slightly negative gap is that tolerance). The program has
no zero-cost unbounded direction (epigraph variables without a cost are pinned, see
``_Relaxation``): on one, Clarabel reports "Solved" at points 1e-3 above the optimum. As a check,
a solve that gives a block a relaxed value above the true cost of that block's own decision — which
a relaxation's optimum cannot exceed — is not trusted as a bound (``_overshoots``).

**Deadline drops.** A user whose latency exceeds the round deadline is dropped and the reward
pays w_drop/N — a discontinuous term outside the convex program. It is handled exactly by
branching: when a sub-problem's relaxed solution leaves users E late, a child sub-problem per
e ∈ E adds the constraint T_e ≤ deadline. Any decision either drops all of E (cost ≥ the
parent's value + w_drop·|E|/N) or meets the deadline for some e (cost ≥ that child's value), so
min(parent + w_drop·|E|/N, children) is a valid bound, refined recursively. Children are solved
in their own program (with a steeply priced slack, still a relaxation) so that an infeasible
branch cannot disturb the other bounds.

The relaxation restates ``costs.evaluate``'s formulas as cvxpy expressions;
:func:`restated_metrics` evaluates them at any decision and ``tests/test_oracle.py`` checks them
against ``costs.evaluate`` to 1e-10 on all four scenarios, so the two cannot drift apart silently.

Limits: N ≤ 4 users, M ≤ 2 servers, Υ ≤ 8 layers, K ≤ 2 chain nodes and at most
``MAX_SUBPROBLEMS`` sub-problems; larger instances raise ``ValueError``. :func:`tiny_config` is
the preset the tests and the benchmark use (3 users, 2 servers, the 6-layer ``tiny-6l`` model,
684 sub-problems): one state takes 1-2 s on a laptop CPU; with 2 users, about 0.2 s.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cvxpy as cp
import numpy as np
import scipy.sparse as sparse

from agents.base import Policy, restrict_to_controls
from mec_gym.config import SystemConfig
from mec_gym.model import channel, compute, costs, llm, reference
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState, server_totals
from mec_gym.scenarios import make_config

MAX_USERS = 4
MAX_SERVERS = 2
MAX_LAYERS = 8
MAX_DEVICES = 2
MAX_SUBPROBLEMS = 5_000
"""Largest number of (server, users, integers) sub-problems the oracle accepts for one state."""

LOG_SHARE_MIN = float(np.log(1e-6))
"""Smallest share searched: 1e-6 of a 20 MHz band is 20 Hz, useless for any user with data to send."""

_DEADLINE_SLACK_COST = 100.0  # cost units per second of deadline excess in a drop branch (see _Relaxation)
_Y_FLOOR = -60.0  # lower bound on the ψ epigraph variables: ψ(z) > -60 for every z the bounds allow
_INITIAL_OFFSETS = np.array([0.0, -0.5, 0.5, -2.0, 2.0])
_REFINE_OFFSETS = np.array([0.0, -0.01, 0.01, -0.2, 0.2])


def tiny_config(**overrides: Any) -> SystemConfig:
    """The ``tiny`` scenario: ``default`` with 3 users, 2 servers and the 6-layer ``tiny-6l`` model.

    Small enough for the exhaustive oracle (8 associations × 6 splits per user, about a second
    per state) yet with every lever of ``default`` (split, server, power, bandwidth, compute),
    its deadline, Poisson arrivals and Markov server loads; 16 rounds per episode. Overrides
    use the dotted names of :func:`mec_gym.config.field_names`.
    """
    base = make_config("default", num_users=3, num_servers=2, model="tiny-6l", rounds=16)
    return base.override(overrides) if overrides else base


def tiny_variant(config: SystemConfig, max_subproblems: int = 1000) -> SystemConfig:
    """A tiny instance of ``config``'s scenario that the oracle solves in seconds (for optimality gaps).

    Keeps the scenario's physics, objective and controls; shrinks it to at most 3 users, 2
    servers and 2 chain nodes, swaps a model deeper than ``MAX_LAYERS`` for ``tiny-6l`` (scaling
    ``split_min_local`` in proportion), caps controlled micro-batch counts at 4, scales a server
    capacity to ⌈N/M⌉ as ``qian2024`` does, and then lowers the micro-batch cap to 2 and drops
    users until the search has at most ``max_subproblems`` sub-problems. A config the oracle
    already accepts within that budget is returned unchanged.
    """
    if _fits(config, max_subproblems):
        return config
    layers = config.num_layers
    overrides: dict[str, Any] = {"num_users": min(config.num_users, 3), "num_servers": min(config.num_servers, 2),
                                 "devices_per_user": min(config.devices_per_user, MAX_DEVICES)}
    if layers > MAX_LAYERS:
        tiny_layers = 6
        overrides["model"] = "tiny-6l"
        scaled = int(round(config.split_min_local * tiny_layers / layers))
        overrides["split_min_local"] = max(min(config.split_min_local, 1), scaled)  # keep raw data local if it was
    wl = config.workload
    if "microbatches" in config.controls and wl.max_microbatches > 4:
        overrides["workload.max_microbatches"] = 4
        overrides["workload.microbatches"] = min(wl.microbatches, 4)
    if config.server.capacity:
        overrides["server.capacity"] = -(-overrides["num_users"] // overrides["num_servers"])
    candidate = config.override(overrides)
    while not _fits(candidate, max_subproblems):
        change: dict[str, Any]
        if "microbatches" in candidate.controls and candidate.workload.max_microbatches > 2:
            change = {"workload.max_microbatches": 2, "workload.microbatches": min(candidate.workload.microbatches, 2)}
        elif candidate.num_users > 1:
            change = {"num_users": candidate.num_users - 1}
            if candidate.server.capacity:
                change["server.capacity"] = max(1, -(-change["num_users"] // candidate.num_servers))
        else:
            break
        candidate = candidate.override(change)
    return candidate


def _fits(config: SystemConfig, max_subproblems: int) -> bool:
    """Whether the oracle accepts ``config`` with at most ``max_subproblems`` sub-problems (memory ignored:
    an upper bound on the count for any state)."""
    try:
        check_instance(config)
    except ValueError:
        return False
    layers, k = config.num_layers, config.devices_per_user
    splits = sum(1 for device in itertools.product(range(layers + 1), repeat=k)
                 if config.split_min_local <= sum(device) <= layers) if "split" in config.controls else 1
    counts = config.workload.max_microbatches if "microbatches" in config.controls else 1
    per_user = splits * counts
    servers = config.num_servers if "server" in config.controls else 1
    users = config.num_users
    if _separable(config):
        total = servers * ((per_user + 1) ** users - 1)  # every (server, user subset): Σ_S per_user^|S|
    else:
        total = servers**users * per_user**users
    return total <= max_subproblems


def check_instance(config: SystemConfig) -> None:
    """Raise ``ValueError`` when the oracle cannot solve ``config`` exactly (size or objective)."""
    limits = (("num_users", config.num_users, MAX_USERS), ("num_servers", config.num_servers, MAX_SERVERS),
              ("model layers (Υ)", config.num_layers, MAX_LAYERS),
              ("devices_per_user", config.devices_per_user, MAX_DEVICES))
    for name, value, limit in limits:
        if value > limit:
            raise ValueError(f"oracle: {name} = {value} exceeds the exhaustive search's limit {limit} "
                             f"(N ≤ {MAX_USERS}, M ≤ {MAX_SERVERS}, Υ ≤ {MAX_LAYERS}, K ≤ {MAX_DEVICES}); "
                             f"use agents.experts.oracle.tiny_config() or smaller --set values")
    wl = config.workload
    if config.objective == "scr" and (wl.energy_budget_j > 0 or (wl.deadline_s > 0 and config.weights.drop > 0)):
        raise ValueError("oracle: the scr objective is supported without penalties (set workload.energy_budget_j=0 "
                         "and workload.deadline_s=0): SCR minus a penalty is not a ratio of a fixed numerator")


@dataclass
class OracleResult:
    """The optimum of one round and its certificate.

    Attributes:
        decision: the optimal decision, batch axis of 1, uncontrolled fields ``None``.
        reward: its reward (``costs.reward_terms``), the value the env returns for it.
        cost: ``-reward``, the minimized quantity.
        bound: certified lower bound on the optimal cost (``cost >= optimal cost >= bound``).
        gap: ``cost - bound``, certified distance to the optimum (solver tolerance aside).
        subproblems: sub-problems enumerated (the exhaustive search's size).
        rounds: outer-approximation rounds run.
        solve_s: wall time.
        status: ``"optimal"`` (gap within tolerance), ``"gap"`` (rounds exhausted: still certified,
            just wider), or ``"fallback"`` (the conic solver failed; the decision is the best
            feasible one found, the rules' if none).
    """

    decision: Decision
    reward: float
    cost: float
    bound: float
    gap: float
    subproblems: int
    rounds: int
    solve_s: float
    status: str
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- enumeration


@dataclass
class _Option:
    split: np.ndarray  # [K+1] layers: server, then chain nodes
    microbatches: int


def _user_options(config: SystemConfig, state: SystemState, rules: Decision) -> list[list[_Option]]:
    """Per user, every (split, Q) the decision may take (the rule's value for uncontrolled fields)."""
    k, layers = config.devices_per_user, config.num_layers
    if "microbatches" in config.controls:
        counts = list(range(1, config.workload.max_microbatches + 1))
    else:
        counts = [int(config.workload.microbatches)]
    options = []
    for user in range(config.num_users):
        if "split" in config.controls:
            splits = []
            for device in itertools.product(range(layers + 1), repeat=k):
                alpha = sum(device)
                if alpha > layers or alpha < config.split_min_local:
                    continue
                if any(device[j] > state.max_layers[0, user, j] for j in range(k)):
                    continue
                splits.append(np.asarray((layers - alpha, *device), dtype=np.int64))
        else:
            splits = [rules.split[0, user].astype(np.int64)]
        options.append([_Option(s, q) for s in splits for q in counts])
    return options


def _allowed_servers(config: SystemConfig, rules: Decision) -> list[list[int]]:
    if "server" in config.controls:
        return [list(range(config.num_servers)) for _ in range(config.num_users)]
    return [[int(rules.server[0, user])] for user in range(config.num_users)]


def _associations(config: SystemConfig, allowed: list[list[int]]) -> list[tuple[int, ...]]:
    capacity = config.server.capacity or config.num_users
    return [assoc for assoc in itertools.product(*allowed)
            if max(np.bincount(assoc, minlength=config.num_servers)) <= capacity]


def _separable(config: SystemConfig) -> bool:
    return config.objective == "scr" or config.delay_aggregate in ("mean", "sum")


@dataclass
class _Blocks:
    """Sub-problems, flattened to slots (one per member user). ``key`` groups a block for combining:
    (server, users) in decomposed mode, the association in joint mode."""

    keys: list[tuple]
    user: np.ndarray  # [S]
    server: np.ndarray  # [S]
    block: np.ndarray  # [S]
    split: np.ndarray  # [S, K+1]
    micro: np.ndarray  # [S]
    deadline: np.ndarray  # [S] bool: the user must meet the round deadline (drop branches, see solve)

    @property
    def count(self) -> int:
        return len(self.keys)

    def concat(self, other: _Blocks) -> _Blocks:
        """These blocks followed by ``other``'s (renumbered after them)."""
        return _Blocks(keys=self.keys + other.keys, user=np.concatenate([self.user, other.user]),
                       server=np.concatenate([self.server, other.server]),
                       block=np.concatenate([self.block, other.block + self.count]),
                       split=np.concatenate([self.split, other.split]),
                       micro=np.concatenate([self.micro, other.micro]),
                       deadline=np.concatenate([self.deadline, other.deadline]))


def _count_subproblems(config: SystemConfig, options: list[list[_Option]], allowed: list[list[int]],
                       associations: list[tuple[int, ...]]) -> int:
    sizes = [len(o) for o in options]
    if _separable(config):
        total = 0
        for _server, users in _server_groups(config, allowed, associations):
            total += int(np.prod([sizes[u] for u in users]))
        return total
    return len(associations) * int(np.prod(sizes))


def _server_groups(config: SystemConfig, allowed: list[list[int]],
                   associations: list[tuple[int, ...]]) -> list[tuple[int, tuple[int, ...]]]:
    """Distinct (server, its users) pairs over all associations (empty servers excluded)."""
    groups = set()
    for assoc in associations:
        for m in range(config.num_servers):
            users = tuple(u for u, s in enumerate(assoc) if s == m)
            if users:
                groups.add((m, users))
    return sorted(groups)


def _enumerate(config: SystemConfig, options: list[list[_Option]], allowed: list[list[int]],
               associations: list[tuple[int, ...]]) -> _Blocks:
    keys, user, server, block, split, micro = [], [], [], [], [], []

    def add(key: tuple, members: list[tuple[int, int, _Option]]) -> None:
        index = len(keys)
        keys.append(key)
        for u, m, option in members:
            user.append(u)
            server.append(m)
            block.append(index)
            split.append(option.split)
            micro.append(option.microbatches)

    if _separable(config):
        for m, users in _server_groups(config, allowed, associations):
            for choice in itertools.product(*(options[u] for u in users)):
                add((m, users), [(u, m, o) for u, o in zip(users, choice, strict=True)])
    else:
        for assoc in associations:
            for choice in itertools.product(*options):
                add(assoc, [(u, assoc[u], o) for u, o in enumerate(choice)])
    return _Blocks(keys=keys, user=np.asarray(user), server=np.asarray(server), block=np.asarray(block),
                   split=np.asarray(split, dtype=np.int64).reshape(len(user), -1), micro=np.asarray(micro),
                   deadline=np.zeros(len(user), dtype=bool))


def _subset(blocks: _Blocks, keep: np.ndarray) -> tuple[_Blocks, np.ndarray]:
    """Blocks with ``keep`` [C] True, renumbered; also returns the kept block ids."""
    kept = np.flatnonzero(keep)
    new_id = np.full(blocks.count, -1)
    new_id[kept] = np.arange(len(kept))
    slots = keep[blocks.block]
    return _Blocks(keys=[blocks.keys[i] for i in kept], user=blocks.user[slots], server=blocks.server[slots],
                   block=new_id[blocks.block[slots]], split=blocks.split[slots], micro=blocks.micro[slots],
                   deadline=blocks.deadline[slots]), kept


# ----------------------------------------------------------------------------- slot constants


def _psi(z: np.ndarray) -> np.ndarray:
    """ψ(z) = log(log2(1 + e^z)): the log of the Shannon spectral efficiency at SNR e^z (concave)."""
    return np.log(np.logaddexp(0.0, z)) - np.log(np.log(2.0))


def _dpsi(z: np.ndarray) -> np.ndarray:
    """ψ'(z) = σ(z)/softplus(z)."""
    return np.exp(-np.logaddexp(0.0, -z)) / np.logaddexp(0.0, z)


@dataclass
class _Constants:
    """Per-slot coefficients of the round cost at unit values of the continuous variables.

    Times in seconds and energies in joules per training iteration unless named ``agg``;
    ``*_bits_per_hz`` are payloads divided by the link's bandwidth (seconds at 1 bit/s/Hz).
    """

    active: np.ndarray
    sequences: np.ndarray
    dev_t: np.ndarray  # [S, 2, K] forward/backward compute time at u = 1
    dev_e: np.ndarray  # [S, 2, K] energy at u = 1 (∝ u²)
    srv_t: np.ndarray  # [S, 2] at φ = 1
    srv_e: np.ndarray  # [S, 2] constant (time-shared) or at φ = 1 (∝ φ², frequency model)
    up_bits_per_hz: np.ndarray
    agg_bits_per_hz: np.ndarray
    down_bits_per_hz: np.ndarray
    kappa_up: np.ndarray  # log(g/(N0·W)): uplink SNR = e^{kappa + q - b}
    kappa_down: np.ndarray  # log(g·P_dl/(N0·W))
    hop_bits_per_hz: np.ndarray  # [S, 2] forward (node 1 → 2) and backward (2 → 1) D2D payloads / band
    kappa_hop: np.ndarray  # [S] log(g_d2d/(N0·B_d2d))
    log_power_max: np.ndarray
    stability: np.ndarray
    service: np.ndarray
    needs_bandwidth: np.ndarray
    needs_compute: np.ndarray
    fixed_bandwidth: np.ndarray  # rule value where uncontrolled
    fixed_compute: np.ndarray


def _constants(config: SystemConfig, state: SystemState, blocks: _Blocks) -> _Constants:
    """Coefficients of every slot, from the model's own functions (compute, channel, llm, costs)."""
    spec, wl, radio, srv = config.llm, config.workload, config.radio, config.server
    n, m, k = blocks.user, blocks.server, config.devices_per_user
    seq_len = state.seq_len[0, n]
    sequences = state.batch(config)[0, n]
    active = sequences > 0
    forward = state.forward_flops[0, n]
    backward = state.backward_flops[0, n]
    device = blocks.split[:, 1:]
    server_layers = blocks.split[:, 0]
    local = device.sum(axis=-1)
    act_bits = llm.activation_bits_per_sequence(spec, wl, seq_len)
    token_bits = llm.token_bits_per_sequence(wl, seq_len)

    dev_t = np.zeros((len(n), 2, k))
    dev_e = np.zeros((len(n), 2, k))
    for phase, flops in enumerate((forward, backward)):
        work = device * (sequences * flops)[:, None]
        t, e = compute.compute_delay_energy(work, state.device_rate_flops[0, n], 1.0, state.device_power_w[0, n])
        dev_t[:, phase], dev_e[:, phase] = t, e

    peak = state.server_peak_flops[0, m]
    kernel = sequences / blocks.micro * (forward + backward)
    rate = compute.gpu_utilization(kernel, peak, srv.utilization, srv.saturation_seconds,
                                   srv.utilization_exponent) * peak
    free = 1.0 - state.load[0, m]
    srv_t = np.zeros((len(n), 2))
    srv_e = np.zeros((len(n), 2))
    for phase, flops in enumerate((forward, backward)):
        work = server_layers * sequences * flops
        if srv.energy_model == "frequency":  # level = φ(1−ℓ), full time share: energy ∝ φ²
            t, e = compute.compute_delay_energy(work, rate, free, state.server_power_w[0, m], 1.0)
        else:  # full clock, time share φ(1−ℓ): energy independent of φ
            t, e = compute.compute_delay_energy(work, rate, 1.0, state.server_power_w[0, m], free)
        srv_t[:, phase], srv_e[:, phase] = t, e

    noise = channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db)
    band = srv.bandwidth_hz
    gain = state.gain[0, n, m]
    in_chain = (server_layers > 0) | config.head_on_server
    up_bits = np.where(in_chain & active, sequences * np.where(local > 0, act_bits, token_bits), 0.0)
    down_bits = np.where(in_chain & active & (local > 0), sequences * act_bits, 0.0) if radio.downlink else 0 * up_bits
    agg_bits = np.where(active, local * llm.adapter_upload_bits_per_layer(spec, wl), 0.0)

    hop_bits = np.zeros((len(n), 2))
    kappa_hop = np.zeros(len(n))
    if k == 2:  # the only hop: node 1 (data holder) → node 2 when node 2 holds layers
        hop = (device[:, 1] > 0) & active
        hop_bits[:, 0] = np.where(hop, sequences * np.where(device[:, 0] > 0, act_bits, token_bits), 0.0)
        hop_bits[:, 1] = np.where(hop & (device[:, 0] > 0), sequences * act_bits, 0.0)
        d2d_band = radio.d2d_bandwidth_hz / (k - 1)
        hop_bits /= d2d_band
        kappa_hop = np.log(state.d2d_gain[0, n, 0, 1] / (noise * d2d_band))

    local_iter_samples = wl.local_iterations * sequences
    samples = np.where(active, float(wl.stability_samples), 0.0) if wl.stability_samples else local_iter_samples
    stability = costs.stability_bound(config, local, samples)
    service = costs.service_quality(state.service_q0[0, n, m], state.service_q1[0, n, m],
                                    server_layers / config.num_layers)

    # uncontrolled shares follow the rules within each block: equal bandwidth, compute ∝ server work
    fixed_bandwidth = _rule_shares(blocks, np.ones(len(n)))
    fixed_compute = _rule_shares(blocks, server_layers * sequences * (forward + backward))
    return _Constants(
        active=active, sequences=sequences, dev_t=dev_t, dev_e=dev_e, srv_t=srv_t, srv_e=srv_e,
        up_bits_per_hz=up_bits / band, agg_bits_per_hz=agg_bits / band, down_bits_per_hz=down_bits / band,
        kappa_up=np.log(gain / (noise * band)), kappa_down=np.log(gain * srv.downlink_power_w / (noise * band)),
        hop_bits_per_hz=hop_bits, kappa_hop=kappa_hop, log_power_max=np.log(state.power_max_w[0, n]),
        stability=stability, service=service, needs_bandwidth=active, needs_compute=active & (server_layers > 0),
        fixed_bandwidth=fixed_bandwidth, fixed_compute=fixed_compute)


def _rule_shares(blocks: _Blocks, weights: np.ndarray) -> np.ndarray:
    """Shares ∝ ``weights`` among the slots of each (block, server), as the rules give them
    (``decision.complete``: equal bandwidth; compute ∝ server work, 0 without work)."""
    group = blocks.block * (int(blocks.server.max(initial=0)) + 1) + blocks.server
    _, inverse = np.unique(group, return_inverse=True)
    total = np.bincount(inverse, weights=weights)[inverse]
    return np.divide(weights, total, out=np.zeros(len(weights)), where=total > 0)


# ----------------------------------------------------------------------------- conic relaxation


class _Relaxation:
    """The stacked outer-approximation program of a set of blocks (see the module docstring).

    ``tangents`` maps each ψ epigraph (``up``, ``down``, ``hop0``, ``hop1``) to the [S, T] points
    its tangents touch; the program is rebuilt per round (cvxpy parameters of this size make
    DPP canonicalization blow up in memory, and rebuilding costs a fraction of the solve).
    """

    def __init__(self, config: SystemConfig, blocks: _Blocks, const: _Constants, scales: costs.Scales,
                 tangents: dict[str, np.ndarray], weights: np.ndarray | None = None) -> None:
        self.config = config
        controls = set(config.controls)
        wl, w = config.workload, config.weights
        size, k = len(blocks.user), config.devices_per_user
        cons: list[cp.Constraint] = []
        self.variables: dict[str, cp.Variable] = {}
        # (max-stage epigraph, stage times, slots with Q > 1 where the epigraph is active; 0 elsewhere)
        self.pipelines: list[tuple[cp.Variable, list[cp.Expression], np.ndarray]] = []
        self.exponentials: list[tuple[cp.Variable, cp.Expression, np.ndarray]] = []  # (t, x, used): t ≥ e^x

        def exp(x: cp.Expression, used: np.ndarray) -> cp.Expression:
            """e^x on the slots where it has a cost (``used``), 0 elsewhere, through an explicit
            epigraph variable t ≥ e^x; constants stay numbers. Costs are then linear in the solver's
            own conic variables, so a block's value read back is the solver's objective for it, not
            the exact cost re-evaluated at an approximate primal point (which can exceed the
            relaxation's optimum and would not be a lower bound). Unused slots are pinned to 0: a
            free epigraph variable drifts and ruins the interior point's accuracy."""
            if not x.variables():
                return cp.Constant(np.where(used, np.exp(x.value), 0.0))
            t = cp.Variable(size, nonneg=True)
            index = np.flatnonzero(used)
            if len(index):
                cons.append(t[index] >= cp.exp(x[index]))
            if len(index) < size:
                cons.append(t[np.flatnonzero(~used)] == 0)
            self.exponentials.append((t, x, used))
            return t

        def variable(name: str, low: np.ndarray, high: np.ndarray) -> cp.Variable:
            var = cp.Variable(size, name=name)
            cons.extend([var >= low, var <= high])
            self.variables[name] = var
            return var

        log_pmin = np.log(config.radio.power_min_w)
        if "power" in controls:
            q = variable("q", np.full(size, log_pmin), const.log_power_max)
        else:
            q = cp.Constant(const.log_power_max)
        zero = np.zeros(size)
        if "bandwidth" in controls:
            b = variable("b", np.where(const.needs_bandwidth, LOG_SHARE_MIN, 0.0), zero)
        else:
            b = cp.Constant(np.log(const.fixed_bandwidth))
        if "compute" in controls:
            c = variable("c", np.where(const.needs_compute, LOG_SHARE_MIN, 0.0), zero)
        else:
            c = cp.Constant(np.log(np.where(const.fixed_compute > 0, const.fixed_compute, 1.0)))
        log_umin = np.log(config.device.frequency_min)
        v = [variable(f"v{j}", np.full(size, log_umin), zero) if "frequency" in controls else cp.Constant(zero)
             for j in range(k)]
        log_d2d = np.log(config.radio.d2d_power_max_w)
        qd = [variable(f"qd{j}", np.full(size, log_pmin), np.full(size, log_d2d))
              if ("power" in controls and k > 1) else cp.Constant(np.full(size, log_d2d)) for j in range(k)]

        def epigraph(name: str, z: cp.Expression) -> cp.Variable:
            y = cp.Variable(size, name=f"y_{name}")
            points = tangents[name]
            for t in range(points.shape[1]):
                slope = _dpsi(points[:, t])
                cons.append(y <= cp.multiply(slope, z) + (_psi(points[:, t]) - slope * points[:, t]))
            cons.append(y >= _Y_FLOOR)
            self.variables[f"y_{name}"] = y
            return y

        self.z = {"up": const.kappa_up + q - b, "down": const.kappa_down - b}
        y_up = epigraph("up", self.z["up"])
        y_down = epigraph("down", self.z["down"])
        uplink = (const.up_bits_per_hz + const.agg_bits_per_hz) > 0
        up_unit = exp(-b - y_up, uplink)  # s/r per bit/Hz of payload
        up_time = cp.multiply(const.up_bits_per_hz, up_unit)
        agg_time = cp.multiply(const.agg_bits_per_hz, up_unit)
        up_energy_unit = exp(q - b - y_up, uplink)
        down_time = cp.multiply(const.down_bits_per_hz, exp(-b - y_down, const.down_bits_per_hz > 0))
        server_unit = exp(-c, const.srv_t.sum(axis=1) > 0)
        srv_time = [cp.multiply(const.srv_t[:, phase], server_unit) for phase in range(2)]
        if config.server.energy_model == "frequency":
            srv_energy = cp.multiply(const.srv_e.sum(axis=1), exp(2 * c, const.srv_e.sum(axis=1) > 0))
        else:
            srv_energy = const.srv_e.sum(axis=1)
        slowdown = [exp(-v[j], const.dev_t[:, :, j].sum(axis=1) > 0) for j in range(k)]
        dev_time = [[cp.multiply(const.dev_t[:, phase, j], slowdown[j]) for j in range(k)] for phase in range(2)]
        node_energy = [const.dev_e[:, :, j].sum(axis=1) for j in range(k)]
        dev_energy = sum(cp.multiply(node_energy[j], exp(2 * v[j], node_energy[j] > 0)) for j in range(k))
        hop_time = [zero, zero]
        hop_energy = zero
        if k == 2:
            for direction in range(2):  # forward sent by node 1 at its power, backward by node 2 at its own
                self.z[f"hop{direction}"] = const.kappa_hop + qd[direction]
                y_hop = epigraph(f"hop{direction}", self.z[f"hop{direction}"])
                sends = const.hop_bits_per_hz[:, direction] > 0
                hop_time[direction] = cp.multiply(const.hop_bits_per_hz[:, direction], exp(-y_hop, sends))
                hop_energy = hop_energy + cp.multiply(const.hop_bits_per_hz[:, direction],
                                                      exp(qd[direction] - y_hop, sends))

        micro = blocks.micro.astype(np.float64)
        overhead = wl.overhead_s

        piped = micro > 1  # slots whose makespan has a (Q−1)·max τ term

        def makespan(stages: list[tuple[Any, np.ndarray]]) -> cp.Expression:
            """Σ τ + (Q−1)·max τ with τ = total/Q + t₀ on stages with work (pipeline.makespan).

            The max-stage epigraph ``peak ≥ τ`` exists only where Q > 1; with Q = 1 it has no cost, and
            left free above it is an unbounded zero-cost direction on which Clarabel reports "Solved"
            at points whose block values are 1e-3 above the relaxation's optimum (not lower bounds:
            they exceeded the true cost of feasible decisions on ``scr`` states). It is pinned to 0 there.
            """
            peak = cp.Variable(size, nonneg=True)
            total = 0
            taus = []
            index = np.flatnonzero(piped)
            for expr, has_work in stages:
                tau = cp.multiply(1.0 / micro, expr) + overhead * has_work
                if len(index):
                    cons.append(peak[index] >= tau[index])
                taus.append(tau)
                total = total + tau
            if len(index) < size:
                cons.append(peak[np.flatnonzero(~piped)] == 0)
            self.pipelines.append((peak, taus, piped))
            return total + cp.multiply(micro - 1.0, peak)

        has = (const.dev_t > 0)
        fwd = [(dev_time[0][j], has[:, 0, j]) for j in range(k)]
        bwd = [(dev_time[1][j], has[:, 1, j]) for j in range(k)]
        if k == 2:
            fwd.append((hop_time[0], const.hop_bits_per_hz[:, 0] > 0))
            bwd.append((hop_time[1], const.hop_bits_per_hz[:, 1] > 0))
        fwd += [(up_time, const.up_bits_per_hz > 0), (srv_time[0], const.srv_t[:, 0] > 0)]
        bwd += [(down_time, const.down_bits_per_hz > 0), (srv_time[1], const.srv_t[:, 1] > 0)]
        iterations = float(wl.local_iterations)
        self.latency = iterations * (makespan(fwd) + makespan(bwd)) + agg_time
        self.energy_device = (iterations * (dev_energy + hop_energy)
                              + cp.multiply(iterations * const.up_bits_per_hz + const.agg_bits_per_hz, up_energy_unit))
        self.energy_server = iterations * (srv_energy + config.server.downlink_power_w * down_time)
        self.energy_user = self.energy_device + config.server_energy_weight * self.energy_server

        # shares: Σ over the slots of each (block, server) that need them
        group = blocks.block * config.num_servers + blocks.server
        groups, inverse = np.unique(group, return_inverse=True)
        membership = sparse.csr_matrix((np.ones(size), (inverse, np.arange(size))), shape=(len(groups), size))
        if "bandwidth" in controls:
            cons.append(membership @ cp.multiply(const.needs_bandwidth.astype(float), cp.exp(b)) <= 1.0)
        if "compute" in controls:
            cons.append(membership @ cp.multiply(const.needs_compute.astype(float), cp.exp(c)) <= 1.0)

        # objective per slot and per block
        users = config.num_users
        to_block = sparse.csr_matrix((np.ones(size), (blocks.block, np.arange(size))), shape=(blocks.count, size))
        if config.objective == "scr":
            slot = (w.delay / scales.latency_s) * self.latency + (w.energy / scales.energy_j_user) * self.energy_user
            block_value = to_block @ slot
        else:
            slot = (w.energy / scales.energy_j) * self.energy_user + (w.stability / (users * scales.stability)) * \
                const.stability
            if wl.energy_budget_j > 0:
                excess = cp.Variable(size, nonneg=True)
                cons.append(excess >= self.energy_device - wl.energy_budget_j)
                slot = slot + (w.budget / (users * wl.energy_budget_j)) * excess
            if config.delay_aggregate == "max":
                delay = cp.Variable(blocks.count)
                cons.append(to_block.T @ delay >= self.latency)
                block_value = to_block @ slot + (w.delay / scales.delay_s) * delay
            else:
                per_user = 1.0 / users if config.delay_aggregate == "mean" else 1.0
                block_value = to_block @ (slot + (w.delay * per_user / scales.delay_s) * self.latency)
        if blocks.deadline.any():
            # T ≤ deadline for the branch's users. Softened with a steep slack cost so an infeasible
            # branch cannot make the stacked program infeasible; the soft program is still a
            # relaxation of the hard one, so its value remains a lower bound.
            slack = cp.Variable(size, nonneg=True)
            cons.append(cp.multiply(blocks.deadline.astype(float), self.latency - slack) <= wl.deadline_s)
            block_value = block_value + to_block @ (_DEADLINE_SLACK_COST * slack)
        self.block_value = block_value
        # Blocks are independent, so weighting each one's objective leaves every block's optimum
        # unchanged; weights of 1/(its cost at the rules) make all blocks O(1), which the interior
        # point needs when one association costs a thousand times another.
        weights = np.ones(blocks.count) if weights is None else weights
        self.problem = cp.Problem(cp.Minimize(cp.sum(cp.multiply(weights, block_value))), cons)
        self.q, self.b, self.c, self.v, self.qd = q, b, c, v, qd

    def solve(self, solver: str = "CLARABEL") -> str:
        """Solve with ``solver`` (Clarabel; SCS with a bounded iteration count as the last resort).

        Returns ``"optimal"`` (the values are lower bounds), ``"inaccurate"`` (the solution is usable
        as a decision but its values are not trusted as bounds) or ``"failed"``.
        """
        options = {"max_iters": 20_000} if solver == "SCS" else {}
        try:
            with warnings.catch_warnings():  # OPTIMAL_INACCURATE is reported through the status
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                self.problem.solve(solver=solver, **options)
        except cp.error.SolverError:
            return "failed"
        if self.problem.status == cp.OPTIMAL and solver == "CLARABEL":
            return "optimal"
        return "inaccurate" if self.problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) else "failed"

    def values(self) -> dict[str, np.ndarray]:
        def value(expr: Any) -> np.ndarray:
            return np.asarray(expr.value, dtype=np.float64)

        return {"q": value(self.q), "b": value(self.b), "c": value(self.c),
                "v": np.stack([value(x) for x in self.v], axis=-1),
                "qd": np.stack([value(x) for x in self.qd], axis=-1),
                "z": {name: value(expr) for name, expr in self.z.items()},
                "latency": value(self.latency), "block": value(self.block_value)}


# ----------------------------------------------------------------------------- true evaluation


def _repeat_state(state: SystemState, count: int) -> SystemState:
    return SystemState(**{name: np.repeat(value, count, axis=0) for name, value in vars(state).items()})


def _decisions(config: SystemConfig, state: SystemState, blocks: _Blocks, const: _Constants,
               values: dict[str, np.ndarray], rules: Decision) -> Decision:
    """Feasible full decisions [C, N] of every block: block members from the solution, the other
    users at the rules (their metrics are not read). Shares are renormalized per server so that
    rounding in the solver never leaves a sum above 1."""
    controls = set(config.controls)
    count, k = blocks.count, config.devices_per_user
    full = decision_model.complete(config, state, rules)
    d = Decision(**{name: np.repeat(getattr(full, name), count, axis=0) for name in
                    ("split", "server", "power", "d2d_power", "bandwidth", "compute", "frequency", "microbatches")})
    row, user = blocks.block, blocks.user
    d.split[row, user] = blocks.split
    d.server[row, user] = blocks.server
    d.microbatches[row, user] = blocks.micro
    radio = config.radio
    d.power[row, user] = _snap(np.exp(values["q"]), radio.power_min_w, state.power_max_w[0, user])
    if k > 1:
        d.d2d_power[row, user] = _snap(np.exp(values["qd"]), radio.power_min_w, radio.d2d_power_max_w)
    d.frequency[row, user] = _snap(np.exp(values["v"]), config.device.frequency_min, 1.0)
    beta = np.where(const.needs_bandwidth, np.exp(values["b"]), 0.0) if "bandwidth" in controls \
        else const.fixed_bandwidth
    phi = np.where(const.needs_compute, np.exp(values["c"]), 0.0) if "compute" in controls else const.fixed_compute
    # Non-members keep full shares so their (unread) metrics stay finite. Members' shares are scaled
    # per server to sum to exactly 1 where more share never costs more (bandwidth; time-shared
    # compute) — this removes the interior point's slack at the constraint — and else only down to 1.
    members = np.zeros((count, config.num_users), dtype=bool)
    members[row, user] = True
    tight = {"bandwidth": True, "compute": config.server.energy_model == "time_share"}
    for name, share in (("bandwidth", beta), ("compute", phi)):
        shares = np.ones((count, config.num_users))
        shares[row, user] = share
        totals = server_totals(np.where(members, shares, 0.0), d.server, config.num_servers)
        per_user = totals[np.arange(count)[:, None], d.server]
        scale = np.where(per_user > 0, per_user, 1.0) if tight[name] else np.maximum(per_user, 1.0)
        setattr(d, name, np.where(members, shares / scale, 1.0))
    return d


def _snap(value: np.ndarray, low: float | np.ndarray, high: float | np.ndarray) -> np.ndarray:
    """Clip to [low, high] and put values within 1e-6 (relative) of a bound on it: the interior point
    stops a hair inside its bounds, where the optimum usually sits exactly on them."""
    value = np.clip(value, low, high)
    value = np.where(np.abs(value / high - 1.0) < 1e-6, high, value)
    return np.where(np.abs(value / low - 1.0) < 1e-6, low, value)


def _true_costs(config: SystemConfig, state: SystemState, decisions: Decision, blocks: _Blocks,
                scales: costs.Scales) -> tuple[np.ndarray, costs.RoundMetrics]:
    """Per-slot cost (or SCR denominator) of each block's decision, from ``costs.evaluate``."""
    batch = _repeat_state(state, blocks.count)
    metrics = costs.evaluate(config, batch, decisions)
    row, user = blocks.block, blocks.user
    w, wl, users = config.weights, config.workload, config.num_users
    latency = metrics.latency_s[row, user]
    energy_user = metrics.energy_j_user[row, user]
    if config.objective == "scr":
        return w.delay * latency / scales.latency_s + w.energy * energy_user / scales.energy_j_user, metrics
    slot = (w.energy * energy_user / scales.energy_j + w.stability * metrics.stability[row, user] /
            (users * scales.stability) + w.drop * metrics.dropped[row, user] / users)
    if wl.energy_budget_j > 0:
        excess = np.maximum(metrics.energy_device_j[row, user] - wl.energy_budget_j, 0.0)
        slot = slot + w.budget * excess / (users * wl.energy_budget_j)
    if config.delay_aggregate != "max":
        per_user = 1.0 / users if config.delay_aggregate == "mean" else 1.0
        slot = slot + w.delay * per_user * latency / scales.delay_s
    return slot, metrics


def restated_metrics(config: SystemConfig, state: SystemState, decision: Decision) -> dict[str, np.ndarray]:
    """The relaxation's expressions evaluated at ``decision`` with ψ exact: per-user latency, device and
    server energy [N]. They must equal ``costs.evaluate``'s (the tests check it), which is what makes
    the oracle's bound a bound on the env's cost.

    ``decision`` is complete (``decision.complete``), batch axis 1, for ``state`` (batch axis 1).
    Raises ``ValueError`` beyond the oracle's chain length (K ≤ 2).
    """
    if config.devices_per_user > MAX_DEVICES:
        raise ValueError(f"restated_metrics: devices_per_user = {config.devices_per_user} exceeds {MAX_DEVICES}")
    n = config.num_users
    blocks = _Blocks(keys=[tuple(int(m) for m in decision.server[0])], user=np.arange(n),
                     server=decision.server[0].astype(np.int64), block=np.zeros(n, dtype=np.int64),
                     split=decision.split[0].astype(np.int64), micro=decision.microbatches[0].astype(np.int64),
                     deadline=np.zeros(n, dtype=bool))
    const = _constants(config, state, blocks)
    logs = {"q": np.log(decision.power[0]),
            "b": np.where(const.needs_bandwidth, np.log(np.maximum(decision.bandwidth[0], 1e-300)), 0.0),
            "c": np.where(const.needs_compute, np.log(np.maximum(decision.compute[0], 1e-300)), 0.0)}
    k = config.devices_per_user
    z = {"up": const.kappa_up + logs["q"] - logs["b"], "down": const.kappa_down - logs["b"]}
    if k == 2:
        for direction in range(2):
            z[f"hop{direction}"] = const.kappa_hop + np.log(decision.d2d_power[0, :, direction])
    relaxation = _Relaxation(config, blocks, const, reference.reference_scales(config),
                             {name: value[:, None] for name, value in z.items()})
    values = {"q": logs["q"], "b": logs["b"], "c": logs["c"]}
    for j in range(k):
        values[f"v{j}"] = np.log(decision.frequency[0, :, j])
        if k > 1:
            values[f"qd{j}"] = np.log(decision.d2d_power[0, :, j])
    for name, value in z.items():
        values[f"y_{name}"] = _psi(value)
    for name, variable in relaxation.variables.items():
        variable.value = values[name]
    for epigraph, exponent, used in relaxation.exponentials:
        epigraph.value = np.where(used, np.exp(np.asarray(exponent.value, dtype=np.float64)), 0.0)
    for peak, taus, piped in relaxation.pipelines:
        peak.value = np.where(piped, np.max([np.asarray(tau.value, dtype=np.float64) for tau in taus], axis=0), 0.0)
    return {"latency_s": np.asarray(relaxation.latency.value),
            "energy_device_j": np.asarray(relaxation.energy_device.value),
            "energy_server_j": np.asarray(relaxation.energy_server.value)}


# ----------------------------------------------------------------------------- the search


def _initial_tangents(config: SystemConfig, const: _Constants, blocks: _Blocks) -> dict[str, np.ndarray]:
    """Tangent points around the rules' operating point (p_max, the block's equal share)."""
    share = np.log(1.0 / np.bincount(blocks.block)[blocks.block])
    centers = {"up": const.kappa_up + const.log_power_max - share, "down": const.kappa_down - share}
    if config.devices_per_user == 2:
        log_d2d = np.log(config.radio.d2d_power_max_w)
        centers["hop0"] = centers["hop1"] = const.kappa_hop + log_d2d
    return {name: center[:, None] + _INITIAL_OFFSETS[None] for name, center in centers.items()}


def _refined_tangents(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: z[:, None] + _REFINE_OFFSETS[None] for name, z in values["z"].items()}


class _Search:
    """Bookkeeping of the sub-problems' bounds, their drop branches, and their combination.

    Every block has a relaxed value (lower bound of its own program, the best over rounds) and
    the true cost of the best decision found for it (upper bound). With a round deadline, a block
    whose relaxed solution leaves users E above the deadline is *branched*: for each e ∈ E a
    child block requires T_e ≤ deadline. A block's tree bound is its value if not branched, else
    min(value + w_drop/N·|E|, min over children of their tree bounds) — valid for the
    sub-problem with the drop penalty: a decision either drops all of E (and pays for them) or
    meets the deadline for some e ∈ E (and is feasible for that child).
    """

    def __init__(self, config: SystemConfig, blocks: _Blocks, const: _Constants) -> None:
        self.config = config
        self.blocks = blocks
        count = blocks.count
        self.value = np.full(count, -np.inf)
        self.upper = np.full(count, np.inf)
        self.upper_drops = np.zeros(count)
        self.solved = np.zeros(count, dtype=bool)
        self.root = np.arange(count)
        self.branch: dict[int, list[int]] = {}  # block → children (one per user of E)
        self.branch_size: dict[int, int] = {}
        self.service = np.bincount(blocks.block, weights=const.service, minlength=count)
        self.best_rows: dict[int, tuple[Decision, int]] = {}
        self.weights = np.ones(count)  # objective weights of the blocks in the conic programs
        wl = config.workload
        self.penalty = (config.weights.drop / config.num_users
                        if config.objective == "weighted" and wl.deadline_s > 0 and config.weights.drop > 0 else 0.0)

    def update(self, ids: np.ndarray, value: np.ndarray, upper: np.ndarray, drops: np.ndarray,
               decisions: Decision, solved: bool = True) -> None:
        self.value[ids] = np.maximum(self.value[ids], value)
        self.solved[ids] |= solved
        better = upper < self.upper[ids]
        for local_row in np.flatnonzero(better):
            self.best_rows[int(ids[local_row])] = (decisions, int(local_row))
        self.upper[ids] = np.where(better, upper, self.upper[ids])
        self.upper_drops[ids] = np.where(better, drops, self.upper_drops[ids])

    def add_branches(self, ids: np.ndarray, late: np.ndarray) -> _Blocks:
        """Branch the blocks ``ids`` on their slots ``late`` (mask over the blocks' slots, in block order);
        returns the children (to append to the blocks)."""
        children, keys = [], []
        for block_id in ids:
            slots = np.flatnonzero(self.blocks.block == block_id)
            chosen = slots[late[slots]]
            if block_id in self.branch or len(chosen) == 0:
                continue
            self.branch[int(block_id)] = []
            self.branch_size[int(block_id)] = len(chosen)
            for slot in chosen:
                deadline = self.blocks.deadline[slots].copy()
                deadline[slots == slot] = True
                children.append((int(block_id), slots, deadline))
                keys.append(self.blocks.keys[block_id])
        if not children:
            return _Blocks([], *(np.zeros(0, dtype=np.int64) for _ in range(3)),
                           np.zeros((0, self.blocks.split.shape[1]), dtype=np.int64),
                           np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
        base = self.blocks.count
        new = _Blocks(keys=keys, user=np.concatenate([self.blocks.user[s] for _, s, _ in children]),
                      server=np.concatenate([self.blocks.server[s] for _, s, _ in children]),
                      block=np.concatenate([np.full(len(s), i) for i, (_, s, _) in enumerate(children)]),
                      split=np.concatenate([self.blocks.split[s] for _, s, _ in children]),
                      micro=np.concatenate([self.blocks.micro[s] for _, s, _ in children]),
                      deadline=np.concatenate([d for _, _, d in children]))
        parents = np.asarray([parent for parent, _, _ in children])
        for offset, parent in enumerate(parents):
            self.branch[parent].append(base + offset)
        self.blocks = self.blocks.concat(new)
        self.value = np.concatenate([self.value, self.value[parents]])  # a child is at least its parent
        self.upper = np.concatenate([self.upper, np.full(len(parents), np.inf)])
        self.upper_drops = np.concatenate([self.upper_drops, np.zeros(len(parents))])
        self.solved = np.concatenate([self.solved, np.zeros(len(parents), dtype=bool)])
        self.root = np.concatenate([self.root, self.root[parents]])
        self.service = np.concatenate([self.service, self.service[parents]])
        self.weights = np.concatenate([self.weights, self.weights[parents]])
        return new

    def tree_lower(self, block_id: int) -> float:
        if block_id not in self.branch:
            return float(self.value[block_id])
        children = min(self.tree_lower(child) for child in self.branch[block_id])
        return min(float(self.value[block_id]) + self.penalty * self.branch_size[block_id], children)

    def _groups(self) -> dict[tuple, np.ndarray]:
        groups: dict[tuple, list[int]] = {}
        for index, key in enumerate(self.blocks.keys):
            groups.setdefault(key, []).append(index)
        return {key: np.asarray(ids) for key, ids in groups.items()}

    def _group_lower(self, ids: np.ndarray) -> float:
        return min(self.tree_lower(int(b)) for b in ids if self.root[b] == b)

    def combine(self, associations: list[tuple[int, ...]]) -> tuple[float, float, list[int], np.ndarray]:
        """(best cost, certified bound, chosen block ids, per-block 'can still matter' mask)."""
        groups = self._groups()
        config = self.config
        if config.objective == "scr":
            return self._combine_scr(associations, groups)
        if not _separable(config):
            best = int(np.argmin(self.upper))
            roots = np.flatnonzero(self.root == np.arange(self.blocks.count))
            bound = min(self.tree_lower(int(b)) for b in roots)
            return float(self.upper[best]), bound, [best], self.value < self.upper[best]
        best_value, best_choice, bound = np.inf, [], np.inf
        group_upper = {key: ids[np.argmin(self.upper[ids])] for key, ids in groups.items()}
        group_lower = {key: self._group_lower(ids) for key, ids in groups.items()}
        rest = {}  # per group: smallest lower bound of the other servers of an association containing it
        for assoc in associations:
            keys = _association_keys(config, assoc)
            value = sum(float(self.upper[group_upper[key]]) for key in keys)
            bound = min(bound, sum(group_lower[key] for key in keys))
            if value < best_value:
                best_value, best_choice = value, [int(group_upper[key]) for key in keys]
            for key in keys:
                others = sum(group_lower[other] for other in keys if other != key)
                rest[key] = min(rest.get(key, np.inf), others)
        matters = np.zeros(self.blocks.count, dtype=bool)
        for key, ids in groups.items():
            matters[ids] = self.value[ids] + rest.get(key, np.inf) < best_value
        return best_value, bound, best_choice, matters

    def _combine_scr(self, associations: list[tuple[int, ...]],
                     groups: dict[tuple, np.ndarray]) -> tuple[float, float, list[int], np.ndarray]:
        """Maximize Σ U / Σ den over associations and block choices (Dinkelbach, exact on finite sets).

        Costs are −SCR; the bound uses the denominators' lower bounds (an upper bound on the SCR)."""

        def dinkelbach(denominator: np.ndarray) -> tuple[float, list[int]]:
            ratio, choice = 0.0, []
            for _ in range(100):
                best_total, best_choice = -np.inf, []
                for assoc in associations:
                    picks = []
                    for key in _association_keys(self.config, assoc):
                        ids = groups[key]
                        picks.append(int(ids[np.argmax(self.service[ids] - ratio * denominator[ids])]))
                    total = float(np.sum(self.service[picks] - ratio * denominator[picks]))
                    if total > best_total:
                        best_total, best_choice = total, picks
                new_ratio = float(np.sum(self.service[best_choice]) / np.sum(denominator[best_choice]))
                if new_ratio <= ratio + 1e-15:
                    break
                ratio, choice = new_ratio, best_choice
            return ratio, choice

        achieved, choice = dinkelbach(self.upper)
        optimistic, _ = dinkelbach(np.maximum(self.value, 1e-300))
        # no pruning for ratios: a block's worth depends on the others' through the ratio
        return -achieved, -optimistic, choice, np.ones(self.blocks.count, dtype=bool)


def _association_keys(config: SystemConfig, assoc: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    keys = []
    for m in range(config.num_servers):
        users = tuple(u for u, s in enumerate(assoc) if s == m)
        if users:
            keys.append((m, users))
    return keys


def solve(config: SystemConfig, state: SystemState, tolerance: float = 1e-6, max_rounds: int = 6) -> OracleResult:
    """The optimal decision for ``state`` (batch of one) and its certificate (module docstring).

    Args:
        config: the scenario; must pass :func:`check_instance`.
        state: a ``SystemState`` with batch axis 1 (e.g. ``env.unwrapped.system_state``).
        tolerance: stop when ``cost − bound ≤ tolerance·max(1, |cost|)``.
        max_rounds: outer-approximation rounds at most; the bound stays certified if they run out.

    Raises:
        ValueError: the instance is too large or its objective unsupported (the message says which).
    """
    start = time.perf_counter()
    check_instance(config)
    if state.batch_size != 1:
        raise ValueError(f"state: the oracle solves one system at a time, got a batch of {state.batch_size}")
    rules = restrict_to_controls(config, Decision())
    rule_decision = decision_model.complete(config, state, rules)
    options = _user_options(config, state, rule_decision)
    allowed = _allowed_servers(config, rule_decision)
    associations = _associations(config, allowed)
    total = _count_subproblems(config, options, allowed, associations)
    if total > MAX_SUBPROBLEMS:
        raise ValueError(f"oracle: {total} sub-problems (associations × splits × micro-batch counts) exceed "
                         f"MAX_SUBPROBLEMS = {MAX_SUBPROBLEMS}; reduce num_users, num_layers, devices_per_user or "
                         f"workload.max_microbatches")
    scales = reference.reference_scales(config)
    blocks = _enumerate(config, options, allowed, associations)
    const = _constants(config, state, blocks)
    search = _Search(config, blocks, const)
    tangents = _initial_tangents(config, const, blocks)
    # the rules' operating point of every block: a first feasible decision and the objective weights
    start_values = {"q": const.log_power_max, "b": np.zeros(len(blocks.user)), "c": np.zeros(len(blocks.user)),
                    "v": np.zeros((len(blocks.user), config.devices_per_user)),
                    "qd": np.full((len(blocks.user), config.devices_per_user), np.log(config.radio.d2d_power_max_w))}
    decisions = _decisions(config, state, blocks, const, start_values, rules)
    upper, drops = _block_costs(config, state, decisions, blocks, scales)
    search.update(np.arange(blocks.count), np.full(blocks.count, -np.inf), upper, drops, decisions, solved=False)
    search.weights = 1.0 / np.maximum(np.abs(upper), 1e-3)
    active = np.ones(blocks.count, dtype=bool)
    status, rounds, failures = "gap", 0, 0
    best_value, bound, choice = np.inf, -np.inf, []
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (rounds is reported)
        every = search.blocks
        branched = np.bincount(every.block, weights=every.deadline, minlength=every.count) > 0
        late = np.zeros(len(every.user), dtype=bool)
        # drop branches are solved apart: their deadline slack costs must not swamp the others' accuracy
        for group in (active & ~branched, active & branched):
            ids = np.flatnonzero(group)
            if not len(ids):
                continue
            for chunk in np.array_split(ids, -(-len(ids) // _CHUNK_BLOCKS)):
                failures += _solve_chunk(config, state, search, chunk, tangents, late, rules, scales)
        best_value, bound, choice, matters = search.combine(associations)
        if search.penalty > 0:  # branch blocks whose relaxed solution misses the deadline
            solved_now = np.flatnonzero(active & matters)
            new = search.add_branches(solved_now, late)
            if new.count:  # children start from their parent's tangents
                parent_slots = np.concatenate([np.flatnonzero(every.block == parent)
                                               for parent in _parents_of(search, every.count)])
                tangents = {name: np.concatenate([points, points[parent_slots]]) for name, points in tangents.items()}
                best_value, bound, choice, matters = search.combine(associations)
        if best_value - bound <= tolerance * max(1.0, abs(best_value)):
            status = "optimal"
            break
        continuous_gap = (search.upper - search.penalty * search.upper_drops) - search.value
        unfinished = ~search.solved | (continuous_gap > tolerance * np.maximum(1.0, np.abs(search.upper)))
        active = matters & unfinished
        if not active.any():
            break
    if status != "optimal" and failures:
        status = "fallback"
    decision, reward = _assemble(config, state, search, choice, rule_decision, rules, scales)
    cost = -reward
    return OracleResult(decision=decision, reward=reward, cost=cost, bound=float(bound),
                        gap=float(cost - bound), subproblems=blocks.count, rounds=rounds,
                        solve_s=time.perf_counter() - start, status=status,
                        info={"mode": "by server" if _separable(config) else "joint",
                              "drop_branches": search.blocks.count - blocks.count, "solver_failures": failures})


_CHUNK_BLOCKS = 256  # blocks per conic program: smaller programs converge more reliably


def _block_costs(config: SystemConfig, state: SystemState, decisions: Decision, blocks: _Blocks,
                 scales: costs.Scales) -> tuple[np.ndarray, np.ndarray]:
    """True cost (``scr``: denominator) and dropped users of each block's decision."""
    slot_cost, metrics = _true_costs(config, state, decisions, blocks, scales)
    drops = np.bincount(blocks.block, weights=metrics.dropped[blocks.block, blocks.user], minlength=blocks.count)
    if _separable(config):
        return np.bincount(blocks.block, weights=slot_cost, minlength=blocks.count), drops
    return -costs.reward_terms(config, metrics, scales)["reward"], drops


def _solve_chunk(config: SystemConfig, state: SystemState, search: _Search, ids: np.ndarray,
                 tangents: dict[str, np.ndarray], late: np.ndarray, rules: Decision, scales: costs.Scales) -> int:
    """Solve the relaxation of blocks ``ids`` and record their bounds; returns the blocks that failed.

    A program Clarabel cannot solve to its full accuracy, or whose solution gives a block a relaxed
    value above the true cost of that block's own decision (:func:`_overshoots`), is split in halves
    (recursively). A single block that is still inaccurate contributes its decision (an upper bound)
    but not its value; one that fails gets SCS (decision only), then is left with its previous bounds
    (still valid).
    """
    every = search.blocks
    mask = np.zeros(every.count, dtype=bool)
    mask[ids] = True
    sub, ids = _subset(every, mask)
    sub_const = _constants(config, state, sub)
    slot_rows = np.flatnonzero(mask[every.block])
    relaxation = _Relaxation(config, sub, sub_const, scales,
                             {name: points[slot_rows] for name, points in tangents.items()}, search.weights[ids])
    outcome = relaxation.solve()
    if outcome != "failed":
        values = relaxation.values()
        decisions = _decisions(config, state, sub, sub_const, values, rules)
        upper, drops = _block_costs(config, state, decisions, sub, scales)
        if outcome == "optimal" and _overshoots(sub, values["block"], upper).any():
            outcome = "inaccurate"
    if outcome != "optimal" and len(ids) > 1:
        half = len(ids) // 2
        return sum(_solve_chunk(config, state, search, part, tangents, late, rules, scales)
                   for part in (ids[:half], ids[half:]))
    if outcome == "failed":
        outcome = relaxation.solve("SCS")
        if outcome == "failed":
            return 1
        values = relaxation.values()
        decisions = _decisions(config, state, sub, sub_const, values, rules)
        upper, drops = _block_costs(config, state, decisions, sub, scales)
    trusted = outcome == "optimal"
    search.update(ids, values["block"] if trusted else np.full(len(ids), -np.inf), upper, drops, decisions,
                  solved=trusted)
    refined = _refined_tangents(values)
    for name in tangents:
        tangents[name][slot_rows] = refined[name]
    late[slot_rows] = (values["latency"] > config.workload.deadline_s) & sub_const.active & ~sub.deadline
    return 0


_OVERSHOOT = 1e-6
"""Relative excess of a block's relaxed value over its own decision's true cost that marks the solve untrusted."""


def _overshoots(blocks: _Blocks, value: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Blocks whose relaxed ``value`` exceeds ``upper``, the true cost of their own rounded decision [C].

    Without a deadline constraint a block's relaxation is a relaxation of its sub-problem, so its
    optimal value is at most the cost of any feasible decision, this one included: a value above
    it (beyond ``_OVERSHOOT``) means the solver stopped at a non-optimal point and the value is no
    lower bound. Drop branches (deadline slack priced in the program, not in the cost) are exempt.
    """
    soft = np.bincount(blocks.block, weights=blocks.deadline, minlength=blocks.count) > 0
    return ~soft & (value > upper + _OVERSHOOT * np.maximum(1.0, np.abs(upper)))


def _parents_of(search: _Search, first_child: int) -> list[int]:
    """The parent block of each child block from ``first_child`` on, in order."""
    parent_of = {child: parent for parent, children in search.branch.items() for child in children}
    return [parent_of[child] for child in range(first_child, search.blocks.count)]


def _assemble(config: SystemConfig, state: SystemState, search: _Search, choice: list[int],
              rule_decision: Decision, rules: Decision, scales: costs.Scales) -> tuple[Decision, float]:
    """The full decision from the chosen blocks (one per server, or one joint block), evaluated."""
    if not choice:  # the solver failed before any block was evaluated: the rules' decision
        d = rule_decision
    else:
        d = rule_decision.copy()
        for block_id in choice:
            decisions, row = search.best_rows[block_id]
            slots = search.blocks.block == block_id
            for user in search.blocks.user[slots]:
                for name in ("split", "server", "power", "d2d_power", "bandwidth", "compute", "frequency",
                             "microbatches"):
                    getattr(d, name)[0, user] = getattr(decisions, name)[row, user]
    metrics = costs.evaluate(config, state, d)
    reward = float(costs.reward_terms(config, metrics, scales)["reward"][0])
    return restrict_to_controls(config, d), reward


# ----------------------------------------------------------------------------- policy


class OraclePolicy(Policy):
    """The exhaustive oracle as a policy: solves every round to optimality (tiny instances only).

    ``stats`` accumulates ``solve_s`` (total), ``rounds``, ``subproblems``, ``max_gap`` and
    ``fallbacks`` (rounds where the conic solver failed and the best feasible decision was used).
    """

    name = "oracle"

    def __init__(self, tolerance: float = 1e-6, max_rounds: int = 5) -> None:
        super().__init__()
        self.tolerance = tolerance
        self.max_rounds = max_rounds
        self.last: OracleResult | None = None

    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        check_instance(self.config)

    def bind(self, config: SystemConfig, seed: int | None = None) -> None:
        super().bind(config, seed)
        check_instance(config)

    def decide(self, state: SystemState) -> Decision:
        config = self._require_config()
        results = [solve(config, state.select(i), self.tolerance, self.max_rounds) for i in range(state.batch_size)]
        self.last = results[-1]
        for result in results:
            self.stats["solve_s"] = self.stats.get("solve_s", 0.0) + result.solve_s
            self.stats["rounds"] = self.stats.get("rounds", 0.0) + result.rounds
            self.stats["subproblems"] = self.stats.get("subproblems", 0.0) + result.subproblems
            self.stats["max_gap"] = max(self.stats.get("max_gap", 0.0), result.gap)
            self.stats["fallbacks"] = self.stats.get("fallbacks", 0.0) + (result.status == "fallback")
        return _stack([r.decision for r in results])


def _stack(decisions: list[Decision]) -> Decision:
    first = decisions[0]
    return Decision(**{name: None if getattr(first, name) is None else
                       np.concatenate([getattr(d, name) for d in decisions], axis=0)
                       for name in ("split", "server", "power", "d2d_power", "bandwidth", "compute", "frequency",
                                    "microbatches")})


def iterate_states(config: SystemConfig, count: int, seed: int) -> Iterator[SystemState]:
    """``count`` random initial states of ``config`` (one at a time), reproducible from ``seed``."""
    from mec_gym.model import dynamics

    rng = np.random.default_rng(seed)
    uniforms = rng.random((count, dynamics.episode_draw_count(config)))
    states = dynamics.sample_episode(config, uniforms)
    for i in range(count):
        yield states.select(i)
