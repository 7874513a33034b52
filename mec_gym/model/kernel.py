"""The fused round kernel: one compiled pass per environment that decodes a Box action, costs the round,
computes the reward, advances the state and writes the observation and info (SPEC §3, §4.4).

Why: the numpy model (:mod:`~mec_gym.model.decision`, :mod:`~mec_gym.model.costs`,
:mod:`~mec_gym.model.dynamics`) spends a round in ~600 array calls on arrays of a dozen users, so
call overhead and memory passes dominate. The kernel runs the same round per environment on
scalars, releases the GIL (the vector environment's threads step shards in parallel) and writes
every output once.

One formula, one function: every formula the kernel evaluates is the model's own function
(``channel.shannon_rate``, ``compute.compute_delay_energy``, ``costs.stability_value``, …), compiled
by numba from the same source (:func:`mec_gym.model.numeric.jitable`). What the kernel spells again
is control flow over one environment — the decoding rules (largest remainder, memory repair,
capacity repair, per-server shares), the order of the round's stages and the per-user sums — and
``tests/test_kernel.py`` pins all of it to the numpy model: same decisions, metrics, rewards,
states and observations on every scenario the kernel supports, over whole episodes.

Scope: chains of one device per user (``devices_per_user == 1``: ``default``, ``liu2024``,
``qian2024``); :func:`supports` says whether a config qualifies, and the environments fall back to
the numpy model otherwise (``collapipe``'s D2D chains).

Randomness: the kernel draws each environment's round innovations inline from its stream in
:class:`mec_gym.model.dynamics.RoundRandomness` (:mod:`mec_gym.model.rng`), in the order the numpy model's
``RoundRandomness.draw`` fills them, so both backends see the same numbers.

Speed: the stages whose formulas need transcendentals (path loss, gain and gain feature per link; the
server's utilization and the up- and downlink rates per user) run as loops of one formula over contiguous
arrays, which LLVM turns into AVX2 code (:mod:`mec_gym.model.numeric`'s ``ln``/``exp`` are branch-free for
that), and whose short bodies let successive iterations overlap. The normals are drawn in one tight loop first.

The kernel is compiled without numba's reference counting (``_nrt=False``): it allocates nothing (its
scratch arrays come from :func:`scratch`), so views and calls cost no atomic counter updates.
"""

from __future__ import annotations

import os
from collections import namedtuple

import numpy as np

from mec_gym.config import SystemConfig
from mec_gym.model import channel, compute, costs, decision, dynamics, llm, pipeline, reference, rng
from mec_gym.model.features import gain_feature, saturating
from mec_gym.model.numeric import HAVE_NUMBA, PAIRWISE_MAX, compile_cached, divide_where, jitable, pairwise_sum

_FLOAT_PARAMS = (
    "power_min", "frequency_min", "share_floor", "bandwidth_hz", "noise", "downlink_power", "utilization",
    "saturation_seconds", "utilization_exponent", "adapter_bits", "frozen_bytes", "trainable_bytes",
    "bytes_per_element", "batch_max", "deadline", "budget", "server_energy_weight", "lipschitz",
    "w_energy", "w_delay", "w_stability", "w_budget", "w_drop", "ref_energy", "ref_delay", "ref_stability",
    "ref_latency", "ref_energy_user", "area", "mean_speed", "speed_std", "mobility_memory", "dt",
    "shadowing_db", "shadowing_correlation", "fading_correlation", "pathloss_a", "pathloss_b", "min_distance",
    "stay_probability", "work_ref", "overhead",
)
_INT_PARAMS = (
    "users", "servers", "layers", "rounds", "width", "o_split", "o_server", "o_power", "o_bandwidth",
    "o_compute", "o_frequency", "o_microbatches", "split_min_local", "capacity", "max_microbatches",
    "microbatches", "iterations", "stability_samples", "hidden", "activation_bits", "token_bits",
    "delay_aggregate", "obs_gain", "obs_data_queue",
    "obs_energy_queue", "obs_load", "obs_users", "obs_work", "obs_static_start", "obs_static_stop", "obs_round",
)
_BOOL_PARAMS = ("downlink", "head_on_server", "time_share", "scr", "fading", "arrivals")
KernelParams = namedtuple("KernelParams", _FLOAT_PARAMS + _INT_PARAMS + _BOOL_PARAMS)
"""Every number of a config the kernel needs (floats, ints, bools), by name."""

ENV_FLOATS = ("reward", "energy_j", "delay_s", "stability", "scr", "energy_norm", "delay_norm", "stability_norm",
              "budget_violation", "drop_rate", "peak_memory_bytes")
