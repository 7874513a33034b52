"""The env's round cost, user by user, as the coefficients [LZ24]'s solver works with.

:func:`mec_gym.model.costs.evaluate` is the one definition of a round's cost. For the scenarios
the [LZ24] solver supports (:func:`unsupported_reasons`: one device per user, one micro-batch,
weighted objective, no downlink, no budgets or deadlines) that cost is a sum over users, and
user n's share of C = w_e·E/E_ref + w_d·D/D_ref + w_s·S/S_ref with α layers on the device
(1 ≤ α < Υ), DVFS level u, uplink power p, bandwidth share β and compute share φ of server m is

    c_n = α·A_n(u) + (c_T + c_E·p)·(s_n + a·α)/r_nm(p, β) + (Υ − α)·B_nm(φ) + σ_n/(1 − α/Υ) + c_T·5·t₀

    A_n(u)   = e_n·u² + t_n/u                 one local layer: [LZ24] eq. (14) = eqs. (1)-(2), weighted
    B_nm(φ)  = e2_nm·φ² + e0_nm + t_nm/φ      one server layer: [LZ24] eq. (15) = eqs. (5)-(6), weighted
    r_nm     = W·β·log2(1 + γ_nm·p/β)         FDMA Shannon rate ([LZ24] §3), γ = g/(N0·W)

with c_E = w_e/E_ref per joule, c_T = w_d/(N·D_ref) per second of one user's latency (``mean``;
w_d/D_ref for ``sum``), σ_n = (w_s/(N·S_ref))·2L²/k_n ([LZ24] Theorem 1), s_n the cut activations
the user uploads (b·ℓ·h·16 bits) and a the adapter bits it uploads per local layer for
aggregation. Differences from [LZ24]'s objective (eq. 11), all from the env's model (SPEC §3.3,
§5.2): the upload *delay* c_T·s/r is counted (the paper counts only the upload energy, which
makes p → 0 optimal, notes §4.5), the aggregation upload a·α is counted, the weights are the
env's normalizations, and t₀ is the pipeline's per-stage overhead (0 in ``liu2024``). At α = Υ
the user uploads no activations and uses no server (its stability factor is 1/(2Υ), SPEC §3.3);
at α = 0 it uploads raw tokens instead of activations.

Units inside the solver: Mbit, MHz, Mbit/s, seconds, joules, and cost in the env's normalized
units. Nothing here re-derives the model: the coefficients come from the model's own functions
(``compute.compute_delay_energy`` at unit DVFS level and share, ``compute.gpu_utilization``,
``costs.stability_bound``, ``llm`` payload sizes, ``channel.shannon_rate``), and every cost the solver
reads (:func:`user_costs`, H of [LZ24] P3) is ``costs.evaluate`` itself. The formula above is what
the convex surrogate P4 restates with these coefficients; ``tests/test_stable_fp.py`` checks that the
surrogate at its anchor equals :func:`user_costs` (i.e. the env's cost) for fractional α.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from mec_gym.config import SystemConfig
from mec_gym.model import channel, compute, costs, llm, reference
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState

MEGA = 1.0e6


def unsupported_reasons(config: SystemConfig) -> list[str]:
    """Why the [LZ24] cost decomposition does not describe ``config`` exactly (empty list: it does)."""
    reasons = []
    if config.objective != "weighted":
        reasons.append(f"objective must be 'weighted' ([LZ24] eq. 11), got {config.objective!r}")
    if config.devices_per_user != 1:
        reasons.append(f"devices_per_user must be 1 (one phone per user, [LZ24]), got {config.devices_per_user}")
    if "microbatches" in config.controls or config.workload.microbatches != 1:
        reasons.append("workload.microbatches must be 1 and uncontrolled (sequential local/upload/server stages)")
    if config.delay_aggregate == "max":
        reasons.append("delay_aggregate must be 'mean' or 'sum' ([LZ24] sums delays), got 'max'")
    if config.radio.downlink:
        reasons.append("radio.downlink must be off ([LZ24] neglects the downlink)")
    if config.head_on_server:
        reasons.append("head_on_server must be False")
    if config.workload.energy_budget_j > 0:
        reasons.append("workload.energy_budget_j must be 0 (no long-term budgets in [LZ24])")
    if config.workload.deadline_s > 0:
        reasons.append("workload.deadline_s must be 0 (no round deadline in [LZ24])")
    if config.workload.local_iterations != 1:
        reasons.append("workload.local_iterations must be 1 (one training iteration per round in [LZ24])")
    return reasons


@dataclass(frozen=True)
class CostWeights:
    """Cost per joule (``energy``), per second of one user's latency (``delay``) and per unit of one
    user's stability bound (``stability``), from the weights and the reference normalizers (SPEC §3.4)."""

    energy: float
    delay: float
    stability: float

    @classmethod
    def of(cls, config: SystemConfig) -> CostWeights:
        scales = reference.reference_scales(config)
        w, n = config.weights, config.num_users
        per_user_delay = 1.0 if config.delay_aggregate == "sum" else 1.0 / n
        return cls(energy=w.energy / scales.energy_j, delay=w.delay * per_user_delay / scales.delay_s,
                   stability=w.stability / (n * scales.stability))


