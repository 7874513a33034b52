"""``stable_fp``: [LZ24]'s stability-aware fractional-programming solver (SPEC §6.3).

C. Liu, J. Zhao, "Resource Allocation for Stable LLM Training in Mobile Edge Computing",
MobiHoc 2024 (notes: shared/papers/LZ24-liu-zhao-2024.md). Per round, for every user: the
number α of layers fine-tuned on the device, the server, the uplink power, the shares of the
server's band and compute, and the device's DVFS level.

Algorithm ([LZ24] §4, notes §4.4):

1. **Step 1, given the association** (:meth:`StableFP.allocate`). α is relaxed to a real
   interval and the problem P3 (eq. 12) is solved by the quadratic transform of fractional
   programming: every product of two positive factors x·y is replaced by its tight upper bound
   x²z + y²/(4z) with z = y/(2x) ([LZ24] eqs. 13-16): α·A(u) (local layers × per-layer cost),
   (Υ − α)·B(φ) (server layers × per-layer cost), p·(1/r) (upload energy) and α·(1/r) (the
   aggregation upload's delay). The aggregation upload's energy p·α·(1/r) has three factors and
   gets the three-term AM-GM bound xyw ≤ (λ_x x³ + λ_y y³ + λ_w w³)/3 (our extension, tight at
   λ_x = yw/x², ...). With the auxiliary variables fixed the surrogate K is convex (P4); it is
   solved with cvxpy (Clarabel, SCS as fallback) for (α, u, p, β, φ), the auxiliary variables
   are reset to their closed forms, and so on until K changes by less than ``inner_tol``. K
   never increases (K_i ≥ H_i ≥ K_{i+1}) and a limit point is a KKT point of P3 ([LZ24]
   Proposition 1; checked numerically by :func:`kkt_residual`). α is then rounded to the
   nearest integer and the continuous variables are re-solved with α fixed (the same loop,
   with the exact convex terms α·A(u) and (Υ−α)·B(φ)). Finally each user is offered the
   boundary regimes the relaxation cannot reach (α = Υ: no activation upload, no server;
   α = 0 when ``split_min_local`` = 0: raw-token upload), which change the cost
   discontinuously; a switch that lowers its cost is kept and the rest re-solved.
2. **Step 2, the association** (:meth:`StableFP.associate`): CCCP on the exact-penalty
   relaxation P6 (eq. 50): χ ∈ [0, 1], one server per user, and each server's shares Σ χβ ≤ 1,
   Σ χφ ≤ 1 (and its user capacity); the concave penalty ϱΣχ(1 − χ) is linearized at the
   current point (eq. 51), so each iteration is a linear program (cvxpy + HiGHS). Several
   restarts (the current association, the uniform point, random points); the best binary
   feasible result by the P5 objective (eq. 48) is kept.
3. **Outer loop**: alternate Step 2 and Step 1 while the env's cost
   (:func:`~agents.experts.lz24_terms.model_cost`, i.e. ``costs.evaluate``) improves.

What differs from the paper, and why:

* The cost is the env's (SPEC §5.2, :mod:`agents.experts.lz24_terms`): the upload delay and the
  aggregation upload count, which removes [LZ24]'s degenerate p → 0 optimum (notes §4.5).
* Resource amounts of pairs that are not associated (needed by Step 2, never defined in the
  paper) follow a "one more slot" rule: on a server with c users a newcomer gets 1/(c+1) of
  the band and of the compute, and the users already there keep c/(c+1) of their shares, so
  every binary point of the LP is a feasible decision whose LP cost is exact. The paper's
  equalities Σβ = 1, Σφ = 1 are inequalities (the optimum fills them anyway).
* ϱ is ``penalty`` × the mean regret between each user's best and second-best server.
* Start: the [LZ24] "greedy" association (:class:`agents.heuristics.GreedyPolicy`), α at its
  lowest, p_max, full DVFS level, equal shares. That start is also the **fallback** decision:
  a convex solve that fails (``SolverError`` or a status other than optimal, with Clarabel and
  then SCS) ends its loop at the last good iterate and is counted in ``fallbacks``; so the
  returned decision is always feasible and never worse than the start.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import cvxpy as cp
import numpy as np

from agents.base import Policy, restrict_to_controls
from agents.experts import lz24_terms
from agents.experts.lz24_terms import UserTerms
from mec_gym.config import SystemConfig
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState

LN2 = math.log(2.0)
ALPHA_MODES = ("optimize", "random", "edge", "local")
ASSOCIATION_MODES = ("cccp", "greedy", "random")
# Solver attempts for P4, in order; the first optimal (or optimal-inaccurate) solution is used, and only
# if the true cost H falls. Users on a far server (γp/β ~ 1e-3) make P4 badly conditioned: the rate's
# exponential cone then evaluates log(1 + x) at x ≈ 0, and the bandwidth of such a user barely matters
# (a flat direction). Clarabel's default full steps (0.99 of the way to the boundary) then stall at
# "insufficient progress" on ~20 % of such instances; 0.9 solved every one we tried in milliseconds.
# SCS needs seconds and is the last resort, with an iteration cap.
SOLVER_ATTEMPTS: tuple[tuple[str, dict[str, float]], ...] = (
    (cp.CLARABEL, {"max_step_fraction": 0.9, "max_iter": 300}),
    (cp.CLARABEL, {"max_step_fraction": 0.8, "tol_gap_abs": 1e-6, "tol_gap_rel": 1e-6, "tol_feas": 1e-6,
                   "max_iter": 400}),
    (cp.SCS, {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iters": 5000}),
)


@dataclass
class Allocation:
    """Per-user values of the active users, [n] each: α (real while relaxed), DVFS level u,
    uplink power p (W), bandwidth share β, compute share φ."""

    alpha: np.ndarray
    frequency: np.ndarray
    power: np.ndarray
    bandwidth: np.ndarray
    compute: np.ndarray

    def copy(self) -> Allocation:
        return Allocation(*(np.array(v, dtype=np.float64) for v in
                            (self.alpha, self.frequency, self.power, self.bandwidth, self.compute)))


@dataclass
class Bounds:
    """Box bounds [n] of each variable; equal bounds fix a variable (uncontrolled fields, fixed α)."""

    alpha: tuple[np.ndarray, np.ndarray]
    frequency: tuple[np.ndarray, np.ndarray]
    power: tuple[np.ndarray, np.ndarray]
    bandwidth: tuple[np.ndarray, np.ndarray]
    compute: tuple[np.ndarray, np.ndarray]


@dataclass
class Trace:
    """What one decision cost the solver (``StableFP.last_trace`` is its dict form)."""

    objective: list[float] = field(default_factory=list)  # env cost after Step 1 of each outer iteration
    surrogate: list[list[float]] = field(default_factory=list)  # K per inner iteration, one list per FP run
    relaxed_objective: list[list[float]] = field(default_factory=list)  # H at each inner iterate
    inner_iterations: list[int] = field(default_factory=list)
    cccp_objective: list[list[float]] = field(default_factory=list)  # P6 objective per CCCP iteration (best restart)
    cccp_iterations: list[list[int]] = field(default_factory=list)  # per association step, per restart
    cccp_runs: list[list[list[float]]] = field(default_factory=list)  # per step, per restart: P6 per iteration
    outer_iterations: int = 0
    solver_calls: int = 0
    fallbacks: int = 0
    solve_time_s: float = 0.0
    cost: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "objective": list(self.objective), "surrogate": [list(s) for s in self.surrogate],
            "relaxed_objective": [list(h) for h in self.relaxed_objective],
            "inner_iterations": list(self.inner_iterations), "iterations": int(sum(self.inner_iterations)),
            "cccp_objective": [list(c) for c in self.cccp_objective],
            "cccp_iterations": [list(c) for c in self.cccp_iterations],
            "cccp_runs": [[list(h) for h in runs] for runs in self.cccp_runs],
            "outer_iterations": self.outer_iterations, "solver_calls": self.solver_calls,
            "fallbacks": self.fallbacks, "solve_time_s": self.solve_time_s, "cost": self.cost,
        }


# ----------------------------------------------------------------------------- the convex surrogate P4

_RELAXED_TERMS = (
    "alpha2",  # α²: quadratic-transform weight of α·A(u) and of α·(1/r)
    "local2",  # τ_A²: its partner, τ_A ≥ A(u)/A₀
    "server2",  # (Υ−α)²: quadratic-transform weight of (Υ−α)·B(φ)
    "edge2",  # τ_B²: its partner, τ_B ≥ B(φ)/B₀
    "power3", "alpha3", "rate3",  # AM-GM terms of the aggregation energy p·α·(1/r)
    "stability",  # Υ·σ/(Υ−α): [LZ24] Theorem 1 bound
)
_FIXED_TERMS = (
    "local1",  # τ_A: the exact α·A(u) when α is fixed
    "edge1",  # τ_B: the exact (Υ−α)·B(φ) when α is fixed
)
_COMMON_TERMS = (
    "power2",  # p²: transform of the upload energy p·(1/r)
    "rate2",  # ρ⁻²: partners of p·(1/r) and α·(1/r)
    "rate1",  # ρ⁻¹: upload delay (convex as it is)
    "local_energy", "local_delay",  # A(u)/A₀ = e·u² + t/u
    "edge_energy2", "edge_energy0", "edge_delay",  # B(φ)/B₀ = e2·φ² + e0 + t/φ
    "rate_scale",  # k = W/(ln 2·r₀): r/r₀ = −rel_entr(kβ, kβ + kγp) (homogeneity of rel_entr)
    "rate_snr",  # k·γ, γ = g/(N0·W) the SNR of one watt over the associated server's band
)
_BOUNDS = ("alpha", "frequency", "power", "bandwidth", "compute")
# Floor of every coefficient: a zero weight would leave an epigraph variable of the conic form free on a
# ray (e.g. the stability term when w_s = 0), which stalls interior-point solvers; 1e-10 of an O(1)
# objective changes nothing measurable.
_COEFFICIENT_FLOOR = 1e-10
# Relative cost change below which an iterate that does not improve H is the conic solver's round-off
# (its gaps are ~1e-8 relative on a scaled objective), not a failure.
_SOLVER_ROUNDOFF = 1e-6


class ConvexSubproblem:
    """[LZ24] P4 (eq. 13) in our cost terms, built once with cvxpy Parameters (DPP) for ``n`` users on
    ``m`` servers; :meth:`solve` sets the parameter values and solves.

    Two variants: ``relaxed`` (α a variable in its box: every product is transformed, the stability
    term is Υσ/w with w ≤ Υ − α) and fixed α (α enters the coefficients: the exact convex terms
    α·A(u) and (Υ − α)·B(φ); only p·(1/r) is transformed). Variables: u, p, β, φ (and α), with
    epigraph variables τ_A ≥ A(u)/A₀, τ_B ≥ B(φ)/B₀ and ρ ≤ rate(p, β)/r₀, the rate in the
    perspective form W·β·log2(1 + γp/β) = −(W/ln 2)·rel_entr(β, β + γp), jointly concave. A₀, B₀, r₀
    are the values at the current iterate: rates differ across users by orders of magnitude (a far
    server gives kbit/s), and in these units every transformed pair of terms is O(1) at the current
    point, which keeps the conic solver accurate. Cost coefficients arrive multiplied by ``scale``
    (the number of users).
    """

    def __init__(self, n: int, m: int, layers: int, relaxed: bool) -> None:
        self.n, self.m, self.layers, self.relaxed = n, m, layers, relaxed
        self.calls = 0
        names = _COMMON_TERMS + (_RELAXED_TERMS if relaxed else _FIXED_TERMS)
        self.coef = {name: cp.Parameter(n, nonneg=True, name=name) for name in names}
        self.low = {name: cp.Parameter(n, nonneg=True, name=f"{name}_low") for name in _BOUNDS}
        self.high = {name: cp.Parameter(n, nonneg=True, name=f"{name}_high") for name in _BOUNDS}
        self.assoc = cp.Parameter((m, n), nonneg=True, name="association")
        # a user without server layers (α = Υ) holds no compute: its column is 0 here and its φ is pinned
        self.assoc_compute = cp.Parameter((m, n), nonneg=True, name="association_compute")
        # the same, times the share floor f: each share ≥ f × the largest share on its server, the ratios the
        # Box action can express (decoding: weight ∈ [f, 1], share = weight/Σ weights), so act() = decide()
        self.assoc_floor = cp.Parameter((m, n), nonneg=True, name="association_floor")
        self.assoc_compute_floor = cp.Parameter((m, n), nonneg=True, name="association_compute_floor")
        self.uses_compute = cp.Parameter(n, nonneg=True, name="uses_compute")
        self.peak_bandwidth, self.peak_compute = cp.Variable(m), cp.Variable(m)
        self.fill_bandwidth = cp.Parameter(m, nonneg=True, name="fill_bandwidth")
        self.fill_compute = cp.Parameter(m, nonneg=True, name="fill_compute")
        self.frequency, self.power = cp.Variable(n), cp.Variable(n)
        self.bandwidth, self.compute = cp.Variable(n), cp.Variable(n)
        self.local, self.edge, self.rate = cp.Variable(n), cp.Variable(n), cp.Variable(n)
        c = self.coef

        def weighted(name: str, expr: cp.Expression) -> cp.Expression:
            return cp.sum(cp.multiply(c[name], expr))

        objective = (weighted("power2", cp.square(self.power)) + weighted("rate2", cp.power(self.rate, -2))
                     + weighted("rate1", cp.inv_pos(self.rate)))
        variables = {"frequency": self.frequency, "power": self.power, "bandwidth": self.bandwidth,
                     "compute": self.compute}
        constraints = [
            self.local >= cp.multiply(c["local_energy"], cp.square(self.frequency))
            + cp.multiply(c["local_delay"], cp.inv_pos(self.frequency)),
            self.edge >= cp.multiply(c["edge_energy2"], cp.square(self.compute)) + c["edge_energy0"]
            + cp.multiply(c["edge_delay"], cp.inv_pos(self.compute)),
            self.rate <= -cp.rel_entr(cp.multiply(c["rate_scale"], self.bandwidth),
                                      cp.multiply(c["rate_scale"], self.bandwidth)
                                      + cp.multiply(c["rate_snr"], self.power)),
            self.assoc @ self.bandwidth <= 1.0,
            self.assoc_compute @ self.compute <= 1.0,
            self.assoc @ self.bandwidth >= self.fill_bandwidth,  # = 1 per used server with full shares, else 0
            self.assoc_compute @ self.compute >= self.fill_compute,
            self.assoc.T @ self.peak_bandwidth >= self.bandwidth,
            self.bandwidth >= self.assoc_floor.T @ self.peak_bandwidth,
            self.assoc_compute.T @ self.peak_compute >= cp.multiply(self.uses_compute, self.compute),
            self.compute >= self.assoc_compute_floor.T @ self.peak_compute,
        ]
        if relaxed:
            self.alpha, self.slack = cp.Variable(n), cp.Variable(n)
            variables["alpha"] = self.alpha
            objective += (
                weighted("alpha2", cp.square(self.alpha)) + weighted("local2", cp.square(self.local))
                + weighted("server2", cp.square(layers - self.alpha)) + weighted("edge2", cp.square(self.edge))
                + weighted("power3", cp.power(self.power, 3)) + weighted("alpha3", cp.power(self.alpha, 3))
                + weighted("rate3", cp.power(self.rate, -3)) + weighted("stability", cp.inv_pos(self.slack))
            )
            constraints.append(self.slack <= layers - self.alpha)
        else:
            self.alpha = None
            objective += c["local1"] @ self.local + c["edge1"] @ self.edge
        for name, var in variables.items():
            constraints += [var >= self.low[name], var <= self.high[name]]
        self.problem = cp.Problem(cp.Minimize(objective), constraints)
        if not self.problem.is_dcp(dpp=True):  # a modelling error, not a run-time condition
            raise AssertionError("stable_fp: the P4 surrogate must be DPP")

    def set(self, coefficients: dict[str, np.ndarray], bounds: Bounds, server: np.ndarray,
            uses_compute: np.ndarray, share_floor: float, full_shares: bool) -> None:
        for name, parameter in self.coef.items():
            parameter.value = np.maximum(coefficients[name], _COEFFICIENT_FLOOR)
        for name in _BOUNDS:
            low, high = getattr(bounds, name)
            self.low[name].value = np.asarray(low, dtype=np.float64)
            self.high[name].value = np.asarray(high, dtype=np.float64)
        onehot = np.zeros((self.m, self.n))
        onehot[server, np.arange(self.n)] = 1.0
        self.assoc.value = onehot
        self.assoc_compute.value = onehot * uses_compute[None, :]
        self.assoc_floor.value = share_floor * onehot
        self.assoc_compute_floor.value = share_floor * self.assoc_compute.value
        self.uses_compute.value = uses_compute.astype(np.float64)
        fill = 1.0 if full_shares else 0.0
        self.fill_bandwidth.value = fill * (onehot.sum(axis=1) > 0)
        self.fill_compute.value = fill * (self.assoc_compute.value.sum(axis=1) > 0)

    def solutions(self, attempts: tuple[tuple[str, dict[str, float]], ...]) -> Iterator[tuple[Allocation, float]]:
        """Solve with each (solver, options) in turn, yielding every optimal or optimal-inaccurate solution
        (allocation, objective value); the caller takes the first it accepts. ``calls`` counts the solves."""
        for solver, options in attempts:
            self.calls += 1
            try:
                with warnings.catch_warnings():  # the status is checked here, and H is checked by the caller
                    warnings.simplefilter("ignore", UserWarning)
                    # warm_start=False: cvxpy would otherwise reuse the cached solver object, whose settings
                    # (tolerances of an earlier attempt) and scaling carry over, so results would depend
                    # on what was solved before in the process (~1e-5 relative differences)
                    self.problem.solve(solver=solver, warm_start=False, **options)
            except cp.error.SolverError:
                continue
            if self.problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and self.power.value is not None:
                alpha = self.alpha.value if self.relaxed else self.low["alpha"].value
                yield Allocation(np.array(alpha), self.frequency.value.copy(), self.power.value.copy(),
                                 self.bandwidth.value.copy(), self.compute.value.copy()), float(self.problem.value)


@lru_cache(maxsize=16)
def _subproblem(n: int, m: int, layers: int, relaxed: bool) -> ConvexSubproblem:
    """Compiling P4 takes seconds at N = 50; one instance per shape serves every policy and decision."""
    return ConvexSubproblem(n, m, layers, relaxed)


# ----------------------------------------------------------------------------- closed forms

def surrogate_coefficients(terms: UserTerms, server: np.ndarray, x: Allocation, relaxed: bool,
                           scale: float) -> dict[str, np.ndarray]:
    """P4's coefficients with the auxiliary variables at their closed forms at ``x`` ([LZ24] §4.1 step 3).

    For x·y ≤ x²z + y²/(4z) the tight z = y/(2x) gives weights y/(2x) on x² and x/(2y) on y²:
    z_n = A(u)/(2α) ([LZ24]), q_n = B(φ)/(2(Υ−α)), v_n = 1/(2p·r) per unit of upload energy, and
    1/(2α·r) for the aggregation delay. For p·α·w (w = 1/r) the AM-GM weights are λ_p = αw/p²,
    λ_α = pw/α², λ_w = pα/w². With α fixed (``relaxed`` False) the exact convex terms α·A(u) and
    (Υ−α)·B(φ) stay, and only p·(1/r) is transformed. Cost terms are multiplied by ``scale``; the
    epigraph variables are in units of their current values (:class:`ConvexSubproblem`).
    """
    users = np.arange(len(server))
    layers = terms.layers
    alpha, u, p, phi = x.alpha, x.frequency, x.power, x.compute
    rate = lz24_terms.rate_mbps(terms, server, p, x.bandwidth)
    energy_w, delay_w = scale * terms.energy_weight, scale * terms.delay_weight
    local_energy, local_delay = scale * terms.local_energy, scale * terms.local_delay
    server_layers = layers - alpha
    has_server = server_layers > 0
    edge_energy2 = np.where(has_server, scale * terms.server_energy_quadratic[users, server], 0.0)
    edge_energy0 = np.where(has_server, scale * terms.server_energy_constant[users, server], 0.0)
    edge_delay = np.where(has_server, scale * terms.server_delay[users, server], 0.0)
    adapter = terms.adapter_mbit
    local_ref = local_energy * u**2 + local_delay / u  # A₀ = A(u)
    edge_cost = edge_energy2 * phi**2 + edge_energy0 + np.divide(edge_delay, phi, out=np.zeros_like(phi),
                                                                 where=has_server)
    edge_ref = np.where(edge_cost > 0, edge_cost, 1.0)  # B₀ = B(φ)
    # the payload whose delay and energy are exact (fixed α) or transformed with p (relaxed)
    payload = terms.activation_mbit if relaxed else lz24_terms.upload_mbit(terms, alpha)
    coef = {
        "power2": energy_w * payload / (2 * p * rate),
        "rate2": energy_w * payload * p * rate / 2 / rate**2,
        "rate1": delay_w * payload / rate,
        "local_energy": local_energy / local_ref, "local_delay": local_delay / local_ref,
        "edge_energy2": edge_energy2 / edge_ref, "edge_energy0": edge_energy0 / edge_ref,
        "edge_delay": edge_delay / edge_ref,
        "rate_scale": terms.bandwidth_mhz / (LN2 * rate),
        "rate_snr": terms.bandwidth_mhz / (LN2 * rate) * terms.snr_per_watt[users, server],
    }
    if not relaxed:
        coef["local1"] = alpha * local_ref
        coef["edge1"] = np.where(has_server, server_layers, 0.0) * edge_ref
        return coef
    aux_rate = 1.0 / rate
    coef.update({
        # α·A ≤ (A/(2α))·α² + (α/(2A))·A², and α·(1/r) ≤ (1/(2αr))·α² + (αr/2)·(1/r)², with A = A₀·τ_A, r = r₀·ρ
        "alpha2": local_ref / (2 * alpha) + delay_w * adapter * aux_rate / (2 * alpha),
        "local2": alpha / (2 * local_ref) * local_ref**2,
        "server2": edge_ref / (2 * server_layers),
        "edge2": server_layers / (2 * edge_ref) * edge_ref**2,
        "power3": energy_w * adapter / 3 * alpha * aux_rate / p**2,
        "alpha3": energy_w * adapter / 3 * p * aux_rate / alpha**2,
        "rate3": energy_w * adapter / 3 * p * alpha * rate**2 / rate**3,
        "stability": scale * terms.stability * layers,
    })
    coef["rate2"] = coef["rate2"] + delay_w * adapter * alpha * rate / 2 / rate**2
    return coef


def surrogate_constant(terms: UserTerms, alpha: np.ndarray, relaxed: bool) -> np.ndarray:
    """Terms of the cost P4 leaves out because they are constant: the stability of users with fixed α and
    every user's pipeline overheads (per user, unscaled)."""
    layers = terms.layers
    fraction = np.where(alpha >= layers, 1.0 / (2.0 * layers), 1.0 - alpha / layers)
    fixed_stability = 0.0 if relaxed else terms.stability / fraction
    payload = terms.activation_mbit if relaxed else lz24_terms.upload_mbit(terms, alpha) - terms.adapter_mbit * alpha
    stages = (alpha > 0) * 2.0 + (payload > 0) + (alpha < layers) * 2.0
    return fixed_stability + terms.delay_weight * terms.overhead_s * stages


