"""Baselines for the DASHF figures ([QZ24], notes shared/papers/QZ24-dashf.md §5.4), as state-based policies.

The paper's baseline list could not be retrieved; these are the notes' reconstruction, each an ablation
of one DASHF ingredient so that every figure isolates what that ingredient buys:

=========================  ======================================================================
name                       what it keeps from DASHF / what it replaces
=========================  ======================================================================
``dashf_random_assoc``     a uniformly random capacity-feasible association, fixed; DASHF's
                           offloading, compute shares and radio (notes §5.4.1)
``dashf_greedy_assoc``     the ``greedy`` heuristic's association (best available rate, capacity
                           respected), fixed; DASHF's resources (notes §5.4.2)
``dashf_offloading_only``  DASHF's Block A (association, offloading, compute shares); radio left
                           at equal bandwidth, p_max, full DVFS level (notes §5.4.3)
``dashf_resources_only``   nearest server and ρ = 1/2 fixed; compute shares, bandwidth, power and
                           DVFS optimized (notes §5.4.4)
``dashf_plain_ao``         DASHF with Block B solved by plain alternation (β at fixed p, then p at
                           fixed β) instead of Zhao's transform (notes §5.4.5)
``equal_share``            the heuristic (:class:`agents.heuristics.EqualSharePolicy`): nearest
                           server, α = Υ/2, equal shares, p_max (notes §5.4.6)
``dashf_exhaustive``       every capacity-feasible association (2^N patterns filtered by capacity:
                           252 of 1024 at N = 10, M = 2, K_m = 5) with DASHF's resources; the best is
                           the association upper bound of the gap table (notes §5.4.7)
=========================  ======================================================================

All of them start, like DASHF, from a feasible point and are scored with the env's arithmetic.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any

import numpy as np

from agents.base import Policy, restrict_to_controls
from agents.experts.dashf import (
    DashfPolicy,
    DashfSettings,
    DashfSolver,
    DashfTrace,
    ExactScore,
    check_supported,
    stack_decisions,
)
from agents.heuristics import EqualSharePolicy, GreedyPolicy
from mec_gym.config import SystemConfig
from mec_gym.model import costs
from mec_gym.model.decision import Decision, complete
from mec_gym.model.dynamics import SystemState


def random_association(config: SystemConfig, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random association [N] that respects the server capacity: users take random capacity
    slots (one column per slot, as in the Hungarian step)."""
    n, m = config.num_users, config.num_servers
    slots = np.repeat(np.arange(m), config.server.capacity or n)
    return rng.permutation(slots)[:n].astype(np.int64)


def _start_with(config: SystemConfig, state: SystemState, server: np.ndarray) -> Decision:
    """The ``equal_share`` start (ρ = 1/2, p_max, equal shares, full DVFS) with another association."""
    policy = EqualSharePolicy()
    policy.bind(config)
    base = policy.decide(state)
    return complete(config, state, Decision(split=base.split, server=np.asarray(server)[None], power=base.power))


class DashfRandomAssociation(DashfPolicy):
    """Random capacity-feasible association (seeded by ``reset``/``bind``), then DASHF's resources."""

    name = "dashf_random_assoc"

    def __init__(self, settings: DashfSettings | None = None, scales: costs.Scales | None = None) -> None:
        super().__init__(dataclasses.replace(settings or DashfSettings(), optimize_association=False), scales)
        self.rng = np.random.default_rng(0)

    def _start(self, seed: int | None) -> None:
        super()._start(seed)
        self.rng = np.random.default_rng(seed)

    def initial(self, config: SystemConfig, state: SystemState) -> Decision:
        return _start_with(config, state, random_association(config, self.rng))


class DashfGreedyAssociation(DashfPolicy):
    """The ``greedy`` heuristic's association (strongest channel first, best available rate, capacity
    respected), then DASHF's resources."""

    name = "dashf_greedy_assoc"

    def __init__(self, settings: DashfSettings | None = None, scales: costs.Scales | None = None) -> None:
        super().__init__(dataclasses.replace(settings or DashfSettings(), optimize_association=False), scales)

    def initial(self, config: SystemConfig, state: SystemState) -> Decision:
        greedy = GreedyPolicy()
        greedy.bind(config)
        return _start_with(config, state, greedy.decide(state).server[0])


class DashfOffloadingOnly(DashfPolicy):
    """DASHF's Block A only (association, offloading ratio, compute shares); the radio stays at the start's
    equal bandwidth shares, p_max and full DVFS level."""

    name = "dashf_offloading_only"

    def __init__(self, settings: DashfSettings | None = None, scales: costs.Scales | None = None) -> None:
        super().__init__(dataclasses.replace(settings or DashfSettings(), optimize_radio=False), scales)


class DashfResourcesOnly(DashfPolicy):
    """Nearest server and ρ = 1/2 (α = ⌊Υ/2⌋) fixed; compute shares (KKT), bandwidth, power (Zhao's
    transform) and DVFS optimized."""

    name = "dashf_resources_only"

    def __init__(self, settings: DashfSettings | None = None, scales: costs.Scales | None = None) -> None:
        super().__init__(dataclasses.replace(settings or DashfSettings(), optimize_association=False,
                                             optimize_split=False), scales)