@dataclass
class UserTerms:
    """Coefficients of every user's cost (module docstring) for one system: [N] per user, [N, M] per pair.

    Cost units are the env's normalized cost; ``*_mbit`` in Mbit; rates in Mbit/s.
    """

    layers: int  # Υ
    active: np.ndarray  # [N] bool: users with sequences to train this round (the others cost nothing)
    alpha_low: np.ndarray  # [N] smallest α: split_min_local
    alpha_top: np.ndarray  # [N] largest α: Υ, or fewer when the device memory holds fewer layers
    local_energy: np.ndarray  # [N] e_n: cost of one local layer's energy at u = 1 (multiplies α·u²)
    local_delay: np.ndarray  # [N] t_n: cost of one local layer's delay at u = 1 (multiplies α/u)
    server_energy_quadratic: np.ndarray  # [N,M] e2: multiplies (Υ−α)·φ² ("frequency" energy model)
    server_energy_constant: np.ndarray  # [N,M] e0: multiplies (Υ−α) ("time_share" energy model)
    server_delay: np.ndarray  # [N,M] t: multiplies (Υ−α)/φ
    gain: np.ndarray  # [N,M] linear channel gain g
    noise_psd: float  # N0, W/Hz
    bandwidth_hz: float  # W, each server's band
    activation_mbit: np.ndarray  # [N] s_n: upload when 0 < α < Υ
    token_mbit: np.ndarray  # [N] upload when α = 0 (raw tokens)
    adapter_mbit: np.ndarray  # [N] a: aggregation upload per local layer (0 when inactive)
    energy_weight: float  # c_E
    delay_weight: float  # c_T
    stability: np.ndarray  # [N] σ_n: multiplies 1/(1 − α/Υ)
    overhead_s: float  # t₀ per non-empty pipeline stage
    power_max: np.ndarray  # [N] W
    power_min: float  # W
    frequency_min: float  # lowest DVFS level
    users: np.ndarray  # [N] int: these users' indices in ``state`` (all of them until :meth:`take`)
    config: SystemConfig  # the scenario, for :func:`user_costs` (the model's cost)
    state: SystemState  # the system (batch of one), for :func:`user_costs`
    repeated: dict[int, SystemState] = field(default_factory=dict)  # ``state`` repeated b times (a cache)

    @property
    def num_users(self) -> int:
        return int(self.active.shape[0])

    @property
    def num_servers(self) -> int:
        return int(self.gain.shape[1])

    @property
    def snr_per_watt(self) -> np.ndarray:
        """γ = g/(N0·W), [N, M]: the SNR of one watt over a server's whole band."""
        return self.gain / (self.noise_psd * self.bandwidth_hz)

    @property
    def bandwidth_mhz(self) -> float:
        return self.bandwidth_hz / MEGA

    def take(self, users: np.ndarray) -> UserTerms:
        """The terms of a subset of users (per-user arrays indexed, scalars kept)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value[users] if isinstance(value, np.ndarray) else value
        return UserTerms(**values)

    def state_batch(self, size: int) -> SystemState:
        """``state`` repeated ``size`` times along its batch axis (cached)."""
        if size == 1:
            return self.state
        if size not in self.repeated:
            self.repeated[size] = SystemState(**{f.name: np.repeat(getattr(self.state, f.name), size, axis=0)
                                                 for f in fields(SystemState)})
        return self.repeated[size]


def user_terms(config: SystemConfig, state: SystemState, index: int = 0) -> UserTerms:
    """The coefficients of batch member ``index`` of ``state`` (SPEC §3.3 with K = 1, Q = 1)."""
    reasons = unsupported_reasons(config)
    if reasons:
        raise ValueError("config: the [LZ24] cost terms need " + "; ".join(reasons))
    weights = CostWeights.of(config)
    one = state.select(index)
    spec, wl, srv, radio = config.llm, config.workload, config.server, config.radio
    sequences = one.batch(config)[0]  # b_n
    active = sequences > 0
    work = sequences * (one.forward_flops[0] + one.backward_flops[0])  # ψ_n: one layer, fwd + bwd, FLOPs
    # one local layer at full DVFS level: [LZ24] eqs. (1)-(2); time ∝ 1/u and energy ∝ u² (the model's DVFS law)
    delay_dev, energy_dev = compute.compute_delay_energy(work, one.device_rate_flops[0, :, 0], 1.0,
                                                         one.device_power_w[0, :, 0])
    kernel = sequences / wl.microbatches * (one.forward_flops[0] + one.backward_flops[0])
    peak = one.server_peak_flops[0][None, :]
    rate_srv = compute.gpu_utilization(kernel[:, None], peak, srv.utilization, srv.saturation_seconds,
                                       srv.utilization_exponent) * peak  # [N, M]
    free = 1.0 - one.load[0][None, :]  # the share of a server its background load leaves
    # one server layer with the whole free capacity (φ = 1), as costs.evaluate computes it: [LZ24] eqs. (5)-(6)
    level, share = (free, 1.0) if srv.energy_model == "frequency" else (1.0, free)
    delay_srv, energy_srv = compute.compute_delay_energy(np.broadcast_to(work[:, None], rate_srv.shape), rate_srv,
                                                         level, one.server_power_w[0][None, :], share)
    energy_srv = config.server_energy_weight * energy_srv
    if srv.energy_model == "frequency":  # the share is a clock: energy ∝ φ² (delay ∝ 1/φ)
        quadratic, constant = energy_srv, np.zeros_like(energy_srv)
    else:  # the GPU runs at full clock for the user's time slice: energy independent of φ
        quadratic, constant = np.zeros_like(energy_srv), energy_srv
    samples = float(wl.stability_samples) if wl.stability_samples else sequences
    # σ_n: [LZ24] Theorem 1's bound 2L²/k at α = 0; the cost's stability term is σ_n/(1 − α/Υ)
    stability = np.where(active, weights.stability * costs.stability_bound(config, np.zeros(active.shape),
                                                                           np.where(active, samples, 0.0)), 0.0)
    act_mbit = np.where(active, sequences * llm.activation_bits_per_sequence(spec, wl, one.seq_len[0]), 0.0) / MEGA
    token_mbit = np.where(active, sequences * llm.token_bits_per_sequence(wl, one.seq_len[0]), 0.0) / MEGA
    adapter_mbit = np.where(active, llm.adapter_upload_bits_per_layer(spec, wl), 0.0) / MEGA
    layers = config.num_layers
    return UserTerms(
        layers=layers,
        active=active,
        alpha_low=np.full(active.shape, config.split_min_local, dtype=np.int64),
        alpha_top=np.minimum(one.max_layers[0, :, 0], layers).astype(np.int64),
        local_energy=weights.energy * energy_dev,
        local_delay=weights.delay * delay_dev,
        server_energy_quadratic=weights.energy * quadratic,
        server_energy_constant=weights.energy * constant,
        server_delay=weights.delay * delay_srv,
        gain=one.gain[0].copy(),
        noise_psd=channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db),
        bandwidth_hz=srv.bandwidth_hz,
        activation_mbit=act_mbit,
        token_mbit=token_mbit,
        adapter_mbit=adapter_mbit,
        energy_weight=weights.energy,
        delay_weight=weights.delay,
        stability=stability,
        overhead_s=wl.overhead_s,
        power_max=one.power_max_w[0].copy(),
        power_min=radio.power_min_w,
        frequency_min=config.device.frequency_min if "frequency" in config.controls else 1.0,
        users=np.arange(active.shape[0]),
        config=config,
        state=one,
    )


def rate_mbps(terms: UserTerms, server: np.ndarray, power: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Uplink rate (Mbit/s) of each user on ``server`` with ``power`` (W) and bandwidth ``share``."""
    gain = terms.gain[np.arange(len(server)), server]
    return channel.shannon_rate(terms.bandwidth_hz * share, gain, power, terms.noise_psd) / MEGA