def surrogate_value(terms: UserTerms, server: np.ndarray, anchor: Allocation, point: Allocation,
                    relaxed: bool) -> tuple[float, float]:
    """K(point; auxiliaries at ``anchor``): the cvxpy objective of P4 evaluated at ``point``, with the epigraph
    variables at their smallest feasible values, plus :func:`surrogate_constant` (unscaled cost units).

    Returns (K, the largest violation of P4's epigraph and rate constraints at those values — 0 up to
    round-off when the cvxpy rate expression equals the model's Shannon rate). The quadratic
    transform makes K ≥ H everywhere with equality at ``point = anchor`` ([LZ24] eq. 16); the tests
    check both against the env's cost. With ``relaxed`` False, ``point.alpha`` must equal ``anchor.alpha``.
    """
    n = len(server)
    scale = float(max(n, 1))
    sub = _subproblem(n, terms.num_servers, terms.layers, relaxed)
    coefficients = surrogate_coefficients(terms, server, anchor, relaxed, scale)
    for name, parameter in sub.coef.items():
        parameter.value = np.maximum(coefficients[name], _COEFFICIENT_FLOOR)
    coef = {name: parameter.value for name, parameter in sub.coef.items()}
    has_server = point.alpha < terms.layers
    phi = np.where(has_server, point.compute, 1.0)  # P4 pins φ = 1 for users without server layers
    sub.frequency.value, sub.power.value = point.frequency, point.power
    sub.bandwidth.value, sub.compute.value = point.bandwidth, phi
    sub.local.value = coef["local_energy"] * point.frequency**2 + coef["local_delay"] / point.frequency
    sub.edge.value = coef["edge_energy2"] * phi**2 + coef["edge_energy0"] + coef["edge_delay"] / phi
    rate = lz24_terms.rate_mbps(terms, server, point.power, point.bandwidth)
    sub.rate.value = rate * LN2 / terms.bandwidth_mhz * coef["rate_scale"]  # r/r₀ from the model's rate
    if relaxed:
        sub.alpha.value = point.alpha
        sub.slack.value = terms.layers - point.alpha
    violation = max(float(np.max(c.violation())) for c in sub.problem.constraints[:3])
    value = float(sub.problem.objective.value) / scale
    return value + float(surrogate_constant(terms, point.alpha, relaxed).sum()), violation