class DashfPlainAO(DashfPolicy):
    """DASHF with Block B solved without Zhao's transform: alternate the bandwidth shares at fixed powers
    (a convex problem) and the powers at fixed shares (per-user golden-section search)."""

    name = "dashf_plain_ao"

    def __init__(self, settings: DashfSettings | None = None, scales: costs.Scales | None = None) -> None:
        super().__init__(dataclasses.replace(settings or DashfSettings(), radio_method="plain"), scales)


def feasible_associations(config: SystemConfig, limit: int = 200_000) -> np.ndarray:
    """Every association [P, N] with at most ``server.capacity`` users per server (all M^N without one)."""
    n, m, capacity = config.num_users, config.num_servers, config.server.capacity or config.num_users
    if m**n > limit:
        raise ValueError(f"num_users: exhaustive association search enumerates M^N = {m}^{n} patterns, "
                         f"more than {limit}; use fewer users or servers")
    patterns = np.asarray(list(itertools.product(range(m), repeat=n)), dtype=np.int64)
    load = (patterns[..., None] == np.arange(m)).sum(axis=1)
    return patterns[np.all(load <= capacity, axis=1)]


@dataclasses.dataclass
class ExhaustiveResult:
    """The best association's decision, every pattern's final SCR (or reward) and the time taken."""

    decision: Decision
    patterns: np.ndarray
    values: np.ndarray
    solve_time_s: float


def exhaustive_association(config: SystemConfig, state: SystemState, settings: DashfSettings | None = None,
                           scales: costs.Scales | None = None) -> ExhaustiveResult:
    """Run DASHF's resource optimization (offloading, compute shares, radio; association fixed) from the
    reference rules on every capacity-feasible association of a one-system ``state``; return the best.

    Each pattern starts at the rules with that association (α = split_min_local, p_max, equal shares),
    so the search does not depend on DASHF's own answer. Values are the env's SCR (``scr``) or reward.
    """
    start = time.perf_counter()
    fixed = dataclasses.replace(settings or DashfSettings(), optimize_association=False)
    solver = DashfSolver(config, fixed, scales)
    patterns = feasible_associations(config)
    best: Decision | None = None
    values = np.empty(len(patterns))
    for index, pattern in enumerate(patterns):
        result = solver.solve(state, complete(config, state, Decision(server=pattern[None])))
        values[index] = result.trace.scr if config.objective == "scr" else result.trace.reward
        if best is None or values[index] > values[:index].max(initial=-np.inf):
            best = result.decision
    return ExhaustiveResult(decision=best, patterns=patterns, values=values, solve_time_s=time.perf_counter() - start)


class ExhaustiveAssociation(Policy):
    """Upper bound on the association: :func:`exhaustive_association` per system (``dashf_exhaustive``).

    Cost grows as M^N (252 DASHF resource solves per round at N = 10, M = 2, K_m = 5): for gap tables.
    ``last_traces`` holds one :class:`DashfTrace` per system with the time and the best value.
    """

    name = "dashf_exhaustive"

    def __init__(self, settings: DashfSettings | None = None, scales: costs.Scales | None = None) -> None:
        super().__init__()
        self.settings = settings or DashfSettings()
        self.scales = scales
        self.last_traces: list[DashfTrace] = []
        self.last_results: list[ExhaustiveResult] = []

    def check_config(self, config: SystemConfig) -> None:
        """Raise ``ValueError`` if DASHF cannot model ``config`` or its associations are too many to enumerate."""
        check_supported(config)
        feasible_associations(config)

    def decide(self, state: SystemState) -> Decision:
        config = self._require_config()
        self.check_config(config)
        decisions, self.last_traces, self.last_results = [], [], []
        for index in range(state.batch_size):
            one = state.select(index)
            result = exhaustive_association(config, one, self.settings, self.scales)
            decisions.append(result.decision)
            self.last_results.append(result)
            score = ExactScore(config, one, self.scales)
            _, _, reward = score.totals(result.decision)
            self.last_traces.append(DashfTrace(solve_time_s=result.solve_time_s, scr=float(result.values.max()),
                                               reward=float(reward[0])))
            self.stats["decisions"] = self.stats.get("decisions", 0.0) + 1.0
            self.stats["solve_time_s"] = self.stats.get("solve_time_s", 0.0) + result.solve_time_s
        return restrict_to_controls(config, stack_decisions(decisions))


BASELINES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (DashfRandomAssociation, DashfGreedyAssociation, DashfOffloadingOnly,
                              DashfResourcesOnly, DashfPlainAO, ExhaustiveAssociation)
}
"""The DASHF baselines by registry name (``equal_share`` lives in :mod:`agents.heuristics`)."""


def policy_names() -> dict[str, Any]:
    """Registry names of DASHF and its figures' baselines, for the benchmark and the CLI."""
    return {"dashf": DashfPolicy, **BASELINES, "equal_share": EqualSharePolicy}