def upload_mbit(terms: UserTerms, alpha: np.ndarray) -> np.ndarray:
    """Bits each user uploads in the round (Mbit): cut activations (tokens at α = 0, none at α = Υ)
    plus the adapters of its α layers for aggregation."""
    alpha = np.asarray(alpha, dtype=np.float64)
    payload = np.where(alpha <= 0, terms.token_mbit, np.where(alpha >= terms.layers, 0.0, terms.activation_mbit))
    return payload + terms.adapter_mbit * alpha


def user_costs(terms: UserTerms, server: np.ndarray, alpha: np.ndarray, frequency: np.ndarray, power: np.ndarray,
               bandwidth: np.ndarray, compute_share: np.ndarray) -> np.ndarray:
    """Each user's share of the env's normalized cost (H, [LZ24] P3), [..., n]; α may be fractional.

    Inputs are per user of ``terms`` ([n]) or batches of such ([b, n]; broadcast): every row is one
    candidate, scored by ``costs.evaluate`` (:func:`model_user_costs`) in one batched call. Users of
    ``terms.state`` outside ``terms.users`` are evaluated at harmless values and not returned (a
    user's cost depends only on its own values). A zero rate with bits to send costs ``inf``.
    """
    arrays = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in
                                   (server, alpha, frequency, power, bandwidth, compute_share)))
    shape = arrays[0].shape
    n = shape[-1] if shape else 1
    server, alpha, frequency, power, bandwidth, compute_share = (a.reshape(-1, n) for a in arrays)
    rows = server.shape[0]
    total = terms.state.gain.shape[1]
    cols = terms.users

    def full(values: np.ndarray, default: float | np.ndarray) -> np.ndarray:
        out = np.empty((rows, total))
        out[:] = default
        out[:, cols] = values
        return out

    config = terms.config
    alpha_full = full(alpha, float(config.split_min_local))
    decision = Decision(
        split=np.stack([config.num_layers - alpha_full, alpha_full], axis=-1),
        server=full(server, 0.0).astype(np.int64),
        power=full(power, terms.state.power_max_w[0]),
        d2d_power=np.zeros((rows, total, 0)),
        bandwidth=full(bandwidth, 1.0),
        compute=full(compute_share, 1.0),
        frequency=full(frequency, 1.0)[..., None],
        microbatches=np.full((rows, total), config.workload.microbatches, dtype=np.int64),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = model_user_costs(config, terms.state_batch(rows), decision)
    return cost[:, cols].reshape(shape)


def model_user_costs(config: SystemConfig, state: SystemState, decision: Decision) -> np.ndarray:
    """Each user's share of the env's normalized cost, from ``costs.evaluate`` itself, [B, N].

    Σ_n equals ``costs.reward_terms(...)["cost"]`` for ``mean``/``sum`` delay aggregation.
    """
    weights = CostWeights.of(config)
    metrics = costs.evaluate(config, state, decision)
    return (weights.energy * metrics.energy_j_user + weights.delay * metrics.latency_s
            + weights.stability * metrics.stability)


def model_cost(config: SystemConfig, state: SystemState, decision: Decision) -> np.ndarray:
    """The env's round cost −reward (cost plus penalties), [B]: what every candidate is judged by."""
    terms = costs.reward_terms(config, costs.evaluate(config, state, decision), reference.reference_scales(config))
    return -terms["reward"]


def to_decision(config: SystemConfig, terms: UserTerms, server: np.ndarray, alpha: np.ndarray,
                frequency: np.ndarray, power: np.ndarray, bandwidth: np.ndarray,
                compute_share: np.ndarray) -> Decision:
    """A complete decision with a batch axis of 1 from per-user values ([N] each; α may be fractional).

    Users with nothing to train get α = split_min_local, p_max and zero shares; users without
    server layers (α = Υ) get a zero compute share.
    """
    active = terms.active
    alpha = np.where(active, alpha, terms.alpha_low)
    integral = np.all(np.asarray(alpha) == np.round(alpha))
    dtype = np.int64 if integral else np.float64
    split = np.stack([terms.layers - alpha, alpha], axis=-1).astype(dtype)
    has_server = active & (split[:, 0] > 0)
    return Decision(
        split=split[None],
        server=np.asarray(server, dtype=np.int64)[None],
        power=np.where(active, power, terms.power_max)[None].astype(np.float64),
        d2d_power=np.zeros((1, terms.num_users, 0)),
        bandwidth=np.where(active, bandwidth, 0.0)[None].astype(np.float64),
        compute=np.where(has_server, compute_share, 0.0)[None].astype(np.float64),
        frequency=np.where(active, frequency, 1.0)[None, :, None].astype(np.float64),
        microbatches=np.full((1, terms.num_users), config.workload.microbatches, dtype=np.int64),
    )