"""Rows of the kernel's per-environment float output [len, B]."""
ENV_INTS = ("drops", "split_min_local", "memory", "capacity")
"""Rows of the per-environment integer output (dropped users, then the repair counts)."""
USER_FLOATS = ("latency_s", "energy_j_user", "energy_device_j", "energy_server_j", "sequences", "data_queue",
               "energy_queue")
"""Rows of the per-user float output [len, B, N]."""
USER_INTS = ("local_layers", "server")
"""Rows of the per-user integer output [len, B, N]."""


def supports(config: SystemConfig) -> bool:
    """Whether the kernel covers ``config`` (one device per user, at most 128 users); else the numpy model runs."""
    return HAVE_NUMBA and config.devices_per_user == 1 and config.num_users <= PAIRWISE_MAX


def enabled(config: SystemConfig, backend: str | None = None) -> bool:
    """Whether an environment on ``config`` steps Box actions with the kernel.

    ``backend``: ``"kernel"`` (raises ValueError when the config is not supported), ``"numpy"``, or
    ``None`` = the ``MEC_GYM_BACKEND`` environment variable, else ``"auto"`` (the kernel where supported).
    """
    choice = backend or os.environ.get("MEC_GYM_BACKEND", "auto")
    if choice not in ("auto", "kernel", "numpy"):
        raise ValueError(f"backend: must be 'auto', 'kernel' or 'numpy', got {choice!r} "
                         "(argument backend= or environment variable MEC_GYM_BACKEND)")
    if choice == "kernel" and not supports(config):
        reason = "numba is not installed" if not HAVE_NUMBA else \
            (f"it covers devices_per_user = 1 and at most {PAIRWISE_MAX} users (this config has "
             f"{config.devices_per_user} and {config.num_users})")
        raise ValueError(f"backend: the kernel cannot run this config: {reason}; use backend='numpy' or 'auto'")
    return choice != "numpy" and supports(config)


def params(config: SystemConfig, observer) -> KernelParams:
    """The kernel's numbers for ``config``; ``observer`` is the env's ObservationBuilder (layout and scales)."""
    layout = observer.layout
    radio, srv, wl, geo, w, dev = config.radio, config.server, config.workload, config.geometry, config.weights, \
        config.device
    scales = reference.reference_scales(config)
    offsets, start = {}, 0
    for name, width in decision.field_dims(config).items():
        offsets[name] = start
        start += width
    frozen, trainable = llm.weight_state_bytes(config.llm, wl)
    static = [layout[name][0] for name in ("server_capability", "device_capability", "device_memory", "power_max",
                                           "sequence_length", "d2d_gain_db", "service_q0", "service_q1")
              if name in layout]
    values = dict(
        power_min=radio.power_min_w, frequency_min=dev.frequency_min, share_floor=radio.share_floor,
        bandwidth_hz=srv.bandwidth_hz, noise=channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db),
        downlink_power=srv.downlink_power_w, utilization=srv.utilization, saturation_seconds=srv.saturation_seconds,
        utilization_exponent=srv.utilization_exponent,
        adapter_bits=llm.adapter_upload_bits_per_layer(config.llm, wl), frozen_bytes=frozen,
        trainable_bytes=trainable,
        bytes_per_element=wl.activation_bytes_per_element, batch_max=wl.batch_max, deadline=wl.deadline_s,
        budget=wl.energy_budget_j, server_energy_weight=config.server_energy_weight, lipschitz=wl.lipschitz,
        w_energy=w.energy, w_delay=w.delay, w_stability=w.stability, w_budget=w.budget, w_drop=w.drop,
        ref_energy=scales.energy_j, ref_delay=scales.delay_s, ref_stability=scales.stability,
        ref_latency=scales.latency_s, ref_energy_user=scales.energy_j_user, area=geo.area_m,
        mean_speed=geo.speed_mps, speed_std=geo.speed_std_mps, mobility_memory=geo.mobility_memory,
        dt=geo.round_duration_s, shadowing_db=radio.shadowing_db, shadowing_correlation=radio.shadowing_correlation,
        fading_correlation=radio.fading_correlation, pathloss_a=radio.pathloss_db_at_1km,
        pathloss_b=radio.pathloss_exponent_db, min_distance=radio.min_distance_m,
        stay_probability=srv.load_stay_probability, work_ref=observer.work_ref, overhead=wl.overhead_s,
        users=config.num_users, servers=config.num_servers, layers=config.num_layers,
        rounds=config.rounds, width=decision.action_dim_per_user(config),
        o_split=offsets.get("split", -1), o_server=offsets.get("server", -1), o_power=offsets.get("power", -1),
        o_bandwidth=offsets.get("bandwidth", -1), o_compute=offsets.get("compute", -1),
        o_frequency=offsets.get("frequency", -1), o_microbatches=offsets.get("microbatches", -1),
        split_min_local=config.split_min_local, capacity=srv.capacity, max_microbatches=wl.max_microbatches,
        microbatches=wl.microbatches, iterations=wl.local_iterations, stability_samples=wl.stability_samples,
        hidden=config.llm.hidden, activation_bits=wl.activation_bits, token_bits=wl.token_bits,
        delay_aggregate=("mean", "max", "sum").index(config.delay_aggregate),
        obs_gain=layout["channel_gain_db"][0].start, obs_data_queue=layout["data_queue"][0].start,
        obs_energy_queue=layout["energy_queue"][0].start, obs_load=layout["server_load"][0].start,
        obs_users=layout["users_per_server"][0].start, obs_work=layout["server_work"][0].start,
        obs_static_start=min(s.start for s in static), obs_static_stop=max(s.stop for s in static),
        obs_round=layout["round"][0].start,
        downlink=radio.downlink, head_on_server=config.head_on_server, time_share=srv.energy_model != "frequency",
        scr=config.objective == "scr", fading=radio.fading, arrivals=wl.arrival_rate > 0,
    )
    # the static fields must form one run between the dynamic ones (the observation layout's order)
    assert values["obs_static_start"] == layout["server_work"][0].stop
    assert values["obs_static_stop"] == values["obs_round"]
    return KernelParams(**{name: float(values[name]) for name in _FLOAT_PARAMS},
                        **{name: int(values[name]) for name in _INT_PARAMS},
                        **{name: bool(values[name]) for name in _BOOL_PARAMS})


