"""``dssra``: [CP25]'s Dynamic Segment Scheduling and Resource Allocation (SPEC §6.5).

J. Chen et al., "CollaPipe: Adaptive Segment-Optimized Pipeline Parallelism for Collaborative
LLM Training in Heterogeneous Edge Networks", arXiv 2509.19855 (notes:
shared/papers/CP25-collapipe.md §5). Online Lyapunov control: every round, with the current
virtual energy queues Z, minimize the drift-plus-penalty

    V·latency(t) + Σ_n Z_n(t)·E_n(t)

over the encoder segmentation, the micro-batch counts, the transmit powers and the uplink
bandwidth shares (and the association when the scenario lets the agent choose it). Queues are
per **cluster** (``SystemState.energy_queue``, Z_n = max(Z_n + E_n − Ē, 0) over the cluster's
device energy, updated by the environment from the realized energy); the notes' per-device
queues are not in the model. ``V`` (J²/s) trades latency against the budget: time-average
latency within O(1/V) of the optimum, queue backlog O(V) (notes §5.2).

Blocks (notes §5.3), each evaluated with the environment's own arithmetic — the stage totals
come from :mod:`mec_gym.model.compute` and :mod:`mec_gym.model.channel`, the makespan from
:func:`mec_gym.model.pipeline.stage_times` and :func:`mec_gym.model.pipeline.makespan`
(the functions ``costs.evaluate`` calls), and the final decision is scored by
:func:`mec_gym.model.costs.evaluate`:

* **Block 0, association** (our addition: ``server`` is a control of the env, [CP25] has one
  cluster per base station): local search from the nearest server on the min-max (or sum)
  upload time at p_max with the band shared equally.
* **Block 1, segments and micro-batches, per cluster** (:func:`partition_dp`): for every
  micro-batch count Q, the contiguous layer partition over the chain (devices in order, then
  the server when ``split_min_local`` < Υ) that minimizes w_T·T_n + w_E·E_n, with the
  bottleneck exact: the D2D hop stages are fixed by which positions hold layers (the holder
  set), and the largest compute stage by a cap u; for every (holder set, u) the min-sum DP
  over the holders has stage costs linear in the layer count, so its recursion is solved by
  the exchange (greedy) order; the best (holder set, u) and then the best Q are kept.
  Memory: a node never gets more layers than ``state.max_layers``.
* **Block 2, transmit powers** (:func:`lambert_power`): each link's term
  (A + C·p)/log2(1 + γp) is unimodal, minimized in closed form by
  p* = (exp(1 + W₀(c/e)) − 1)/γ, c = γA/C − 1 (Lambert W), clipped to the power range; A is
  the latency weight of the bits the link carries (a pipeline stage counts 1/Q, or 1 if it is
  the bottleneck), C the energy weight. A D2D node sends on two links (forward activations,
  backward gradients): its optimum lies between the two links' optima and is found there by
  golden-section search.
* **Block 3, bandwidth** (:func:`share_bandwidth`) among clusters sharing a base station:
  bisection on the round deadline (min-max latency, ``delay_aggregate = "max"``) or KKT with
  bisection on the multiplier (weighted sums).

The max over clusters in the latency (``delay_aggregate = "max"``, [CP25] waits for the
slowest cluster) couples the clusters: with its epigraph T_n ≤ τ, cluster n sees a latency
weight λ_n ∈ [0, V] (Σλ_n = V). Blocks 1-2 are solved per cluster for a grid of weights
(``latency_weights``, fractions θ of V, and θ = 0: energy first) and the round's choice is
exact over that candidate set: for each deadline τ among the candidates' latencies, each
cluster takes its lowest Z·E candidate meeting τ; the τ minimizing V·τ + Σ Z·E wins. Ties in
the drift-plus-penalty go to the lower energy (a weight ``tie_break_s_per_j`` of 1 µs per J),
so clusters with slack save energy even while their queues are empty. Blocks alternate until
the per-round objective stops improving (``tolerance``, ``max_iterations``).

``V = inf`` is the latency-only variant (:class:`DSSRALatencyOnly`, the notes' "V → ∞"):
the queues are ignored and only the tie-break toward lower energy remains.

Our choices where the paper is unknown (notes §7) or the model differs:

* Energy queues per cluster (the model's), over the cluster's device energy; no convergence
  queue: the env's micro-batches split a fixed batch (the notes' Option B), so the convergence
  bound does not depend on Q.
* A D2D node has one transmit power for its forward hop and the backward hop it sends
  (``Decision.d2d_power``, as in :func:`mec_gym.model.costs._chain_hops`).
* Fields DSSRA does not optimize — server compute shares, DVFS — follow the scenario's rules;
  so do the fields the scenario does not let the agent control.
* ``max_layers_share`` (off by default) caps the layers any one device may hold below its
  memory: [CP25]'s premise that no device holds the whole model. Without it DSSRA keeps the
  encoder on one device in most cluster-rounds of ``collapipe``, which is the optimum of its
  per-round problem there: one D2D hop of an iteration's activations and gradients costs more
  than the whole encoder's compute on the cluster's fastest device, and the clusters that do
  not set the round latency (max over clusters) only pay energy for spreading (measured by
  :func:`agents.reproduce_collapipe.partition_diagnosis`).
* On scenarios other than [CP25]'s (K = 1 chains, the ``weighted`` or ``scr`` objectives) it
  still minimizes V·latency + Σ Z·E, not the env's reward.

Solve time, iterations and fallbacks are in ``stats``. A failure (non-finite values, an
infeasible result) falls back to the [CP25] "PipeLine" decision
(:class:`agents.heuristics.UniformPipelinePolicy`) and is counted in ``fallbacks``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from scipy import special

from agents.base import Policy, restrict_to_controls
from agents.heuristics import UniformPipelinePolicy
from mec_gym.config import SystemConfig
from mec_gym.model import channel, compute, costs, llm, pipeline
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState, server_totals

LN2 = math.log(2.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


# ----------------------------------------------------------------------------- chain structure


@dataclass(frozen=True)
class HolderSets:
    """Every set of chain positions that can hold layers, and the stages each set implies.

    Positions: the K chain nodes in order, then the server (only when ``split_min_local`` < Υ,
    so the server may hold encoder layers). Node 0 holds the data and always sends (raw tokens
    when it holds no layer), as in :func:`mec_gym.model.costs._chain_hops`.
    """

    mask: np.ndarray  # [H, P] bool: positions with ≥ 1 layer
    hop_fwd_act: np.ndarray  # [H, K, K] bool: forward hop i → j carrying activations
    hop_fwd_tok: np.ndarray  # [H, K, K] bool: forward hop 0 → j carrying raw tokens
    hop_bwd: np.ndarray  # [H, K, K] bool: backward hop j → i (activation gradients), sent by j
    uplink_act: np.ndarray  # [H] bool: the chain's output goes up (activations)
    uplink_tok: np.ndarray  # [H] bool: raw tokens go up (no layer on the devices)
    downlink: np.ndarray  # [H] bool: gradients come down
    combo_set: np.ndarray  # [C] cap candidates: holder set,
    combo_pos: np.ndarray  # [C] the position whose compute stage sets the cap,
    combo_layers: np.ndarray  # [C] and its layer count

    @property
    def positions(self) -> int:
        return self.mask.shape[1]


@lru_cache(maxsize=32)
def holder_sets(devices: int, layers: int, server_position: bool, min_local: int, head_on_server: bool,
                downlink: bool) -> HolderSets:
    """The :class:`HolderSets` of a chain of ``devices`` nodes (plus the server when ``server_position``)."""
    positions = devices + int(server_position)
    masks, fa, ft, bw, up_a, up_t, down = [], [], [], [], [], [], []
    for bits in range(1, 2 ** positions):
        mask = np.array([(bits >> p) & 1 for p in range(positions)], dtype=bool)
        device_holders = [k for k in range(devices) if mask[k]]
        on_server = server_position and bool(mask[devices])
        if mask.sum() > layers or (not device_holders and min_local > 0):
            continue
        hop_a, hop_t, hop_b = (np.zeros((devices, devices), dtype=bool) for _ in range(3))
        senders = [0] + [k for k in device_holders if k != 0]
        for i, j in zip(senders[:-1], senders[1:], strict=True):
            if mask[i]:
                hop_a[i, j] = True
                hop_b[i, j] = True  # gradients return only to a node that ran layers
            else:
                hop_t[i, j] = True
        in_chain = on_server or head_on_server
        masks.append(mask)
        fa.append(hop_a)
        ft.append(hop_t)
        bw.append(hop_b)
        up_a.append(in_chain and bool(device_holders))
        up_t.append(in_chain and not device_holders)
        down.append(in_chain and bool(device_holders) and downlink)
    mask = np.array(masks)
    combos = [(h, p, d) for h in range(len(mask)) for p in np.flatnonzero(mask[h])
              for d in range(1, layers - int(mask[h].sum()) + 2)]
    combo = np.array(combos, dtype=np.int64).reshape(-1, 3)
    return HolderSets(mask=mask, hop_fwd_act=np.array(fa), hop_fwd_tok=np.array(ft), hop_bwd=np.array(bw),
                      uplink_act=np.array(up_a), uplink_tok=np.array(up_t), downlink=np.array(down),
                      combo_set=combo[:, 0], combo_pos=combo[:, 1], combo_layers=combo[:, 2])


def _holder_sets(config: SystemConfig) -> HolderSets:
    layers = config.num_layers
    return holder_sets(config.devices_per_user, layers, config.split_min_local < layers, config.split_min_local,
                       config.head_on_server, config.radio.downlink)


# ----------------------------------------------------------------------------- stage tables


@dataclass
class ChainTables:
    """Stage totals of each row's chain for one training iteration, given its radio choices.

    A *row* is one (environment, cluster, latency weight) triple; shapes lead with R rows.
    Every entry is computed by the model's own formulas with the operands ``costs.evaluate``
    uses, so a partition's makespan from these tables equals the environment's.
    """

    device_fwd_s: np.ndarray  # [R, K, Υ+1] compute time of δ layers on node k (forward)
    device_bwd_s: np.ndarray  # [R, K, Υ+1]
    device_energy_j: np.ndarray  # [R, K, Υ+1] forward + backward compute energy
    server_fwd_s: np.ndarray  # [R, Qn, Υ+1] server compute time of δ₀ layers (per Q: size-dependent utilization)
    server_bwd_s: np.ndarray  # [R, Qn, Υ+1]
    hop_fwd_act_s: np.ndarray  # [R, K, K] forward hop i → j with activations (sender i's power)
    hop_fwd_act_j: np.ndarray
    hop_fwd_tok_s: np.ndarray  # [R, K, K] forward hop i → j with raw tokens
    hop_fwd_tok_j: np.ndarray
    hop_bwd_s: np.ndarray  # [R, K, K] backward hop j → i (receiver j's power)
    hop_bwd_j: np.ndarray
    up_act_s: np.ndarray  # [R] uplink of the chain's output activations
    up_act_j: np.ndarray
    up_tok_s: np.ndarray  # [R] uplink of raw tokens (no device layer)
    up_tok_j: np.ndarray
    down_s: np.ndarray  # [R] downlink of the cut gradients (server power: no device energy)
    aggregation_s: np.ndarray  # [R, Υ+1] end-of-round upload of α trained layers
    aggregation_j: np.ndarray  # [R, Υ+1]
    uplink_rate_bps: np.ndarray  # [R]
    up_bits: np.ndarray  # [R] activation bits per iteration going up (b·a)
    token_bits: np.ndarray  # [R] raw-token bits per iteration (b·ℓ·32)
    aggregation_bits_per_layer: float
    micro_values: np.ndarray  # [Qn] the micro-batch counts the tables cover
    iterations: int
    overhead_s: float


@dataclass
class RowInputs:
    """Per-row system quantities (state of the row's cluster) the tables are built from."""

    sequences: np.ndarray  # [R]
    forward_flops: np.ndarray  # [R]
    backward_flops: np.ndarray  # [R]
    act_bits: np.ndarray  # [R] activation bits per sequence
    tok_bits: np.ndarray  # [R]
    device_rate: np.ndarray  # [R, K]
    device_power: np.ndarray  # [R, K]
    max_layers: np.ndarray  # [R, K]
    d2d_gain: np.ndarray  # [R, K, K]
    gain: np.ndarray  # [R, M] uplink gains to every server
    power_max: np.ndarray  # [R]
    server_peak: np.ndarray  # [R, M]
    server_power: np.ndarray  # [R, M]
    load: np.ndarray  # [R, M]


def row_inputs(config: SystemConfig, state: SystemState, rows_per_user: int) -> RowInputs:
    """Flatten the state to rows (environment, cluster, weight), cluster-major within an environment."""
    spec, wl = config.llm, config.workload

    def per_user(x: np.ndarray) -> np.ndarray:
        flat = x.reshape((-1,) + x.shape[2:])
        return np.repeat(flat, rows_per_user, axis=0)

    def per_env(x: np.ndarray) -> np.ndarray:
        n = config.num_users
        return np.repeat(np.repeat(x, n, axis=0), rows_per_user, axis=0)

    return RowInputs(
        sequences=per_user(state.batch(config)),
        forward_flops=per_user(state.forward_flops),
        backward_flops=per_user(state.backward_flops),
        act_bits=per_user(llm.activation_bits_per_sequence(spec, wl, state.seq_len)),
        tok_bits=per_user(llm.token_bits_per_sequence(wl, state.seq_len)),
        device_rate=per_user(state.device_rate_flops),
        device_power=per_user(state.device_power_w),
        max_layers=per_user(state.max_layers),
        d2d_gain=per_user(state.d2d_gain),
        gain=per_user(state.gain),
        power_max=per_user(state.power_max_w),
        server_peak=per_env(state.server_peak_flops),
        server_power=per_env(state.server_power_w),
        load=per_env(state.load),
    )


def chain_tables(config: SystemConfig, rows: RowInputs, server: np.ndarray, power: np.ndarray,
                 d2d_power: np.ndarray, bandwidth: np.ndarray, other_server_work: np.ndarray,
                 micro_values: np.ndarray) -> ChainTables:
    """Stage totals of every row for every layer count, given the row's association ``server`` [R],
    uplink ``power`` [R], ``d2d_power`` [R, K], ``bandwidth`` share [R], the server-side work of the
    other users of its server ``other_server_work`` [R] (the compute rule shares the server ∝ work)
    and the micro-batch counts ``micro_values`` [Qn]."""
    wl, radio, srv = config.workload, config.radio, config.server
    r, k = rows.device_rate.shape
    layers = config.num_layers
    counts = np.arange(layers + 1)
    b = rows.sequences
    # (δ·b)·c, as costs.evaluate forms node_work·flops
    work_units = counts[None, None, :] * b[:, None, None]
    ones = np.ones((r, k, 1))
    dev_fwd_s, dev_fwd_j = compute.compute_delay_energy(work_units * rows.forward_flops[:, None, None],
                                                        rows.device_rate[..., None], ones,
                                                        rows.device_power[..., None])
    dev_bwd_s, dev_bwd_j = compute.compute_delay_energy(work_units * rows.backward_flops[:, None, None],
                                                        rows.device_rate[..., None], ones,
                                                        rows.device_power[..., None])

    idx = np.arange(r)
    if config.split_min_local < layers:
        srv_fwd_s, srv_bwd_s = _server_tables(config, rows, server, other_server_work, micro_values)
    else:  # the encoder never leaves the chain: no server compute stage
        srv_fwd_s = srv_bwd_s = np.broadcast_to(np.zeros((r, 1, layers + 1)), (r, micro_values.size, layers + 1))

    noise = channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db)
    gain = rows.gain[idx, server]
    uplink_rate = channel.shannon_rate(srv.bandwidth_hz * bandwidth, gain, power, noise)
    up_bits = b * rows.act_bits
    token_bits = b * rows.tok_bits
    up_act_s, up_act_j = channel.transmission(up_bits, uplink_rate, power)
    up_tok_s, up_tok_j = channel.transmission(token_bits, uplink_rate, power)
    if radio.downlink:
        down_rate = channel.shannon_rate(srv.bandwidth_hz * bandwidth, gain, srv.downlink_power_w, noise)
        down_s, _ = channel.transmission(up_bits, down_rate, srv.downlink_power_w)
    else:
        down_s = np.zeros(r)
    per_layer_bits = llm.adapter_upload_bits_per_layer(config.llm, wl)
    agg_s, agg_j = channel.transmission(counts[None, :] * per_layer_bits, uplink_rate[:, None], power[:, None])

    zeros = np.zeros((r, k, k))
    fa_s, fa_j, ft_s, ft_j, bw_s, bw_j = zeros, zeros, zeros, zeros, zeros, zeros
    if k > 1:
        band = radio.d2d_bandwidth_hz / (k - 1)
        sender = d2d_power[:, :, None]
        receiver = d2d_power[:, None, :]
        rate_fwd = channel.shannon_rate(band, rows.d2d_gain, sender, noise)
        rate_bwd = channel.shannon_rate(band, rows.d2d_gain, receiver, noise)
        forward_pair = np.triu(np.ones((1, k, k)), 1)  # hops run down the chain, i < j (zero gain on the diagonal)
        fa_s, fa_j = channel.transmission(up_bits[:, None, None] * forward_pair, rate_fwd, sender)
        ft_s, ft_j = channel.transmission(token_bits[:, None, None] * forward_pair, rate_fwd, sender)
        bw_s, bw_j = channel.transmission(up_bits[:, None, None] * forward_pair, rate_bwd, receiver)
    return ChainTables(
        device_fwd_s=dev_fwd_s, device_bwd_s=dev_bwd_s, device_energy_j=dev_fwd_j + dev_bwd_j,
        server_fwd_s=srv_fwd_s, server_bwd_s=srv_bwd_s,
        hop_fwd_act_s=fa_s, hop_fwd_act_j=fa_j, hop_fwd_tok_s=ft_s, hop_fwd_tok_j=ft_j, hop_bwd_s=bw_s,
        hop_bwd_j=bw_j, up_act_s=up_act_s, up_act_j=up_act_j, up_tok_s=up_tok_s, up_tok_j=up_tok_j, down_s=down_s,
        aggregation_s=agg_s, aggregation_j=agg_j, uplink_rate_bps=uplink_rate, up_bits=up_bits,
        token_bits=token_bits, aggregation_bits_per_layer=per_layer_bits, micro_values=micro_values,
        iterations=wl.local_iterations, overhead_s=wl.overhead_s,
    )


