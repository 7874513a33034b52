"""[LZ24]'s baselines (Figs. 2, 3 and 5), as variants of :class:`~agents.experts.stable_fp.StableFP`.

Each keeps the proposed solver's outer loop and association step where the paper's comparison
needs them, and replaces the part under comparison (notes shared/papers/LZ24-liu-zhao-2024.md §5):

=======================  ======================================================================
name                     what it is
=======================  ======================================================================
``stable_fp``            the proposed solver (FP + CCCP), :class:`StableFP`
``lz24_ao``              Fig. 3 "alternating optimization": the related work's block-coordinate
                         descent *without* the quadratic transform — α, DVFS, power, bandwidth and
                         compute in turn, each block minimized exactly with the others fixed
``lz24_alpha_only``      Fig. 3 "optimize α only": random resources, α optimized
``lz24_resources_only``  Fig. 3 "optimize resource only": random α, resources by FP
``lz24_greedy``          Fig. 5 "baseline": greedy association ([LZ24] §5), resources and α by FP
``lz24_random``          Fig. 5 "random": random association, resources and α by FP
``lz24_edge_only``       Fig. 2 "edge-server-only training": α = split_min_local, the rest by FP + CCCP
``lz24_local_only``      Fig. 2 "local-only training": α = Υ, the rest by FP + CCCP
=======================  ======================================================================

The exact block minimizations use only :func:`~agents.experts.lz24_terms.user_costs` (tested
against the env's model): every block is separable over users, or over users sharing one
server's budget, and convex or quasi-convex in its variable — α (convex: linear plus the
stability term), u (convex), p (quasi-convex: (c_T + c_E·p)/r(p) is a positive affine over a
positive concave function), β and φ (convex and decreasing) — so a golden-section search per user
and a water-filling on each server's multiplier find each block's global minimum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from agents.experts.lz24_terms import UserTerms
from agents.experts.stable_fp import Allocation, StableFP, Trace
from mec_gym.config import SystemConfig

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def golden_section(cost: Callable[[np.ndarray], np.ndarray], low: np.ndarray, high: np.ndarray,
                   iterations: int = 60) -> np.ndarray:
    """Per-element minimizer of a separable, unimodal ``cost`` ([n] → [n]) on [low, high] (vectorized)."""
    a, b = np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = cost(c), cost(d)
    for _ in range(iterations):
        left = fc <= fd
        a, b = np.where(left, a, c), np.where(left, d, b)
        c_new, d_new = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
        c, d = np.where(left, c_new, d), np.where(left, c, d_new)
        evaluated = cost(np.where(left, c, d))
        fc, fd = np.where(left, evaluated, fd), np.where(left, fc, evaluated)
    candidates = np.stack([low, high, (a + b) / 2])
    values = np.stack([cost(x) for x in candidates])
    return candidates[np.argmin(values, axis=0), np.arange(candidates.shape[1])]


def water_fill(cost: Callable[[np.ndarray], np.ndarray], server: np.ndarray, num_servers: int, eligible: np.ndarray,
               iterations: int = 32) -> np.ndarray:
    """Shares x ≥ 0 minimizing Σ_n cost_n(x_n) with Σ_{n on m} x_n ≤ 1 per server; cost separable, convex.

    ``cost`` maps [n] → [n] and a batch [b, n] → [b, n] (row by row).

    KKT: cost_n'(x_n) = −μ_m for every user of server m (bisection on x per user, on log μ per
    server; derivatives by central differences). Users not ``eligible`` get 0. ``iterations`` halvings
    of a share's log range [1e-9, 1] leave it within 1e-8 relative; μ gets ``iterations`` + 4.
    """
    n = len(server)
    floor = 1e-9

    def slope(x: np.ndarray) -> np.ndarray:
        h = 1e-7 * np.maximum(x, 1e-6)
        low = np.maximum(x - h, floor / 2)
        both = cost(np.stack([x + h, low]))  # one batched evaluation of both sides
        return (both[0] - both[1]) / (x + h - low)

    def shares(mu: np.ndarray) -> np.ndarray:
        lo, hi = np.full(n, floor), np.ones(n)
        full = slope(hi) + mu <= 0  # still falling at x = 1: take it all
        for _ in range(iterations):
            mid = np.sqrt(lo * hi)  # geometric: shares span decades
            rising = slope(mid) + mu > 0
            hi, lo = np.where(rising, mid, hi), np.where(rising, lo, mid)
        return np.where(eligible, np.where(full, 1.0, np.sqrt(lo * hi)), 0.0)

    def totals(x: np.ndarray) -> np.ndarray:
        return np.bincount(server, weights=x, minlength=num_servers)

    x = shares(np.zeros(n))
    if np.all(totals(x) <= 1.0):
        return x
    log_lo, log_hi = np.full(num_servers, -18.0), np.full(num_servers, 18.0)  # μ within e^±18 of the typical slope
    scale = np.median(np.abs(slope(np.full(n, 1.0 / max(1, n)))[eligible])) if eligible.any() else 1.0
    for _ in range(iterations + 4):
        log_mid = (log_lo + log_hi) / 2
        x = shares(np.where(eligible, scale * np.exp(log_mid[server]), 0.0))
        over = totals(x) > 1.0
        log_lo, log_hi = np.where(over, log_mid, log_lo), np.where(over, log_hi, log_mid)
    x = shares(np.where(eligible, scale * np.exp(log_hi[server]), 0.0))
    sums = totals(x)
    return x / np.maximum(sums[server], 1.0)


class AlternatingOptimization(StableFP):
    """[LZ24] Fig. 3 "alternating optimization": exact block-coordinate descent without the transform.

    Sweeps α (relaxed), DVFS u, power p, bandwidth β and compute φ, each minimized exactly with the
    others fixed (module docstring), until a sweep improves the cost by less than ``inner_tol``
    (relative) or ``inner_max_iter`` sweeps; then α is rounded, the boundary regimes offered, and
    the other blocks re-swept. A block update that would raise the cost is not taken, so the cost
    never increases. Association by the same CCCP step as :class:`StableFP`.
    """

    name: ClassVar[str] = "lz24_ao"

    def allocate(self, config: SystemConfig, terms: UserTerms, server: np.ndarray, start: Allocation, trace: Trace,
                 rng: np.random.Generator) -> Allocation:
        low, high = self._relaxed_alpha_range(terms)
        x = start.copy()
        optimize_alpha = self.alpha_mode == "optimize" and "split" in config.controls
        if optimize_alpha:
            x.alpha = np.clip(x.alpha, low, high)
        x = self._share_rules(config, terms, server, x)
        x = self.sweeps(config, terms, server, x, optimize_alpha, trace)
        if optimize_alpha:
            x.alpha = np.clip(np.round(x.alpha), low, high)
            x = self.sweeps(config, terms, server, self._share_rules(config, terms, server, x), False, trace)
            switched = self._boundary_regimes(config, terms, server, x)
            if switched is not None:
                x = self.sweeps(config, terms, server, self._share_rules(config, terms, server, switched), False,
                                trace)
        return x

    def sweeps(self, config: SystemConfig, terms: UserTerms, server: np.ndarray, x: Allocation, with_alpha: bool,
               trace: Trace) -> Allocation:
        """Block-coordinate descent until a sweep gains less than ``inner_tol`` (cost per sweep in the trace)."""
        bounds = self.bounds(config, terms, server, x, with_alpha)
        current = float(self.relaxed_cost(terms, server, x).sum())
        history = []
        sweeps = 0
        for _ in range(self.inner_max_iter):
            before = current
            blocks = ["alpha"] if with_alpha else []
            blocks += [name for name in ("frequency", "power") if not np.allclose(*getattr(bounds, name))]
            blocks += [name for name in ("bandwidth", "compute") if name in config.controls]
            for block in blocks:
                trial = self._block(terms, server, x, block, bounds)
                cost = float(self.relaxed_cost(terms, server, trial).sum())
                if cost <= current:
                    x, current = trial, cost
            sweeps += 1
            history.append(current)
            if before - current <= self.inner_tol * abs(current):
                break
        trace.surrogate.append(list(history))  # AO has no surrogate: its objective per sweep
        trace.relaxed_objective.append(list(history))
        trace.inner_iterations.append(sweeps)
        return x

    def _block(self, terms: UserTerms, server: np.ndarray, x: Allocation, block: str, bounds) -> Allocation:
        def with_value(value: np.ndarray) -> Allocation:
            trial = x.copy()
            setattr(trial, block, value)
            return trial

        def cost(value: np.ndarray) -> np.ndarray:
            return self.relaxed_cost(terms, server, with_value(value))

        if block in ("bandwidth", "compute"):
            eligible = np.ones(len(server), dtype=bool) if block == "bandwidth" else x.alpha < terms.layers
            return with_value(water_fill(cost, server, terms.num_servers, eligible))
        low, high = getattr(bounds, block)
        return with_value(golden_section(cost, low, high))


class OptimizeAlphaOnly(StableFP):
    """[LZ24] Fig. 3 "optimize α only": resources drawn at random (DVFS and power uniform in their
    ranges, bandwidth and compute shares ∝ random weights per server), α optimized exactly (convex
    per user: golden section, rounding, the boundary regimes). Association by CCCP."""

    name: ClassVar[str] = "lz24_alpha_only"

    def allocate(self, config: SystemConfig, terms: UserTerms, server: np.ndarray, start: Allocation, trace: Trace,
                 rng: np.random.Generator) -> Allocation:
        draw = np.random.default_rng([self.seed, len(server), 7])  # the same random resources at every call
        n = len(server)
        bounds = self.bounds(config, terms, server, start, True)
        x = start.copy()
        x.frequency = draw.uniform(*bounds.frequency)
        x.power = draw.uniform(*bounds.power)
        x.bandwidth = draw.uniform(config.radio.share_floor, 1.0, n)
        x.compute = draw.uniform(config.radio.share_floor, 1.0, n)
        if self.alpha_mode != "optimize" or "split" not in config.controls:
            return self._share_rules(config, terms, server, x)
        low, high = self._relaxed_alpha_range(terms)
        x.alpha = np.clip(x.alpha, low, high)
        x = self._share_rules(config, terms, server, x)

        def cost(alpha: np.ndarray) -> np.ndarray:
            trial = x.copy()
            trial.alpha = alpha
            return self.relaxed_cost(terms, server, trial)

        x.alpha = golden_section(cost, low, high)
        rounded = np.clip(np.floor(x.alpha), low, high)  # the cost is convex in α: the better neighbour wins
        up = np.clip(rounded + 1, low, high)
        x.alpha = np.where(cost(up) < cost(rounded), up, rounded)
        switched = self._boundary_regimes(config, terms, server, x)
        trace.inner_iterations.append(1)
        return self._share_rules(config, terms, server, switched if switched is not None else x)


def make(name: str, config: SystemConfig | None = None, **options) -> StableFP:
    """The [LZ24] policy or baseline ``name`` (module docstring), with solver ``options``."""
    if name not in LZ24_POLICIES:
        raise ValueError(f"policy: unknown [LZ24] policy {name!r}; valid names: {sorted(LZ24_POLICIES)}")
    return LZ24_POLICIES[name](config, **options)


def _variant(cls: type[StableFP], registry_name: str, **fixed) -> Callable[..., StableFP]:
    def factory(config: SystemConfig | None = None, **options) -> StableFP:
        policy = cls(config, **{**fixed, **options})
        policy.name = registry_name  # the benchmark labels rows by it
        return policy

    factory.__name__ = registry_name
    factory.__doc__ = f"{registry_name}: {cls.__name__} with {fixed or 'its defaults'} (module docstring)."
    return factory


LZ24_POLICIES: dict[str, Callable[..., StableFP]] = {
    "stable_fp": StableFP,
    "lz24_ao": AlternatingOptimization,
    "lz24_alpha_only": OptimizeAlphaOnly,
    "lz24_resources_only": _variant(StableFP, "lz24_resources_only", alpha="random"),
    "lz24_greedy": _variant(StableFP, "lz24_greedy", association="greedy"),
    "lz24_random": _variant(StableFP, "lz24_random", association="random"),
    "lz24_edge_only": _variant(StableFP, "lz24_edge_only", alpha="edge"),
    "lz24_local_only": _variant(StableFP, "lz24_local_only", alpha="local"),
}
"""[LZ24]'s proposed solver and its baselines by registry name; each maps (config, **options) to a policy."""