# --------------------------------------------------------------------------- decoding (one environment)
@jitable
def _largest_remainder_pair(w_node: float, w_server: float, total: int) -> tuple[int, int]:
    """decision.largest_remainder for two parts (node 1, then the server): (node layers, server layers)."""
    s = w_node + w_server
    if not s > 0:
        w_node, w_server, s = 1.0, 1.0, 2.0
    exact0 = total * w_node
    exact0 /= s
    exact1 = total * w_server
    exact1 /= s
    c0 = min(np.floor(exact0 + 1e-9), float(total))
    c1 = min(np.floor(exact1 + 1e-9), float(total))
    r0 = exact0 - c0
    r1 = exact1 - c1
    leftover = total - (c0 + c1)
    # rank by remainder, descending, ties to the lower index
    rank0 = 1.0 if r1 > r0 else 0.0
    rank1 = 1.0 if (r0 > r1 or r0 == r1) else 0.0
    if rank0 < leftover:
        c0 += 1.0
    if rank1 < leftover:
        c1 += 1.0
    return int(c0), int(c1)


@jitable
def _first_argmax(row: np.ndarray, start: int, count: int) -> int:
    best = row[start]
    choice = 0
    for j in range(1, count):
        if row[start + j] > best:
            best = row[start + j]
            choice = j
    return choice


@jitable
def _assign_capacity(scores: np.ndarray, capacity: int, users: int, servers: int, order: np.ndarray,
                     assigned: np.ndarray, counters: np.ndarray) -> None:
    """decision._assign_with_capacity for one environment: ``scores`` [N, M] → ``assigned`` [N]. In each
    preference round the unassigned users ask, in index order, for their next server; a server accepts while
    its load plus the askers so far stays within ``capacity``. ``counters``: 3M scratch integers."""
    for n in range(users):  # preference: servers by descending score, ties to the lower index (stable sort)
        for j in range(servers):
            order[n, j] = j
        for j in range(1, servers):
            key = order[n, j]
            i = j - 1
            while i >= 0 and -scores[n, order[n, i]] > -scores[n, key]:
                order[n, i + 1] = order[n, i]
                i -= 1
            order[n, i + 1] = key
        assigned[n] = -1
    for m in range(servers):
        counters[m] = 0  # load
    for rank in range(servers):
        for m in range(servers):
            counters[servers + m] = 0  # askers this round
            counters[2 * servers + m] = 0  # accepted this round
        for n in range(users):
            if assigned[n] < 0:
                want = order[n, rank]
                counters[servers + want] += 1
                if counters[servers + want] + counters[want] <= capacity:
                    assigned[n] = want
                    counters[2 * servers + want] += 1
        for m in range(servers):
            counters[m] += counters[2 * servers + m]