def kkt_residual(terms: UserTerms, server: np.ndarray, x: Allocation, bounds: Bounds, full_shares: bool = False,
                 active_tol: float = 1e-6) -> dict[str, float]:
    """How far ``x`` is from a KKT point of the relaxed problem P3 given the association ([LZ24] eqs. 33-45).

    ∇H by central differences of :func:`~agents.experts.lz24_terms.user_costs` (user n's cost depends
    only on its own variables, so one perturbation of all users per variable suffices). A variable at
    a bound may keep a gradient pointing out of the box (its multiplier); the shares of a server share
    one multiplier μ_m (least squares: μ_m = −mean ∂H/∂β over its users; ≥ 0 for Σβ ≤ 1, free for the
    equality Σβ = 1 of ``full_shares``). The share floor is not modelled: use ``share_floor=0``. Each residual is
    expressed as x_j·|r_j|/H: the relative cost change of a 1 % move, per 1 %. Returns the largest
    ``stationarity`` residual and the largest ``complementarity`` term μ_m·(1 − Σβ)/H.
    """
    names = ("alpha", "frequency", "power", "bandwidth", "compute")
    values = {name: np.asarray(getattr(x, name), dtype=np.float64) for name in names}

    def total(v: dict[str, np.ndarray]) -> np.ndarray:
        return lz24_terms.user_costs(terms, server, v["alpha"], v["frequency"], v["power"], v["bandwidth"],
                                     v["compute"])

    cost = float(total(values).sum())
    gradient = {}
    for name in names:
        step = 1e-6 * np.maximum(np.abs(values[name]), 1e-3)
        up = dict(values, **{name: values[name] + step})
        down = dict(values, **{name: values[name] - step})
        gradient[name] = (total(up) - total(down)) / (2 * step)
    residual, complementarity = [], [0.0]
    for name in ("alpha", "frequency", "power"):
        low, high = getattr(bounds, name)
        g, v = gradient[name], values[name]
        span = np.maximum(np.abs(high - low), 1e-12)
        at_low = v <= low + active_tol * span
        at_high = v >= high - active_tol * span
        inside = np.where(at_low, np.minimum(g, 0.0), np.where(at_high, np.maximum(g, 0.0), g))
        r = np.where(at_low & at_high, 0.0, inside)
        residual.append(np.abs(v * r))
    has_server = values["alpha"] < terms.layers
    for name, needed in (("bandwidth", np.ones_like(has_server)), ("compute", has_server)):
        low, high = getattr(bounds, name)
        g, v = gradient[name], values[name]
        fixed = np.isclose(low, high)
        for m in np.unique(server):
            members = (server == m) & needed & ~fixed
            if not members.any():
                continue
            mu = -float(np.mean(g[members])) if full_shares else max(0.0, -float(np.mean(g[members])))
            residual.append(np.abs(v[members] * (g[members] + mu)))
            complementarity.append(mu * abs(1.0 - float(v[(server == m) & needed].sum())))
    stationarity = max(float(np.max(r)) if len(r) else 0.0 for r in residual)
    return {"stationarity": stationarity / cost, "complementarity": max(complementarity) / cost, "cost": cost}


