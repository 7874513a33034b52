"""DASHF ([QZ24], SPEC §6.4): Dinkelbach + Alternating optimization + SDR + Hungarian + Fractional programming.

Source: L. Qian, J. Zhao, "User Association and Resource Allocation in Large Language Model Based Mobile
Edge Computing System over 6G Wireless Communications", VTC2024-Spring (arXiv 2310.17872); only the
abstract is public, so the algorithm follows the reconstruction in shared/papers/QZ24-dashf.md (§4.1-4.6,
defaults §5.3) and the fractional-programming transform of J. Zhao, L. Qian, W. Yu, IEEE JSAC 42(3), 2024.

**Problem.** Per round and system, maximize the env's service-cost ratio (SPEC §3.4)

    SCR = N(v)/D(v) = Σ_n U_n / Σ_n (w_d·T_n/T_ref + w_e·E_n/E_ref)

over v = (association x, offloading ratio ρ_n = δ_{n,0}/Υ, server compute shares φ, bandwidth shares β,
powers p, DVFS levels u). On the ``weighted`` objective N = 0, D = the env's cost and λ = 1.

**Algorithm** (notes §4.6):

* *Dinkelbach* (outer): λ_0 = SCR of a feasible start (notes §4.1: nearest server, ρ = 1/2, equal
  shares, p_max, f_max — the ``equal_share`` heuristic); each iteration maximizes G_λ = N − λ·D by
  alternating optimization from the incumbent and sets λ ← N/D. A candidate replaces the incumbent only
  if it raises G_λ (exact arithmetic), and G_λ(incumbent) = 0, so λ never decreases. Stops when
  N − λD ≤ ε·λD, λ gains less than ε relatively, or after ``max_dinkelbach`` iterations. On the
  ``weighted`` objective the loop is a single pass.
* *Block A* (x, ρ, φ with the radio fixed): the QCQP of notes §4.3 in w = [x; ρ; o; φ; t] — products
  y = x·ρ and z = x·o (o: the user offloads at all, so the cut activations are paid only then) as
  lifted entries with McCormick cuts and RLT identities; the server delay ρ/φ as the hyperbolic
  constraint t·φ ≥ β·y (with RLT cuts and tangent cuts of the convex 1/φ); the binaries as x² = x,
  o² = o — lifted to W̄ = [w;1][w;1]ᵀ, rank dropped (SDR), solved by cvxpy with Clarabel (SCS as
  fallback) in its exact chordal decomposition (:class:`AssociationSDP`). Candidates: the SDP's
  first-order part w*, the principal eigenvector of W̄ and ``samples`` Gaussian draws
  ξ ~ N(w*, W − w*w*ᵀ) (Luo et al. 2010); each is mapped to a feasible association by the Hungarian
  method (``linear_sum_assignment`` on −x̂ over one column per server capacity slot); then ρ and φ are
  recovered given x (integer ρ by exact enumeration of the layer counts, φ by the KKT conditions of
  the per-server delay-energy trade-off) and every candidate, the incumbent's association included, is
  scored with the env's arithmetic; the best replaces the incumbent only if it raises G_λ.
* *Block B* (β, p, u with x, ρ, φ fixed): u in closed form (argmin of α(t/u + e·u²)); (β, p) by
  Zhao's transform of each upload ratio A_n(p)/r_n(β, p) = min_z A²z + 1/(4zr²), z = 1/(2Ar): for fixed z
  the problem is convex (the rate in DCP form via ``rel_entr``), z is updated in closed form, and the
  alternation decreases the cost to a stationary point (notes §4.5).

**Where the surrogates differ from the env's cost** (every candidate is finally scored with
``costs.evaluate`` and the env's SCR/reward arithmetic, so these only steer the search):

* the per-user cost is modelled as the sum of its stages (Q = 1 micro-batch, no per-stage overhead);
  scenarios with Q > 1 or t₀ > 0 are solved with this approximation;
* in Block A the radio is fixed per pair: the user's power, and on each server the bandwidth share it
  holds there (its current one on its own server) floored by an equal share of that server; candidates
  are scored with the current shares renormalized per server (Block B then re-optimizes them);
* the QCQP treats ρ as continuous (the exact enumeration rounds it), fixes ρ at the incumbent's value
  in the server-energy term γ·ρ·φ² (W[φ,φ] keeps it exact in φ), and linearizes the stability term of
  the ``weighted`` cost at the incumbent ρ;
* ``delay_aggregate = "max"`` is modelled as the mean.

Units inside the solver (notes §7.12): Mbit, TFLOP, MHz, Mbit/s, seconds, joules; costs in the env's
normalized units, so every coefficient is O(1e-3..10). Shapes: N users, M servers, one system at a time.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cvxpy as cp
import numpy as np
from scipy.optimize import linear_sum_assignment

from agents.base import Policy, restrict_to_controls
from agents.heuristics import EqualSharePolicy
from mec_gym.config import SystemConfig
from mec_gym.model import channel, compute, costs, llm, reference
from mec_gym.model.decision import Decision, complete, compute_rule
from mec_gym.model.dynamics import SystemState

MBIT = 1.0e6  # bits per Mbit
TFLOP = 1.0e12  # FLOPs per TFLOP
MHZ = 1.0e6  # Hz per MHz
_SOLVED = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
_LN2 = float(np.log(2.0))


def solve_problem(problem: cp.Problem, solvers: tuple[str, ...]) -> tuple[str, str]:
    """Solve with the first of ``solvers`` that succeeds; returns (solver, status) or ("", "failed").

    ``SolverError`` and statuses other than optimal / optimal-inaccurate move on to the next solver.
    cvxpy's "may be inaccurate" warning is silenced here: the caller gets the status and counts it,
    and every solution is re-scored with the env's arithmetic anyway.
    """
    for solver in solvers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver, warm_start=False)  # results must not depend on earlier solves
        except cp.error.SolverError:
            continue
        if problem.status in _SOLVED:
            return solver, problem.status
    return "", "failed"


# ----------------------------------------------------------------------------- settings and results


@dataclass(frozen=True)
class DashfSettings:
    """Tolerances, sizes and ablation switches of DASHF (defaults: notes §5.3, tightened for speed).

    Args:
        max_dinkelbach: K_max, Dinkelbach iterations.
        dinkelbach_tol: ε_D, relative stopping tolerance on N − λD and on the λ increase.
        max_ao: I_AO, alternating-optimization rounds per Dinkelbach iteration.
        ao_tol: ε_AO, relative stopping tolerance on the AO objective G_λ.
        samples: L, Gaussian randomization draws per SDP.
        recovery_rounds: φ ↔ ρ alternations when recovering (ρ, φ) from an association.
        fp_max_iter / fp_tol: Zhao-transform iterations of Block B and their relative tolerance (tight: the
            transform is a majorize-minimize iteration, linear near its fixed point, and a loose stop leaves
            ~1e-5 of SCR on the table).
        tangent_shares: φ̄ of the tangent cuts t ≥ β(2y/φ̄ − ρφ/φ̄²), as multiples of 1/capacity.
        sdp_solvers / conic_solvers: solvers tried in order (Clarabel, then SCS).
        optimize_association / optimize_split / optimize_compute / optimize_radio: which decisions DASHF
            changes (the baselines switch blocks off); a field the scenario does not control is never
            changed whatever these say.
        radio_method: ``"fp"`` (Zhao's transform) or ``"plain"`` (alternating β and p without it).
        seed: seed of the Gaussian randomization (``Policy.reset``/``bind`` override it).
    """

    max_dinkelbach: int = 8
    dinkelbach_tol: float = 1e-4
    max_ao: int = 3
    ao_tol: float = 1e-4
    samples: int = 64
    recovery_rounds: int = 2
    fp_max_iter: int = 50
    fp_tol: float = 1e-7
    tangent_shares: tuple[float, ...] = (0.5, 1.0, 2.0)
    sdp_solvers: tuple[str, ...] = ("CLARABEL", "SCS")
    conic_solvers: tuple[str, ...] = ("CLARABEL", "SCS")
    optimize_association: bool = True
    optimize_split: bool = True
    optimize_compute: bool = True
    optimize_radio: bool = True
    radio_method: str = "fp"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.radio_method not in ("fp", "plain"):
            raise ValueError(f"radio_method: must be 'fp' or 'plain', got {self.radio_method!r}")
        for name in ("max_dinkelbach", "max_ao", "recovery_rounds", "fp_max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.samples < 0:
            raise ValueError(f"samples: must be >= 0, got {self.samples}")


@dataclass
class DashfTrace:
    """What one DASHF solve did (per system). Times in seconds.

    ``lambdas``: λ_0 (the start's SCR) and λ after each Dinkelbach iteration (non-decreasing);
    on the ``weighted`` objective the reward after each pass instead. ``rank_one_ratio``: λ_max(W̄)/tr(W̄)
    of each SDP's max-determinant completion (1 = rank one; the loosely bounded entries W[t,t], W[φ,φ] keep it
    below 1 even when the association is integral); ``rank_one_ratio_association`` the same on the
    [x; ρ; o; 1] block that determines the association. ``randomization_wins``/``eigenvector_wins``: Block-A solves
    where the best Gaussian sample's candidate scored strictly higher / lower than the principal
    eigenvector's. ``candidate_wins``: which source produced the Block-A winner each time. ``sdp_solvers``:
    SDP solves per solver that answered them (``CLARABEL``, ``SCS`` when Clarabel failed, ``none`` when both
    failed and Block A fell back to the Hungarian step on per-pair gains: ``sdp_fallbacks``).
    """

    lambdas: list[float] = field(default_factory=list)
    dinkelbach_iterations: int = 0
    ao_rounds: list[int] = field(default_factory=list)
    block_a_solves: int = 0
    block_a_improvements: int = 0
    rank_one_ratio: list[float] = field(default_factory=list)
    rank_one_ratio_association: list[float] = field(default_factory=list)
    randomization_wins: int = 0
    eigenvector_wins: int = 0
    candidate_wins: dict[str, int] = field(default_factory=dict)
    unique_associations: list[int] = field(default_factory=list)
    sdp_solve_s: list[float] = field(default_factory=list)
    radio_solve_s: list[float] = field(default_factory=list)
    fp_iterations: list[int] = field(default_factory=list)
    block_b_improvements: int = 0
    sdp_fallbacks: int = 0
    sdp_inaccurate: int = 0
    sdp_solvers: dict[str, int] = field(default_factory=dict)
    radio_fallbacks: int = 0
    solve_time_s: float = 0.0
    scr: float = 0.0
    reward: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DashfResult:
    """A solve's decision (complete, batch axis of 1, validated by the env's rules) and its trace."""

    decision: Decision
    trace: DashfTrace


# ----------------------------------------------------------------------------- the model, as coefficients


def tile_state(state: SystemState, count: int) -> SystemState:
    """``count`` copies of a one-system state along the batch axis (to score many candidates at once)."""
    return SystemState(**{f.name: np.repeat(getattr(state, f.name), count, axis=0)
                          for f in dataclasses.fields(SystemState)})


def check_supported(config: SystemConfig) -> None:
    """Raise ``ValueError`` if DASHF cannot model ``config``: it assumes one device per user ([QZ24]) and, on
    the ``scr`` objective, a positive service numerator (q0 > 0, so that D = N/SCR is defined)."""
    if config.devices_per_user != 1:
        raise ValueError(f"devices_per_user: DASHF models one device per user ([QZ24]); this scenario has "
                         f"{config.devices_per_user} (use a scenario with devices_per_user = 1, e.g. qian2024)")
    if "microbatches" in config.controls:
        raise ValueError("controls: DASHF does not choose micro-batch counts ([QZ24] trains one batch per round); "
                         "remove 'microbatches' from controls (it then follows the scenario's fixed count)")
    if config.objective == "scr" and config.service.q0[0] <= 0:
        raise ValueError(f"service.q0: DASHF needs a positive lower bound on the ratio's numerator on the scr "
                         f"objective, got {config.service.q0}; set service.q0 = (a, b) with 0 < a <= b")


@dataclass
class PairTerms:
    """The cost of one system user by user and pair by pair, in the solver's units (module docstring).

    For user n on server m with δ server layers (α = Υ − δ local), DVFS level u, compute share φ,
    bandwidth share β and power p (Q = 1, no per-stage overhead; the per-round terms τ, ε, S_up, S_dl
    include the round's I local iterations, the adapter upload happens once):

        T_n = α·τL_n/u + (S_up + α·s_ad)/r + δ·τS_nm/φ + S_dl/r_dl
        E_n = α·εL_n·u² + p·(S_up + α·s_ad)/r + w_srv·(δ·εS_nm·φ^e + P_dl·S_dl/r_dl)

    with r = β·W·log2(1 + g·p/(N0·β·W)) (Mbit/s, :func:`channel.shannon_rate`), S_up the cut activations
    (raw tokens at α = 0; nothing when δ = 0), s_ad the adapter upload per local layer, S_dl the
    downlink gradients (when the scenario has a downlink), e = 2 for the ``frequency`` server energy
    model and 0 for ``time_share``. τL, εL, τS, εS come from :func:`compute.compute_delay_energy` at
    u = 1, φ = 1. The per-user cost is κ_T·T_n + κ_E·E_n + κ_S·S_n and the numerator U_n (``scr`` only).
    :func:`user_terms` evaluates these formulas; tests check them against ``costs.evaluate``.
    """

    layers: int
    delta_low: np.ndarray  # [N] fewest server layers (device memory)
    delta_high: np.ndarray  # [N] most server layers (Υ − split_min_local)
    local_delay_s: np.ndarray  # [N] τL: one local layer at u = 1
    local_energy_j: np.ndarray  # [N] εL: one local layer at u = 1
    server_delay_s: np.ndarray  # [N,M] τS: one server layer at φ = 1
    server_energy_j: np.ndarray  # [N,M] εS: one server layer at φ = 1
    energy_exponent: int  # e: server energy ∝ φ^e
    up_mbit: np.ndarray  # [N] cut activations uploaded when 0 < α and δ > 0
    token_mbit: np.ndarray  # [N] raw tokens uploaded when α = 0
    adapter_mbit: np.ndarray  # [N] aggregation upload per local layer
    down_mbit: np.ndarray  # [N] downlink gradients when δ > 0 and α > 0 (0 without a downlink)
    gain: np.ndarray  # [N,M]
    noise_w_per_mhz: float  # N0 in W/MHz
    bandwidth_mhz: float  # W
    downlink_power_w: float
    server_energy_weight: float
    power_low: np.ndarray  # [N]
    power_high: np.ndarray  # [N]
    frequency_low: float
    q0: np.ndarray  # [N,M]
    q1: np.ndarray  # [N,M]
    kappa_delay: float  # κ_T, per second of one user's latency
    kappa_energy: float  # κ_E, per joule of one user's energy
    kappa_stability: float  # κ_S, per unit of one user's stability bound (weighted objective)
    with_service: bool  # the ratio's numerator counts (scr objective)
    stability: Callable[[np.ndarray], np.ndarray]  # S_n(α), the model's bound

    @property
    def num_users(self) -> int:
        return int(self.gain.shape[0])

    @property
    def num_servers(self) -> int:
        return int(self.gain.shape[1])

    def rate(self, gain: np.ndarray, share: np.ndarray, power: np.ndarray | float) -> np.ndarray:
        """Shannon rate in Mbit/s of ``share`` of a server's band at ``power`` W (:func:`channel.shannon_rate`)."""
        return channel.shannon_rate(share * self.bandwidth_mhz, gain, power, self.noise_w_per_mhz)

    def upload_mbit(self, delta: np.ndarray) -> np.ndarray:
        """Bits a user uploads (Mbit): activations (tokens at α = 0, none at δ = 0) plus α adapters."""
        alpha = self.layers - delta
        payload = np.where(delta <= 0, 0.0, np.where(alpha <= 0, self.token_mbit, self.up_mbit))
        return payload + alpha * self.adapter_mbit

    def download_mbit(self, delta: np.ndarray) -> np.ndarray:
        alpha = self.layers - delta
        return np.where((delta > 0) & (alpha > 0), self.down_mbit, 0.0)


def pair_terms(config: SystemConfig, state: SystemState, scales: costs.Scales | None = None) -> PairTerms:
    """The coefficients of a one-system ``state`` (batch axis 1) in the solver's units; ``scales`` are the
    normalizers T_ref, E_ref, ... (default: the scenario's, :func:`reference.reference_scales`)."""
    check_supported(config)
    scales = scales or reference.reference_scales(config)
    spec, wl, srv, radio, w = config.llm, config.workload, config.server, config.radio, config.weights
    n = config.num_users
    iterations = wl.local_iterations  # a round repeats compute and cut-layer traffic I times, then aggregates
    sequences = state.batch(config)[0]
    per_sequence = costs.per_sequence_work(config, state)[0]
    work_tflop = iterations * sequences * per_sequence / TFLOP
    local_delay, local_energy = compute.compute_delay_energy(
        work_tflop, state.device_rate_flops[0, :, 0] / TFLOP, 1.0, state.device_power_w[0, :, 0])
    peak = state.server_peak_flops[0][None, :]
    kernel = (sequences / wl.microbatches * per_sequence)[:, None]
    rate_tflops = compute.gpu_utilization(kernel, peak, srv.utilization, srv.saturation_seconds,
                                          srv.utilization_exponent) * peak / TFLOP
    free = 1.0 - state.load[0][None, :]
    power_srv = state.server_power_w[0][None, :]
    if srv.energy_model == "frequency":  # the share is a clock: f = φ(1−ℓ)f_max, energy ∝ φ²
        server_delay, server_energy = compute.compute_delay_energy(work_tflop[:, None], rate_tflops, free, power_srv)
        exponent = 2
    else:  # time-shared at full clock: energy independent of φ
        server_delay, server_energy = compute.compute_delay_energy(work_tflop[:, None], rate_tflops, 1.0, power_srv,
                                                                   free)
        exponent = 0
    act = iterations * sequences * llm.activation_bits_per_sequence(spec, wl, state.seq_len[0]) / MBIT
    tokens = iterations * sequences * llm.token_bits_per_sequence(wl, state.seq_len[0]) / MBIT
    active = sequences > 0
    if config.objective == "scr":
        kappa_delay, kappa_energy, kappa_stability = w.delay / scales.latency_s, w.energy / scales.energy_j_user, 0.0
    else:  # weighted: the env's cost split per user; "max" delay modelled as the mean
        per_user = 1.0 if config.delay_aggregate == "sum" else 1.0 / n
        kappa_delay = w.delay * per_user / scales.delay_s
        kappa_energy = w.energy / scales.energy_j
        kappa_stability = w.stability / (n * scales.stability)
    samples = np.where(active, float(wl.stability_samples), 0.0) if wl.stability_samples else iterations * sequences
    layers = config.num_layers

    def stability(alpha: np.ndarray) -> np.ndarray:
        return costs.stability_bound(config, alpha, np.broadcast_to(samples, np.shape(alpha)))

    return PairTerms(
        layers=layers,
        delta_low=layers - np.minimum(state.max_layers[0, :, 0], layers).astype(np.int64),
        delta_high=np.full(n, layers - config.split_min_local, dtype=np.int64),
        local_delay_s=local_delay,
        local_energy_j=local_energy,
        server_delay_s=server_delay,
        server_energy_j=server_energy,
        energy_exponent=exponent,
        up_mbit=np.where(active, act, 0.0),
        token_mbit=np.where(active, tokens, 0.0),
        adapter_mbit=np.where(active, llm.adapter_upload_bits_per_layer(spec, wl) / MBIT, 0.0),
        down_mbit=np.where(active & radio.downlink, act, 0.0),
        gain=state.gain[0].copy(),
        noise_w_per_mhz=channel.noise_psd_w_per_hz(radio.noise_psd_dbm_hz, radio.noise_figure_db) * MHZ,
        bandwidth_mhz=srv.bandwidth_hz / MHZ,
        downlink_power_w=srv.downlink_power_w,
        server_energy_weight=float(config.server_energy_weight),
        power_low=np.full(n, radio.power_min_w),
        power_high=state.power_max_w[0].copy(),
        frequency_low=config.device.frequency_min,
        q0=state.service_q0[0].copy(),
        q1=state.service_q1[0].copy(),
        kappa_delay=kappa_delay,
        kappa_energy=kappa_energy,
        kappa_stability=kappa_stability,
        with_service=config.objective == "scr",
        stability=stability,
    )


def user_terms(terms: PairTerms, server: np.ndarray, delta: np.ndarray, compute_share: np.ndarray,
               bandwidth: np.ndarray, power: np.ndarray, frequency: np.ndarray) -> dict[str, np.ndarray]:
    """Each user's latency (s), energy (J), stability and service from the :class:`PairTerms` formulas.

    Arrays broadcast over leading axes ([..., N]); equals ``costs.evaluate`` for Q = 1 and t₀ = 0. This is the
    surrogate the QCQP and Block B are built from, written out so that tests can check it against the model;
    DASHF never scores a decision with it (:class:`ExactScore` goes through ``costs.evaluate``).
    """
    users = np.arange(terms.num_users)
    delta = np.asarray(delta, dtype=np.float64)
    alpha = terms.layers - delta
    gain = terms.gain[users, server]
    rate = terms.rate(gain, bandwidth, power)
    up_s, up_j = channel.transmission(terms.upload_mbit(delta), rate, power)
    rate_dl = terms.rate(gain, bandwidth, terms.downlink_power_w)
    dl_s, dl_j = channel.transmission(terms.download_mbit(delta), rate_dl, terms.downlink_power_w)
    has_server = delta > 0
    share = np.where(has_server, compute_share, 1.0)
    server_s = np.where(has_server, delta * terms.server_delay_s[users, server] / share, 0.0)
    server_j = delta * terms.server_energy_j[users, server] * share**terms.energy_exponent
    local_s = alpha * terms.local_delay_s / frequency
    local_j = alpha * terms.local_energy_j * frequency**2
    return {
        "latency_s": local_s + up_s + server_s + dl_s,
        "energy_j": local_j + up_j + terms.server_energy_weight * (server_j + dl_j),
        "stability": terms.stability(alpha.astype(np.int64)),
        "service": costs.service_quality(terms.q0[users, server], terms.q1[users, server], delta / terms.layers),
    }


def local_frequency(terms: PairTerms) -> np.ndarray:
    """DVFS level minimizing κ_T·τL/u + κ_E·εL·u² (one local layer): u* = (κ_T·τL/(2κ_E·εL))^{1/3}, clipped."""
    with np.errstate(divide="ignore"):
        level = np.cbrt(terms.kappa_delay * terms.local_delay_s / (2.0 * terms.kappa_energy * terms.local_energy_j))
    return np.clip(np.nan_to_num(level, nan=1.0, posinf=1.0), terms.frequency_low, 1.0)


def _kkt_share(b: np.ndarray, c: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """The φ > 0 solving −b/φ² + 2cφ + μ = 0 (b > 0, c ≥ 0, μ ≥ 0), elementwise, in closed form.

    With ψ = 1/φ the condition is the depressed cubic b·ψ³ − μ·ψ − 2c = 0, whose one positive root is
    (q = c/b, r = μ/(3b), Δ = q² − r³) ψ = u + r/u with u = ∛(q + √Δ) when Δ ≥ 0 (no cancellation),
    and ψ = 2√r·cos(arccos(q/r^{3/2})/3) when Δ < 0; c = 0 gives φ = √(b/μ). One Newton step polishes it.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q, r = c / b, mu / (3.0 * b)
        delta = q * q - r**3
        u = np.cbrt(q + np.sqrt(np.maximum(delta, 0.0)))
        psi_one = u + np.where(u > 0, r / u, 0.0)
        psi_three = 2.0 * np.sqrt(r) * np.cos(np.arccos(np.clip(q / np.maximum(r, 1e-300) ** 1.5, -1.0, 1.0)) / 3.0)
        psi = np.where(delta >= 0.0, psi_one, psi_three)
        phi = 1.0 / psi
        slope = 2.0 * b / phi**3 + 2.0 * c
        phi = phi - (-b / phi**2 + 2.0 * c * phi + mu) / slope
    return phi


def compute_shares(terms: PairTerms, server: np.ndarray, delta: np.ndarray, num_servers: int) -> np.ndarray:
    """KKT compute shares: per server, minimize Σ δ_n(κ_T·τS_n/φ_n + κ_E·w_srv·εS_n·φ_n^e) s.t. Σ φ ≤ 1.

    e = 0: φ_n ∝ √(δ_n τS_n) (notes §4.4). e = 2: stationarity −b_n/φ_n² + 2c_nφ_n + μ = 0 with
    b = δκ_T τS, c = δκ_E w_srv εS; μ = 0 (each user's unconstrained optimum (b/2c)^{1/3}) when the server's
    shares fit, otherwise the μ > 0 with Σ φ_n(μ) = 1 by bisection on log μ, φ_n(μ) in closed form
    (:func:`_kkt_share`). Users without server layers get 0. Works on [..., N] batches; λ cancels out.
    """
    users = np.arange(terms.num_users)
    b = np.where(delta > 0, delta * terms.kappa_delay * terms.server_delay_s[users, server], 0.0)
    c = np.where(delta > 0, delta * terms.kappa_energy * terms.server_energy_weight
                 * terms.server_energy_j[users, server], 0.0)
    onehot = server[..., None] == np.arange(num_servers)  # [..., N, M]

    def per_server(values: np.ndarray) -> np.ndarray:
        return np.einsum("...n,...nm->...m", values, onehot)

    def per_user(values: np.ndarray) -> np.ndarray:
        return np.einsum("...m,...nm->...n", values, onehot)

    if terms.energy_exponent == 0 or not np.any(c > 0):
        root = np.sqrt(b)
        return np.divide(root, per_user(per_server(root)), out=np.zeros_like(root), where=root > 0)
    positive = b > 0
    b_safe = np.where(positive, b, 1.0)

    def shares_at(mu_server: np.ndarray) -> np.ndarray:
        return np.where(positive, np.minimum(_kkt_share(b_safe, c, per_user(mu_server)), 1.0), 0.0)

    zero = np.zeros(onehot.shape[:-2] + (num_servers,))
    phi = shares_at(zero)
    over = per_server(phi) > 1.0
    if not np.any(over):
        return phi
    # Σ φ(μ) falls from > 1 at μ = 0 to ≤ 1 once μ ≥ Σ b (each φ ≤ √(b/μ) and Σ √(b_n/Σb) ≤ √N·…): bracket
    # log μ in [log(1e-12·Σb), log(N·Σb)] and bisect
    total_b = np.maximum(per_server(b), 1e-300)
    low, high = np.log(1e-12 * total_b), np.log(terms.num_users * total_b)
    for _ in range(50):
        mid = 0.5 * (low + high)
        too_big = per_server(shares_at(np.where(over, np.exp(mid), 0.0))) > 1.0
        low, high = np.where(too_big, mid, low), np.where(too_big, high, mid)
    phi = shares_at(np.where(over, np.exp(high), 0.0))
    return phi / np.maximum(per_user(per_server(phi)), 1.0)  # exact Σ ≤ 1 after bisection


# ----------------------------------------------------------------------------- exact scoring


class ExactScore:
    """N(v), D(v) and the env reward of candidate decisions with the env's arithmetic (SPEC §3.4).

    ``scr``: N = Σ U_n and D = Σ_n (w_d T_n/T_ref + w_e E_n/E_ref), exactly the denominator of
    ``costs.reward_terms``' SCR. ``weighted``: N = 0 and D = the env's cost. Candidates are scored in
    batches on a tiled copy of the system's state. ``scales`` default to the scenario's normalizers
    (what the env uses); sweeps pass one fixed set so that values along a sweep are comparable.
    """

    def __init__(self, config: SystemConfig, state: SystemState, scales: costs.Scales | None = None) -> None:
        self.config = config
        self.state = state
        self.scales = scales or reference.reference_scales(config)
        self._tiles: dict[int, SystemState] = {1: state}

    def tiled(self, count: int) -> SystemState:
        if count not in self._tiles:
            self._tiles[count] = tile_state(self.state, count)
        return self._tiles[count]

    def metrics(self, decision: Decision) -> costs.RoundMetrics:
        state = self.tiled(decision.server.shape[0])
        return costs.evaluate(self.config, state, complete(self.config, state, decision))

    def totals(self, decision: Decision) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, D, reward), each [C], for a batch of C candidate decisions."""
        metrics = self.metrics(decision)
        terms = costs.reward_terms(self.config, metrics, self.scales)
        if self.config.objective == "scr":
            # D = N / SCR with the model's own SCR (N = Σ U_n ≥ Σ q0 > 0): no second copy of its formula
            numerator = metrics.service.sum(axis=-1)
            return numerator, numerator / terms["scr"], terms["reward"]
        return np.zeros_like(terms["cost"]), terms["cost"], terms["reward"]

    def user_gains(self, decision: Decision, terms: PairTerms, lam: float) -> np.ndarray:
        """Per-user share of G_λ = N − λD, [C, N] (exact for scr and mean/sum delay; the sum of the rows
        equals G_λ there)."""
        metrics = self.metrics(decision)
        cost = (terms.kappa_delay * metrics.latency_s + terms.kappa_energy * metrics.energy_j_user
                + terms.kappa_stability * metrics.stability)
        service = metrics.service if terms.with_service else 0.0
        return service - lam * cost


def stack_decisions(decisions: list[Decision]) -> Decision:
    """Concatenate decisions with a batch axis along it (fields None stay None)."""
    out = {}
    for f in dataclasses.fields(Decision):
        values = [getattr(d, f.name) for d in decisions]
        out[f.name] = None if values[0] is None else np.concatenate(values, axis=0)
    return Decision(**out)


# ----------------------------------------------------------------------------- Block A: the SDR of the QCQP


class AssociationSDP:
    """Block A's semidefinite relaxation, built once per (N, M, capacity) with cvxpy ``Parameter``s (DPP).

    **QCQP** (notes §4.3) in w = [x (NM); ρ (N); o (N); φ (NM); t (NM)] — association, offloading ratio,
    offload indicator, compute share, server-delay epigraph: maximize

        Σ (q0 − c0)·x + Σ (q1 − c1)·y − Σ c_z·z + Σ a·ρ − Σ t − Σ γ·φ²      with y = x·ρ, z = x·o,

    s.t. x² = x, o² = o, Σ_m x_nm = 1, Σ_n x_nm ≤ K_m, ρ_lo ≤ ρ ≤ ρ_hi·o, φ_min·z ≤ φ ≤ z,
    Σ_n φ_nm ≤ 1, t·φ ≥ β·y (hyperbolic: t ≥ β·ρ/φ for the associated pair), 0 ≤ t ≤ t_max·x.
    o_n = 1 when user n trains any layer on its server: the cut activations (and downlink gradients),
    c_z, are paid only then, which makes the jump of the cost at ρ = 0 exact. The floor φ_min = 10⁻³
    (an offloading user gets at least 0.1 % of its server) bounds t by t_max = β·ρ_hi/φ_min.

    **SDR.** Lift W̄ = [w;1][w;1]ᵀ and drop the rank. x² = x and o² = o become W[x,x] = x, W[o,o] = o;
    y = W[x,ρ] and z = W[x,o] with McCormick cuts (ρ_lo·x ≤ y ≤ ρ_hi·z, ρ − ρ_hi(1−x) ≤ y ≤ ρ − ρ_lo(1−x);
    x + o − 1 ≤ z ≤ min(x, o)) and the RLT identities of Σ_m x_nm = 1 (Σ_m y_nm = ρ_n, Σ_m z_nm = o_n,
    W[x_nm, x_nm'] = 0 for m ≠ m'); W[ρ,o] = ρ (ρ > 0 only when o = 1); the hyperbolic constraint
    becomes W[t,φ] ≥ β·y; products with a binary that vanish with it are exact, W[x,φ] = φ and
    W[x,t] = t; RLT cuts t ≥ W[t,φ] (from t(x − φ) ≥ 0), W[t,t] ≤ t_max·t, W[φ,φ] ≤ φ,
    ρ_lo·φ ≤ W[ρ,φ] ≤ min(ρ_hi·φ, y); tangent cuts of the convex 1/φ at φ̄: t ≥ β(2y/φ̄ − W[ρ,φ]/φ̄²);
    the energy term φ² is W[φ,φ]. Every cut holds at every rank-one feasible point. The second moments
    W[ρ,ρ], W[φ,φ], W[t,t] barely enter the objective, so many lifted matrices share the optimum; a
    trace term of weight ``TRACE_WEIGHT`` (10⁻⁶ of the scaled objective) picks the lowest-trace one (the
    trace heuristic for low rank, Fazel 2002), which keeps the interior-point iterates off degenerate faces.

    **Chordal decomposition.** The objective and constraints touch only the entries of W̄ inside the
    cliques {x_n·, ρ_n, o_n, 1} (one per user) and {x_nm, ρ_n, φ_nm, t_nm, 1} (one per pair); together with
    the homogenizing 1, adjacent to all, they form a chordal pattern, so by Grone et al. (1984) requiring
    each clique block to be PSD has the same feasible set on those entries as W̄ ⪰ 0 — the same
    relaxation, solved with small cones instead of one (3NM+2N+1)² cone (≈ 100× faster with Clarabel).
    :meth:`completion` rebuilds the full W̄ (max-determinant completion) for the eigenvector and the
    Gaussian randomization.
    """

    PHI_MIN = 1e-3
    TRACE_WEIGHT = 1e-6

    def __init__(self, n: int, m: int, capacity: int, tangent_shares: tuple[float, ...]) -> None:
        self.n, self.m, self.capacity = n, m, capacity
        nm = n * m
        self.size = 3 * nm + 2 * n
        self.ix = np.arange(nm)  # positions in w: x_nm at n·M + m, then ρ, o, φ, t
        self.irho = nm + np.arange(n)
        self.io = nm + n + np.arange(n)
        self.iphi = nm + 2 * n + np.arange(nm)
        self.it = 2 * nm + 2 * n + np.arange(nm)
        pair_user = np.repeat(np.arange(n), m)
        # each user's variables: x_n· (M), ρ_n, o_n, then (φ_nm, t_nm) pair by pair
        self.user_groups = [np.concatenate([self.ix[u * m:(u + 1) * m], [self.irho[u], self.io[u]],
                                            np.stack([self.iphi[u * m:(u + 1) * m], self.it[u * m:(u + 1) * m]],
                                                     axis=1).ravel()]) for u in range(n)]
        self.x, self.rho, self.o = cp.Variable(nm), cp.Variable(n), cp.Variable(n)
        self.phi, self.t = cp.Variable(nm), cp.Variable(nm)
        self.y, self.z, self.rho_sq = cp.Variable(nm), cp.Variable(nm), cp.Variable(n)  # W[x,ρ], W[x,o], W[ρ,ρ]
        self.rho_phi, self.rho_t = cp.Variable(nm), cp.Variable(nm)  # W[ρ,φ], W[ρ,t]
        self.phi_sq, self.phi_t, self.t_sq = cp.Variable(nm), cp.Variable(nm), cp.Variable(nm)  # W[φ,φ], W[φ,t], W[t,t]
        self.x_gain, self.y_gain = cp.Parameter(nm), cp.Parameter(nm)
        self.z_cost = cp.Parameter(nm, nonneg=True)
        self.rho_gain = cp.Parameter(n)
        self.phi_square = cp.Parameter(nm, nonneg=True)
        self.beta = cp.Parameter(nm, nonneg=True)
        self.t_max = cp.Parameter(nm, nonneg=True)
        self.rho_low, self.rho_high = cp.Parameter(n, nonneg=True), cp.Parameter(n, nonneg=True)
        self.cuts = [(cp.Parameter(nm, nonneg=True), cp.Parameter(nm, nonneg=True)) for _ in tangent_shares]
        self.cut_shares = tuple(share / capacity for share in tangent_shares)
        x, rho, o, phi, t, y, z = self.x, self.rho, self.o, self.phi, self.t, self.y, self.z
        rho_pair, o_pair = rho[pair_user], o[pair_user]
        low_pair, high_pair = self.rho_low[pair_user], self.rho_high[pair_user]
        user_sum = np.kron(np.eye(n), np.ones((1, m)))  # [N, NM]: Σ_m
        server_sum = np.kron(np.ones((1, n)), np.eye(m))  # [M, NM]: Σ_n
        constraints = [
            user_sum @ x == 1, server_sum @ x <= capacity,
            rho >= self.rho_low, rho <= cp.multiply(self.rho_high, o),
            y >= cp.multiply(low_pair, x), y <= cp.multiply(high_pair, z),
            y >= rho_pair - cp.multiply(high_pair, 1 - x), y <= rho_pair - cp.multiply(low_pair, 1 - x),
            user_sum @ y == rho,
            z >= 0, z <= x, z <= o_pair, z >= x + o_pair - 1, user_sum @ z == o,
            phi >= self.PHI_MIN * z, phi <= z, server_sum @ phi <= 1,
            t >= 0, t <= cp.multiply(self.t_max, x),
            self.phi_t >= cp.multiply(self.beta, y),  # the hyperbolic constraint, lifted
            t >= self.phi_t,
            self.t_sq <= cp.multiply(self.t_max, t),
            self.phi_sq <= phi,
            self.rho_phi <= cp.multiply(high_pair, phi), self.rho_phi >= cp.multiply(low_pair, phi),
            self.rho_phi <= y,
        ]
        for slope, curvature in self.cuts:  # t ≥ β(2y/φ̄ − W[ρ,φ]/φ̄²)
            constraints.append(t >= cp.multiply(slope, y) - cp.multiply(curvature, self.rho_phi))

        def column(values: Any, rows: int) -> Any:
            return cp.reshape(values, (rows, 1), order="C")

        def row(values: Any, cols: int) -> Any:
            return cp.reshape(values, (1, cols), order="C")

        for user in range(n):  # clique {x_n·, ρ_n, o_n, 1}
            pairs = slice(user * m, (user + 1) * m)
            xs, ys, zs = x[pairs], y[pairs], z[pairs]
            r, oo = rho[user], o[user]
            block = cp.bmat([
                [cp.diag(xs), column(ys, m), column(zs, m), column(xs, m)],
                [row(ys, m), column(self.rho_sq[user], 1), column(r, 1), column(r, 1)],
                [row(zs, m), column(r, 1), column(oo, 1), column(oo, 1)],
                [row(xs, m), column(r, 1), column(oo, 1), np.ones((1, 1))],
            ])
            constraints.append(block >> 0)
        for pair in range(nm):  # clique {x, ρ, φ, t, 1} of the pair, W[x,x] = x, W[x,φ] = φ, W[x,t] = t
            user = pair // m
            xv, rv, fv, tv = x[pair], rho[user], phi[pair], t[pair]
            block = cp.bmat([
                [xv, y[pair], fv, tv, xv],
                [y[pair], self.rho_sq[user], self.rho_phi[pair], self.rho_t[pair], rv],
                [fv, self.rho_phi[pair], self.phi_sq[pair], self.phi_t[pair], fv],
                [tv, self.rho_t[pair], self.phi_t[pair], self.t_sq[pair], tv],
                [xv, rv, fv, tv, 1.0],
            ])
            constraints.append(block >> 0)
        objective = (self.x_gain @ x + self.y_gain @ y - self.z_cost @ z + self.rho_gain @ rho - cp.sum(t)
                     - self.phi_square @ self.phi_sq
                     - self.TRACE_WEIGHT * (cp.sum(self.rho_sq) + cp.sum(self.phi_sq) + cp.sum(self.t_sq)))
        self.problem = cp.Problem(cp.Maximize(objective), constraints)
        assert self.problem.is_dcp(dpp=True)

    def set(self, x_gain: np.ndarray, y_gain: np.ndarray, z_cost: np.ndarray, rho_gain: np.ndarray,
            beta: np.ndarray, phi_square: np.ndarray, rho_low: np.ndarray, rho_high: np.ndarray) -> None:
        """Set the data ([N,M] per pair, [N] per user), scaled so the largest coefficient is 1 (the SDP is
        solved in O(1) units; the scaling does not change its solution)."""
        scale = max(np.abs(x_gain).max(), np.abs(y_gain).max(), z_cost.max(), np.abs(rho_gain).max(), beta.max(),
                    phi_square.max(), 1e-12)
        self.x_gain.value = x_gain.ravel() / scale
        self.y_gain.value = y_gain.ravel() / scale
        self.z_cost.value = z_cost.ravel() / scale
        self.rho_gain.value = rho_gain / scale
        self.beta.value = beta.ravel() / scale
        self.t_max.value = self.beta.value * np.repeat(rho_high, self.m) / self.PHI_MIN
        self.phi_square.value = phi_square.ravel() / scale
        self.rho_low.value = rho_low
        self.rho_high.value = rho_high
        for (slope, curvature), share in zip(self.cuts, self.cut_shares, strict=True):
            slope.value = 2.0 * self.beta.value / share
            curvature.value = self.beta.value / share**2

    def solve(self, solvers: tuple[str, ...]) -> tuple[np.ndarray | None, str]:
        """The completed lifted matrix W̄ ((K+1)², :meth:`completion`) and the status, or (None, "failed").
        ``last_solver`` names the solver that succeeded ("" when all failed)."""
        self.last_solver, status = solve_problem(self.problem, solvers)
        if status == "failed" or self.x.value is None:
            return None, "failed"
        return self.completion(), status

    def completion(self) -> np.ndarray:
        """The max-determinant PSD completion W̄ of the solved clique blocks.

        Clique tree: the user cliques hang off the constant 1 (so different users are independent), and
        each pair clique hangs off its user's clique through the separator S = {x_nm, ρ_n}. The
        max-determinant completion is the Gaussian that makes each clique's new variables a = (φ_nm, t_nm)
        conditionally independent of everything added before given S: Cov(a, b) = Σ_aS Σ_SS⁺ Σ_Sb.
        """
        n, m, size = self.n, self.m, self.size
        w = np.zeros(size)
        w[self.ix], w[self.irho], w[self.io] = self.x.value, self.rho.value, self.o.value
        w[self.iphi], w[self.it] = self.phi.value, self.t.value
        second = np.outer(w, w)  # W entries default to w_i·w_j: zero covariance across users
        for user in range(n):
            pairs = np.arange(user * m, (user + 1) * m)
            index = self.user_groups[user]  # x_n· (m), ρ, o, then (φ, t) per pair
            mean = w[index]
            lifted = np.outer(mean, mean)
            k = m + 2
            x_user = self.x.value[pairs]
            core = np.zeros((k, k))
            core[np.arange(m), np.arange(m)] = x_user  # W[x,x] = x; W[x_nm, x_nm'] = 0
            core[:m, m] = core[m, :m] = self.y.value[pairs]
            core[:m, m + 1] = core[m + 1, :m] = self.z.value[pairs]
            core[m, m] = self.rho_sq.value[user]
            core[m, m + 1] = core[m + 1, m] = self.rho.value[user]  # W[ρ,o] = ρ
            core[m + 1, m + 1] = self.o.value[user]  # W[o,o] = o
            lifted[:k, :k] = core
            cov = lifted - np.outer(mean, mean)
            for j, pair in enumerate(pairs):
                a = np.array([k + 2 * j, k + 2 * j + 1])
                separator = np.array([j, m])  # x_nm, ρ_n
                known = {  # the pair clique's entries
                    (a[0], j): self.phi.value[pair], (a[1], j): self.t.value[pair],
                    (a[0], m): self.rho_phi.value[pair], (a[1], m): self.rho_t.value[pair],
                    (a[0], a[0]): self.phi_sq.value[pair], (a[0], a[1]): self.phi_t.value[pair],
                    (a[1], a[1]): self.t_sq.value[pair],
                }
                for (r, c), value in known.items():
                    cov[r, c] = cov[c, r] = value - mean[r] * mean[c]
                earlier = np.setdiff1d(np.arange(k + 2 * j), separator)  # added before, outside S
                # pseudo-inverse with an absolute cut-off: an integral association has a (numerically) zero
                # separator covariance whose round-off must not be inverted
                values, vectors = np.linalg.eigh(cov[np.ix_(separator, separator)])
                keep = values > 1e-8
                inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
                cross = cov[np.ix_(a, separator)] @ inverse @ cov[np.ix_(separator, earlier)]
                cov[np.ix_(a, earlier)] = cross
                cov[np.ix_(earlier, a)] = cross.T
            values, vectors = np.linalg.eigh(0.5 * (cov + cov.T))  # clip the solver's round-off (≈ 1e-9)
            cov = (vectors * np.clip(values, 0.0, None)) @ vectors.T
            second[np.ix_(index, index)] = cov + np.outer(mean, mean)
        full = np.empty((size + 1, size + 1))
        full[:size, :size] = second
        full[:size, size] = full[size, :size] = w
        full[size, size] = 1.0
        return 0.5 * (full + full.T)


def hungarian_association(scores: np.ndarray, capacity: int) -> np.ndarray:
    """Association [N] maximizing Σ scores[n, m(n)] with ≤ ``capacity`` users per server (0: unlimited).

    The Hungarian method on N × Σ_m K_m: each server contributes one column per capacity slot, each user
    takes one slot (``scipy.optimize.linear_sum_assignment``), so every user gets exactly one server and
    no server more than K_m users.
    """
    n, m = scores.shape
    slots = capacity if capacity else n
    slot_server = np.repeat(np.arange(m), slots)
    rows, cols = linear_sum_assignment(-scores[:, slot_server])
    server = np.empty(n, dtype=np.int64)
    server[rows] = slot_server[cols]
    return server


def top_eigenpair(matrix: np.ndarray, tol: float = 1e-12, max_iter: int = 2000) -> tuple[float, np.ndarray]:
    """Largest eigenvalue and its unit eigenvector of a PSD matrix by power iteration.

    The completed W̄ is a rank-one term plus small blocks, so λ₂/λ₁ is small and a few dozen
    matrix-vector products suffice; a dense ``eigh`` is the fallback if the iteration stalls (dense LAPACK
    calls are slow on small matrices when OpenBLAS threads compete for the cores).
    """
    vector = matrix[:, -1] + 1e-3  # the homogenizing column is close to the top eigenvector
    vector = vector / np.linalg.norm(vector)
    value = 0.0
    for _ in range(max_iter):
        product = matrix @ vector
        new_value = float(vector @ product)
        norm = np.linalg.norm(product)
        if norm == 0.0:
            break
        new_vector = product / norm
        if abs(new_value - value) <= tol * max(abs(new_value), 1e-300) and \
                np.linalg.norm(new_vector - vector) <= 1e-9:
            return new_value, new_vector
        vector, value = new_vector, new_value
    values, vectors = np.linalg.eigh(matrix)
    return float(values[-1]), vectors[:, -1]


def gaussian_candidates(lifted: np.ndarray, count: int, rng: np.random.Generator,
                        groups: list[np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
    """Rank-one recovery candidates from the SDP solution W̄ (notes §4.4).

    Returns (w*, principal-eigenvector candidate or None, Gaussian draws [count, K], rank-one ratio):
    w* = W̄[:K, K]; the eigenvector u₁ of the largest eigenvalue, scaled by √λ₁ and then so that its last
    entry is 1; draws ξ ~ N(w*, W − w*w*ᵀ) (PSD by the Schur complement; clipped for round-off). When
    the covariance is block-diagonal over ``groups`` (index arrays partitioning w, as in the
    max-determinant completion, where users are independent) each block is sampled on its own.
    """
    size = lifted.shape[0] - 1
    top_value, top_vector = top_eigenpair(lifted)
    ratio = float(top_value / max(np.trace(lifted), 1e-300))
    w_star = lifted[:size, size].copy()
    top = top_vector * np.sqrt(max(top_value, 0.0))
    eig = top[:size] / top[size] if abs(top[size]) > 1e-9 else None
    cov = lifted[:size, :size] - np.outer(w_star, w_star)
    groups = groups if groups is not None else [np.arange(size)]
    draws = np.repeat(w_star[None], count, axis=0)
    sizes = {len(g) for g in groups}
    for width in sizes:  # one batched eigh per block size (small blocks: cheap and thread-friendly)
        members = [g for g in groups if len(g) == width]
        blocks = np.stack([cov[np.ix_(g, g)] for g in members])
        cvals, cvecs = np.linalg.eigh(0.5 * (blocks + np.swapaxes(blocks, 1, 2)))
        roots = cvecs * np.sqrt(np.clip(cvals, 0.0, None))[:, None, :]
        noise = np.einsum("gij,cgj->cgi", roots, rng.standard_normal((count, len(members), width)))
        for j, g in enumerate(members):
            draws[:, g] += noise[:, j]
    return w_star, eig, draws, ratio


# ----------------------------------------------------------------------------- Block B: radio


def centered_rate_mbps(share: Any, band: Any, band_log_center: Any, band_over_center: Any,
                       signal_over_center: Any) -> Any:
    """The Shannon rate β·W·log2(1 + s/(βW)) in Mbit/s as a concave cvxpy expression, centered for accuracy.

    With x = βW (MHz) and s = g·p/N0, x·ln(1 + s/x) = −rel_entr(x, x + s) (the perspective of the log). Near
    a base station s/x reaches 10⁴-10⁵, and Clarabel stalls on exponential cones with arguments that far
    apart; dividing the second argument by the current SNR c̄ = 1 + s̄/x̄ keeps them O(1):
    x·ln(1 + s/x) = x·ln c̄ − rel_entr(x, (x + s)/c̄) exactly (the first term is linear in β). Parameters
    (per user): ``band`` W, ``band_log_center`` W·ln c̄, ``band_over_center`` W/c̄; ``signal_over_center`` is
    s/c̄ (an expression in the power, or a parameter). DPP: every parameter multiplies a variable once.
    """
    x = cp.multiply(band, share)
    return (cp.multiply(band_log_center, share)
            - cp.rel_entr(x, cp.multiply(band_over_center, share) + signal_over_center)) / _LN2


def rate_center(band_mhz: np.ndarray, share: np.ndarray, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W·ln c̄, W/c̄) for :func:`centered_rate_mbps` at the current share and signal s = g·p/N0 (MHz)."""
    center = 1.0 + signal / np.maximum(band_mhz * share, 1e-12)
    return band_mhz * np.log(center), band_mhz / center


class RadioFP:
    """Block B's convex subproblem after Zhao's transform, built once per (N, M, downlink) (DPP).

    For fixed z: minimize Σ_n [(√z_n·A_n(p_n))² + k_n/r_n²] (+ Σ_n A^dl_n/r^dl_n) over shares β and
    powers p, with A_n(p) = λ(κ_T + κ_E·p)·S_n, k_n = 1/(4z_n), and r_n ≤ β_n·W·log2(1 + g_n·p_n/(N0·β_n·W))
    written as −rel_entr(βW, βW + g·p/N0)/ln 2 (DCP: the perspective of the log; centered at the current
    SNR, :func:`centered_rate_mbps`). Shares obey
    Σ_{n on m} β_n ≤ 1 and per-user bounds (equal bounds pin an uncontrolled field at its rule).
    Each rate is a multiple s_n of the user's current rate r̄_n (``rate_scale``): rates span four orders
    of magnitude between users, and with r = r̄·s both terms of the objective are ≈ cost_n/2 at the
    current point, which keeps the interior-point solver accurate.
    """

    def __init__(self, n: int, m: int, downlink: bool) -> None:
        self.share = cp.Variable(n)
        self.power = cp.Variable(n)
        self.rate = cp.Variable(n)  # s_n = r_n / r̄_n
        self.rate_scale = cp.Parameter(n, pos=True)  # r̄_n (Mbit/s)
        self.band = cp.Parameter(n, nonneg=True)  # W of the user's server (MHz)
        self.band_log_center, self.band_over_center = cp.Parameter(n, nonneg=True), cp.Parameter(n, nonneg=True)
        self.snr_over_center = cp.Parameter(n, nonneg=True)  # g/(N0·c̄) (MHz per W)
        self.member = cp.Parameter((m, n), nonneg=True)
        self.share_low, self.share_high = cp.Parameter(n, nonneg=True), cp.Parameter(n, nonneg=True)
        self.power_low, self.power_high = cp.Parameter(n, nonneg=True), cp.Parameter(n, nonneg=True)
        self.c0, self.c1 = cp.Parameter(n, nonneg=True), cp.Parameter(n, nonneg=True)
        self.k = cp.Parameter(n, nonneg=True)
        uplink = centered_rate_mbps(self.share, self.band, self.band_log_center, self.band_over_center,
                                    cp.multiply(self.snr_over_center, self.power))
        constraints = [
            cp.multiply(self.rate_scale, self.rate) <= uplink,
            self.rate >= 1e-9,
            self.share >= self.share_low, self.share <= self.share_high, self.member @ self.share <= 1,
            self.power >= self.power_low, self.power <= self.power_high,
        ]
        objective = cp.sum(cp.square(self.c0 + cp.multiply(self.c1, self.power))) + self.k @ cp.power(self.rate, -2)
        self.downlink = downlink
        if downlink:  # constant numerator: A/r^dl is already convex in β
            self.rate_dl = cp.Variable(n)  # also relative to the current downlink rate
            self.rate_dl_scale = cp.Parameter(n, pos=True)
            self.band_log_center_dl = cp.Parameter(n, nonneg=True)
            self.band_over_center_dl = cp.Parameter(n, nonneg=True)
            self.signal_over_center_dl = cp.Parameter(n, nonneg=True)  # g·P_dl/(N0·c̄)
            self.a_dl = cp.Parameter(n, nonneg=True)  # A^dl / r̄^dl
            downlink_rate = centered_rate_mbps(self.share, self.band, self.band_log_center_dl,
                                               self.band_over_center_dl, self.signal_over_center_dl)
            constraints += [cp.multiply(self.rate_dl_scale, self.rate_dl) <= downlink_rate, self.rate_dl >= 1e-9]
            objective = objective + self.a_dl @ cp.inv_pos(self.rate_dl)
        self.problem = cp.Problem(cp.Minimize(objective), constraints)
        assert self.problem.is_dcp(dpp=True)

    def solve(self, solvers: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        _, status = solve_problem(self.problem, solvers)
        if status == "failed" or self.share.value is None:
            return None
        return np.asarray(self.share.value), np.asarray(self.power.value)


class ShareOnly:
    """The bandwidth step of the plain-AO baseline: minimize Σ A_n/r_n(β_n) at fixed powers (convex, DPP);
    rates relative to the current ones, as in :class:`RadioFP`."""

    def __init__(self, n: int, m: int) -> None:
        self.share = cp.Variable(n)
        self.rate = cp.Variable(n)  # r_n / r̄_n
        self.rate_scale = cp.Parameter(n, pos=True)
        self.band = cp.Parameter(n, nonneg=True)
        self.band_log_center, self.band_over_center = cp.Parameter(n, nonneg=True), cp.Parameter(n, nonneg=True)
        self.signal_over_center = cp.Parameter(n, nonneg=True)  # g·p/(N0·c̄) (MHz)
        self.member = cp.Parameter((m, n), nonneg=True)
        self.share_low, self.share_high = cp.Parameter(n, nonneg=True), cp.Parameter(n, nonneg=True)
        self.weight = cp.Parameter(n, nonneg=True)
        rate = centered_rate_mbps(self.share, self.band, self.band_log_center, self.band_over_center,
                                  self.signal_over_center)
        constraints = [cp.multiply(self.rate_scale, self.rate) <= rate,
                       self.rate >= 1e-9,
                       self.share >= self.share_low, self.share <= self.share_high, self.member @ self.share <= 1]
        self.problem = cp.Problem(cp.Minimize(self.weight @ cp.inv_pos(self.rate)), constraints)
        assert self.problem.is_dcp(dpp=True)

    def solve(self, solvers: tuple[str, ...]) -> np.ndarray | None:
        _, status = solve_problem(self.problem, solvers)
        if status == "failed" or self.share.value is None:
            return None
        return np.asarray(self.share.value)


_PROBLEMS: dict[tuple, Any] = {}


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    """cvxpy problems are built (and DPP-compiled) once per shape and reused by every solve."""
    if key not in _PROBLEMS:
        _PROBLEMS[key] = build()
    return _PROBLEMS[key]


# ----------------------------------------------------------------------------- the solver


@dataclass
class _Point:
    """A complete one-system decision, per user [N]: the solver's incumbent or a candidate."""

    server: np.ndarray
    delta: np.ndarray  # server layers δ_{n,0}
    compute: np.ndarray
    bandwidth: np.ndarray
    power: np.ndarray
    frequency: np.ndarray

    def copy(self) -> _Point:
        return _Point(*(np.array(getattr(self, f.name)) for f in dataclasses.fields(self)))


class DashfSolver:
    """DASHF for one system at a time (module docstring). ``solve(state)`` → :class:`DashfResult`.

    Args:
        config: the scenario (one device per user).
        settings: tolerances and ablation switches (:class:`DashfSettings`).
        scales: the SCR/cost normalizers to optimize and report with (default: the scenario's own,
            i.e. exactly the env's reward).
    """

    def __init__(self, config: SystemConfig, settings: DashfSettings | None = None,
                 scales: costs.Scales | None = None) -> None:
        check_supported(config)
        self.config = config
        self.scales = scales
        self.settings = settings or DashfSettings()
        controls = set(config.controls)
        s = self.settings
        self.move_server = s.optimize_association and "server" in controls
        self.move_split = s.optimize_split and "split" in controls
        self.move_compute = s.optimize_compute and "compute" in controls
        self.move_power = s.optimize_radio and "power" in controls
        self.move_share = s.optimize_radio and "bandwidth" in controls
        self.move_frequency = s.optimize_radio and "frequency" in controls
        self.capacity = config.server.capacity
        self.rng = np.random.default_rng(s.seed)

    # ------------------------------------------------------------------ public
    def solve(self, state: SystemState, initial: Decision | None = None) -> DashfResult:
        """Run DASHF on a one-system ``state`` (batch axis 1) from ``initial`` (default: ``equal_share``)."""
        if state.batch_size != 1:
            raise ValueError(f"state: DashfSolver.solve takes one system (batch axis 1), got {state.batch_size}")
        start = time.perf_counter()
        config = self.config
        terms = pair_terms(config, state, self.scales)
        score = ExactScore(config, state, self.scales)
        trace = DashfTrace()
        point = self._enforce(state, self._initial(state, initial))
        num, den, reward = self._totals(score, [point])
        scr = config.objective == "scr"
        lam = float(num[0] / den[0]) if scr else 1.0
        trace.lambdas.append(lam if scr else float(reward[0]))
        for _ in range(self.settings.max_dinkelbach):
            trace.dinkelbach_iterations += 1
            candidate = self._alternate(state, terms, score, point, lam, trace)
            num, den, reward = self._totals(score, [candidate])
            if not scr:
                point = candidate
                trace.lambdas.append(float(reward[0]))
                break
            new_lam = float(num[0] / den[0])
            gap = float(num[0] - lam * den[0])
            if new_lam >= lam:  # guards round-off: λ never decreases
                point = candidate
            else:
                new_lam = lam
            trace.lambdas.append(new_lam)
            done = gap <= self.settings.dinkelbach_tol * lam * float(den[0]) or \
                new_lam - lam <= self.settings.dinkelbach_tol * lam
            lam = new_lam
            if done:
                break
        decision = self._decision([point])
        _, _, reward = score.totals(decision)
        metrics = score.metrics(decision)
        trace.scr = float(costs.reward_terms(config, metrics, score.scales)["scr"][0])
        trace.reward = float(reward[0])
        trace.solve_time_s = time.perf_counter() - start
        return DashfResult(decision=decision, trace=trace)

    # ------------------------------------------------------------------ start and bookkeeping
    def _initial(self, state: SystemState, initial: Decision | None) -> _Point:
        if initial is None:
            policy = EqualSharePolicy()
            policy.bind(self.config)
            initial = policy.decide(state)
        d = complete(self.config, state, initial)
        return _Point(server=d.server[0].astype(np.int64), delta=d.split[0, :, 0].astype(np.int64),
                      compute=d.compute[0].astype(np.float64), bandwidth=d.bandwidth[0].astype(np.float64),
                      power=d.power[0].astype(np.float64), frequency=d.frequency[0, :, 0].astype(np.float64))

    def _decision(self, points: list[_Point]) -> Decision:
        layers = self.config.num_layers
        return Decision(
            split=np.stack([np.stack([p.delta, layers - p.delta], axis=-1) for p in points]).astype(np.int64),
            server=np.stack([p.server for p in points]),
            power=np.stack([p.power for p in points]),
            bandwidth=np.stack([p.bandwidth for p in points]),
            compute=np.stack([p.compute for p in points]),
            frequency=np.stack([p.frequency for p in points])[..., None],
        )

    def _totals(self, score: ExactScore, points: list[_Point]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return score.totals(self._decision(points))

    def _objective(self, score: ExactScore, points: list[_Point], lam: float) -> np.ndarray:
        num, den, _ = self._totals(score, points)
        return num - lam * den

    def _enforce(self, state: SystemState, point: _Point) -> _Point:
        """Put every field the scenario does not control back to its rule (SPEC §3.2)."""
        controls = self.config.controls
        if set(controls) >= {"split", "server", "power", "bandwidth", "compute", "frequency"}:
            return point
        d = self._decision([point])
        restricted = restrict_to_controls(self.config, d)
        rules = complete(self.config, state, Decision(split=restricted.split, server=restricted.server))
        full = complete(self.config, state, dataclasses.replace(
            restricted, split=rules.split, server=rules.server))
        return _Point(server=full.server[0], delta=full.split[0, :, 0].astype(np.int64), compute=full.compute[0],
                      bandwidth=full.bandwidth[0], power=full.power[0], frequency=full.frequency[0, :, 0])

    # ------------------------------------------------------------------ alternating optimization
    def _alternate(self, state: SystemState, terms: PairTerms, score: ExactScore, point: _Point, lam: float,
                   trace: DashfTrace) -> _Point:
        """AO of Blocks A and B on G_λ from ``point``; never returns a point with a lower G_λ."""
        value = float(self._objective(score, [point], lam)[0])
        rounds = 0
        for _ in range(self.settings.max_ao):
            rounds += 1
            before = value
            if self.move_server or self.move_split or self.move_compute:
                candidate = self._block_a(state, terms, score, point, lam, trace)
                new = float(self._objective(score, [candidate], lam)[0])
                if new > value:
                    point, value = candidate, new
                    trace.block_a_improvements += 1
            if self.move_power or self.move_share or self.move_frequency:
                candidate = self._block_b(state, terms, point, lam, trace)
                new = float(self._objective(score, [candidate], lam)[0])
                if new > value:
                    point, value = candidate, new
                    trace.block_b_improvements += 1
            if value - before <= self.settings.ao_tol * max(abs(value), 1e-12):
                break
        trace.ao_rounds.append(rounds)
        return point

    # ------------------------------------------------------------------ Block A
    def _block_a(self, state: SystemState, terms: PairTerms, score: ExactScore, point: _Point, lam: float,
                 trace: DashfTrace) -> _Point:
        """Association, offloading and compute shares with the radio fixed (SDR + Hungarian + recovery)."""
        n, m = terms.num_users, terms.num_servers
        layers = terms.layers
        sources: dict[tuple[int, ...], set[str]] = {tuple(point.server.tolist()): {"incumbent"}}
        rho_hint: dict[tuple[int, ...], np.ndarray] = {tuple(point.server.tolist()): point.delta / layers}
        if self.move_server:
            trace.block_a_solves += 1
            data = self._qcqp_data(terms, point, lam)
            sdp = _cached(("sdp", n, m, self.capacity or n, self.settings.tangent_shares),
                          lambda: AssociationSDP(n, m, self.capacity or n, self.settings.tangent_shares))
            sdp.set(**data)
            tic = time.perf_counter()
            lifted, status = self._solve_sdp(sdp)
            trace.sdp_solve_s.append(time.perf_counter() - tic)
            trace.sdp_inaccurate += status == cp.OPTIMAL_INACCURATE
            used = getattr(sdp, "last_solver", "") or "none"
            trace.sdp_solvers[used] = trace.sdp_solvers.get(used, 0) + 1
            if lifted is None:  # documented fallback: Hungarian on the per-pair Dinkelbach gains
                trace.sdp_fallbacks += 1
                slots = self.capacity or n  # per-pair gain at the incumbent's ρ with an equal compute share
                rho_now = point.delta / layers
                offload = (rho_now > 0)[:, None]
                gains = data["x_gain"] + data["y_gain"] * rho_now[:, None] - offload * data["z_cost"] \
                    - data["beta"] * rho_now[:, None] * slots - data["phi_square"] / slots**2
                key = tuple(hungarian_association(gains, self.capacity).tolist())
                sources.setdefault(key, set()).add("fallback")
                rho_hint.setdefault(key, point.delta / layers)
            else:
                w_star, eig, draws, ratio = gaussian_candidates(lifted, self.settings.samples, self.rng,
                                                                 sdp.user_groups)
                trace.rank_one_ratio.append(ratio)
                block = np.concatenate([sdp.ix, sdp.irho, sdp.io, [sdp.size]])
                sub = lifted[np.ix_(block, block)]
                trace.rank_one_ratio_association.append(top_eigenpair(sub)[0] / max(float(np.trace(sub)), 1e-300))
                labelled = [("sdp", w_star)] + ([("eigenvector", eig)] if eig is not None else []) \
                    + [("randomization", row) for row in draws]
                sdp_rho = np.clip(w_star[sdp.irho], 0.0, 1.0)
                for label, vector in labelled:
                    x_hat = vector[sdp.ix].reshape(n, m)
                    key = tuple(hungarian_association(x_hat, self.capacity).tolist())
                    sources.setdefault(key, set()).add(label)
                    rho_hint.setdefault(key, np.clip(vector[sdp.irho], 0.0, 1.0) if label != "sdp" else sdp_rho)
        keys = list(sources)
        trace.unique_associations.append(len(keys))
        servers = np.asarray(keys, dtype=np.int64)
        hints = np.stack([rho_hint[k] for k in keys])
        candidates = self._recover(state, terms, score, point, servers, hints, lam)
        values = self._objective(score, candidates, lam)
        best = int(np.argmax(values))
        for label in sources[keys[best]]:
            trace.candidate_wins[label] = trace.candidate_wins.get(label, 0) + 1
        if self.move_server and "fallback" not in sources[keys[best]]:
            by_label = {label: max((values[i] for i, k in enumerate(keys) if label in sources[k]), default=-np.inf)
                        for label in ("eigenvector", "randomization")}
            tol = 1e-12 * max(abs(values[best]), 1.0)
            if by_label["randomization"] > by_label["eigenvector"] + tol:
                trace.randomization_wins += 1
            elif by_label["eigenvector"] > by_label["randomization"] + tol:
                trace.eigenvector_wins += 1
        return candidates[best]

    def _solve_sdp(self, sdp: AssociationSDP) -> tuple[np.ndarray | None, str]:
        return sdp.solve(self.settings.sdp_solvers)

    def _qcqp_data(self, terms: PairTerms, point: _Point, lam: float) -> dict[str, np.ndarray]:
        """Block A's QCQP coefficients at fixed radio (notes §4.3), per pair [N,M] and per user [N].

        G_A = Σ x(q0 − c0) + Σ y(q1 − c1) − Σ c_z·z + Σ a·ρ − Σ β·y/φ − Σ γ·φ² (+ const), from
        :class:`PairTerms` (A = λ(κ_T + κ_E p) per uploaded Mbit over the pair's rate r):
        c0 = A·Υ·s_ad/r (the adapters of all layers), c1 = −A·Υ·s_ad/r (fewer local layers, fewer
        adapters), c_z = A·S_up/r + λ(κ_T + κ_E w_srv P_dl)·S_dl/r_dl (activations and gradients, paid only
        when offloading), a = λΥ(κ_T τL/u + κ_E εL u²) (local layers saved per unit of ρ, minus the
        stability slope when weighted), β = λκ_T Υ τS, γ = λκ_E w_srv Υ εS·ρ̄ (ρ fixed at the incumbent in
        this term; with the ``time_share`` energy model the server energy is λκ_E w_srv Υ εS·y instead).

        The radio is fixed per pair: the user's power, and the bandwidth share it would hold on that
        server — its current share on its own server, floored by the equal share 1/min(K_m, |users
        of m| + 1) it could count on anywhere (a user whose Block-B share is tiny because it only uploads
        adapters would otherwise never look worth offloading).
        """
        layers = terms.layers
        n, m = terms.num_users, terms.num_servers
        others = np.array([[np.sum((point.server == server) & (np.arange(n) != user)) for server in range(m)]
                           for user in range(n)])
        slots = np.minimum(self.capacity or n, others + 1)
        share = np.maximum(np.where(point.server[:, None] == np.arange(m), point.bandwidth[:, None], 0.0),
                           1.0 / slots)
        rate = terms.rate(terms.gain, share, point.power[:, None])
        per_bit = lam * (terms.kappa_delay + terms.kappa_energy * point.power)[:, None] / rate
        rate_dl = terms.rate(terms.gain, share, terms.downlink_power_w)
        per_bit_dl = lam * (terms.kappa_delay + terms.kappa_energy * terms.server_energy_weight
                            * terms.downlink_power_w) / rate_dl
        adapters = per_bit * (layers * terms.adapter_mbit)[:, None]
        z_cost = per_bit * terms.up_mbit[:, None] + per_bit_dl * terms.down_mbit[:, None]
        c1 = -adapters
        server_energy = lam * terms.kappa_energy * terms.server_energy_weight * layers * terms.server_energy_j
        rho_now = np.maximum(point.delta / layers, 1.0 / layers)
        if terms.energy_exponent == 0:
            c1 = c1 + server_energy
            phi_square = np.zeros_like(server_energy)
        else:
            phi_square = server_energy * rho_now[:, None]
        frequency = point.frequency
        a = lam * layers * (terms.kappa_delay * terms.local_delay_s / frequency
                            + terms.kappa_energy * terms.local_energy_j * frequency**2)
        if terms.kappa_stability > 0:  # linearize S(α) at the incumbent: one layer's difference per 1/Υ of ρ
            alpha = layers - point.delta
            step = np.where(alpha > 1, 1, 0)
            slope = (terms.stability(alpha - step) - terms.stability(alpha)) * layers  # dS/dρ
            a = a - lam * terms.kappa_stability * np.where(step > 0, slope, 0.0)
        q0 = terms.q0 if terms.with_service else np.zeros_like(terms.q0)
        q1 = terms.q1 if terms.with_service else np.zeros_like(terms.q1)
        return {
            "x_gain": q0 - adapters,
            "y_gain": q1 - c1,
            "z_cost": z_cost,
            "rho_gain": a,
            "beta": lam * terms.kappa_delay * layers * terms.server_delay_s,
            "phi_square": phi_square,
            "rho_low": terms.delta_low / layers,
            "rho_high": terms.delta_high / layers,
        }

    def _recover(self, state: SystemState, terms: PairTerms, score: ExactScore, point: _Point, servers: np.ndarray,
                 rho_hint: np.ndarray, lam: float) -> list[_Point]:
        """Given associations [C, N]: shares renormalized, then φ (KKT) ↔ δ (exact enumeration) alternated."""
        count, n = servers.shape
        m, layers = terms.num_servers, terms.layers
        onehot = servers[..., None] == np.arange(m)
        bandwidth = np.broadcast_to(point.bandwidth, (count, n))
        if self.move_share:  # more bandwidth never slows an upload: fill each server's band
            total = np.einsum("cn,cnm->cm", bandwidth, onehot)
            bandwidth = bandwidth / np.einsum("cm,cnm->cn", np.maximum(total, 1e-300), onehot)
        if self.move_split:
            delta = np.clip(np.rint(rho_hint * layers), terms.delta_low, terms.delta_high).astype(np.int64)
        else:
            delta = np.broadcast_to(point.delta, (count, n)).astype(np.int64)
        delta = np.clip(delta, terms.delta_low, terms.delta_high)
        points = [_Point(server=servers[c], delta=delta[c], compute=point.compute.copy(), bandwidth=bandwidth[c],
                         power=point.power.copy(), frequency=point.frequency.copy()) for c in range(count)]
        rounds = self.settings.recovery_rounds if self.move_split else 1
        for _ in range(rounds):
            delta = np.stack([p.delta for p in points])
            shares = self._shares(state, terms, servers, np.maximum(delta, 1))  # provisional: every user has a share
            for c, p in enumerate(points):
                p.compute = shares[c]
            if self.move_split:
                delta = self._best_delta(terms, score, points, lam)
                for c, p in enumerate(points):
                    p.delta = delta[c]
        final = self._shares(state, terms, servers, np.stack([p.delta for p in points]))
        for c, p in enumerate(points):
            p.compute = final[c]
        return [self._enforce(state, p) for p in points]

    def _shares(self, state: SystemState, terms: PairTerms, servers: np.ndarray, delta: np.ndarray) -> np.ndarray:
        if self.move_compute:
            return compute_shares(terms, servers, delta, terms.num_servers)
        layers = self.config.num_layers
        split = np.stack([delta, layers - delta], axis=-1)
        tiled = tile_state(state, servers.shape[0])
        return compute_rule(self.config, tiled, split, servers)

    def _best_delta(self, terms: PairTerms, score: ExactScore, points: list[_Point], lam: float) -> np.ndarray:
        """Per candidate and user, the server-layer count δ maximizing the user's exact share of G_λ.

        Users are separable given (x, φ, radio), so one batched ``costs.evaluate`` over every δ in
        [δ_lo, δ_hi] scores all of them at once (a user's φ is kept; φ = 0 forbids δ > 0).
        """
        low, high = int(terms.delta_low.min()), int(terms.delta_high.max())
        options = np.arange(low, high + 1)
        count, n = len(points), terms.num_users
        batch = []
        for p in points:
            for d in options:
                q = p.copy()
                q.delta = np.full(n, d, dtype=np.int64)
                batch.append(q)
        gains = score.user_gains(self._decision(batch), terms, lam).reshape(count, len(options), n)
        allowed = (options[None, :, None] >= terms.delta_low) & (options[None, :, None] <= terms.delta_high)
        shares = np.stack([p.compute for p in points])[:, None, :]
        allowed = allowed & ((options[None, :, None] == 0) | (shares > 0))
        gains = np.where(allowed, gains, -np.inf)
        return options[np.argmax(gains, axis=1)]

    # ------------------------------------------------------------------ Block B
    def _block_b(self, state: SystemState, terms: PairTerms, point: _Point, lam: float, trace: DashfTrace) -> _Point:
        """Bandwidth, power and DVFS with (x, ρ, φ) fixed: DVFS in closed form, (β, p) by Zhao's transform
        (or by plain alternation for the baseline)."""
        new = point.copy()
        if self.move_frequency:
            new.frequency = local_frequency(terms)
        if self.move_power or self.move_share:
            if self.settings.radio_method == "fp":
                new.bandwidth, new.power = self._radio_fp(terms, new, lam, trace)
            else:
                new.bandwidth, new.power = self._radio_plain(terms, new, lam, trace)
        return self._enforce(state, new)

    def _radio_setup(self, terms: PairTerms, point: _Point, problem: Any) -> None:
        """The parameters that stay fixed during one Block-B solve: bands, membership, variable bounds."""
        n, m = terms.num_users, terms.num_servers
        problem.band.value = np.full(n, terms.bandwidth_mhz)
        onehot = (point.server[None, :] == np.arange(m)[:, None]).astype(np.float64)
        problem.member.value = onehot
        low = np.where(self.move_share, 1e-6, point.bandwidth)
        high = np.where(self.move_share, 1.0, point.bandwidth)
        problem.share_low.value, problem.share_high.value = low * np.ones(n), high * np.ones(n)
        if hasattr(problem, "power_low"):
            problem.power_low.value = np.where(self.move_power, terms.power_low, point.power)
            problem.power_high.value = np.where(self.move_power, terms.power_high, point.power)

    def _radio_cost(self, terms: PairTerms, point: _Point, share: np.ndarray, power: np.ndarray,
                    lam: float) -> tuple[float, np.ndarray, np.ndarray]:
        """Block B's exact radio-dependent cost Σ A(p)/r + Σ A^dl/r^dl, with A and r per user."""
        users = np.arange(terms.num_users)
        gain = terms.gain[users, point.server]
        bits = terms.upload_mbit(point.delta)
        numerator = lam * (terms.kappa_delay + terms.kappa_energy * power) * bits
        rate = terms.rate(gain, share, power)
        total = np.divide(numerator, rate, out=np.zeros_like(rate), where=bits > 0).sum()
        bits_dl = terms.download_mbit(point.delta)
        if np.any(bits_dl > 0):
            rate_dl = terms.rate(gain, share, terms.downlink_power_w)
            a_dl = lam * (terms.kappa_delay + terms.kappa_energy * terms.server_energy_weight
                          * terms.downlink_power_w) * bits_dl
            total += np.divide(a_dl, rate_dl, out=np.zeros_like(rate_dl), where=bits_dl > 0).sum()
        return float(total), numerator, rate

    def _feasible_radio(self, terms: PairTerms, point: _Point, share: np.ndarray,
                        power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Solver output → feasible: shares ≥ tiny and Σ ≤ 1 per server exactly, powers clipped."""
        m = terms.num_servers
        share = np.maximum(share, 1e-9) if self.move_share else point.bandwidth
        onehot = point.server[:, None] == np.arange(m)
        total = onehot.T.astype(np.float64) @ share
        share = share / np.maximum(total[point.server], 1.0)
        power = np.clip(power, terms.power_low, terms.power_high) if self.move_power else point.power
        return share, power

    def _radio_fp(self, terms: PairTerms, point: _Point, lam: float, trace: DashfTrace) -> tuple[np.ndarray, ...]:
        """Zhao's transform (notes §4.5): z = 1/(2A r) in closed form ↔ the convex problem in (β, p)."""
        n, m = terms.num_users, terms.num_servers
        downlink = bool(np.any(terms.down_mbit > 0))
        problem = _cached(("radio", n, m, downlink), lambda: RadioFP(n, m, downlink))
        self._radio_setup(terms, point, problem)
        share, power = point.bandwidth.copy(), point.power.copy()
        bits = terms.upload_mbit(point.delta)
        users = np.arange(n)
        gain = terms.gain[users, point.server]
        if downlink:
            bits_dl = terms.download_mbit(point.delta)
            a_dl = lam * (terms.kappa_delay + terms.kappa_energy * terms.server_energy_weight
                          * terms.downlink_power_w) * bits_dl
        value, numerator, rate = self._radio_cost(terms, point, share, power, lam)
        iterations = 0
        tic = time.perf_counter()
        for _ in range(self.settings.fp_max_iter):
            iterations += 1
            z = 1.0 / (2.0 * np.maximum(numerator * rate, 1e-300))
            active = bits > 0
            problem.c0.value = np.where(active, np.sqrt(z) * lam * terms.kappa_delay * bits, 0.0)
            problem.c1.value = np.where(active, np.sqrt(z) * lam * terms.kappa_energy * bits, 0.0)
            scale = np.maximum(rate, 1e-9)
            problem.rate_scale.value = scale
            problem.k.value = np.where(active, 1.0 / (4.0 * z * scale**2), 0.0)  # k/r² with r = r̄·s
            snr = gain / terms.noise_w_per_mhz
            band = np.full(n, terms.bandwidth_mhz)
            log_center, over_center = rate_center(band, share, snr * power)
            problem.band_log_center.value, problem.band_over_center.value = log_center, over_center
            problem.snr_over_center.value = snr * over_center / band
            if downlink:
                rate_dl = np.maximum(terms.rate(gain, share, terms.downlink_power_w), 1e-9)
                problem.rate_dl_scale.value = rate_dl
                problem.a_dl.value = a_dl / rate_dl
                signal_dl = snr * terms.downlink_power_w
                log_center, over_center = rate_center(band, share, signal_dl)
                problem.band_log_center_dl.value, problem.band_over_center_dl.value = log_center, over_center
                problem.signal_over_center_dl.value = signal_dl * over_center / band
            solved = problem.solve(self.settings.conic_solvers)
            if solved is None:
                trace.radio_fallbacks += 1  # keep the last feasible (β, p)
                break
            new_share, new_power = self._feasible_radio(terms, point, *solved)
            new_value, new_numerator, new_rate = self._radio_cost(terms, point, new_share, new_power, lam)
            if new_value > value:  # solver inaccuracy: the transform never increases the exact cost
                break
            improvement = value - new_value
            share, power, value, numerator, rate = new_share, new_power, new_value, new_numerator, new_rate
            if improvement <= self.settings.fp_tol * max(value, 1e-12):
                break
        trace.radio_solve_s.append(time.perf_counter() - tic)
        trace.fp_iterations.append(iterations)
        return share, power

    def _radio_plain(self, terms: PairTerms, point: _Point, lam: float, trace: DashfTrace) -> tuple[np.ndarray, ...]:
        """Baseline "plain AO" (notes §5.4.5): alternate β (convex at fixed p) and p (per-user golden-section
        search of the quasi-convex A(p)/r(p) at fixed β), without the transform."""
        n, m = terms.num_users, terms.num_servers
        problem = _cached(("shares", n, m), lambda: ShareOnly(n, m))
        self._radio_setup(terms, point, problem)
        users = np.arange(n)
        gain = terms.gain[users, point.server]
        bits = terms.upload_mbit(point.delta)
        share, power = point.bandwidth.copy(), point.power.copy()
        value, _, _ = self._radio_cost(terms, point, share, power, lam)
        iterations = 0
        tic = time.perf_counter()
        for _ in range(self.settings.fp_max_iter):
            iterations += 1
            new_share = share
            if self.move_share:
                signal = gain * power / terms.noise_w_per_mhz
                band = np.full(n, terms.bandwidth_mhz)
                log_center, over_center = rate_center(band, share, signal)
                problem.band_log_center.value, problem.band_over_center.value = log_center, over_center
                problem.signal_over_center.value = signal * over_center / band
                scale = np.maximum(terms.rate(gain, share, power), 1e-9)
                problem.rate_scale.value = scale
                problem.weight.value = lam * (terms.kappa_delay + terms.kappa_energy * power) * bits / scale
                solved = problem.solve(self.settings.conic_solvers)
                if solved is None:
                    trace.radio_fallbacks += 1
                    break
                new_share, _ = self._feasible_radio(terms, point, solved, power)
            new_power = power
            if self.move_power:
                new_power = _golden_section(
                    lambda p, s=new_share: (terms.kappa_delay + terms.kappa_energy * p) / terms.rate(gain, s, p),
                    terms.power_low, terms.power_high)
            new_value, _, _ = self._radio_cost(terms, point, new_share, new_power, lam)
            if new_value > value:
                break
            improvement = value - new_value
            share, power, value = new_share, new_power, new_value
            if improvement <= self.settings.fp_tol * max(value, 1e-12):
                break
        trace.radio_solve_s.append(time.perf_counter() - tic)
        trace.fp_iterations.append(iterations)
        return share, power


def _golden_section(objective: Callable[[np.ndarray], np.ndarray], low: np.ndarray, high: np.ndarray,
                    iterations: int = 60) -> np.ndarray:
    """Elementwise minimizer of a quasi-convex function on [low, high] by golden-section search."""
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = objective(c), objective(d)
    for _ in range(iterations):
        left = fc < fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        c_new, d_new = b - ratio * (b - a), a + ratio * (b - a)
        c, d = c_new, d_new
        fc, fd = objective(c), objective(d)
    best = 0.5 * (a + b)
    candidates = np.stack([best, np.asarray(low, dtype=np.float64) * np.ones_like(best),
                           np.asarray(high, dtype=np.float64) * np.ones_like(best)])
    values = np.stack([objective(x) for x in candidates])
    return candidates[np.argmin(values, axis=0), np.arange(best.shape[0])]


# ----------------------------------------------------------------------------- the policy


class DashfPolicy(Policy):
    """[QZ24] DASHF as a state-based policy (registry name ``dashf``): one :class:`DashfSolver` solve per
    system and round. ``last_traces`` holds the per-system :class:`DashfTrace` of the latest ``decide``;
    ``stats`` accumulates solve time, Dinkelbach iterations, SDP solves, randomization wins and fallbacks.

    Args:
        settings: :class:`DashfSettings` (tolerances, sample count, ablation switches).
        scales: normalizers to optimize with (default: the scenario's, i.e. the env's reward); sweeps over
            scenario parameters pass the base scenario's so that the SCR keeps one meaning.
    """

    name = "dashf"

    def __init__(self, settings: DashfSettings | None = None, scales: costs.Scales | None = None) -> None:
        super().__init__()
        self.settings = settings or DashfSettings()
        self.scales = scales
        self.solver: DashfSolver | None = None
        self.last_traces: list[DashfTrace] = []

    def check_config(self, config: SystemConfig) -> None:
        """Raise ``ValueError`` naming the field if DASHF cannot run on ``config`` (:func:`check_supported`);
        the benchmark calls it before any episode."""
        check_supported(config)

    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        self._start(seed)

    def bind(self, config: SystemConfig, seed: int | None = None) -> None:
        super().bind(config, seed)
        self._start(seed)

    def _start(self, seed: int | None) -> None:
        config = self._require_config()
        settings = self.settings if seed is None else dataclasses.replace(self.settings, seed=seed)
        self.solver = DashfSolver(config, settings, self.scales)

    def initial(self, config: SystemConfig, state: SystemState) -> Decision | None:
        """The start of the search (``None``: the ``equal_share`` heuristic); baselines override it."""
        return None

    def decide(self, state: SystemState) -> Decision:
        config = self._require_config()
        if self.solver is None:
            self._start(None)
        decisions, self.last_traces = [], []
        for index in range(state.batch_size):
            one = state.select(index)
            result = self.solver.solve(one, self.initial(config, one))
            decisions.append(result.decision)
            self.last_traces.append(result.trace)
            self._record(result.trace)
        return restrict_to_controls(config, stack_decisions(decisions))

    def _record(self, trace: DashfTrace) -> None:
        totals = {
            "decisions": 1.0,
            "solve_time_s": trace.solve_time_s,
            "dinkelbach_iterations": float(trace.dinkelbach_iterations),
            "block_a_solves": float(trace.block_a_solves),
            "randomization_wins": float(trace.randomization_wins),
            "eigenvector_wins": float(trace.eigenvector_wins),
            "sdp_fallbacks": float(trace.sdp_fallbacks),
            "radio_fallbacks": float(trace.radio_fallbacks),
        }
        for key, value in totals.items():
            self.stats[key] = self.stats.get(key, 0.0) + value