@jitable
def _shares(weights: np.ndarray, eligible: np.ndarray, server: np.ndarray, users: int, servers: int,
            totals: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
    """decision._shares_from_weights for one environment: per-server normalized weights; a server whose
    eligible weights sum to 0 splits equally among its eligible users."""
    for m in range(servers):
        totals[m] = 0.0
        counts[m] = 0.0
    for n in range(users):
        w = weights[n] if eligible[n] else 0.0
        totals[server[n]] += w
        counts[server[n]] += 1.0 if eligible[n] else 0.0
    for n in range(users):
        total = totals[server[n]]
        if total > 0:
            out[n] = (weights[n] if eligible[n] else 0.0) / total
        elif eligible[n]:
            out[n] = 1.0 / max(counts[server[n]], 1.0)
        else:
            out[n] = 0.0


@jitable
def _count_at_most(sorted_values: np.ndarray, value: float) -> int:
    """``np.searchsorted(sorted_values, value, side="right")``: how many entries are <= ``value`` (a scan from
    the start: the Poisson CDF is short; only draws in the few cells that hold a CDF value get here)."""
    count = 0
    while count < sorted_values.shape[0] and sorted_values[count] <= value:
        count += 1
    return count


@jitable
def _bounded(value: float) -> np.float32:
    return np.float32(np.minimum(np.maximum(value, 0.0), 1.0))


def outputs(config: SystemConfig, batch: int, size: int) -> tuple:
    """Fresh output arrays for ``batch`` environments: (obs [B, size] float32, env_f, env_i, user_f, user_i),
    the last four tuples of one array per name in ENV_FLOATS, ENV_INTS, USER_FLOATS, USER_INTS."""
    n = config.num_users
    env_f = np.empty((len(ENV_FLOATS), batch))  # one block per kind: rows are contiguous views
    env_i = np.empty((len(ENV_INTS), batch), dtype=np.int64)
    user_f = np.empty((len(USER_FLOATS), batch, n))
    user_i = np.empty((len(USER_INTS), batch, n), dtype=np.int64)
    return (np.empty((batch, size), dtype=np.float32), tuple(env_f), tuple(env_i), tuple(user_f), tuple(user_i))


def rows(out: tuple, lo: int, hi: int) -> tuple:
    """The views of :func:`outputs` ``out`` for environments ``lo..hi-1`` (contiguous: one shard's rows)."""
    obs, env_f, env_i, user_f, user_i = out
    return (obs[lo:hi], tuple(a[lo:hi] for a in env_f), tuple(a[lo:hi] for a in env_i),
            tuple(a[lo:hi] for a in user_f), tuple(a[lo:hi] for a in user_i))


def info(out: tuple) -> dict:
    """The info dict (SPEC §4.2, keys as :func:`mec_gym.envs.core.info_arrays`) from :func:`outputs` ``out``."""
    _, env_f, env_i, user_f, user_i = out
    values = dict(zip(ENV_FLOATS, env_f, strict=True))
    values["drops"] = env_i[0]
    values.update(zip(USER_FLOATS, user_f, strict=True))
    values.update(zip(USER_INTS, user_i, strict=True))
    result = {key: values[key] for key in INFO_KEYS}
    result["repairs"] = dict(zip(ENV_INTS[1:], env_i[1:], strict=True))
    return result


INFO_KEYS = ("energy_j", "delay_s", "stability", "scr", "energy_norm", "delay_norm", "stability_norm",
             "budget_violation", "drop_rate", "drops", "latency_s", "energy_j_user", "energy_device_j",
             "energy_server_j", "local_layers", "server", "sequences", "peak_memory_bytes", "data_queue",
             "energy_queue")
"""The per-round info entries besides ``repairs``, in order (SPEC §4.2)."""


def scratch(config: SystemConfig) -> tuple[np.ndarray, ...]:
    """Work arrays for one :func:`_round` call (reused across calls of one core; never shared by threads)."""
    n, m = config.num_users, config.num_servers
    return (np.empty((4, n), np.int64), np.empty((19, n)), np.empty((2, n), np.bool_), np.empty((n, m)),
            np.empty((n, m), np.int64), np.empty(3 * m, np.int64), np.empty((2, m)),
            np.empty(dynamics.innovation_sizes(config)[0]), np.empty(n * m))


def _round(lo, hi, action, p, rnd, device_rate, device_power, server_peak, server_power, power_max, seq_len,
           forward_flops, backward_flops, service_q0, service_q1, max_layers, pos, vel, shadowing, fading, gain,
           data_queue, energy_queue, load_index, load, users_per_server, server_work,
           rng_states, poisson_cdf, load_levels, sites, static_obs, obs, env_f, env_i, user_f, user_i, int_work,
           float_work, bool_work, scores, order, counters, server_sums, draws, distance, shadowing_flat, fading_flat,
           gain_flat, poisson_start, poisson_ambiguous):
    """Step environments ``lo..hi-1`` one round in place (see the module docstring); outputs go to ``obs``
    [B, size] float32 and the tuples of arrays ``env_f`` (ENV_FLOATS, each [B]), ``env_i`` (ENV_INTS, [B]),
    ``user_f`` (USER_FLOATS, [B, N]) and ``user_i`` (USER_INTS, [B, N]) (:func:`outputs`); then come the nine
    arrays of :func:`scratch`, flat [B, N·M] (fading [B, 2·N·M]) views of ``shadowing``, ``fading`` and
    ``gain``, and the arrival quantiles by cell (:func:`mec_gym.model.dynamics.poisson_cells`)."""
    n_users, n_servers, layers = p.users, p.servers, p.layers
    split0, local, server, assigned = int_work[0], int_work[1], int_work[2], int_work[3]
    power, bandwidth, compute_share, frequency = float_work[0], float_work[1], float_work[2], float_work[3]
    micro, weights, sequences, work_user = float_work[4], float_work[5], float_work[6], float_work[7]
    stability_user = float_work[8]
    server_rate, uplink_rate, downlink_rate = float_work[14], float_work[15], float_work[16]
    link_gain, server_peak_user = float_work[17], float_work[18]
    per_user = float_work[10:14]  # energy, latency, service, SCR denominator (then budget violation) per user
    eligible, dropped = bool_work[0], bool_work[1]
    totals, counts = server_sums[0], server_sums[1]
    sqrt_half = np.sqrt(0.5)
    for b in range(lo, hi):
        # ---------------------------------------------------------------- decode (decision.decode + complete)
        a = action[b]
        rep_split = 0
        rep_memory = 0
        rep_capacity = 0
        for n in range(n_users):
            sequences[n] = dynamics.sequences_per_iteration(data_queue[b, n], p.batch_max, p.iterations)
        if p.o_server >= 0:
            for n in range(n_users):
                for m in range(n_servers):
                    scores[n, m] = min(max(float(a[n * p.width + p.o_server + m]), -1.0), 1.0)
        else:  # the rule: strongest average channel (path loss + shadowing)
            for n in range(n_users):
                for m in range(n_servers):
                    faded = channel.rayleigh_power(fading[b, n, m, 0], fading[b, n, m, 1])
                    scores[n, m] = gain[b, n, m] / max(faded, 1e-30)
        for n in range(n_users):
            server[n] = _first_argmax(scores[n], 0, n_servers)
        if p.capacity > 0:
            _assign_capacity(scores, p.capacity, n_users, n_servers, order, assigned, counters)
            for n in range(n_users):
                if p.o_server >= 0 and assigned[n] != server[n]:
                    rep_capacity += 1
                server[n] = assigned[n]
        for n in range(n_users):
            base = n * p.width
            if p.o_split >= 0:
                x_node = decision.to_level(min(max(float(a[base + p.o_split]), -1.0), 1.0))
                x_server = decision.to_level(min(max(float(a[base + p.o_split + 1]), -1.0), 1.0))
                node_layers, server_layers = _largest_remainder_pair(x_node, x_server, layers)
                # memory repair: layers beyond node 1's memory go to the server
                keep = min(node_layers, max_layers[b, n, 0])
                carry = node_layers - keep
                if keep != node_layers:
                    rep_memory += 1
                server_layers += carry
                deficit = min(max(p.split_min_local - keep, 0), server_layers)
                if deficit > 0:  # moved from the server to node 1, within its memory (as _repair_split)
                    rep_split += 1
                    placed = min(deficit, max_layers[b, n, 0] - keep)
                    keep += placed
                    server_layers -= placed
                split0[n] = server_layers
                local[n] = keep
            else:
                local[n] = min(p.split_min_local, max_layers[b, n, 0])
                split0[n] = layers - local[n]
            if p.o_power >= 0:
                x = decision.to_level(min(max(float(a[base + p.o_power]), -1.0), 1.0))
                power[n] = decision.from_level(x, p.power_min, power_max[b, n])
            else:
                power[n] = power_max[b, n]
            if p.o_frequency >= 0:
                x = decision.to_level(min(max(float(a[base + p.o_frequency]), -1.0), 1.0))
                frequency[n] = decision.from_level(x, p.frequency_min, 1.0)
            else:
                frequency[n] = 1.0
            if p.o_microbatches >= 0:
                x = decision.to_level(min(max(float(a[base + p.o_microbatches]), -1.0), 1.0))
                micro[n] = float(int(decision.microbatches_from_level(x, p.max_microbatches)))
            else:
                micro[n] = float(p.microbatches)
        for n in range(n_users):
            if p.o_bandwidth >= 0:
                x = decision.to_level(min(max(float(a[n * p.width + p.o_bandwidth]), -1.0), 1.0))
                weights[n] = decision.from_level(x, p.share_floor, 1.0)
            else:
                weights[n] = 1.0
            eligible[n] = True
        _shares(weights, eligible, server, n_users, n_servers, totals, counts, bandwidth)
        for n in range(n_users):
            if p.o_compute >= 0:
                x = decision.to_level(min(max(float(a[n * p.width + p.o_compute]), -1.0), 1.0))
                weights[n] = decision.from_level(x, p.share_floor, 1.0)
                eligible[n] = split0[n] > 0
            else:  # the rule: ∝ server-side work
                weights[n] = split0[n] * sequences[n] * (forward_flops[b, n] + backward_flops[b, n])
                eligible[n] = weights[n] > 0
        _shares(weights, eligible, server, n_users, n_servers, totals, counts, compute_share)

        # ---------------------------------------------------------------- cost (costs.evaluate, one device per user)
        # first the rates, the round's transcendentals, over contiguous per-user arrays (a loop LLVM vectorizes)
        for n in range(n_users):
            link_gain[n] = gain[b, n, server[n]]
            server_peak_user[n] = server_peak[b, server[n]]
        for n in range(n_users):
            server_rate[n] = costs.server_rate_flops(sequences[n], micro[n], forward_flops[b, n], backward_flops[b, n],
                                                     server_peak_user[n], p.utilization, p.saturation_seconds,
                                                     p.utilization_exponent)
        for n in range(n_users):
            uplink_rate[n] = channel.shannon_rate(p.bandwidth_hz * bandwidth[n], link_gain[n], power[n], p.noise)
        for n in range(n_users):
            downlink_rate[n] = channel.shannon_rate(p.bandwidth_hz * bandwidth[n], link_gain[n], p.downlink_power,
                                                    p.noise)
        peak_memory = 0.0
        drops = 0
        iterations = p.iterations
        for n in range(n_users):
            seqs = sequences[n]
            fwd_flops, bwd_flops = forward_flops[b, n], backward_flops[b, n]
            m = server[n]
            node_work = local[n] * seqs
            dev_fwd_t, dev_fwd_e = compute.compute_delay_energy(node_work * fwd_flops, device_rate[b, n, 0],
                                                                frequency[n], device_power[b, n, 0], 1.0)
            dev_bwd_t, dev_bwd_e = compute.compute_delay_energy(node_work * bwd_flops, device_rate[b, n, 0],
                                                                frequency[n], device_power[b, n, 0], 1.0)
            rate = server_rate[n]
            available = compute_share[n] * (1.0 - load[b, m])
            level, share = (1.0, available) if p.time_share else (available, 1.0)
            srv_work = split0[n] * seqs
            srv_fwd_t, srv_fwd_e = compute.compute_delay_energy(srv_work * fwd_flops, rate, level, server_power[b, m],
                                                                share)
            srv_bwd_t, srv_bwd_e = compute.compute_delay_energy(srv_work * bwd_flops, rate, level, server_power[b, m],
                                                                share)
            in_chain = (split0[n] > 0) or p.head_on_server
            act_bits = llm.sequence_bits(seq_len[b, n], p.hidden, p.activation_bits)
            up_bits = costs.uplink_bits(seqs, local[n], act_bits, llm.sequence_bits(seq_len[b, n], 1, p.token_bits),
                                        in_chain)
            up_t, up_e = channel.transmission(up_bits, uplink_rate[n], power[n])
            down_t, down_e = 0.0, 0.0
            if p.downlink:
                down_bits = costs.downlink_bits(seqs, local[n], act_bits, in_chain)
                down_t, down_e = channel.transmission(down_bits, downlink_rate[n], p.downlink_power)
            agg_bits = costs.aggregation_bits(seqs, local[n], p.adapter_bits)
            agg_t, agg_e = channel.transmission(agg_bits, uplink_rate[n], power[n])
            energy_device = iterations * (dev_fwd_e + dev_bwd_e)
            energy_device += iterations * up_e + agg_e
            q = micro[n]
            s0 = pipeline.stage_time(dev_fwd_t, q, p.overhead)
            s1 = pipeline.stage_time(up_t, q, p.overhead)
            s2 = pipeline.stage_time(srv_fwd_t, q, p.overhead)
            forward_s = iterations * pipeline.pipeline_makespan(s0 + s1 + s2, np.maximum(np.maximum(s0, s1), s2), q)
            s0 = pipeline.stage_time(dev_bwd_t, q, p.overhead)
            s1 = pipeline.stage_time(down_t, q, p.overhead)
            s2 = pipeline.stage_time(srv_bwd_t, q, p.overhead)
            backward_s = iterations * pipeline.pipeline_makespan(s0 + s1 + s2, np.maximum(np.maximum(s0, s1), s2), q)
            latency = forward_s + backward_s + agg_t
            energy_server = iterations * (srv_fwd_e + srv_bwd_e + down_e)
            energy_user = energy_device + p.server_energy_weight * energy_server
            samples = costs.stability_samples(seqs, p.stability_samples, iterations)
            stability = costs.stability_value(local[n], samples, layers, p.lipschitz)
            service = costs.service_quality(service_q0[b, n, m], service_q1[b, n, m], split0[n] / layers)
            memory = local[n] * llm.training_memory_bytes(p.frozen_bytes, p.trainable_bytes, p.bytes_per_element,
                                                          p.hidden, seq_len[b, n], seqs)
            peak_memory = memory if n == 0 else np.maximum(peak_memory, memory)
            dropped[n] = costs.dropped_update(latency, p.deadline, seqs)
            drops += 1 if dropped[n] else 0
            work_user[n] = srv_work * (fwd_flops + bwd_flops)
            per_user[0, n] = energy_user
            per_user[1, n] = latency
            per_user[2, n] = service
            per_user[3, n] = costs.scr_denominator(latency, energy_user, p.w_delay, p.w_energy, p.ref_latency,
                                                   p.ref_energy_user)
            user_f[0][b, n] = latency
            user_f[1][b, n] = energy_user
            user_f[2][b, n] = energy_device
            user_f[3][b, n] = energy_server
            user_f[4][b, n] = seqs
            user_i[0][b, n] = local[n]
            user_i[1][b, n] = m
            stability_user[n] = stability
        # ---------------------------------------------------------------- reward (costs.reward_terms)
        energy_j = pairwise_sum(per_user[0], 0, n_users)
        if p.delay_aggregate == 1:
            delay_s = per_user[1, 0]
            for n in range(1, n_users):
                delay_s = np.maximum(delay_s, per_user[1, n])
        elif p.delay_aggregate == 2:
            delay_s = pairwise_sum(per_user[1], 0, n_users)
        else:
            delay_s = pairwise_sum(per_user[1], 0, n_users) / n_users
        stability_mean = pairwise_sum(stability_user, 0, n_users) / n_users
        energy_norm = energy_j / p.ref_energy
        delay_norm = delay_s / p.ref_delay
        stability_norm = stability_mean / p.ref_stability
        denominator = pairwise_sum(per_user[3], 0, n_users)
        scr = divide_where(pairwise_sum(per_user[2], 0, n_users), denominator, denominator > 0)
        violation = 0.0
        if p.budget > 0:
            for n in range(n_users):
                per_user[3, n] = costs.budget_violation(user_f[2][b, n], p.budget)
            violation = pairwise_sum(per_user[3], 0, n_users) / n_users
        drop_rate = drops / n_users
        penalty = costs.penalties(violation, drop_rate, p.w_budget, p.w_drop)
        if p.scr:
            reward = scr - penalty
        else:
            reward = -costs.weighted_cost(energy_norm, delay_norm, stability_norm, p.w_energy, p.w_delay,
                                          p.w_stability) - penalty
        env_f[0][b] = reward
        env_f[1][b] = energy_j
        env_f[2][b] = delay_s
        env_f[3][b] = stability_mean
        env_f[4][b] = scr
        env_f[5][b] = energy_norm
        env_f[6][b] = delay_norm
        env_f[7][b] = stability_norm
        env_f[8][b] = violation
        env_f[9][b] = drop_rate
        env_f[10][b] = peak_memory
        env_i[0][b] = drops
        env_i[1][b] = rep_split
        env_i[2][b] = rep_memory
        env_i[3][b] = rep_capacity

        # ---------------------------------------------------------------- transition (dynamics.transition)
        # RoundRandomness.draw's order: every normal (mobility, shadowing, fading), then the uniforms
        state = rng.load_state(rng_states, b)
        for i in range(draws.shape[0]):
            draws[i], state = rng.normal(state)
        for n in range(n_users):
            vx, vy = vel[b, n, 0], vel[b, n, 1]
            speed = channel.distance_m(vx, vy)
            hx = divide_where(vx, speed, speed > 0)
            hy = divide_where(vy, speed, speed > 0)
            new_vx = channel.gauss_markov_velocity(vx, hx, draws[2 * n], p.mean_speed, p.speed_std,
                                                   p.mobility_memory)
            new_vy = channel.gauss_markov_velocity(vy, hy, draws[2 * n + 1], p.mean_speed, p.speed_std,
                                                   p.mobility_memory)
            pos[b, n, 0], vel[b, n, 0] = channel.reflect(new_vx * p.dt + pos[b, n, 0], new_vx, p.area)
            pos[b, n, 1], vel[b, n, 1] = channel.reflect(new_vy * p.dt + pos[b, n, 1], new_vy, p.area)
            for m in range(n_servers):
                distance[n * n_servers + m] = channel.distance_m(pos[b, n, 0] - sites[m, 0],
                                                                 pos[b, n, 1] - sites[m, 1])
        # the per-link loops run over flat [N·M] views, so LLVM vectorizes them (numeric.ln/exp included)
        links = n_users * n_servers
        shadowing_b, fading_b, gain_b = shadowing_flat[b], fading_flat[b], gain_flat[b]
        first = 2 * n_users
        for k in range(links):
            shadowing_b[k] = channel.ar1(shadowing_b[k], draws[first + k] * p.shadowing_db, p.shadowing_correlation)
        first += links
        if p.fading:  # the fading innovations are drawn (and dropped) without fading too
            for k in range(2 * links):
                fading_b[k] = channel.ar1(fading_b[k], draws[first + k] * sqrt_half, p.fading_correlation)
        # one function per loop: a loop body with two transcendentals is one long dependency chain, while
        # iterations of a short body overlap in the out-of-order core
        for k in range(links):
            distance[k] = channel.pathloss_db(distance[k], p.pathloss_a, p.pathloss_b, p.min_distance)  # dB now
        for k in range(links):
            gain_b[k] = channel.channel_gain(distance[k], shadowing_b[k], channel.rayleigh_power(fading_b[2 * k],
                                                                                             fading_b[2 * k + 1]))
        o = obs[b]
        for k in range(links):  # observation (ObservationBuilder.flat): the links' gain features
            o[p.obs_gain + k] = np.float32(np.minimum(np.maximum(gain_feature(gain_b[k]), -1.0), 1.0))
        top = load_levels.shape[0] - 1
        for m in range(n_servers):
            draw, state = rng.uniform(state)
            move = 0 if draw < p.stay_probability else (-1 if draw < p.stay_probability
                                                        + (1.0 - p.stay_probability) / 2.0 else 1)
            load_index[b, m] = min(max(load_index[b, m] + move, 0), top)
            load[b, m] = load_levels[load_index[b, m]]
        for n in range(n_users):
            draw, state = rng.uniform(state)
            trained = 0.0 if dropped[n] else user_f[4][b, n] * iterations
            if p.arrivals:
                cell = int(draw * poisson_start.shape[0])  # dynamics.poisson_quantile's lookup by cell
                arrivals = _count_at_most(poisson_cdf, draw) if poisson_ambiguous[cell] else poisson_start[cell]
                data_queue[b, n] = data_queue[b, n] - trained + arrivals
            if p.budget > 0:
                energy_queue[b, n] = np.maximum(energy_queue[b, n] + user_f[2][b, n] - p.budget, 0.0)
            user_f[5][b, n] = data_queue[b, n]
            user_f[6][b, n] = energy_queue[b, n]
        rng.store_state(rng_states, b, state)
        for m in range(n_servers):
            users_per_server[b, m] = 0.0
            server_work[b, m] = 0.0
        for n in range(n_users):
            users_per_server[b, server[n]] += 1.0
            server_work[b, server[n]] += work_user[n]
        rnd[b] += 1

        # ---------------------------------------------------------------- observation (ObservationBuilder.flat)
        for n in range(n_users):
            o[p.obs_data_queue + n] = _bounded(saturating(data_queue[b, n], p.batch_max))
            o[p.obs_energy_queue + n] = _bounded(saturating(energy_queue[b, n], p.budget)) if p.budget > 0 \
                else np.float32(0.0)
        for m in range(n_servers):
            o[p.obs_load + m] = _bounded(load[b, m])
            o[p.obs_users + m] = _bounded(users_per_server[b, m] / n_users)
            o[p.obs_work + m] = _bounded(saturating(server_work[b, m], p.work_ref))
        for j in range(p.obs_static_start, p.obs_static_stop):
            o[j] = static_obs[b, j]
        o[p.obs_round] = _bounded(rnd[b] / p.rounds)


_kernel = None


def compiled():
    """The compiled kernel (built on first use, 10-20 s; numba caches the machine code next to this file)."""
    global _kernel
    if _kernel is None:
        _kernel = compile_cached(_round, nogil=True, error_model="numpy", _nrt=False)
    return _kernel