# ----------------------------------------------------------------------------- the policy

class StableFP(Policy):
    """[LZ24]'s solver as a policy (module docstring): ``decide(state)`` returns the round's decision.

    Args:
        config: the scenario (else taken from the env at :meth:`reset`); must pass
            :func:`~agents.experts.lz24_terms.unsupported_reasons`.
        inner_tol: Step 1 stops when the surrogate changes by less than this, relative.
        inner_max_iter: at most this many convex solves per Step-1 loop.
        outer_max_iter: at most this many association steps.
        cccp_restarts: random starting points of CCCP besides the current association and the
            uniform point ([LZ24] §4.2 "several times from different feasible starting points").
        cccp_max_iter, cccp_tol: per CCCP run, at most this many LPs; stop when χ moves less than tol.
        penalty: ϱ as a multiple of the mean gap between each user's best and second-best server cost.
        alpha: ``"optimize"`` ([LZ24]), ``"random"`` (uniform integer, fixed), ``"edge"``
            (α = split_min_local) or ``"local"`` (α = Υ) — the last three are [LZ24]'s baselines.
        association: ``"cccp"`` ([LZ24]), ``"greedy"`` or ``"random"`` (fixed; [LZ24] Fig. 5 baselines).
        solvers: (solver, options) attempts for P4, in order (:data:`SOLVER_ATTEMPTS`); the first
            optimal solution wins.
        share_floor: every bandwidth and compute share is at least this fraction of the largest share
            on its server. ``None`` (default) takes the scenario's ``radio.share_floor``: the smallest
            ratio the Box action expresses, so ``act`` (via ``encode``) applies exactly the decision
            ``decide`` returns. 0 gives [LZ24]'s unrestricted shares.
        full_shares: each server hands out its whole band and compute (Σβ = 1, Σφ = 1 per server with
            users): [LZ24]'s equalities (9e), (9g), and the only shares the Box action expresses (decoding
            normalizes per server). ``False`` allows Σ ≤ 1 (SPEC §3.2), which the ``frequency`` energy
            model can exploit — a lower clock costs less energy — through ``step_decision`` only.
        lp_solver: the solver of CCCP's linear programs.
        seed: seeds the random starts and the random baselines (with the round and batch index).

    ``last_trace`` holds the last decision's :class:`Trace` as a dict (objective per outer iteration,
    surrogate per inner iteration, iterations, CCCP objectives, solve_time_s, fallbacks); ``stats``
    accumulates decisions, solve time, iterations and fallbacks over the episode.
    """

    name: ClassVar[str] = "stable_fp"

    def __init__(self, config: SystemConfig | None = None, *, inner_tol: float = 1e-6, inner_max_iter: int = 60,
                 outer_max_iter: int = 8, cccp_restarts: int = 4, cccp_max_iter: int = 30, cccp_tol: float = 1e-6,
                 penalty: float = 1.0, alpha: str = "optimize", association: str = "cccp",
                 solvers: tuple[tuple[str, dict[str, float]], ...] = SOLVER_ATTEMPTS, lp_solver: str = cp.HIGHS,
                 share_floor: float | None = None, full_shares: bool = True, seed: int = 0) -> None:
        super().__init__()
        if alpha not in ALPHA_MODES:
            raise ValueError(f"alpha: must be one of {ALPHA_MODES}, got {alpha!r}")
        if association not in ASSOCIATION_MODES:
            raise ValueError(f"association: must be one of {ASSOCIATION_MODES}, got {association!r}")
        for name, value in (("inner_tol", inner_tol), ("cccp_tol", cccp_tol), ("penalty", penalty)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
        for name, value in (("inner_max_iter", inner_max_iter), ("outer_max_iter", outer_max_iter),
                            ("cccp_max_iter", cccp_max_iter)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if not (isinstance(cccp_restarts, int) and cccp_restarts >= 0):
            raise ValueError(f"cccp_restarts: must be an integer >= 0, got {cccp_restarts!r}")
        self.inner_tol, self.inner_max_iter, self.outer_max_iter = inner_tol, inner_max_iter, outer_max_iter
        self.cccp_restarts, self.cccp_max_iter, self.cccp_tol = cccp_restarts, cccp_max_iter, cccp_tol
        self.penalty, self.alpha_mode, self.association_mode = penalty, alpha, association
        self.solvers, self.lp_solver, self.seed = tuple(solvers), lp_solver, seed
        if share_floor is not None and not 0.0 <= share_floor < 1.0:
            raise ValueError(f"share_floor: must lie in [0, 1), got {share_floor!r}")
        self.share_floor, self.full_shares = share_floor, bool(full_shares)
        self._floor = 0.0 if share_floor is None else share_floor  # set from the config at bind/reset
        self.last_trace: dict[str, Any] = {}
        if config is not None:
            self.bind(config, seed)

    # ------------------------------------------------------------------ Policy interface
    def check_config(self, config: SystemConfig) -> None:
        """Raise ``ValueError`` naming the fields if [LZ24]'s model does not describe ``config``
        (:func:`~agents.experts.lz24_terms.unsupported_reasons`); the benchmark calls it before any episode."""
        reasons = lz24_terms.unsupported_reasons(config)
        if reasons:
            raise ValueError(f"config: {self.name} solves [LZ24]'s model, which needs " + "; ".join(reasons))

    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        self._check(self.config)
        if seed is not None:
            self.seed = seed

    def bind(self, config: SystemConfig, seed: int | None = None) -> None:
        super().bind(config, seed)
        self._check(config)
        if seed is not None:
            self.seed = seed

    def decide(self, state: SystemState) -> Decision:
        """The decision for every system of ``state`` (batch axis kept; uncontrolled fields ``None``)."""
        config = self._require_config()
        parts = []
        for index in range(state.batch_size):
            decision, trace = self.solve(state, index)
            parts.append(decision)
            self.last_trace = trace.as_dict()
            for key, value in (("decisions", 1), ("solve_time_s", trace.solve_time_s),
                               ("iterations", sum(trace.inner_iterations)), ("fallbacks", trace.fallbacks)):
                self.stats[key] = self.stats.get(key, 0) + value
        fields = {}
        for name in ("split", "server", "power", "d2d_power", "bandwidth", "compute", "frequency", "microbatches"):
            fields[name] = np.concatenate([getattr(d, name) for d in parts])
        return restrict_to_controls(config, Decision(**fields))

    # ------------------------------------------------------------------ one system
    def solve(self, state: SystemState, index: int = 0) -> tuple[Decision, Trace]:
        """Solve batch member ``index``: returns its complete decision (batch axis of 1) and the trace."""
        config = self._require_config()
        start = time.perf_counter()
        trace = Trace()
        rng = np.random.default_rng([self.seed, int(state.round[index]), index])
        one = state.select(index)
        terms_all = lz24_terms.user_terms(config, one)
        users = np.flatnonzero(terms_all.active)
        terms = terms_all.take(users)
        server_all = self._initial_association(config, one, rng)
        best_server = server_all[users]
        alloc = self._initial_allocation(config, terms, best_server, rng)
        fixed_alpha = self._fixed_alpha(config, terms, rng)
        if fixed_alpha is not None:
            alloc.alpha = fixed_alpha.astype(np.float64)
        best = self._finish(config, one, terms_all, users, server_all, best_server, alloc, trace, rng)
        best_cost = best[2]
        trace.objective.append(best_cost)
        if self.association_mode == "cccp" and "server" in config.controls and len(users):
            for _ in range(self.outer_max_iter):
                trace.outer_iterations += 1
                moved = self.associate(config, terms, best[0], best[1], trace, rng)
                if moved is None:
                    break
                candidate = self._finish(config, one, terms_all, users, server_all, moved[0], moved[1], trace, rng)
                trace.objective.append(candidate[2])
                if not candidate[2] < best_cost - 1e-9 * abs(best_cost):
                    break
                best, best_cost = candidate, candidate[2]
        server_full = server_all.copy()
        server_full[users] = best[0]
        final = best[1]
        decision = self._to_decision(config, one, terms_all, users, server_full, final)
        trace.cost = float(lz24_terms.model_cost(config, one, decision)[0])
        trace.solve_time_s = time.perf_counter() - start
        return decision, trace

    def _finish(self, config: SystemConfig, state: SystemState, terms_all: UserTerms, users: np.ndarray,
                server_all: np.ndarray, server: np.ndarray, alloc: Allocation, trace: Trace,
                rng: np.random.Generator) -> tuple[np.ndarray, Allocation, float]:
        """Step 1 for an association, then the env's cost of the resulting (integer) decision."""
        terms = terms_all.take(users)
        alloc = self.allocate(config, terms, server, alloc, trace, rng) if len(users) else alloc
        server_full = server_all.copy()
        server_full[users] = server
        decision = self._to_decision(config, state, terms_all, users, server_full, alloc)
        return server, alloc, float(lz24_terms.model_cost(config, state, decision)[0])

    # ------------------------------------------------------------------ Step 1
    def allocate(self, config: SystemConfig, terms: UserTerms, server: np.ndarray, start: Allocation, trace: Trace,
                 rng: np.random.Generator) -> Allocation:
        """Step 1 given the association: FP on the relaxation, rounding, FP with α fixed, boundary regimes."""
        if self.alpha_mode != "optimize" or "split" not in config.controls:
            x = self._share_rules(config, terms, server, start)
            return self.fp(config, terms, server, x, False, trace)
        low, high = self._relaxed_alpha_range(terms)
        x = start.copy()
        x.alpha = np.clip(x.alpha, low, high)
        x = self._share_rules(config, terms, server, x)
        x = self.fp(config, terms, server, x, True, trace)
        x.alpha = np.clip(np.round(x.alpha), low, high)
        x = self._share_rules(config, terms, server, x)
        x = self.fp(config, terms, server, x, False, trace)
        switched = self._boundary_regimes(config, terms, server, x)
        if switched is not None:
            x = self.fp(config, terms, server, self._share_rules(config, terms, server, switched), False, trace)
        return x

    def fp(self, config: SystemConfig, terms: UserTerms, server: np.ndarray, start: Allocation,
           relaxed: bool, trace: Trace) -> Allocation:
        """The FP loop ([LZ24] §4.1): closed-form auxiliaries, convex P4, until K changes < ``inner_tol``.

        Returns the last iterate whose solve succeeded (``start`` if none did). Appends K and H per
        iteration (unscaled, comparable with the env's cost) to ``trace``.
        """
        n = len(server)
        scale = float(max(n, 1))
        sub = _subproblem(n, terms.num_servers, terms.layers, relaxed)
        bounds = self.bounds(config, terms, server, start, relaxed)
        x = start.copy()
        surrogate, costs_h = [], []
        previous = math.inf
        iterations = 0
        current = float(self.relaxed_cost(terms, server, x).sum())
        for _ in range(self.inner_max_iter):
            coefficients = surrogate_coefficients(terms, server, x, relaxed, scale)
            sub.set(coefficients, bounds, server, relaxed | (x.alpha < terms.layers), self._floor,
                    self.full_shares)
            calls_before = sub.calls
            accepted, smallest = None, math.inf
            for solution, value in sub.solutions(self.solvers):
                candidate = self._project(terms, server, solution, bounds)
                cost = float(self.relaxed_cost(terms, server, candidate).sum())
                smallest = min(smallest, cost)
                if cost <= current * (1.0 + 1e-9):  # H may only fall (K_i ≥ H_i ≥ K_{i+1}); else inaccurate
                    accepted = (candidate, cost, value)
                    break
            trace.solver_calls += sub.calls - calls_before
            if accepted is None:
                # no usable solution: converged to solver accuracy if the best one is within round-off of H,
                # a failure (counted; the last good iterate stands) otherwise
                if not smallest <= current * (1.0 + max(self.inner_tol, _SOLVER_ROUNDOFF)):
                    trace.fallbacks += 1
                break
            iterations += 1
            x, current, value = accepted
            value = value / scale + float(surrogate_constant(terms, x.alpha, relaxed).sum())
            surrogate.append(value)
            costs_h.append(current)
            if abs(previous - value) <= self.inner_tol * abs(value):
                break
            previous = value
        trace.surrogate.append(surrogate)
        trace.relaxed_objective.append(costs_h)
        trace.inner_iterations.append(iterations)
        return x

    @staticmethod
    def relaxed_cost(terms: UserTerms, server: np.ndarray, x: Allocation) -> np.ndarray:
        """H: each user's cost at ``x`` (α possibly fractional), [n] (:func:`lz24_terms.user_costs`)."""
        return lz24_terms.user_costs(terms, server, x.alpha, x.frequency, x.power, x.bandwidth, x.compute)

    def bounds(self, config: SystemConfig, terms: UserTerms, server: np.ndarray, x: Allocation,
               relaxed: bool) -> Bounds:
        """Variable boxes: α's relaxed range (or fixed), u ∈ [u_min, 1], p ∈ [p_min, p_max], shares in
        [0, 1]; an uncontrolled field is pinned to its rule (p_max, u = 1, equal band, compute ∝ work)."""
        n = len(server)
        ones, zeros = np.ones(n), np.zeros(n)
        low, high = self._relaxed_alpha_range(terms)
        alpha = (low, high) if relaxed else (x.alpha, x.alpha)
        controls = config.controls
        frequency = (np.full(n, terms.frequency_min), ones) if "frequency" in controls else (ones, ones)
        power = (np.full(n, terms.power_min), terms.power_max) if "power" in controls else \
            (terms.power_max, terms.power_max)
        bandwidth = (zeros, ones) if "bandwidth" in controls else (x.bandwidth, x.bandwidth)
        has_server = relaxed | (x.alpha < terms.layers)
        # φ of a user without server layers is pinned at 1 inside P4 (it costs nothing and holds no share)
        compute = (np.where(has_server, 0.0, 1.0), ones) if "compute" in controls else \
            (np.where(has_server, x.compute, 1.0), np.where(has_server, x.compute, 1.0))
        return Bounds(alpha=alpha, frequency=frequency, power=power, bandwidth=bandwidth, compute=compute)

    def _relaxed_alpha_range(self, terms: UserTerms) -> tuple[np.ndarray, np.ndarray]:
        """α's continuous range: [max(1, split_min_local), min(Υ − 1, memory)]: α = 0 and α = Υ are other
        regimes (raw-token upload; no server), handled after rounding."""
        low = np.maximum(terms.alpha_low, 1).astype(np.float64)
        high = np.minimum(terms.alpha_top, terms.layers - 1).astype(np.float64)
        low = np.minimum(low, np.maximum(high, terms.alpha_low))
        return low, np.maximum(high, low)

    def _project(self, terms: UserTerms, server: np.ndarray, x: Allocation, bounds: Bounds) -> Allocation:
        """Clip to the boxes and rescale a server's shares that sum above 1 by solver round-off."""
        out = Allocation(*(np.clip(getattr(x, name), *getattr(bounds, name)) for name in _BOUNDS))
        out.compute = np.where(out.alpha < terms.layers, out.compute, 0.0)  # P4's pinned φ of users without server
        for name, eligible in (("bandwidth", np.ones(len(server), dtype=bool)), ("compute", out.alpha < terms.layers)):
            share = np.where(eligible, np.maximum(getattr(out, name), 1e-12), 0.0)
            setattr(out, name, lift_shares(share, server, terms.num_servers, eligible, self._floor,
                                                self.full_shares))
        return out

    def _boundary_regimes(self, config: SystemConfig, terms: UserTerms, server: np.ndarray,
                          x: Allocation) -> Allocation | None:
        """Offer each user α = Υ (and α = 0 if allowed) with its other values kept; since user costs are
        separable given the shares, every switch that lowers a user's cost lowers the total."""
        candidates = []
        if "split" in config.controls:
            candidates.append(np.where(terms.alpha_top >= terms.layers, float(terms.layers), np.nan))
            candidates.append(np.where(terms.alpha_low <= 0, 0.0, np.nan))
        best = self.relaxed_cost(terms, server, x)
        alpha = x.alpha.copy()
        for candidate in candidates:
            allowed = ~np.isnan(candidate)
            if not allowed.any():
                continue
            trial = x.copy()
            trial.alpha = np.where(allowed, candidate, x.alpha)
            cost = self.relaxed_cost(terms, server, trial)
            better = allowed & (cost < best - 1e-12 * np.abs(best))
            alpha = np.where(better, trial.alpha, alpha)
            best = np.where(better, cost, best)
        if np.array_equal(alpha, x.alpha):
            return None
        out = x.copy()
        out.alpha = alpha
        return out

    def _share_rules(self, config: SystemConfig, terms: UserTerms, server: np.ndarray, x: Allocation) -> Allocation:
        """Make ``x`` feasible for the association: shares renormalized per server (equal shares where a
        server's users hold none), uncontrolled fields at their rules."""
        out = x.copy()
        n, m = len(server), terms.num_servers
        has_server = out.alpha < terms.layers
        for name, eligible in (("bandwidth", np.ones(n, dtype=bool)), ("compute", has_server)):
            counts = np.bincount(server, weights=eligible.astype(np.float64), minlength=m)
            equal = np.where(eligible, 1.0 / np.maximum(counts[server], 1.0), 0.0)
            share = np.where(eligible, getattr(out, name), 0.0)
            share = np.where(eligible & ~(share > 0), equal, share)  # a newly eligible user starts at an equal share
            totals = np.bincount(server, weights=share, minlength=m)
            rule = name not in config.controls
            value = equal if rule else lift_shares(share / np.maximum(totals[server], 1.0), server, m, eligible,
                                                   self._floor, self.full_shares)
            if name == "compute" and rule:  # SPEC §3.2: compute ∝ the server-side work
                work = np.where(has_server, (terms.layers - out.alpha) * terms.server_delay[np.arange(n), server], 0.0)
                total_work = np.bincount(server, weights=work, minlength=m)
                value = np.where(total_work[server] > 0, work / np.maximum(total_work[server], 1e-300), equal)
            setattr(out, name, np.where(eligible, value, 0.0))
        if "power" not in config.controls:
            out.power = terms.power_max.copy()
        if "frequency" not in config.controls:
            out.frequency = np.ones(n)
        return out

    # ------------------------------------------------------------------ Step 2
    def pair_shares(self, terms: UserTerms, server: np.ndarray, x: Allocation) -> tuple[np.ndarray, np.ndarray]:
        """Shares each user would hold on each server, [n, M] (the "one more slot" rule, module docstring)."""
        n, m = len(server), terms.num_servers
        shares = []
        for name, eligible in (("bandwidth", np.ones(n, dtype=bool)), ("compute", x.alpha < terms.layers)):
            counts = np.bincount(server, weights=eligible.astype(np.float64), minlength=m)
            pair = np.broadcast_to(1.0 / (counts + 1.0), (n, m)).copy()
            own = getattr(x, name) * counts[server] / (counts[server] + 1.0)
            pair[np.arange(n), server] = own
            shares.append(np.where(eligible[:, None], pair, 0.0))
        return shares[0], shares[1]

    def pair_costs(self, terms: UserTerms, server: np.ndarray, x: Allocation) -> tuple[np.ndarray, ...]:
        """Cost of every user on every server with its values and the pair shares, [n, M] (P5's c_{n,m})."""
        bandwidth, compute_share = self.pair_shares(terms, server, x)
        m = terms.num_servers
        # one batched evaluation: row `target` puts every user on server `target`
        cost = lz24_terms.user_costs(terms, np.arange(m)[:, None], x.alpha, x.frequency, x.power, bandwidth.T,
                                     np.maximum(compute_share.T, 1e-12)).T
        return cost, bandwidth, compute_share

    def associate(self, config: SystemConfig, terms: UserTerms, server: np.ndarray, x: Allocation, trace: Trace,
                  rng: np.random.Generator) -> tuple[np.ndarray, Allocation] | None:
        """Step 2 ([LZ24] §4.2): CCCP on P6 from several starts; the best binary feasible association by
        P5's objective, with the allocation moved to it (pair shares), or ``None`` if it is unchanged."""
        n, m = len(server), terms.num_servers
        if m < 2:
            return None
        cost, bandwidth, compute_share = self.pair_costs(terms, server, x)
        scale = float(n)
        cost_scaled = cost * scale
        ordered = np.sort(cost_scaled, axis=1)
        regret = float(np.mean(ordered[:, 1] - ordered[:, 0]))
        rho = self.penalty * (regret if regret > 0 else 1e-3 * float(np.mean(np.abs(cost_scaled))) + 1e-12)
        lp = _association_lp(n, m, config.server.capacity)
        lp.set_data(bandwidth, compute_share, config.server.capacity)
        current = np.zeros((n, m))
        current[np.arange(n), server] = 1.0
        starts = [current, np.full((n, m), 1.0 / m)]
        starts += [rng.dirichlet(np.ones(m), size=n) for _ in range(self.cccp_restarts)]
        best_value, best_choice, best_history = float(cost_scaled[np.arange(n), server].sum()), server, None
        iterations, histories = [], []
        for chi in starts:
            history = []
            done = 0
            for _ in range(self.cccp_max_iter):
                solution = lp.solve(cost_scaled + rho * (1.0 - 2.0 * chi), self.lp_solver)
                trace.solver_calls += 1
                done += 1
                if solution is None:
                    trace.fallbacks += 1
                    break
                penalized = (cost_scaled * solution).sum() + rho * (solution * (1.0 - solution)).sum()  # P6 (eq. 50)
                history.append(float(penalized) / scale)
                moved = float(np.max(np.abs(solution - chi)))
                chi = solution
                if moved <= self.cccp_tol:
                    break
            iterations.append(done)
            histories.append(history)
            binary = np.all((chi < 1e-6) | (chi > 1.0 - 1e-6))
            choice = np.argmax(chi, axis=1)
            if not (binary and lp.feasible(choice)):
                continue
            value = float(cost_scaled[np.arange(n), choice].sum())
            if value < best_value - 1e-12 * abs(best_value):
                best_value, best_choice, best_history = value, choice, history
        trace.cccp_iterations.append(iterations)
        trace.cccp_runs.append(histories)  # restart 0: the current association, 1: the uniform point, then random
        # the run that found the kept association, else the uniform start's (the LP relaxation's path)
        trace.cccp_objective.append(best_history if best_history is not None else histories[min(1, len(histories) - 1)])
        if np.array_equal(best_choice, server):
            return None
        moved_alloc = x.copy()
        moved_alloc.bandwidth = bandwidth[np.arange(n), best_choice]
        moved_alloc.compute = np.maximum(compute_share[np.arange(n), best_choice], 0.0)
        return best_choice, moved_alloc

    # ------------------------------------------------------------------ starts and baselines
    def _check(self, config: SystemConfig | None) -> None:
        if config is None:
            return
        self._floor = config.radio.share_floor if self.share_floor is None else self.share_floor
        self.check_config(config)

    def _initial_association(self, config: SystemConfig, state: SystemState, rng: np.random.Generator) -> np.ndarray:
        """Greedy ([LZ24] Fig. 5 baseline) or random association; the nearest server when not controlled."""
        if "server" not in config.controls:
            return decision_model.nearest_server(config, state)[0]
        if self.association_mode == "random":
            return random_association(config, rng)
        from agents.heuristics import GreedyPolicy  # the one implementation of [LZ24]'s greedy rule

        greedy = GreedyPolicy()
        greedy.bind(config)
        return np.asarray(greedy.decide(state).server)[0]

    def _initial_allocation(self, config: SystemConfig, terms: UserTerms, server: np.ndarray,
                            rng: np.random.Generator) -> Allocation:
        """α at its lowest, full DVFS level, p_max, equal shares: the reference rules, always feasible."""
        n = len(server)
        low, _ = self._relaxed_alpha_range(terms)
        x = Allocation(alpha=low.copy(), frequency=np.ones(n), power=terms.power_max.copy(), bandwidth=np.zeros(n),
                       compute=np.zeros(n))
        return self._share_rules(config, terms, server, x)

    def _fixed_alpha(self, config: SystemConfig, terms: UserTerms, rng: np.random.Generator) -> np.ndarray | None:
        """α of the baselines that do not optimize it ([LZ24] Figs. 2-3); ``None`` when α is optimized."""
        if "split" not in config.controls:
            return terms.alpha_low.astype(np.float64)  # the rule: split_min_local
        if self.alpha_mode == "edge":
            return terms.alpha_low.astype(np.float64)
        if self.alpha_mode == "local":
            return terms.alpha_top.astype(np.float64)
        if self.alpha_mode == "random":
            return rng.integers(terms.alpha_low, terms.alpha_top + 1).astype(np.float64)
        return None

    def _to_decision(self, config: SystemConfig, state: SystemState, terms_all: UserTerms, users: np.ndarray,
                     server: np.ndarray, x: Allocation) -> Decision:
        n = terms_all.num_users
        values = {name: np.zeros(n) for name in _BOUNDS}
        values["frequency"][:] = 1.0
        for name in _BOUNDS:
            values[name][users] = getattr(x, name)
        alpha = np.round(values["alpha"]).astype(np.int64)
        m = terms_all.num_servers
        active = terms_all.active
        # shares the Box action can express (a no-op for P4's solutions, a repair for the baselines')
        values["bandwidth"] = lift_shares(values["bandwidth"], server, m, active, self._floor, self.full_shares)
        values["compute"] = lift_shares(values["compute"], server, m, active & (alpha < terms_all.layers), self._floor,
                                        self.full_shares)
        return lz24_terms.to_decision(config, terms_all, server, alpha, values["frequency"], values["power"],
                                      values["bandwidth"], values["compute"])


def lift_shares(share: np.ndarray, server: np.ndarray, num_servers: int, eligible: np.ndarray,
                floor: float, full: bool) -> np.ndarray:
    """Raise every eligible share to at least ``floor`` × the largest share on its server, then rescale a
    server whose shares sum above 1 (or, with ``full``, to exactly 1; ratios kept). Ineligible users get 0."""
    share = np.where(eligible, share, 0.0)
    if floor > 0:
        peak = np.zeros(num_servers)
        np.maximum.at(peak, server, share)
        share = np.where(eligible, np.maximum(share, floor * peak[server]), 0.0)
    totals = np.bincount(server, weights=share, minlength=num_servers)
    target = np.where(totals > 0, totals, 1.0) if full else np.maximum(totals, 1.0)
    return share / target[server]


def random_association(config: SystemConfig, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random servers ([LZ24] Fig. 5 "random"), users beyond a server's capacity re-drawn among
    the servers with room."""
    n, m, capacity = config.num_users, config.num_servers, config.server.capacity
    if not capacity:
        return rng.integers(0, m, n)
    load = np.zeros(m, dtype=np.int64)
    server = np.empty(n, dtype=np.int64)
    for user in rng.permutation(n):
        room = np.flatnonzero(load < capacity)
        server[user] = rng.choice(room)
        load[server[user]] += 1
    return server


# ----------------------------------------------------------------------------- CCCP's linear program

class AssociationLP:
    """One CCCP step ([LZ24] eq. 51): min Σ c̃·χ s.t. Σ_m χ = 1, Σ_n χβ ≤ 1, Σ_n χφ ≤ 1, Σ_n χ ≤ capacity,
    0 ≤ χ ≤ 1, built once with Parameters (DPP) and solved with HiGHS."""

    def __init__(self, n: int, m: int, capacity: int) -> None:
        self.chi = cp.Variable((n, m))
        self.cost = cp.Parameter((n, m))
        self.bandwidth = cp.Parameter((n, m), nonneg=True)
        self.compute = cp.Parameter((n, m), nonneg=True)
        constraints = [self.chi >= 0, self.chi <= 1, cp.sum(self.chi, axis=1) == 1,
                       cp.sum(cp.multiply(self.bandwidth, self.chi), axis=0) <= 1,
                       cp.sum(cp.multiply(self.compute, self.chi), axis=0) <= 1]
        if capacity:
            constraints.append(cp.sum(self.chi, axis=0) <= capacity)
        self.capacity = capacity
        self.problem = cp.Problem(cp.Minimize(cp.sum(cp.multiply(self.cost, self.chi))), constraints)
        if not self.problem.is_dcp(dpp=True):
            raise AssertionError("stable_fp: the association LP must be DPP")

    def set_data(self, bandwidth: np.ndarray, compute_share: np.ndarray, capacity: int) -> None:
        self.bandwidth.value = bandwidth
        self.compute.value = compute_share

    def solve(self, cost: np.ndarray, solver: str) -> np.ndarray | None:
        self.cost.value = cost
        try:
            self.problem.solve(solver=solver, warm_start=False)  # history-independent (see ConvexSubproblem)
        except cp.error.SolverError:
            return None
        if self.problem.status != cp.OPTIMAL or self.chi.value is None:
            return None
        return np.clip(self.chi.value, 0.0, 1.0)

    def feasible(self, choice: np.ndarray, tol: float = 1e-9) -> bool:
        """Whether the binary association ``choice`` satisfies the share and capacity constraints."""
        n, m = self.bandwidth.value.shape
        rows = np.arange(n)
        for share in (self.bandwidth.value, self.compute.value):
            if np.any(np.bincount(choice, weights=share[rows, choice], minlength=m) > 1.0 + tol):
                return False
        return not self.capacity or bool(np.all(np.bincount(choice, minlength=m) <= self.capacity))


@lru_cache(maxsize=16)
def _association_lp(n: int, m: int, capacity: int) -> AssociationLP:
    return AssociationLP(n, m, capacity)
