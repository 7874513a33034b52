"""System state, its random initial draw and its round-to-round transition (SPEC §3.5, §3.6).

Every array has a leading batch axis ``B``. Randomness: each environment owns one
``numpy.random.Generator`` (its ``np_random``); at every reset it spawns two seed sequences from it:
an *episode* generator (numpy's PCG64, as ``Generator.spawn`` makes it) draws one flat vector of uniforms
that :func:`sample_episode` maps to the initial state, and a *round* stream
(:mod:`mec_gym.model.rng`: xoshiro256** with ziggurat normals, which the compiled round kernel draws
inline) gives each round's innovations (mobility, shadowing, fading, arrivals, load moves). A batch of
environments draws exactly what its members would draw alone, so the batched core reproduces single
environments draw for draw.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import special, stats

from mec_gym import catalog
from mec_gym.config import SystemConfig
from mec_gym.model import channel, llm, rng
from mec_gym.model.numeric import jitable


@dataclass
class SystemState:
    """Full true state of a batch of systems (privileged information for experts).

    Shapes: B batch, N users, M servers, K chain nodes per user, P = K(K-1)/2 D2D pairs.
    Episode constants (drawn at reset) and per-round variables; units in the names.
    """

    round: np.ndarray  # [B] int, round index t
    # --- episode constants
    device_rate_flops: np.ndarray  # [B,N,K] effective FLOP/s at full speed (utilization applied)
    device_power_w: np.ndarray  # [B,N,K] power at full speed
    device_memory_bytes: np.ndarray  # [B,N,K]
    server_peak_flops: np.ndarray  # [B,M] peak FLOP/s (utilization applied per layer size)
    server_power_w: np.ndarray  # [B,M] power at full speed
    power_max_w: np.ndarray  # [B,N] uplink power limit
    seq_len: np.ndarray  # [B,N] tokens per sequence
    forward_flops: np.ndarray  # [B,N] forward FLOPs of one layer for one sequence (llm.forward_flops_per_sequence)
    backward_flops: np.ndarray  # [B,N] backward FLOPs of one layer for one sequence
    service_q0: np.ndarray  # [B,N,M]
    service_q1: np.ndarray  # [B,N,M]
    d2d_pathloss_db: np.ndarray  # [B,N,P]
    max_layers: np.ndarray  # [B,N,K] int, layers each node's memory holds at a full batch
    # --- per-round variables
    user_pos_m: np.ndarray  # [B,N,2]
    user_vel_mps: np.ndarray  # [B,N,2]
    shadowing_db: np.ndarray  # [B,N,M]
    fading: np.ndarray  # [B,N,M,2] real and imaginary parts, unit mean power
    d2d_fading: np.ndarray  # [B,N,P,2]
    gain: np.ndarray  # [B,N,M] linear uplink channel gain (derived)
    d2d_gain: np.ndarray  # [B,N,K,K] linear D2D gain, symmetric, zero diagonal (derived)
    data_queue: np.ndarray  # [B,N] sequences waiting
    energy_queue: np.ndarray  # [B,N] J, virtual energy-budget queue Z
    load_index: np.ndarray  # [B,M] int, index into config.server.load_levels
    load: np.ndarray  # [B,M] background load ℓ in [0, 1)
    users_per_server: np.ndarray  # [B,M] users associated last round
    server_work_flops: np.ndarray  # [B,M] FLOPs assigned last round

    @property
    def batch_size(self) -> int:
        return int(self.round.shape[0])

    def batch(self, config: SystemConfig) -> np.ndarray:
        """Sequences per training iteration: b = min(X, b_max) (SPEC §3.6); with I local iterations
        per round, b = min(X, I·b_max)/I, so a round never trains more than the queue holds."""
        return sequences_per_iteration(self.data_queue, config.workload.batch_max, config.workload.local_iterations)

    def copy(self) -> SystemState:
        return SystemState(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})

    def select(self, index: np.ndarray | slice | int) -> SystemState:
        """Sub-batch view (keeps the batch axis for an integer index)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        return SystemState(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    @staticmethod
    def concatenate(states: list[SystemState]) -> SystemState:
        """One state holding the batches of ``states`` in order (copies)."""
        return SystemState(**{f.name: np.concatenate([getattr(s, f.name) for s in states])
                              for f in dataclasses.fields(SystemState)})

    def assign(self, mask: np.ndarray, other: SystemState) -> None:
        """Overwrite the entries where ``mask`` is True with ``other`` (same batch size as mask.sum())."""
        for f in dataclasses.fields(self):
            getattr(self, f.name)[mask] = getattr(other, f.name)


@jitable
def sequences_per_iteration(data_queue: np.ndarray, batch_max: int, iterations: int) -> np.ndarray:
    """b = min(X, I·b_max)/I sequences per training iteration from a queue of X (SPEC §3.6)."""
    if iterations == 1:
        return np.minimum(data_queue, float(batch_max))
    return np.minimum(data_queue, float(iterations * batch_max)) / iterations


def flat_server_index(server: np.ndarray, num_servers: int) -> np.ndarray:
    """Flat index b·M + m(b, n) of each user's server in a [B,M] array, [B·N]."""
    flat = np.arange(0, server.shape[0] * num_servers, num_servers)[:, None] + server
    return flat.ravel()


def server_totals(values: np.ndarray, server: np.ndarray, num_servers: int,
                  flat_server: np.ndarray | None = None) -> np.ndarray:
    """Σ of per-user ``values`` [B,N] over the users of each server, [B,M] (one bincount pass);
    ``flat_server``, when the caller has it, is :func:`flat_server_index` of ``server``."""
    batch = server.shape[0]
    if flat_server is None:
        flat_server = flat_server_index(server, num_servers)
    totals = np.bincount(flat_server, weights=np.asarray(values, dtype=np.float64).ravel(),
                         minlength=batch * num_servers)
    return totals.reshape(batch, num_servers)


def d2d_pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of a K-node chain's D2D links."""
    return np.triu_indices(k, 1)


class _Cursor:
    """Hands out consecutive columns of a [B, n] block of uniforms."""

    def __init__(self, uniforms: np.ndarray) -> None:
        self.uniforms = uniforms
        self.used = 0

    def take(self, *shape: int) -> np.ndarray:
        size = int(np.prod(shape)) if shape else 1
        out = self.uniforms[:, self.used:self.used + size]
        self.used += size
        return out.reshape(self.uniforms.shape[0], *shape)


def _uniform(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return bounds[0] + u * (bounds[1] - bounds[0])


def _integer(u: np.ndarray, bounds: tuple[int, int]) -> np.ndarray:
    """Uniform integer in [lo, hi] from uniforms in [0, 1)."""
    return np.minimum(bounds[0] + np.floor(u * (bounds[1] - bounds[0] + 1)), bounds[1])


def _normal(u: np.ndarray) -> np.ndarray:
    """Standard normal by inverse CDF (uniforms lie in [0, 1); 0 is nudged inside)."""
    return special.ndtri(np.clip(u, 1e-12, 1.0 - 1e-12))


def episode_draw_count(config: SystemConfig) -> int:
    """Number of uniforms one episode's initial state consumes (see :func:`sample_episode`)."""
    n, m, k = config.num_users, config.num_servers, config.devices_per_user
    p = k * (k - 1) // 2
    return (n * 2 + n + n * (k - 1) * 2 + n * m + n * m * 2 + n * p * 2
            + n * k * 5 + m * 4 + n + n + n * m * 2 + n + m)


def _device_draws(config: SystemConfig, cur: _Cursor, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    spec = config.device
    u_a, u_b, u_c, u_d, u_e = (cur.take(*shape) for _ in range(5))
    if spec.clock_hz is not None:
        clock = _uniform(u_a, spec.clock_hz)
        peak = clock * _integer(u_b, spec.cores) * _integer(u_c, spec.flops_per_cycle)
        power = spec.kappa * clock**3
    else:
        peak = _uniform(u_a, spec.peak_flops)
        power = _uniform(u_d, spec.power_w)
    if spec.memory_choices_gb:
        choices = np.asarray(spec.memory_choices_gb)
        memory_gb = choices[np.minimum((u_e * len(choices)).astype(int), len(choices) - 1)]
    else:
        memory_gb = _uniform(u_e, spec.memory_gb)
    return spec.utilization * peak, power, memory_gb * 1e9


def _server_draws(config: SystemConfig, cur: _Cursor) -> tuple[np.ndarray, np.ndarray]:
    spec, m = config.server, config.num_servers
    u_a, u_b, u_c, u_d = (cur.take(m) for _ in range(4))
    if spec.clock_hz is not None:
        clock = _uniform(u_a, spec.clock_hz)
        peak = clock * _integer(u_b, spec.cores) * _integer(u_c, spec.flops_per_cycle)
        return peak, spec.kappa * clock**3
    profiles = [catalog.server_gpu(name) for name in spec.profiles]
    pick = np.minimum((u_d * len(profiles)).astype(int), len(profiles) - 1)
    peaks = np.asarray([p.peak_flops for p in profiles])
    powers = np.asarray([p.power_w for p in profiles])
    return peaks[pick], powers[pick]


@cache
def server_sites(num_servers: int, area_m: float) -> np.ndarray:
    """The fixed base-station sites [M, 2] (cached; :func:`channel.server_positions`)."""
    return channel.server_positions(num_servers, area_m)


def max_layers_per_node(config: SystemConfig, memory_bytes: np.ndarray, seq_len: np.ndarray) -> np.ndarray:
    """Layers a node's memory holds while training a full batch (SPEC §3.3 memory, §3.7 repair)."""
    per_layer = llm.layer_memory_bytes(config.llm, config.workload, config.workload.batch_max, seq_len)
    return np.floor(memory_bytes / per_layer[..., None]).astype(np.int64)


def sample_episode(config: SystemConfig, uniforms: np.ndarray) -> SystemState:
    """Initial state of a batch of episodes from their flat uniforms ([B, episode_draw_count])."""
    n, m, k = config.num_users, config.num_servers, config.devices_per_user
    geo, radio, wl = config.geometry, config.radio, config.workload
    batch = uniforms.shape[0]
    cur = _Cursor(uniforms)
    sites = server_sites(m, geo.area_m)

    u_pos = cur.take(n, 2)
    if geo.server_distance_m is not None:
        home = sites[np.arange(n) % m]
        radius = _uniform(u_pos[..., 0], geo.server_distance_m)
        angle = 2 * np.pi * u_pos[..., 1]
        pos = np.clip(home + radius[..., None] * np.stack([np.cos(angle), np.sin(angle)], -1), 0.0, geo.area_m)
    else:
        pos = u_pos * geo.area_m
    heading = 2 * np.pi * cur.take(n)
    vel = geo.speed_mps * np.stack([np.cos(heading), np.sin(heading)], -1)

    u_nodes = cur.take(n, k - 1, 2)
    offsets = np.zeros((batch, n, k, 2))
    if k > 1:
        r = geo.cluster_radius_m * np.sqrt(u_nodes[..., 0])
        a = 2 * np.pi * u_nodes[..., 1]
        offsets[:, :, 1:, 0] = r * np.cos(a)
        offsets[:, :, 1:, 1] = r * np.sin(a)
    shadow = radio.shadowing_db * _normal(cur.take(n, m))
    fading = _normal(cur.take(n, m, 2)) * np.sqrt(0.5)
    if not radio.fading:
        fading = np.full_like(fading, np.sqrt(0.5))
    pairs_i, pairs_j = d2d_pairs(k)
    d2d_fading = _normal(cur.take(n, len(pairs_i), 2)) * np.sqrt(0.5)
    if not radio.fading:
        d2d_fading = np.full_like(d2d_fading, np.sqrt(0.5))
    distance = np.linalg.norm(offsets[:, :, pairs_i] - offsets[:, :, pairs_j], axis=-1)
    d2d_pl = channel.pathloss_db(distance, radio.d2d_pathloss_db_at_1km, radio.d2d_pathloss_exponent_db,
                                 radio.min_distance_m)

    rate, power, memory = _device_draws(config, cur, (n, k))
    server_peak, server_power = _server_draws(config, cur)  # utilization: per layer size, in the cost model
    power_max = _uniform(cur.take(n), radio.power_max_w)
    seq_len = _integer(cur.take(n), wl.seq_len)
    q0 = _uniform(cur.take(n, m), config.service.q0)
    q1 = _uniform(cur.take(n, m), config.service.q1)
    queue = _integer(cur.take(n), wl.initial_queue).astype(np.float64)
    if wl.arrival_rate == 0:  # constant full batches: every iteration of every round trains b_max
        queue = np.full((batch, n), float(wl.batch_max * wl.local_iterations))
    levels = len(config.server.load_levels)
    load_index = np.minimum((cur.take(m) * levels).astype(np.int64), levels - 1)
    assert cur.used == uniforms.shape[1], "episode_draw_count is out of date"

    state = SystemState(
        round=np.zeros(batch, dtype=np.int64),
        device_rate_flops=rate,
        device_power_w=power,
        device_memory_bytes=memory,
        server_peak_flops=server_peak,
        server_power_w=server_power,
        power_max_w=power_max,
        seq_len=seq_len,
        forward_flops=llm.forward_flops_per_sequence(config.llm, wl, seq_len),
        backward_flops=llm.backward_flops_per_sequence(config.llm, wl, seq_len),
        service_q0=q0,
        service_q1=q1,
        d2d_pathloss_db=d2d_pl,
        max_layers=max_layers_per_node(config, memory, seq_len),
        user_pos_m=pos,
        user_vel_mps=vel,
        shadowing_db=shadow,
        fading=fading,
        d2d_fading=d2d_fading,
        gain=np.zeros((batch, n, m)),
        d2d_gain=np.zeros((batch, n, k, k)),
        data_queue=queue,
        energy_queue=np.zeros((batch, n)),
        load_index=load_index,
        load=np.asarray(config.server.load_levels)[load_index],
        users_per_server=np.zeros((batch, m)),
        server_work_flops=np.zeros((batch, m)),
    )
    update_gains(config, state)
    return state


def update_gains(config: SystemConfig, state: SystemState) -> None:
    """Recompute the derived linear gains from positions, shadowing and fading (in place)."""
    radio = config.radio
    sites = server_sites(config.num_servers, config.geometry.area_m)
    distance = channel.distance_m(state.user_pos_m[:, :, 0, None] - sites[:, 0],
                                  state.user_pos_m[:, :, 1, None] - sites[:, 1])
    pl = channel.pathloss_db(distance, radio.pathloss_db_at_1km, radio.pathloss_exponent_db, radio.min_distance_m)
    state.gain = channel.channel_gain(pl, state.shadowing_db,
                                      channel.rayleigh_power(state.fading[..., 0], state.fading[..., 1]))
    k = config.devices_per_user
    if k > 1:
        i, j = d2d_pairs(k)
        pair_gain = channel.channel_gain(state.d2d_pathloss_db, 0.0,
                                         channel.rayleigh_power(state.d2d_fading[..., 0], state.d2d_fading[..., 1]))
        state.d2d_gain[:, :, i, j] = pair_gain
        state.d2d_gain[:, :, j, i] = pair_gain


def innovation_sizes(config: SystemConfig) -> tuple[int, int]:
    """(normals, uniforms) one round of one environment consumes."""
    n, m, k = config.num_users, config.num_servers, config.devices_per_user
    p = k * (k - 1) // 2
    return n * 2 + n * m + n * m * 2 + n * p * 2, m + n


@cache
def poisson_cdf(rate: float) -> np.ndarray:
    """CDF of Poisson(``rate``) at 0, 1, … up to rate + 12·sqrt(rate) + 12 (cached; arrivals by inverse CDF)."""
    top = int(rate + 12.0 * np.sqrt(rate) + 12.0)
    return stats.poisson.cdf(np.arange(top + 1), rate)


_QUANTILE_CELLS = 4096


@cache
def poisson_cells(rate: float) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``_QUANTILE_CELLS`` equal cells of [0, 1): the quantile at its left edge, and
    whether a CDF value falls inside the cell (then the quantile varies within it)."""
    cdf = poisson_cdf(rate)
    edges = np.arange(_QUANTILE_CELLS + 1) / _QUANTILE_CELLS
    counts = np.searchsorted(cdf, edges, side="right")
    return counts[:-1], counts[1:] != counts[:-1]


def poisson_quantile(rate: float, uniforms: np.ndarray) -> np.ndarray:
    """Poisson(``rate``) draws by inverse CDF: the number of CDF values ≤ u (int64, shape of ``uniforms``).

    Same result as ``searchsorted(cdf, u, side="right")``; a lookup by cell of [0, 1) answers most
    draws, the binary search only those in cells that hold a CDF value.
    """
    if np.size(uniforms) < 256:  # small batches: one binary search is cheaper than the lookup's extra calls
        return np.searchsorted(poisson_cdf(rate), uniforms, side="right")
    start, ambiguous = poisson_cells(rate)
    cell = (uniforms * _QUANTILE_CELLS).astype(np.intp)
    counts = start[cell]
    unsure = np.flatnonzero(ambiguous[cell])
    if unsure.size:
        flat = counts.reshape(-1)
        flat[unsure] = np.searchsorted(poisson_cdf(rate), uniforms[np.unravel_index(unsure, uniforms.shape)],
                                       side="right")
    return counts


class RoundRandomness:
    """The round streams of a batch: one xoshiro256** state per environment ([B, 4] uint64,
    :mod:`mec_gym.model.rng`). A round draws ``innovation_sizes(config)`` normals, then uniforms, per
    environment, in the order :func:`transition` reads them (the round kernel draws the same ones inline)."""

    def __init__(self, config: SystemConfig, batch: int) -> None:
        self.sizes = innovation_sizes(config)
        self.states = np.zeros((batch, 4), dtype=np.uint64)

    def start(self, index: int, seed_sequence: np.random.SeedSequence) -> None:
        """Seed environment ``index``'s round stream from ``seed_sequence`` (spawned from its ``np_random``)."""
        self.states[index] = rng.seed_state(seed_sequence)

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """This round's innovations for every environment: ([B, normals], [B, uniforms]), float64."""
        return rng.draw_round_arrays(self.states, *self.sizes)


def transition(config: SystemConfig, state: SystemState, normals: np.ndarray, uniforms: np.ndarray,
               trained: np.ndarray, energy_user_j: np.ndarray, server: np.ndarray,
               server_work_flops: np.ndarray) -> None:
    """Advance the state one round in place (SPEC §3.5-3.6).

    ``normals``/``uniforms`` are this round's innovations ([B, n], :meth:`RoundRandomness.draw`); ``trained``
    the sequences
    whose update was accepted (b, or 0 when dropped); ``energy_user_j`` each user's energy for
    the budget queue; ``server`` the association and ``server_work_flops`` [B,N] each user's
    server-side FLOPs (for the per-server observations).
    """
    n, m, k = config.num_users, config.num_servers, config.devices_per_user
    geo, radio, wl = config.geometry, config.radio, config.workload
    batch = state.round.shape[0]
    cur = 0

    def take(scale: float, *shape: int) -> np.ndarray:
        """The next innovations, promoted to float64, times ``scale`` (a new [B, *shape] array)."""
        nonlocal cur
        size = int(np.prod(shape))
        out = normals[:, cur:cur + size].astype(np.float64)
        if scale != 1.0:
            out *= scale
        cur += size
        return out.reshape(batch, *shape)

    state.user_pos_m, state.user_vel_mps = channel.gauss_markov_step(
        state.user_pos_m, state.user_vel_mps, take(1.0, n, 2), geo.speed_mps, geo.speed_std_mps,
        geo.mobility_memory, geo.round_duration_s, geo.area_m)
    state.shadowing_db = channel.ar1(state.shadowing_db, take(radio.shadowing_db, n, m), radio.shadowing_correlation)
    p = k * (k - 1) // 2
    if radio.fading:
        state.fading = channel.ar1(state.fading, take(np.sqrt(0.5), n, m, 2), radio.fading_correlation)
        if p:
            state.d2d_fading = channel.ar1(state.d2d_fading, take(np.sqrt(0.5), n, p, 2), radio.fading_correlation)
    update_gains(config, state)

    u_load = uniforms[:, :m]
    stay = config.server.load_stay_probability
    step = np.where(u_load < stay, 0, np.where(u_load < stay + (1.0 - stay) / 2.0, -1, 1))
    state.load_index = np.clip(state.load_index + step, 0, len(config.server.load_levels) - 1)
    state.load = np.asarray(config.server.load_levels)[state.load_index]

    if wl.arrival_rate > 0:
        arrivals = poisson_quantile(wl.arrival_rate, uniforms[:, m:m + n])
        state.data_queue = state.data_queue - trained + arrivals
    if wl.energy_budget_j > 0:
        state.energy_queue = np.maximum(state.energy_queue + energy_user_j - wl.energy_budget_j, 0.0)
    state.users_per_server = server_totals(np.ones(server.shape), server, m)
    state.server_work_flops = server_totals(server_work_flops, server, m)
    state.round = state.round + 1
