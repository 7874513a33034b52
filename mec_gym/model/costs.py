"""Cost of one round: per-user latency, energy, stability, service quality, and the objectives
(SPEC §3.3, §3.4). ``evaluate(config, state, decision)`` is the single implementation used by
the environments, the experts, the benchmark and the tests.

Units: seconds, joules, bits, FLOPs. Shapes: B batch, N users, K chain nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mec_gym.config import SystemConfig
from mec_gym.model import channel, compute, llm, pipeline
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState, flat_server_index
from mec_gym.model.numeric import as_float, divide_where, jitable, select


@dataclass
class RoundMetrics:
    """Everything one round costs, per user ([B,N]) or per node ([B,N,K]) and in total ([B])."""

    latency_s: np.ndarray  # T_n = T_fwd + T_bwd + T_aggregation_upload
    forward_s: np.ndarray
    backward_s: np.ndarray
    aggregation_s: np.ndarray
    energy_device_j: np.ndarray  # Σ over the user's chain nodes (compute + radio)
    energy_server_j: np.ndarray  # server compute + downlink attributed to the user
    energy_j_user: np.ndarray  # E_n = device + server_energy_weight·server
    node_energy_j: np.ndarray  # [B,N,K]
    stability: np.ndarray  # S_n, [LZ24] Theorem 1 bound
    service: np.ndarray  # U_n, [QZ24] service quality
    memory_bytes: np.ndarray  # [B,N,K] peak memory of each node
    uplink_rate_bps: np.ndarray
    server_work_flops: np.ndarray  # FLOPs the user's server runs this round
    sequences: np.ndarray  # b_n, sequences per training iteration (a round trains local_iterations × b_n)
    dropped: np.ndarray  # bool: latency above the round deadline
    energy_j: np.ndarray  # [B] E = Σ_n E_n
    delay_s: np.ndarray  # [B] mean/max/sum of T_n (config.delay_aggregate)
    stability_mean: np.ndarray  # [B] mean_n S_n


def per_sequence_work(config: SystemConfig, state: SystemState) -> np.ndarray:
    """Forward + backward FLOPs of one layer for one of each user's sequences, [B,N]."""
    return state.forward_flops + state.backward_flops