def _server_tables(config: SystemConfig, rows: RowInputs, server: np.ndarray, other_server_work: np.ndarray,
                   micro_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Server compute time of δ₀ layers per Q, [R, Qn, Υ+1] forward and backward: a share φ of the
    capacity left by the load, φ = own work / (own + others') (the compute rule, SPEC §3.2), at
    the size-dependent utilization of one micro-batch's kernel (as in ``costs.evaluate``)."""
    srv = config.server
    r = rows.sequences.shape[0]
    counts = np.arange(config.num_layers + 1)
    b = rows.sequences
    idx = np.arange(r)
    peak = rows.server_peak[idx, server]
    q = micro_values.astype(np.float64)
    kernel = b[:, None] / q[None, :] * (rows.forward_flops + rows.backward_flops)[:, None]
    rate = compute.gpu_utilization(kernel, peak[:, None], srv.utilization, srv.saturation_seconds,
                                   srv.utilization_exponent) * peak[:, None]  # [R, Qn]
    own = counts[None, :] * b[:, None] * (rows.forward_flops + rows.backward_flops)[:, None]  # [R, Υ+1]
    total = own + other_server_work[:, None]
    phi = np.divide(own, total, out=np.zeros_like(own), where=total > 0)
    available = phi * (1.0 - rows.load[idx, server])[:, None]
    level, share = (available, 1.0) if srv.energy_model == "frequency" else (np.ones_like(available), available)
    level = level[:, None, :]
    share = share[:, None, :] if isinstance(share, np.ndarray) else share
    server_work = (counts[None, :] * b[:, None])[:, None, :]
    power_srv = rows.server_power[idx, server][:, None, None]
    fwd, _ = compute.compute_delay_energy(server_work * rows.forward_flops[:, None, None], rate[..., None], level,
                                          power_srv, share)
    bwd, _ = compute.compute_delay_energy(server_work * rows.backward_flops[:, None, None], rate[..., None], level,
                                          power_srv, share)
    return fwd, bwd


@dataclass
class ChainCost:
    """Latency and device energy of each row's partition, with its stages (stage-major, as in
    ``costs.evaluate``: K node compute, K hops by sending node, the radio link, the server)."""

    latency_s: np.ndarray  # [R]
    energy_j: np.ndarray  # [R] device energy of the cluster
    fwd_stages_s: np.ndarray  # [2K+2, R] per-iteration stage totals
    bwd_stages_s: np.ndarray  # [2K+2, R]
    fwd_stage_mb_s: np.ndarray  # [2K+2, R] per-micro-batch stage times (pipeline.stage_times)
    bwd_stage_mb_s: np.ndarray
    hop_target: np.ndarray  # [R, K] next holder of each sending node (−1: none)
    carries_act: np.ndarray  # [R, K] the node's forward hop carries activations (else tokens)
    local_layers: np.ndarray  # [R]


def chain_cost(config: SystemConfig, tables: ChainTables, split: np.ndarray, micro_index: np.ndarray) -> ChainCost:
    """Latency T_n = I·(T_fwd + T_bwd) + T_agg and device energy of each row's ``split`` [R, K+1]
    (column 0 server layers, as in ``Decision.split``) with micro-batches ``micro_values[micro_index]``.

    The makespan is :func:`mec_gym.model.pipeline.makespan` of
    :func:`mec_gym.model.pipeline.stage_times` — the environment's functions — on the same stages
    as :func:`mec_gym.model.costs.evaluate`.
    """
    r = split.shape[0]
    k = config.devices_per_user
    idx = np.arange(r)
    device = split[:, 1:]
    server_layers = split[:, 0]
    local = device.sum(axis=-1)
    q = tables.micro_values[micro_index]
    rows_k = idx[:, None]
    nodes = np.arange(k)[None, :]
    dev_f = tables.device_fwd_s[rows_k, nodes, device]
    dev_b = tables.device_bwd_s[rows_k, nodes, device]
    dev_e = tables.device_energy_j[rows_k, nodes, device].sum(axis=-1)
    srv_f = tables.server_fwd_s[idx, micro_index, server_layers]
    srv_b = tables.server_bwd_s[idx, micro_index, server_layers]

    holder = device > 0
    holder[:, 0] = True
    cumulative = np.cumsum(device, axis=-1)
    target = np.full((r, k), -1, dtype=np.int64)
    following = np.full(r, -1, dtype=np.int64)
    for node in range(k - 1, -1, -1):
        target[:, node] = following
        following = np.where(holder[:, node], node, following)
    hop = holder & (target >= 0)
    act = cumulative > 0
    tgt = np.maximum(target, 0)
    hop_f = np.where(hop, np.where(act, tables.hop_fwd_act_s[rows_k, nodes, tgt],
                                   tables.hop_fwd_tok_s[rows_k, nodes, tgt]), 0.0)
    hop_f_j = np.where(hop, np.where(act, tables.hop_fwd_act_j[rows_k, nodes, tgt],
                                     tables.hop_fwd_tok_j[rows_k, nodes, tgt]), 0.0)
    back = hop & act
    hop_b = np.where(back, tables.hop_bwd_s[rows_k, nodes, tgt], 0.0)
    hop_b_j = np.where(back, tables.hop_bwd_j[rows_k, nodes, tgt], 0.0)

    in_chain = (server_layers > 0) | config.head_on_server
    up = np.where(in_chain, np.where(local > 0, tables.up_act_s, tables.up_tok_s), 0.0)
    up_j = np.where(in_chain, np.where(local > 0, tables.up_act_j, tables.up_tok_j), 0.0)
    down = np.where(in_chain & (local > 0), tables.down_s, 0.0)
    fwd = np.concatenate([dev_f.T, hop_f.T, up[None], srv_f[None]], axis=0)
    bwd = np.concatenate([dev_b.T, hop_b.T, down[None], srv_b[None]], axis=0)
    fwd_mb = pipeline.stage_times(fwd, q, tables.overhead_s)
    bwd_mb = pipeline.stage_times(bwd, q, tables.overhead_s)
    iters = tables.iterations
    latency = iters * pipeline.makespan(fwd_mb, q) + iters * pipeline.makespan(bwd_mb, q) \
        + tables.aggregation_s[idx, local]
    energy = iters * (dev_e + hop_f_j.sum(axis=-1) + hop_b_j.sum(axis=-1) + up_j) + tables.aggregation_j[idx, local]
    active = tables.up_bits > 0
    return ChainCost(latency_s=np.where(active, latency, 0.0), energy_j=np.where(active, energy, 0.0),
                     fwd_stages_s=fwd, bwd_stages_s=bwd, fwd_stage_mb_s=fwd_mb, bwd_stage_mb_s=bwd_mb,
                     hop_target=np.where(hop, target, -1), carries_act=act, local_layers=local)


# ----------------------------------------------------------------------------- Block 1: segments


@dataclass
class Partition:
    """Block 1's result per row: the split [R, K+1] (column 0 server), the index of Q in the
    tables' ``micro_values`` and the scalarized cost w_T·T + w_E·E the DP predicts."""

    split: np.ndarray
    micro_index: np.ndarray
    cost: np.ndarray


def partition_dp(config: SystemConfig, tables: ChainTables, max_layers: np.ndarray, latency_weight: np.ndarray,
                 energy_weight: np.ndarray) -> Partition:
    """Block 1: for every micro-batch count, the contiguous partition minimizing
    w_T·T_n + w_E·E_n exactly; then the best count (notes §5.3 Block 1, "exact DP").

    T_n = I·[Σ_j τ_j + (Q−1)·max_j τ_j]_fwd + I·[…]_bwd + T_agg(α) with τ = total/Q + t₀
    (:func:`mec_gym.model.pipeline.stage_times`). The bottleneck makes the objective
    min-sum + min-max; it is made exact by enumerating what sets the maxima:

    * the **holder set** (positions with ≥ 1 layer) fixes the D2D hops, the radio link and
      their stage totals, hence the non-compute part of both maxima (F, B);
    * a **cap u** on the largest forward compute total (candidates: every position's total
      for every layer count; caps below min(F, B/ρ) all leave the maxima at (F, B), so the
      largest of them stands for all). Backward compute totals are ρ = c^B/c^F times the
      forward ones on every position, so the same node is the compute bottleneck in both
      passes, with totals u and ρu.

    For each (holder set, cap) the min-sum DP over the holders — D_i(l) = min over δ_i in
    [1, hi_i(u)] of D_{i−1}(l − δ_i) + β_i·δ_i, hi_i capped by the node's memory — has
    stage costs linear in δ (β_i: the position's weighted time and energy per layer), so
    its optimum is the exchange order: every holder gets one layer, the rest go to the
    cheapest β first up to their caps. The bound (Q−1)·(max(F, u) + max(B, ρu)) is exact at
    the optimum's own cap, so the minimum over (holder set, cap) is the optimum
    (checked against enumeration in tests/test_dssra.py).
    """
    sets = _holder_sets(config)
    k, layers = config.devices_per_user, config.num_layers
    positions = sets.positions
    r = latency_weight.shape[0]
    q = tables.micro_values.astype(np.float64)  # [Qn]
    t0, iters = tables.overhead_s, tables.iterations
    rho = tables.device_bwd_s[:, 0, 1] / np.maximum(tables.device_fwd_s[:, 0, 1], 1e-300)  # c^B/c^F per row

    # per-position affine forward total a·δ + o (devices: o = 0; server: the compute rule's offset). Only the
    # server's rate depends on Q (size-dependent utilization), so device-only chains share one cap table.
    qs = q.size if positions > k else 1
    slope = np.empty((r, qs, positions))
    offset = np.zeros((r, qs, positions))
    slope[:, :, :k] = tables.device_fwd_s[:, None, :, 1]
    memory = np.empty((r, positions), dtype=np.int64)
    memory[:, :k] = max_layers
    energy_per_layer = np.zeros((r, positions))
    energy_per_layer[:, :k] = tables.device_energy_j[:, :, 1]
    agg_time = np.zeros((r, positions))
    agg_energy = np.zeros((r, positions))
    agg_time[:, :k] = tables.aggregation_s[:, 1, None]
    agg_energy[:, :k] = tables.aggregation_j[:, 1, None]
    if positions > k:
        srv = tables.server_fwd_s
        srv_slope = (srv[:, :, layers] - srv[:, :, 1]) / (layers - 1) if layers > 1 else srv[:, :, 1]
        slope[:, :, k] = srv_slope
        offset[:, :, k] = srv[:, :, 1] - srv_slope
        memory[:, k] = layers - config.split_min_local

    # fixed stages of every holder set: hops, uplink, downlink [R, H]
    hop_f = (np.einsum("hij,rij->rh", sets.hop_fwd_act, tables.hop_fwd_act_s)
             + np.einsum("hij,rij->rh", sets.hop_fwd_tok, tables.hop_fwd_tok_s))
    hop_b = np.einsum("hij,rij->rh", sets.hop_bwd, tables.hop_bwd_s)
    up = sets.uplink_act[None, :] * tables.up_act_s[:, None] + sets.uplink_tok[None, :] * tables.up_tok_s[:, None]
    down = sets.downlink[None, :] * tables.down_s[:, None]
    fixed_sum = hop_f + up + hop_b + down
    per_hop_f = (sets.hop_fwd_act[None] * tables.hop_fwd_act_s[:, None] + sets.hop_fwd_tok[None]
                 * tables.hop_fwd_tok_s[:, None])  # [R, H, K, K]
    per_hop_b = sets.hop_bwd[None] * tables.hop_bwd_s[:, None]
    fixed_f_max = np.maximum(per_hop_f.max(axis=(-1, -2)), up)
    fixed_b_max = np.maximum(per_hop_b.max(axis=(-1, -2)), down)
    fixed_count = ((per_hop_f > 0).sum(axis=(-1, -2)) + (per_hop_b > 0).sum(axis=(-1, -2)) + (up > 0) + (down > 0))
    fixed_energy = (np.einsum("hij,rij->rh", sets.hop_fwd_act, tables.hop_fwd_act_j)
                    + np.einsum("hij,rij->rh", sets.hop_fwd_tok, tables.hop_fwd_tok_j)
                    + np.einsum("hij,rij->rh", sets.hop_bwd, tables.hop_bwd_j)
                    + sets.uplink_act[None, :] * tables.up_act_j[:, None]
                    + sets.uplink_tok[None, :] * tables.up_tok_j[:, None])

    # cap candidates x: one "low" cap per holder set, then every (set, position, layers) combination
    # rho = 0 for a row without sequences this round (empty data queue): the division gives inf, or NaN for 0/0,
    # and NaN caps fail the `useful` tests below
    with np.errstate(divide="ignore", invalid="ignore"):
        low_cap = np.minimum(fixed_f_max, fixed_b_max / rho[:, None])  # [R, H]
    n_sets = sets.mask.shape[0]
    cand_set = np.concatenate([np.arange(n_sets), sets.combo_set])
    combo_cap = slope[:, :, sets.combo_pos] * sets.combo_layers + offset[:, :, sets.combo_pos]  # [R, Qs, C]
    cap = np.concatenate([np.broadcast_to(low_cap[:, None, :], (r, qs, n_sets)), combo_cap], axis=-1)
    useful = np.concatenate([np.broadcast_to(low_cap[:, None, :] > 0, (r, qs, n_sets)),
                             combo_cap > low_cap[:, None, sets.combo_set]], axis=-1)  # [R, Qs, X]
    mask = sets.mask[cand_set]  # [X, P]

    # layers each position may take under the cap (and its memory); holders take at least one
    with np.errstate(divide="ignore", invalid="ignore"):
        by_cap = np.floor((cap[..., None] - offset[:, :, None, :]) / slope[:, :, None, :] * (1.0 + 1e-12) + 1e-9)
    by_cap = np.where(np.isfinite(by_cap), by_cap, layers)
    hi = np.where(mask, np.minimum(np.clip(by_cap, 0, layers), memory[:, None, None, :]), 0).astype(np.int64)
    feasible = useful & (hi >= mask).all(axis=-1) & (hi.sum(axis=-1) >= layers)

    # only the feasible, useful (row, cap) entries go on, each with every Q (or its own Q with a server)
    ri, qsi, xi = np.nonzero(feasible)
    if not np.array_equal(np.unique(ri), np.arange(r)):
        raise ValueError("partition_dp: a row has no memory-feasible partition")
    q_index = np.broadcast_to(np.arange(q.size), (ri.size, q.size)) if qs == 1 else qsi[:, None]
    set_e = cand_set[xi]
    mask_e = mask[xi]  # [F, P]
    hi_e = hi[ri, qsi, xi]
    lo_e = mask_e.astype(np.int64)
    slope_e, offset_e = slope[ri, qsi], offset[ri, qsi]

    # exchange order of the linear min-sum DP: cheapest weighted time + energy per layer first
    wt, we = latency_weight[ri][:, None], energy_weight[ri][:, None]
    qq = q[q_index]  # [F, Qe]
    rho_e = rho[ri][:, None]
    beta = (wt[..., None] * (iters * (1.0 + rho_e[..., None]) * slope_e[:, None, :] / qq[..., None]
                             + agg_time[ri][:, None, :])
            + we[..., None] * (iters * energy_per_layer[ri][:, None, :] + agg_energy[ri][:, None, :]))  # [F, Qe, P]
    order = np.argsort(beta, axis=-1, kind="stable")
    lo_sorted = np.take_along_axis(np.broadcast_to(lo_e[:, None, :], beta.shape), order, axis=-1)
    room = np.take_along_axis(np.broadcast_to(hi_e[:, None, :], beta.shape), order, axis=-1) - lo_sorted
    before = np.cumsum(room, axis=-1) - room
    need = layers - lo_e.sum(axis=-1)
    placed_sorted = lo_sorted + np.clip(need[:, None, None] - before, 0, room)
    placed = np.empty_like(placed_sorted)
    np.put_along_axis(placed, order, placed_sorted, axis=-1)

    # exact cost of each candidate under its cap bound
    cap_e = cap[ri, qsi, xi][:, None]
    layers_sum = (slope_e[:, None, :] * placed).sum(axis=-1) + (offset_e * mask_e).sum(axis=-1)[:, None]
    f_max = np.maximum(fixed_f_max[ri, set_e][:, None], cap_e)
    b_max = np.maximum(fixed_b_max[ri, set_e][:, None], rho_e * cap_e)
    sums = fixed_sum[ri, set_e][:, None] + (1.0 + rho_e) * layers_sum
    count = (fixed_count[ri, set_e] + 2 * mask_e.sum(axis=-1))[:, None]
    per_iteration = sums / qq + count * t0 + (qq - 1.0) * ((f_max + b_max) / qq + 2.0 * t0)
    local = placed[..., :k].sum(axis=-1)
    rows2 = ri[:, None]
    latency = iters * per_iteration + tables.aggregation_s[rows2, local]
    energy = (iters * ((energy_per_layer[ri][:, None, :] * placed).sum(axis=-1) + fixed_energy[ri, set_e][:, None])
              + tables.aggregation_j[rows2, local])
    cost = (wt * latency + we * energy).ravel()  # [F·Qe]

    # per row, the cheapest entry (rows are sorted in ri; lexsort puts each row's minimum first)
    row_of = np.repeat(ri, qq.shape[1])
    ranked = np.lexsort((cost, row_of))
    first = ranked[np.r_[0, np.flatnonzero(np.diff(row_of[ranked])) + 1]]
    entry, qe = np.divmod(first, qq.shape[1])
    chosen = placed[entry, qe]  # [R, P]
    split = np.zeros((r, k + 1), dtype=np.int64)
    split[:, 1:] = chosen[:, :k]
    split[:, 0] = chosen[:, k] if positions > k else 0
    return Partition(split=split, micro_index=q_index[entry, qe], cost=cost[first])


# ----------------------------------------------------------------------------- Block 2: powers


def lambert_power(gamma: np.ndarray, latency_coef: np.ndarray, energy_coef: np.ndarray, power_min: np.ndarray,
                  power_max: np.ndarray) -> np.ndarray:
    """Block 2: argmin over p in [p_min, p_max] of (A + C·p)/log2(1 + γp) (notes §5.3 Block 2).

    A = ``latency_coef`` ≥ 0 (latency weight × bits), C = ``energy_coef`` ≥ 0 (energy weight ×
    bits), γ = gain/(noise PSD × bandwidth). The numerator of the derivative,
    C·ln(1+γp) − γ(A + Cp)/(1+γp), increases from −γA, so the term is unimodal and its
    stationary point solves x(ln x − 1) = c with x = 1 + γp, c = γA/C − 1:
    x = exp(1 + W₀(c/e)) (= c/W₀(c/e) for c ≠ 0, used for large c to avoid overflow).
    With C = 0 (no energy price) the minimizer is p_max.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = gamma * latency_coef / energy_coef - 1.0
        # c ≥ −1; at the branch point z = −1/e (A = 0) W₀ = −1, which scipy returns as nan
        z = np.where(np.isfinite(c), c, 0.0) / math.e
        at_branch = z <= -1.0 / math.e + 1e-15
        w = np.where(at_branch, -1.0, special.lambertw(np.where(at_branch, 0.0, z)).real)
        x = np.where(np.abs(c) < 1.0, np.exp(1.0 + w), c / w)
        p = (x - 1.0) / gamma
    p = np.where((energy_coef > 0) & np.isfinite(c) & np.isfinite(p), p, power_max)
    return np.clip(p, power_min, power_max)


def link_term(power: np.ndarray, gamma: np.ndarray, latency_coef: np.ndarray, energy_coef: np.ndarray) -> np.ndarray:
    """(A + C·p)/log2(1 + γp): a link's weighted latency + energy per Hz of bandwidth (inf at γp = 0)."""
    with np.errstate(divide="ignore"):
        return (latency_coef + energy_coef * power) / (np.log1p(gamma * power) / LN2)


def _golden_min(f: Any, low: np.ndarray, high: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Vectorized golden-section search of a function unimodal on each [low, high] (one new
    evaluation per iteration; the bracket shrinks to 0.618^iterations of its width)."""
    a, b = low.copy(), high.copy()
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        left = fc < fd  # the minimum lies in [a, d]: d ← c, evaluate a new c
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        inner = np.where(left, c, d)
        f_inner = np.where(left, fc, fd)
        probe = np.where(left, b - _GOLDEN * (b - a), a + _GOLDEN * (b - a))
        f_probe = f(probe)
        c, fc = np.where(left, probe, inner), np.where(left, f_probe, f_inner)
        d, fd = np.where(left, inner, probe), np.where(left, f_inner, f_probe)
    return (a + b) / 2.0


def _stage_weight(stage_mb: np.ndarray, index: int | np.ndarray, micro: np.ndarray, iterations: int) -> np.ndarray:
    """Latency per second of a stage's total: I/Q, plus I(Q−1)/Q when it is its pass's bottleneck."""
    r = stage_mb.shape[1]
    value = stage_mb[index, np.arange(r)] if np.ndim(index) else stage_mb[index]
    bottleneck = (value >= stage_mb.max(axis=0)) & (value > 0)
    return iterations * (1.0 + (micro - 1.0) * bottleneck) / micro


def block2_powers(config: SystemConfig, tables: ChainTables, cost: ChainCost, rows: RowInputs, server: np.ndarray,
                  bandwidth: np.ndarray, d2d_power: np.ndarray, micro_index: np.ndarray,
                  latency_weight: np.ndarray, energy_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block 2: uplink power in closed form, D2D powers per node (closed form per link, golden
    section between the two links' optima of a node that sends on both), for fixed partitions."""
    radio, srv = config.radio, config.server
    r, k = d2d_power.shape
    idx = np.arange(r)
    q = tables.micro_values[micro_index].astype(np.float64)
    iters = tables.iterations
    noise = channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db)
    p_min = np.full(r, radio.power_min_w)

    # uplink: the chain's output (a forward stage) and the aggregation upload share the link
    up_index = 2 * k
    weight_up = _stage_weight(cost.fwd_stage_mb_s, up_index, q, iters)
    in_chain = cost.fwd_stages_s[up_index] > 0
    up_bits = np.where(in_chain, np.where(cost.local_layers > 0, tables.up_bits, tables.token_bits), 0.0)
    agg_bits = cost.local_layers * tables.aggregation_bits_per_layer
    band = srv.bandwidth_hz * bandwidth
    gamma = rows.gain[idx, server] / (noise * band)
    uplink = lambert_power(gamma, latency_weight * (agg_bits + weight_up * up_bits),
                           energy_weight * (agg_bits + iters * up_bits), p_min, rows.power_max)

    if k == 1:
        return uplink, d2d_power
    d2d_band = radio.d2d_bandwidth_hz / (k - 1)
    target = cost.hop_target
    has_fwd = target >= 0
    tgt = np.maximum(target, 0)
    gain_fwd = rows.d2d_gain[idx[:, None], np.arange(k)[None, :], tgt]
    bits_fwd = np.where(cost.carries_act, tables.up_bits[:, None], tables.token_bits[:, None])
    w_fwd = np.stack([_stage_weight(cost.fwd_stage_mb_s, k + node, q, iters) for node in range(k)], axis=-1)
    # the backward hop of sender i is sent by its target j with j's power
    has_bwd = np.zeros((r, k), dtype=bool)
    gain_bwd = np.ones((r, k))
    w_bwd = np.zeros((r, k))
    for node in range(k):
        sends_back = has_fwd[:, node] & cost.carries_act[:, node]
        j = tgt[:, node]
        has_bwd[idx[sends_back], j[sends_back]] = True
        gain_bwd[idx[sends_back], j[sends_back]] = gain_fwd[sends_back, node]
        w_bwd[idx[sends_back], j[sends_back]] = _stage_weight(cost.bwd_stage_mb_s, k + node, q, iters)[sends_back]
    lw, ew = latency_weight[:, None], energy_weight[:, None]
    g_f, g_b = gain_fwd / (noise * d2d_band), gain_bwd / (noise * d2d_band)
    a_f = lw * w_fwd * bits_fwd
    c_f = ew * iters * bits_fwd
    a_b = lw * w_bwd * tables.up_bits[:, None]
    c_b = ew * iters * tables.up_bits[:, None]
    lo, hi = np.full((r, k), radio.power_min_w), np.full((r, k), radio.d2d_power_max_w)
    p_f = lambert_power(g_f, a_f, c_f, lo, hi)
    p_b = lambert_power(g_b, a_b, c_b, lo, hi)

    def node_term(p: np.ndarray) -> np.ndarray:
        return (np.where(has_fwd, link_term(p, g_f, a_f, c_f), 0.0)
                + np.where(has_bwd, link_term(p, g_b, a_b, c_b), 0.0))

    both = has_fwd & has_bwd
    p_both = _golden_min(node_term, np.minimum(p_f, p_b), np.maximum(p_f, p_b))
    d2d = np.where(both, p_both, np.where(has_fwd, p_f, np.where(has_bwd, p_b, d2d_power)))
    return uplink, d2d


# ----------------------------------------------------------------------------- Block 3: bandwidth


def share_bandwidth(config: SystemConfig, shares: np.ndarray, latency: np.ndarray, energy: np.ndarray,
                    server: np.ndarray, active: np.ndarray, weights: np.ndarray,
                    energy_price: np.ndarray) -> np.ndarray:
    """Block 3: bandwidth shares [B, N] among the users of each base station.

    ``latency`` and ``energy`` [B, N, G] are every user's values at the increasing grid of
    bandwidth ``shares`` [G], everything else fixed (latency decreases with the share).
    ``delay_aggregate = "max"``: bisection on the round deadline τ — each user's smallest
    share meeting τ, the smallest τ whose shares fit every band (min-max latency). Otherwise
    KKT: minimize Σ weight·T + price·E with Σ share ≤ 1 per server; each user's share is where
    its marginal gain −f′ falls to the multiplier λ (f convex), and λ is found by bisection.
    The band left over is handed out in proportion (more band never slows a link).
    """
    b, n = server.shape
    m = config.num_servers
    lat = np.where(active[..., None], latency, 0.0)
    en = np.where(active[..., None], energy, 0.0)
    onehot = (server[..., None] == np.arange(m)) & active[..., None]  # [B, N, M]
    if config.delay_aggregate == "max":
        low = np.where(active, lat[..., -1], 0.0).max(axis=1)  # [B] everyone at the full band: below any deadline
        high = np.where(active, lat[..., 0], 0.0).max(axis=1)
        for _ in range(24):
            tau = 0.5 * (low + high)
            need = _share_for_deadline(shares, lat, tau[:, None])  # [B, N]
            load = np.einsum("bn,bnm->bm", np.where(active, need, 0.0), onehot)
            fits = (load <= 1.0 + 1e-12).all(axis=-1)
            high = np.where(fits, tau, high)
            low = np.where(fits, low, tau)
        need = np.where(active, _share_for_deadline(shares, lat, high[:, None]), 0.0)
    else:
        f = weights[..., None] * lat + energy_price[..., None] * en
        slope = -np.diff(f, axis=-1) / np.diff(shares)  # marginal gain between grid points [B, N, G-1]
        low_l = np.zeros(b)
        high_l = np.where(active[..., None], slope, 0.0).max(axis=(1, 2)) + 1.0
        for _ in range(24):
            lam = 0.5 * (low_l + high_l)
            need = _share_for_marginal(shares, slope, lam[:, None])
            load = np.einsum("bn,bnm->bm", np.where(active, need, 0.0), onehot)
            over = (load > 1.0).any(axis=-1)
            low_l = np.where(over, lam, low_l)
            high_l = np.where(over, high_l, lam)
        need = np.where(active, _share_for_marginal(shares, slope, high_l[:, None]), 0.0)
    # the band left after the deadline (or KKT) shares goes out in proportion: more band never hurts
    load = np.einsum("bn,bnm->bm", need, onehot)
    user_load = np.einsum("bm,bnm->bn", load, onehot)
    return np.where(active, np.divide(need, user_load, out=np.zeros_like(need), where=user_load > 0), 0.0)


def _share_for_deadline(shares: np.ndarray, latency: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Smallest share whose latency meets ``tau``: latency decreases with the share; between the
    two grid points around ``tau`` it is interpolated linearly in log(share) (the latency is
    convex in it, so the interpolated share still meets ``tau``). 2.0 when even the whole band
    cannot meet ``tau``."""
    meets = latency <= tau[..., None]
    first = np.argmax(meets, axis=-1)
    below = np.maximum(first - 1, 0)
    flat = latency.reshape(-1, latency.shape[-1])
    rows = np.arange(flat.shape[0])
    lat_lo = flat[rows, below.ravel()].reshape(first.shape)  # latency at the smaller share
    lat_hi = flat[rows, first.ravel()].reshape(first.shape)
    log_shares = np.log(shares)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.clip((lat_lo - tau) / (lat_lo - lat_hi), 0.0, 1.0)
    log_share = log_shares[below] + fraction * (log_shares[first] - log_shares[below])
    share = np.where((first > 0) & np.isfinite(log_share), np.exp(log_share), shares[first])
    return np.where(meets.any(axis=-1), share, 2.0)


def _share_for_marginal(shares: np.ndarray, slope: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Share where the marginal gain −f′ falls to ``lam``: the gains between grid points decrease
    (f convex) and sit at the intervals' geometric midpoints; interpolated linearly in log(share)."""
    log_mid = 0.5 * (np.log(shares[:-1]) + np.log(shares[1:]))
    below = slope < lam[..., None]
    first = np.argmax(below, axis=-1)  # first interval whose gain is under lam
    flat = slope.reshape(-1, slope.shape[-1])
    rows = np.arange(flat.shape[0])
    prev = np.maximum(first - 1, 0)
    s_hi = flat[rows, prev.ravel()].reshape(first.shape)
    s_lo = flat[rows, first.ravel()].reshape(first.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.clip((s_hi - lam) / (s_hi - s_lo), 0.0, 1.0)
    log_share = log_mid[prev] + fraction * (log_mid[first] - log_mid[prev])
    share = np.where(first > 0, np.exp(np.where(np.isfinite(log_share), log_share, log_mid[prev])), shares[0])
    return np.where(below.any(axis=-1), share, shares[-1])


# ----------------------------------------------------------------------------- the policy


class DSSRA(Policy):
    """[CP25] DSSRA: Lyapunov drift-plus-penalty per round (module docstring for the algorithm).

    Args:
        V: Lyapunov weight of the latency, J²/s (``math.inf``: latency only). Larger V: lower
            latency, longer queues (slower convergence of the energy to the budget).
        latency_weights: the grid θ of per-cluster latency weights θ·V (θ = 0: energy first)
            over which the max-coupled clusters are scalarized; must contain 1.
        max_iterations: alternations of Blocks 1-3 per round.
        tolerance: stop when the per-round objective improves by less than this fraction.
        tie_break_s_per_j: the value of 1 J in seconds of latency when queues are empty, so
            that ties in the latency go to the lower energy (not a trade-off: 1 µs per J).
        bandwidth_grid: points of the geometric share grid (1e-3 .. 1) Block 3 inverts.
        association_moves: most single-user moves of Block 0's steepest descent per round.
        max_layers_share: optional cap on the fraction of the model's layers one device may hold,
            on top of its memory ([CP25]'s premise that no single device holds the model; ``None``:
            memory only). Checked against the chain at ``reset``/``bind``.
    """

    name: ClassVar[str] = "dssra"

    def __init__(self, V: float = 100.0, latency_weights: tuple[float, ...] = (1.0, 1 / 8, 1 / 64, 1 / 512, 0.0),
                 max_iterations: int = 4, tolerance: float = 1e-6, tie_break_s_per_j: float = 1e-6,
                 bandwidth_grid: int = 40, association_moves: int = 8, max_layers_share: float | None = None) -> None:
        super().__init__()
        if not (V > 0):
            raise ValueError(f"V: must be > 0 (math.inf for latency only), got {V!r}")
        if 1.0 not in latency_weights or any(not 0.0 <= w <= 1.0 for w in latency_weights):
            raise ValueError(f"latency_weights: fractions of V in [0, 1] including 1, got {latency_weights!r}")
        if max_iterations < 1:
            raise ValueError(f"max_iterations: must be >= 1, got {max_iterations!r}")
        if max_layers_share is not None and not 0.0 < max_layers_share <= 1.0:
            raise ValueError(f"max_layers_share: must lie in (0, 1] or be None, got {max_layers_share!r}")
        self.V = float(V)
        self.latency_weights = tuple(float(w) for w in latency_weights)
        self.max_iterations = int(max_iterations)
        self.tolerance = float(tolerance)
        self.tie_break = float(tie_break_s_per_j)
        self.bandwidth_grid = int(bandwidth_grid)
        self.association_moves = int(association_moves)
        self.max_layers_share = max_layers_share
        self._fallback = UniformPipelinePolicy()
        self.last: dict[str, np.ndarray] = {}

    # -- lifecycle
    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        self._prepare()

    def bind(self, config: SystemConfig, seed: int | None = None) -> None:
        super().bind(config, seed)
        self._prepare()

    def _prepare(self) -> None:
        config = self._require_config()
        if self.max_layers_share is not None:
            cap = self._layer_cap(config)
            if cap * config.devices_per_user < config.split_min_local:
                raise ValueError(f"max_layers_share: {self.max_layers_share} lets {config.devices_per_user} devices "
                                 f"hold {cap} layers each, fewer than split_min_local = {config.split_min_local}")
        self._fallback.bind(config)
        self._clear_stats()

    def _layer_cap(self, config: SystemConfig) -> int:
        share = 1.0 if self.max_layers_share is None else self.max_layers_share
        return int(math.floor(share * config.num_layers + 1e-9))

    def _clear_stats(self) -> None:
        self.stats = {"decisions": 0, "solve_time_s": 0.0, "solve_time_s_total": 0.0, "iterations": 0,
                      "fallbacks": 0}

    # -- the per-round problem
    def decide(self, state: SystemState) -> Decision:
        config = self._require_config()
        start = time.perf_counter()
        try:
            decision, iterations = self._solve(config, state)
        except (ValueError, FloatingPointError, IndexError):
            decision, iterations = None, 0
        if decision is None:
            self.stats["fallbacks"] += 1
            decision = self._fallback.decide(state)
        elapsed = time.perf_counter() - start
        self.stats["decisions"] += 1
        self.stats["solve_time_s"] = elapsed
        self.stats["solve_time_s_total"] += elapsed
        self.stats["iterations"] += iterations
        return restrict_to_controls(config, decision)

    def objective(self, config: SystemConfig, latency_s: np.ndarray, energy_j: np.ndarray,
                  queue_j: np.ndarray) -> np.ndarray:
        """Per-round drift-plus-penalty divided by V: latency(t) + Σ_n (Z_n/V + tie-break)·E_n, [B]."""
        return costs.aggregate_delay(config, latency_s) + (self._energy_price(queue_j) * energy_j).sum(axis=-1)

    def _energy_price(self, queue_j: np.ndarray) -> np.ndarray:
        scaled = queue_j / self.V if math.isfinite(self.V) else np.zeros_like(queue_j)
        return scaled + self.tie_break

    def _solve(self, config: SystemConfig, state: SystemState) -> tuple[Decision | None, int]:
        b, n = state.data_queue.shape
        k = config.devices_per_user
        g = len(self.latency_weights)
        controls = set(config.controls)
        rules = decision_model.complete(config, state, Decision())
        rows = row_inputs(config, state, g)
        active_user = state.batch(config) > 0

        server = self._associate(config, state, rules.server, rows) if "server" in controls else rules.server
        bandwidth = (_equal_shares(server, config.num_servers) if "bandwidth" in controls
                     else decision_model.complete(config, state, Decision(server=server)).bandwidth)
        micro_values = (np.arange(1, config.workload.max_microbatches + 1) if "microbatches" in controls
                        else np.array([config.workload.microbatches]))
        power = np.repeat(state.power_max_w.reshape(-1), g)  # the rules' p_max until Block 2 moves them
        d2d = np.full((b * n * g, k), config.radio.d2d_power_max_w)

        price = self._energy_price(state.energy_queue)  # [B, N]
        theta = np.asarray(self.latency_weights)
        energy_first = theta == 0.0
        latency_weight = np.tile(np.where(energy_first, 1e-6, theta), b * n)
        energy_weight = np.where(np.tile(energy_first, b * n), 1.0, np.repeat(price.reshape(-1), g))

        split_rows = np.repeat(rules.split.reshape(b * n, -1), g, axis=0)
        micro_rows = np.zeros(b * n * g, dtype=np.int64)
        best_phi = np.full(b, np.inf)
        best: dict[str, np.ndarray] | None = None
        iterations = 0
        for _ in range(self.max_iterations):
            iterations += 1
            other = self._other_server_work(config, state, server, split_rows, g)
            share_rows = np.repeat(bandwidth.reshape(-1), g)
            server_rows = np.repeat(server.reshape(-1), g)
            tables = chain_tables(config, rows, server_rows, power, d2d, share_rows, other, micro_values)
            if "split" in controls:
                part = partition_dp(config, tables, np.minimum(rows.max_layers, self._layer_cap(config)),
                                    latency_weight, energy_weight)
                split_rows, micro_rows = part.split, part.micro_index
            elif "microbatches" in controls:  # Q alone, for the rule's split
                micro_rows = self._best_micro(config, tables, split_rows, latency_weight, energy_weight).micro_index
            cost = chain_cost(config, tables, split_rows, micro_rows)
            if "power" in controls:
                new_power, new_d2d = block2_powers(config, tables, cost, rows, server_rows, share_rows, d2d,
                                                   micro_rows, latency_weight, energy_weight)
                trial = chain_tables(config, rows, server_rows, new_power, new_d2d, share_rows, other, micro_values)
                trial_cost = chain_cost(config, trial, split_rows, micro_rows)
                before = latency_weight * cost.latency_s + energy_weight * cost.energy_j
                after = latency_weight * trial_cost.latency_s + energy_weight * trial_cost.energy_j
                better = after <= before
                power = np.where(better, new_power, power)
                d2d = np.where(better[:, None], new_d2d, d2d)
                tables = chain_tables(config, rows, server_rows, power, d2d, share_rows, other, micro_values)
                cost = chain_cost(config, tables, split_rows, micro_rows)
            latency = cost.latency_s.reshape(b, n, g)
            energy = cost.energy_j.reshape(b, n, g)
            choice, phi = self._select(config, latency, energy, price, active_user)
            pick = (np.arange(b * n) * g + choice.reshape(-1))
            candidate = {"split": split_rows[pick].reshape(b, n, -1),
                         "micro": micro_values[micro_rows[pick]].reshape(b, n),
                         "power": power[pick].reshape(b, n), "d2d": d2d[pick].reshape(b, n, k),
                         "bandwidth": bandwidth.copy(), "server": server.copy()}
            if "bandwidth" in controls and self._shared(server, active_user, config.num_servers):
                bandwidth, phi = self._block3(config, state, rows, candidate, pick, micro_values,
                                              micro_rows[pick], price, active_user, phi)
                candidate["bandwidth"] = bandwidth.copy()
            improved = phi < best_phi * (1.0 - self.tolerance)
            if best is None:
                best, best_phi = candidate, phi
            else:
                for key in best:
                    shape = (-1,) + (1,) * (best[key].ndim - 1)
                    best[key] = np.where(improved.reshape(shape), candidate[key], best[key])
                best_phi = np.where(improved, phi, best_phi)
            if not improved.any() and iterations > 1:
                break

        decision = Decision(split=best["split"], server=best["server"], power=best["power"],
                            d2d_power=best["d2d"] if k > 1 else np.zeros((b, n, 0)),
                            bandwidth=best["bandwidth"], microbatches=best["micro"].astype(np.int64))
        decision = restrict_to_controls(config, decision)
        complete = decision_model.complete(config, state, decision)
        metrics = costs.evaluate(config, state, complete)
        phi = self.objective(config, metrics.latency_s, metrics.energy_device_j, state.energy_queue)
        if not np.all(np.isfinite(phi)):
            return None, iterations
        self.last = {"objective": phi, "predicted_objective": best_phi, "latency_s": metrics.latency_s,
                     "energy_j": metrics.energy_device_j}
        return decision, iterations

    # -- helpers of the blocks
    def _select(self, config: SystemConfig, latency: np.ndarray, energy: np.ndarray, price: np.ndarray,
                active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact choice among each cluster's candidates [B, N, G]: returns (index [B, N], objective [B])."""
        b, n, g = latency.shape
        weighted = price[..., None] * energy
        if config.delay_aggregate != "max":
            scale = 1.0 / n if config.delay_aggregate == "mean" else 1.0
            total = scale * latency + weighted
            choice = np.argmin(total, axis=-1)
        else:
            deadlines = latency.reshape(b, 1, 1, n * g)  # every candidate latency is a deadline
            meets = latency[..., None] <= deadlines * (1.0 + 1e-12)  # [B, N, G, D]
            options = np.where(meets, weighted[..., None] + 1e-12 * latency[..., None], np.inf)
            per_user = options.min(axis=2)  # [B, N, D]
            per_user = np.where(active[..., None], per_user, 0.0)
            phi = deadlines[:, 0, 0, :] + per_user.sum(axis=1)  # [B, D]
            d = np.argmin(phi, axis=-1)
            choice = np.argmin(options[np.arange(b), :, :, d], axis=-1)
        picked_latency = np.take_along_axis(latency, choice[..., None], axis=-1)[..., 0]
        picked_energy = np.take_along_axis(energy, choice[..., None], axis=-1)[..., 0]
        phi = costs.aggregate_delay(config, picked_latency) + (price * picked_energy).sum(axis=-1)
        return choice, phi

    def _best_micro(self, config: SystemConfig, tables: ChainTables, split_rows: np.ndarray,
                    latency_weight: np.ndarray, energy_weight: np.ndarray) -> Partition:
        """Best Q for a fixed split (micro-batches controlled, split not)."""
        costs_q = []
        for index in range(tables.micro_values.size):
            c = chain_cost(config, tables, split_rows, np.full(split_rows.shape[0], index))
            costs_q.append(latency_weight * c.latency_s + energy_weight * c.energy_j)
        stacked = np.stack(costs_q, axis=-1)
        best = np.argmin(stacked, axis=-1)
        return Partition(split=split_rows, micro_index=best, cost=stacked[np.arange(best.size), best])

    @staticmethod
    def _shared(server: np.ndarray, active: np.ndarray, num_servers: int) -> bool:
        return bool((server_totals(active.astype(np.float64), server, num_servers) > 1).any())

    def _other_server_work(self, config: SystemConfig, state: SystemState, server: np.ndarray,
                           split_rows: np.ndarray, g: int) -> np.ndarray:
        """Server-side work of the other users of each row's server (the compute rule's φ), [R]."""
        b, n = server.shape
        work = (split_rows.reshape(b, n, g, -1)[:, :, 0, 0] * state.batch(config)
                * (state.forward_flops + state.backward_flops))
        per_server = server_totals(work, server, config.num_servers)
        others = per_server[np.arange(b)[:, None], server] - work
        return np.repeat(np.maximum(others, 0.0).reshape(-1), g)

    def _associate(self, config: SystemConfig, state: SystemState, nearest: np.ndarray, rows: RowInputs) -> np.ndarray:
        """Block 0: local search on the min-max (or sum) upload time at p_max, equal band shares,
        from the nearest server; respects ``server.capacity``."""
        b, n = nearest.shape
        m = config.num_servers
        radio, srv, wl = config.radio, config.server, config.workload
        noise = channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db)
        spec = config.llm
        bits = (wl.local_iterations * state.batch(config) * llm.activation_bits_per_sequence(spec, wl, state.seq_len)
                + config.num_layers * llm.adapter_upload_bits_per_layer(spec, wl))  # [B, N]
        capacity = srv.capacity or n
        rows_b = np.arange(b)[:, None]

        def score(assign: np.ndarray) -> np.ndarray:  # assign [B, S, N] -> [B, S]
            onehot = assign[..., None] == np.arange(m)
            count = np.take_along_axis(onehot.sum(axis=2), assign, axis=-1)
            gain = np.take_along_axis(state.gain[:, None], assign[..., None], axis=-1)[..., 0]
            rate = channel.shannon_rate(srv.bandwidth_hz / count, gain, state.power_max_w[:, None], noise)
            t = bits[:, None] / rate
            value = costs.aggregate_delay(config, t) + 1e-9 * t.sum(axis=-1)
            return np.where((onehot.sum(axis=2) <= capacity).all(axis=-1), value, np.inf)

        server = nearest.copy()
        current = score(server[:, None])[:, 0]
        user_of = np.repeat(np.arange(n), m)
        target_of = np.tile(np.arange(m), n)
        for _ in range(self.association_moves):  # steepest descent over single moves
            trials = np.repeat(server[:, None], n * m, axis=1)
            trials[:, np.arange(n * m), user_of] = target_of
            values = score(trials)
            best = np.argmin(values, axis=-1)
            better = values[rows_b[:, 0], best] < current * (1.0 - 1e-12)
            if not better.any():
                break
            server = np.where(better[:, None], trials[rows_b[:, 0], best], server)
            current = np.where(better, values[rows_b[:, 0], best], current)
        return server

    def _block3(self, config: SystemConfig, state: SystemState, rows: RowInputs, chosen: dict[str, np.ndarray],
                pick: np.ndarray, micro_values: np.ndarray, micro_index: np.ndarray, price: np.ndarray,
                active: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Block 3 on the chosen candidates; kept only where it lowers the per-round objective."""
        b, n = chosen["server"].shape
        k = config.devices_per_user
        sub = _take_rows(rows, pick)
        server_rows = chosen["server"].reshape(-1)
        split_rows = chosen["split"].reshape(b * n, -1)
        other = self._other_server_work(config, state, chosen["server"], split_rows, 1)

        def cost_at(share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Latency and energy [B·N, G] of the chosen candidates at each column's share [B·N, G]."""
            g = share.shape[1]
            t = chain_tables(config, _take_rows(sub, np.repeat(np.arange(b * n), g)), np.repeat(server_rows, g),
                             np.repeat(chosen["power"].reshape(-1), g),
                             np.repeat(chosen["d2d"].reshape(-1, k), g, axis=0), share.reshape(-1),
                             np.repeat(other, g), micro_values)
            c = chain_cost(config, t, np.repeat(split_rows, g, axis=0), np.repeat(micro_index, g))
            return c.latency_s.reshape(b * n, g), c.energy_j.reshape(b * n, g)

        grid = np.geomspace(1e-3, 1.0, self.bandwidth_grid)
        lat, en = cost_at(np.broadcast_to(grid, (b * n, grid.size)))
        weights = np.full((b, n), 1.0 / n if config.delay_aggregate == "mean" else 1.0)
        shares = share_bandwidth(config, grid, lat.reshape(b, n, -1), en.reshape(b, n, -1), chosen["server"],
                                 active, weights, price)
        latency, energy = cost_at(np.where(active, shares, chosen["bandwidth"]).reshape(-1, 1))
        latency, energy = latency.reshape(b, n), energy.reshape(b, n)
        new_phi = costs.aggregate_delay(config, latency) + (price * energy).sum(axis=-1)
        keep = new_phi < phi
        bandwidth = np.where(keep[:, None] & active, shares, chosen["bandwidth"])
        return bandwidth, np.where(keep, new_phi, phi)


class DSSRALatencyOnly(DSSRA):
    """DSSRA with V → ∞ ([CP25]'s latency-optimal reference): the energy queues are ignored; only
    the tie-break toward lower energy at equal latency remains. Same arguments as :class:`DSSRA`
    except ``V``."""

    name: ClassVar[str] = "dssra_latency_only"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("V", None)
        super().__init__(V=math.inf, **kwargs)


def _equal_shares(server: np.ndarray, num_servers: int) -> np.ndarray:
    count = server_totals(np.ones(server.shape), server, num_servers)
    return 1.0 / count[np.arange(server.shape[0])[:, None], server]


def _take_rows(rows: RowInputs, pick: np.ndarray) -> RowInputs:
    return RowInputs(**{name: getattr(rows, name)[pick] for name in RowInputs.__dataclass_fields__})