def stability_bound(config: SystemConfig, local_layers: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """[LZ24] Theorem 1: average-replace-one stability ≤ 2L²/(k·(1 − α/Υ)).

    At α = Υ (local-only) the factor (1 − α/Υ) is replaced by 1/(2Υ) so the term stays
    finite (our choice, SPEC §3.3). Users that train nothing this round (k = 0) contribute 0.
    """
    return stability_value(local_layers, samples, config.num_layers, config.workload.lipschitz)


@jitable
def stability_value(local_layers: np.ndarray, samples: np.ndarray, layers: int, lipschitz: float) -> np.ndarray:
    """:func:`stability_bound` from its numbers: 2L²/(k·(1 − α/Υ)), 1/(2Υ) for (1 − α/Υ) at α = Υ, 0 at k = 0."""
    fraction = select(local_layers >= layers, 1.0 / (2.0 * layers), 1.0 - local_layers / layers)
    k = as_float(samples)
    return divide_where(2.0 * lipschitz**2, k * fraction, k > 0)


@jitable
def service_quality(q0: np.ndarray, q1: np.ndarray, server_share: np.ndarray) -> np.ndarray:
    """[QZ24] service quality U_n = q0_{n,m(n)} + q1_{n,m(n)}·ρ_n, ρ_n = δ_{n,0}/Υ (our form, SPEC §3.3)."""
    return q0 + q1 * server_share


def aggregate_delay(config: SystemConfig, latency_s: np.ndarray) -> np.ndarray:
    """Round delay D from per-user latencies: mean ([LZ24] reports averages), max ([CP25] waits
    for the slowest cluster) or sum ([LZ24]'s objective), per ``config.delay_aggregate``."""
    if config.delay_aggregate == "max":
        return latency_s.max(axis=-1)
    if config.delay_aggregate == "sum":
        return latency_s.sum(axis=-1)
    return latency_s.mean(axis=-1)


def _take(per_server: np.ndarray, flat_server: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Value of each user's server from a per-server [B,M] array, [B,N] (``flat_server``: b·M + m(b, n))."""
    return np.ravel(per_server).take(flat_server).reshape(shape)


def _pair(per_pair: np.ndarray, flat_pair: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Value of the (user, its server) pair from a per-pair [B,N,M] array, [B,N] (``flat_pair``: (b·N + n)·M + m)."""
    return np.ravel(per_pair).take(flat_pair).reshape(shape)


def _chain_hops(config: SystemConfig, state: SystemState, decision: Decision, sequences: np.ndarray,
                act_bits: np.ndarray, token_bits: np.ndarray, noise: float):
    """D2D hops of the forward and backward passes along each user's chain (SPEC §3.3, [CP25]).

    Node 0 holds the data; a node with layers is a stage; nodes without layers are bypassed.
    Each holder sends its output to the next holder over D2D (payload: activations once a
    layer has run, raw tokens before); the backward pass returns activation gradients to every
    holder that has layers at or before it. Each hop uses an equal sub-band of the cluster's
    D2D band, W_d2d/(K−1), and its sender's D2D power (our choice). Returns forward and backward
    hop delays per sending node [B,N,K], D2D energy per node [B,N,K], and the uplink sender [B,N].
    """
    b, n = sequences.shape
    k = config.devices_per_user
    device = decision.split[..., 1:]
    zeros = np.zeros((b, n, k))
    if k == 1:
        return zeros, zeros, zeros, np.zeros((b, n), dtype=np.int64)
    holder = device > 0
    holder[..., 0] = True
    cumulative = np.cumsum(device, axis=-1)
    next_holder = np.full((b, n, k), -1, dtype=np.int64)
    following = np.full((b, n), -1, dtype=np.int64)
    for node in range(k - 1, -1, -1):
        next_holder[..., node] = following
        following = np.where(holder[..., node], node, following)
    last_holder = np.where(holder, np.arange(k), -1).max(axis=-1)
    band = config.radio.d2d_bandwidth_hz / (k - 1)
    fwd_t, bwd_t, energy = zeros.copy(), zeros.copy(), zeros.copy()
    for node in range(k - 1):
        target = next_holder[..., node]
        hop = holder[..., node] & (target >= 0) & (sequences > 0)
        gain = np.take_along_axis(state.d2d_gain[..., node, :], np.maximum(target, 0)[..., None], axis=-1)[..., 0]
        sender_power = decision.d2d_power[..., node]
        receiver_power = np.take_along_axis(decision.d2d_power, np.maximum(target, 0)[..., None], axis=-1)[..., 0]
        payload = np.where(cumulative[..., node] > 0, act_bits, token_bits)
        rate_fwd = channel.shannon_rate(band, gain, sender_power, noise)
        t, e = channel.transmission(np.where(hop, sequences * payload, 0.0), rate_fwd, sender_power)
        fwd_t[..., node] = t
        energy[..., node] += e
        back = hop & (cumulative[..., node] > 0)
        rate_bwd = channel.shannon_rate(band, gain, receiver_power, noise)
        t, e = channel.transmission(np.where(back, sequences * act_bits, 0.0), rate_bwd, receiver_power)
        bwd_t[..., node] = t
        np.put_along_axis(energy, np.maximum(target, 0)[..., None],
                          np.take_along_axis(energy, np.maximum(target, 0)[..., None], axis=-1) + e[..., None],
                          axis=-1)
    return fwd_t, bwd_t, energy, last_holder


@jitable(inline=True)
def server_rate_flops(sequences: np.ndarray, microbatches: np.ndarray, forward_flops: np.ndarray,
                      backward_flops: np.ndarray, peak_flops: np.ndarray, utilization: float,
                      saturation_seconds: float, exponent: float) -> np.ndarray:
    """FLOP/s the server reaches on a user's layers: peak × :func:`compute.gpu_utilization` of the
    forward+backward work of one layer for one micro-batch, b/Q·(c^F + c^B) FLOPs."""
    kernel = sequences / microbatches * (forward_flops + backward_flops)
    return compute.gpu_utilization(kernel, peak_flops, utilization, saturation_seconds, exponent) * peak_flops


@jitable
def uplink_bits(sequences: np.ndarray, local_layers: np.ndarray, activation_bits: np.ndarray,
                token_bits: np.ndarray, server_in_chain: np.ndarray) -> np.ndarray:
    """Bits a user sends up per iteration: b cut activations (raw tokens when α = 0) when the server
    is in its chain and it trains this round, else 0 (SPEC §3.3)."""
    return select(server_in_chain & (sequences > 0),
                  sequences * select(local_layers > 0, activation_bits, token_bits), 0.0)


@jitable
def downlink_bits(sequences: np.ndarray, local_layers: np.ndarray, activation_bits: np.ndarray,
                  server_in_chain: np.ndarray) -> np.ndarray:
    """Bits of cut-layer gradients the server returns per iteration (only to users with local layers)."""
    return select(server_in_chain & (sequences > 0) & (local_layers > 0), sequences * activation_bits, 0.0)


@jitable
def aggregation_bits(sequences: np.ndarray, local_layers: np.ndarray, bits_per_layer: float) -> np.ndarray:
    """End-of-round upload of the user side's trained parameters: α·(bits per layer), 0 when idle."""
    return select(sequences > 0, local_layers * bits_per_layer, 0.0)


@jitable
def stability_samples(sequences: np.ndarray, fixed_samples: int, iterations: int) -> np.ndarray:
    """k_n of the stability bound: the scenario's fixed sample count for a training user ([LZ24]: k_n = B),
    or the sequences it trains this round, I·b_n, when ``fixed_samples`` is 0."""
    if fixed_samples:
        return select(sequences > 0, float(fixed_samples), 0.0)
    return iterations * sequences


@jitable
def dropped_update(latency_s: np.ndarray, deadline_s: float, sequences: np.ndarray) -> np.ndarray:
    """Whether a training user's update misses the round deadline (never with ``deadline_s`` = 0)."""
    return (latency_s > deadline_s) & (sequences > 0) & (deadline_s > 0)


def evaluate(config: SystemConfig, state: SystemState, decision: Decision) -> RoundMetrics:
    """Cost of one round for a batch of states and complete decisions (SPEC §3.3).

    The job is a chain of stages — node compute and D2D hops, the uplink of cut activations,
    server compute (forward), then server compute, the downlink of cut gradients, node
    compute and D2D hops (backward) — pipelined over Q micro-batches
    (:func:`mec_gym.model.pipeline.makespan`) and repeated for ``local_iterations`` I ([CP25]:
    T = I·T_pipe + T_up), followed by the upload of the user side's trained parameters for
    aggregation. ``decision`` must be complete
    (:func:`mec_gym.model.decision.complete`); it is not validated here (hot path).
    """
    spec, wl, radio = config.llm, config.workload, config.radio
    layers = config.num_layers
    sequences = state.batch(config)
    forward_flops = state.forward_flops
    backward_flops = state.backward_flops
    act_bits = llm.activation_bits_per_sequence(spec, wl, state.seq_len)
    token_bits = llm.token_bits_per_sequence(wl, state.seq_len)
    micro = decision.microbatches
    split = decision.split
    device_layers = split[..., 1:]
    server_layers = split[..., 0]
    local = device_layers.sum(axis=-1)
    server = decision.server
    users = server.shape  # [B,N]
    flat_server = flat_server_index(server, config.num_servers)
    flat_pair = flat_server_index(server.reshape(-1, 1), config.num_servers)  # (b·N + n)·M + m: one row per user

    # on-device compute (per node)
    node_work = device_layers * sequences[..., None]
    dev_fwd_t, dev_fwd_e = compute.compute_delay_energy(node_work * forward_flops[..., None], state.device_rate_flops,
                                                        decision.frequency, state.device_power_w)
    dev_bwd_t, dev_bwd_e = compute.compute_delay_energy(node_work * backward_flops[..., None],
                                                        state.device_rate_flops, decision.frequency,
                                                        state.device_power_w)

    # server compute: share φ of the capacity left by background load, size-dependent utilization
    peak = _take(state.server_peak_flops, flat_server, users)
    srv = config.server
    rate = server_rate_flops(sequences, micro, forward_flops, backward_flops, peak, srv.utilization,
                             srv.saturation_seconds, srv.utilization_exponent)
    available = decision.compute * (1.0 - _take(state.load, flat_server, users))
    level, share = (available, 1.0) if srv.energy_model == "frequency" else (1.0, available)
    server_power = _take(state.server_power_w, flat_server, users)
    server_work = server_layers * sequences
    srv_fwd_t, srv_fwd_e = compute.compute_delay_energy(server_work * forward_flops, rate, level, server_power,
                                                        share)
    srv_bwd_t, srv_bwd_e = compute.compute_delay_energy(server_work * backward_flops, rate, level, server_power,
                                                        share)

    # radio: uplink of cut activations (raw tokens when α = 0), downlink of their gradients
    noise = channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db)
    gain = _pair(state.gain, flat_pair, users)
    bandwidth = srv.bandwidth_hz * decision.bandwidth
    uplink_rate = channel.shannon_rate(bandwidth, gain, decision.power, noise)
    server_in_chain = (server_layers > 0) | config.head_on_server
    up_bits = uplink_bits(sequences, local, act_bits, token_bits, server_in_chain)
    up_t, up_e = channel.transmission(up_bits, uplink_rate, decision.power)
    if radio.downlink:
        downlink_rate = channel.shannon_rate(bandwidth, gain, srv.downlink_power_w, noise)
        down_bits = downlink_bits(sequences, local, act_bits, server_in_chain)
        down_t, down_e = channel.transmission(down_bits, downlink_rate, srv.downlink_power_w)
    else:
        down_t = down_e = np.zeros_like(up_t)
    agg_bits = aggregation_bits(sequences, local, llm.adapter_upload_bits_per_layer(spec, wl))
    agg_t, agg_e = channel.transmission(agg_bits, uplink_rate, decision.power)

    hop_fwd_t, hop_bwd_t, hop_e, uplink_sender = _chain_hops(config, state, decision, sequences, act_bits,
                                                             token_bits, noise)
    # each round runs I = local_iterations pipelined training iterations, then one aggregation upload
    iterations = wl.local_iterations
    k = config.devices_per_user
    if k == 1:  # no D2D hops (their times and energies are zero)
        node_energy = iterations * (dev_fwd_e + dev_bwd_e)
        node_energy += (iterations * up_e + agg_e)[..., None]
    else:
        node_energy = iterations * (dev_fwd_e + dev_bwd_e + hop_e)
        node_energy = node_energy + (uplink_sender[..., None] == np.arange(k)) * (iterations * up_e)[..., None]
        node_energy[..., 0] += agg_e

    # stages in chain order: node compute and D2D hops of every node, the radio link, the server
    if k == 1:  # a list of [B,N] stages; the all-zero hop stage adds nothing to the sum or the max
        fwd_stages = [dev_fwd_t[..., 0], up_t, srv_fwd_t]
        bwd_stages = [dev_bwd_t[..., 0], down_t, srv_bwd_t]
    else:  # stage-major [J, B, N]
        fwd_stages = np.concatenate([np.moveaxis(dev_fwd_t, -1, 0), np.moveaxis(hop_fwd_t, -1, 0), up_t[None],
                                     srv_fwd_t[None]], axis=0)
        bwd_stages = np.concatenate([np.moveaxis(dev_bwd_t, -1, 0), np.moveaxis(hop_bwd_t, -1, 0), down_t[None],
                                     srv_bwd_t[None]], axis=0)
    forward_s = iterations * pipeline.makespan(pipeline.stage_times(fwd_stages, micro, wl.overhead_s), micro)
    backward_s = iterations * pipeline.makespan(pipeline.stage_times(bwd_stages, micro, wl.overhead_s), micro)
    latency = forward_s + backward_s + agg_t

    energy_device = node_energy[..., 0].copy() if k == 1 else node_energy.sum(axis=-1)
    energy_server = iterations * (srv_fwd_e + srv_bwd_e + down_e)
    energy_user = energy_device + config.server_energy_weight * energy_server
    samples = stability_samples(sequences, wl.stability_samples, iterations)
    stability = stability_bound(config, local, samples)
    service = service_quality(_pair(state.service_q0, flat_pair, users), _pair(state.service_q1, flat_pair, users),
                              server_layers / layers)
    memory = device_layers * llm.layer_memory_bytes(spec, wl, sequences, state.seq_len)[..., None]
    dropped = dropped_update(latency, wl.deadline_s, sequences)
    return RoundMetrics(
        latency_s=latency, forward_s=forward_s, backward_s=backward_s, aggregation_s=agg_t,
        energy_device_j=energy_device, energy_server_j=energy_server, energy_j_user=energy_user,
        node_energy_j=node_energy, stability=stability, service=service, memory_bytes=memory,
        uplink_rate_bps=uplink_rate, server_work_flops=server_work * (forward_flops + backward_flops),
        sequences=sequences, dropped=dropped,
        energy_j=energy_user.sum(axis=-1), delay_s=aggregate_delay(config, latency),
        stability_mean=stability.mean(axis=-1),
    )


@dataclass(frozen=True)
class Scales:
    """Reference-policy normalizers (SPEC §3.4): E_ref, D_ref, S_ref for the totals and
    T_ref, E_user_ref for the per-user terms of the SCR denominator."""

    energy_j: float
    delay_s: float
    stability: float
    latency_s: float
    energy_j_user: float


def reward_terms(config: SystemConfig, metrics: RoundMetrics, scales: Scales) -> dict[str, np.ndarray]:
    """Named reward components [B] (SPEC §3.4, §3.6); ``reward`` combines them.

    weighted: reward = −(w_e·E/E_ref + w_d·D/D_ref + w_s·S/S_ref) − penalties.
    scr: reward = Σ_n U_n / Σ_n (w_d·T_n/T_ref + w_e·E_n/E_ref) − penalties.
    Penalties: w_budget·mean_n max(E_n^device − Ē, 0)/Ē when a budget is set; w_drop·(drops/N).
    """
    w, wl = config.weights, config.workload
    terms = {
        "energy_norm": metrics.energy_j / scales.energy_j,
        "delay_norm": metrics.delay_s / scales.delay_s,
        "stability_norm": metrics.stability_mean / scales.stability,
    }
    denominator = scr_denominator(metrics.latency_s, metrics.energy_j_user, w.delay, w.energy, scales.latency_s,
                                  scales.energy_j_user).sum(axis=-1)
    terms["scr"] = divide_where(metrics.service.sum(axis=-1), denominator, denominator > 0)
    if wl.energy_budget_j > 0:
        terms["budget_violation"] = budget_violation(metrics.energy_device_j, wl.energy_budget_j).mean(axis=-1)
    else:
        terms["budget_violation"] = np.zeros_like(metrics.energy_j)
    terms["drop_rate"] = metrics.dropped.mean(axis=-1)
    penalty = penalties(terms["budget_violation"], terms["drop_rate"], w.budget, w.drop)
    if config.objective == "scr":
        terms["reward"] = terms["scr"] - penalty
    else:
        cost = weighted_cost(terms["energy_norm"], terms["delay_norm"], terms["stability_norm"], w.energy, w.delay,
                             w.stability)
        terms["cost"] = cost
        terms["reward"] = -cost - penalty
    return terms


@jitable
def scr_denominator(latency_s: np.ndarray, energy_j: np.ndarray, weight_delay: float, weight_energy: float,
                    latency_ref_s: float, energy_ref_j: float) -> np.ndarray:
    """A user's term of the SCR denominator ([QZ24]): w_d·T_n/T_ref + w_e·E_n/E_ref (dimensionless)."""
    return weight_delay * latency_s / latency_ref_s + weight_energy * energy_j / energy_ref_j


@jitable
def budget_violation(energy_device_j: np.ndarray, budget_j: float) -> np.ndarray:
    """A user's relative overshoot of the per-round device energy budget Ē: max(E − Ē, 0)/Ē ([CP25])."""
    return np.maximum(energy_device_j - budget_j, 0.0) / budget_j


@jitable
def penalties(budget_violation: np.ndarray, drop_rate: np.ndarray, weight_budget: float,
              weight_drop: float) -> np.ndarray:
    """Reward penalties (SPEC §3.4): w_budget·(mean budget violation) + w_drop·(fraction of users dropped)."""
    return weight_budget * budget_violation + weight_drop * drop_rate


@jitable
def weighted_cost(energy_norm: np.ndarray, delay_norm: np.ndarray, stability_norm: np.ndarray,
                  weight_energy: float, weight_delay: float, weight_stability: float) -> np.ndarray:
    """The weighted objective (SPEC §3.4): w_e·E/E_ref + w_d·D/D_ref + w_s·S/S_ref (dimensionless)."""
    return weight_energy * energy_norm + weight_delay * delay_norm + weight_stability * stability_norm


def user_reward_terms(config: SystemConfig, metrics: RoundMetrics, scales: Scales) -> dict[str, np.ndarray]:
    """Each user's own share of the objective, [B,N] (SPEC §3.4 per user; the multi-agent ``reward_mode="user"``).

    weighted: r_n = −(w_e·E_n/E_user_ref + w_d·T_n/T_ref + w_s·S_n/S_ref) − penalties_n;
    scr: r_n = U_n / (w_d·T_n/T_ref + w_e·E_n/E_user_ref) − penalties_n ([QZ24] SCR of one user).
    Penalties_n: w_budget·max(E_n^device − Ē, 0)/Ē when a budget is set; w_drop·1[user n dropped].
    E_n in J, T_n in s, S_n the [LZ24] stability bound; the references are the scenario's (``Scales``), so the
    mean over users of a term equals the team term whenever the team uses the same reference (budget, drops).
    """
    w, wl = config.weights, config.workload
    energy = metrics.energy_j_user / scales.energy_j_user
    latency = metrics.latency_s / scales.latency_s
    terms = {"energy_norm": energy, "latency_norm": latency, "stability_norm": metrics.stability / scales.stability}
    denominator = w.delay * latency + w.energy * energy
    terms["scr"] = np.divide(metrics.service, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    if wl.energy_budget_j > 0:
        terms["budget_violation"] = budget_violation(metrics.energy_device_j, wl.energy_budget_j)
    else:
        terms["budget_violation"] = np.zeros_like(metrics.energy_j_user)
    terms["dropped"] = metrics.dropped.astype(np.float64)
    penalty = penalties(terms["budget_violation"], terms["dropped"], w.budget, w.drop)
    if config.objective == "scr":
        terms["reward"] = terms["scr"] - penalty
    else:
        terms["cost"] = w.energy * energy + w.delay * latency + w.stability * terms["stability_norm"]
        terms["reward"] = -terms["cost"] - penalty
    return terms
