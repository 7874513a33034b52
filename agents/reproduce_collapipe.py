"""Reproduction of [CP25]'s comparison (CollaPipe / DSSRA) on the ``collapipe`` scenario: the code
behind ``mec-gym reproduce collapipe`` and ``notebooks/reproduce_collapipe.ipynb``.

J. Chen et al., arXiv 2509.19855 (notes: shared/papers/CP25-collapipe.md). The paper reports,
against baselines it names VanillaFL, PipeLine and TITANIC: computation efficiency up to
+15.09 %, end-to-end latency at least −48.98 %, single-device memory cut by more than half.
Its settings and figures are not available (notes §6), so this module measures the same three
quantities in our model (SPEC §5.4) and states which baseline each is taken against:

* **computation efficiency** (pipeline utilization, notes §3.6 [R]): per cluster and round,
  η = Σ_s busy_s / (S·T_pipe) — the compute time of the S nodes holding layers over S times
  the pipeline makespan (forward + backward). Measured: DSSRA against PipeLine
  (``uniform_pipeline``), the same pipeline with equal segments — the comparison the "up to"
  figure suggests; "up to" is read as the best over the sweep settings.
* **end-to-end latency**: the mean round latency (the slowest cluster, ``delay_s``). Measured:
  the reduction against each baseline; "at least" is the smallest of them.
* **single-device memory**: the peak memory of any device over the episode. Measured: DSSRA
  against VanillaFL (``vanilla_fl``: the whole encoder on the control unit).

Policies: ``dssra`` (:class:`agents.experts.dssra.DSSRA`), ``dssra_latency_only`` (V → ∞),
``uniform_pipeline`` and ``vanilla_fl`` (:mod:`agents.heuristics`), ``titanic``
(:class:`agents.experts.titanic.TitanicPolicy`). Every policy runs the same seeds.

The energy budget: the preset's 40 J per cluster and round (``budget_j``, default) lies between the
clusters' minimum device energy and their latency-optimal energy for most clusters (notes §6.3:
"50-80 % of the latency-optimal policy's energy", which is infeasible here because the
latency-optimal placement is close to the energy-optimal one). Clusters whose minimum energy
exceeds the budget cannot meet it under any policy.

The memory figure is **not** reproduced by DSSRA as specified: it keeps the encoder on one device
in most cluster-rounds. :func:`partition_diagnosis` measures why (one D2D hop costs more than the
whole encoder's compute; the clusters that do not set the round latency only pay energy for
spreading), and that the memory-halving partition is worse in DSSRA's own per-round objective.

Quick mode (``quick=True`` or ``MEC_GYM_QUICK=1`` in the notebook) runs small sizes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from agents.base import Policy
from agents.experts.dssra import DSSRA, DSSRALatencyOnly, chain_tables, row_inputs
from agents.experts.titanic import TitanicPolicy
from agents.heuristics import HEURISTICS
from mec_gym.config import SystemConfig
from mec_gym.envs.edge_training import EdgeTrainingEnv
from mec_gym.model import compute, costs
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState

SCENARIO = "collapipe"
POLICY_LABELS = {
    "dssra": "DSSRA",
    "dssra_latency_only": "DSSRA (V→∞)",
    "dssra_memory_cap": "DSSRA (≤5/12 per device)",
    "uniform_pipeline": "PipeLine",
    "vanilla_fl": "VanillaFL",
    "titanic": "TITANIC",
}
BASELINES = ("uniform_pipeline", "vanilla_fl", "titanic")
SWEEP_POLICIES = ("dssra", "dssra_latency_only", "uniform_pipeline", "vanilla_fl", "titanic")
MEMORY_CAP_SHARE = 5 / 12
"""``dssra_memory_cap``: no device holds more than 5 of the 12 encoder layers (< half of VanillaFL's)."""


@dataclass(frozen=True)
class Settings:
    """Sizes of one reproduction run.

    Args:
        seeds: evaluation episodes per policy in the comparison (seeds ``seed_base`` ...).
        sweep_seeds: episodes per policy and setting in the V trade-off and the sweeps.
        rounds: rounds per episode.
        v: DSSRA's Lyapunov weight V (J²/s) in the comparison and the sweeps.
        v_values: the V trade-off curve (``math.inf``: latency only).
        budget_j: per-cluster energy budget per round (module docstring).
        devices: the devices-per-cluster sweep (K).
        bandwidths_hz: the uplink-bandwidth sweep (per base station).
        energy_rounds: rounds of the time-average energy run (one seed).
    """

    seeds: int = 10
    sweep_seeds: int = 5
    rounds: int = 64
    v: float = 100.0
    v_values: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0, math.inf)
    budget_j: float = 40.0
    devices: tuple[int, ...] = (2, 3, 4, 6)
    bandwidths_hz: tuple[float, ...] = (5e6, 10e6, 20e6, 40e6)
    energy_rounds: int = 128
    seed_base: int = 10_000


FULL = Settings()
QUICK = Settings(seeds=2, sweep_seeds=2, rounds=6, v_values=(10.0, 1000.0, math.inf), devices=(2, 4),
                 bandwidths_hz=(10e6, 40e6), energy_rounds=24)


def settings_for(quick: bool) -> Settings:
    """:data:`QUICK` or :data:`FULL`."""
    return QUICK if quick else FULL


def quick_from_env() -> bool:
    """``MEC_GYM_QUICK=1`` selects the quick sizes (the test suite runs the notebooks this way)."""
    return os.environ.get("MEC_GYM_QUICK", "0") == "1"


def make_policy(name: str, v: float) -> Policy:
    """A fresh policy by registry name (``dssra`` with Lyapunov weight ``v``)."""
    if name == "dssra":
        return DSSRA(V=v) if math.isfinite(v) else DSSRALatencyOnly()
    if name == "dssra_latency_only":
        return DSSRALatencyOnly()
    if name == "dssra_memory_cap":
        return DSSRA(V=v, max_layers_share=MEMORY_CAP_SHARE)
    if name == "titanic":
        return TitanicPolicy()
    return HEURISTICS[name]()


def make_env(settings: Settings, rounds: int | None = None, **overrides: Any) -> EdgeTrainingEnv:
    """The ``collapipe`` environment with the reproduction's budget, ``rounds`` and dotted-name ``overrides``."""
    values = {"rounds": rounds or settings.rounds, "workload.energy_budget_j": settings.budget_j, **overrides}
    return EdgeTrainingEnv(scenario=SCENARIO, **values)


# ----------------------------------------------------------------------------- one episode


def computation_efficiency(config: SystemConfig, state: SystemState, decision: Decision,
                           metrics: costs.RoundMetrics) -> np.ndarray:
    """Pipeline utilization of each cluster, [B, N] ([CP25] notes §3.6 [R]):
    η = I·Σ_k busy_k / (S·(T_fwd + T_bwd)).

    busy_k is node k's forward + backward compute time per iteration
    (:func:`mec_gym.model.compute.compute_delay_energy`, as ``costs.evaluate``), S the number of
    nodes holding layers and T_fwd + T_bwd the round's pipelined time (``metrics``, which
    already counts the I iterations). ``decision`` must be complete.
    """
    work = decision.split[..., 1:] * state.batch(config)[..., None]
    t_f, _ = compute.compute_delay_energy(work * state.forward_flops[..., None], state.device_rate_flops,
                                          decision.frequency, state.device_power_w)
    t_b, _ = compute.compute_delay_energy(work * state.backward_flops[..., None], state.device_rate_flops,
                                          decision.frequency, state.device_power_w)
    busy = config.workload.local_iterations * (t_f + t_b).sum(axis=-1)
    stages = np.maximum((decision.split[..., 1:] > 0).sum(axis=-1), 1)
    pipe = metrics.forward_s + metrics.backward_s
    return np.divide(busy, stages * pipe, out=np.zeros_like(busy), where=pipe > 0)


@dataclass
class EpisodeLog:
    """Per-round records of one episode ([T] or [T, N] arrays)."""

    delay_s: np.ndarray  # [T] round latency (the slowest cluster)
    energy_j: np.ndarray  # [T, N] device energy of each cluster
    queue_j: np.ndarray  # [T, N] energy queue after the round
    efficiency: np.ndarray  # [T, N] pipeline utilization
    peak_memory_bytes: np.ndarray  # [T] largest memory of any device
    holders: np.ndarray  # [T, N] devices holding layers
    decision_ms: np.ndarray  # [T] time of ``decide``


def run_episode(env: EdgeTrainingEnv, policy: Policy, seed: int) -> EpisodeLog:
    """One episode of the state-based ``policy`` on ``env`` from ``seed`` (``step_decision``).

    The round's metrics come from :func:`mec_gym.model.costs.evaluate` on the completed
    decision in the state it is applied to — the numbers the environment's step reports.
    """
    config = env.config
    env.reset(seed=seed)
    policy.reset(env, seed)
    rows: dict[str, list] = {name: [] for name in EpisodeLog.__dataclass_fields__}
    truncated = False
    while not truncated:
        state = env.system_state
        start = time.perf_counter()
        decision = policy.decide(state)
        rows["decision_ms"].append(1e3 * (time.perf_counter() - start))
        full = decision_model.complete(config, state, decision)
        metrics = costs.evaluate(config, state, full)
        rows["efficiency"].append(computation_efficiency(config, state, full, metrics)[0])
        rows["peak_memory_bytes"].append(float(metrics.memory_bytes.max()))
        rows["holders"].append((full.split[0, :, 1:] > 0).sum(axis=-1))
        _, _, _, truncated, info = env.step_decision(decision.select(0))
        rows["delay_s"].append(info["delay_s"])
        rows["energy_j"].append(np.asarray(info["energy_device_j"], dtype=np.float64))
        rows["queue_j"].append(np.asarray(info["energy_queue"], dtype=np.float64))
    return EpisodeLog(**{name: np.asarray(values) for name, values in rows.items()})


def _mean_ci(values: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t; 0 for one value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def evaluate_policies(settings: Settings, names: tuple[str, ...] = tuple(POLICY_LABELS), v: float | None = None,
                      seeds: int | None = None, **overrides: Any) -> dict[str, dict[str, Any]]:
    """Every policy on the same ``settings.seeds`` episodes; per policy, per-episode means and
    their mean ± 95 % CI: ``delay_s``, ``energy_j`` (per cluster and round), ``efficiency``,
    ``peak_memory_gb`` (episode peak), ``holders``, ``violation`` (time-average energy above the
    budget, worst cluster, fraction of the budget), ``queue_j`` (time-average backlog),
    ``decision_ms`` (median over all rounds). ``seeds`` defaults to ``settings.seeds``."""
    v = settings.v if v is None else v
    seeds = settings.seeds if seeds is None else seeds
    env = make_env(settings, **overrides)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        per_episode: dict[str, list[float]] = {key: [] for key in ("delay_s", "energy_j", "efficiency",
                                                                     "peak_memory_gb", "holders", "violation",
                                                                     "queue_j")}
        times: list[np.ndarray] = []
        for i in range(seeds):
            log = run_episode(env, make_policy(name, v), settings.seed_base + i)
            per_episode["delay_s"].append(float(log.delay_s.mean()))
            per_episode["energy_j"].append(float(log.energy_j.mean()))
            per_episode["efficiency"].append(float(log.efficiency.mean()))
            per_episode["peak_memory_gb"].append(float(log.peak_memory_bytes.max()) / 1e9)
            per_episode["holders"].append(float(log.holders.mean()))
            average = log.energy_j.mean(axis=0)
            per_episode["violation"].append(float(np.maximum(average / settings.budget_j - 1.0, 0.0).max()))
            per_episode["queue_j"].append(float(log.queue_j.mean()))
            times.append(log.decision_ms)
        summary: dict[str, Any] = {key: _mean_ci(values) for key, values in per_episode.items()}
        summary["episodes"] = per_episode
        summary["decision_ms"] = float(np.median(np.concatenate(times)))
        results[name] = summary
    return results


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The measured counterparts of [CP25]'s three headline figures from :func:`evaluate_policies`.

    * ``efficiency_gain_vs_pipeline``: η_DSSRA/η_PipeLine − 1 (paper: up to +15.09 %);
    * ``latency_reduction``: 1 − T_DSSRA/T_baseline per baseline, and ``latency_reduction_min``,
      the smallest (paper: at least 48.98 %);
    * ``memory_ratio_vs_vanillafl``: DSSRA's peak device memory over VanillaFL's (paper: < 0.5);
      with ``dssra_memory_cap`` run, also its ratio and its latency over DSSRA's.
    """
    dssra = results["dssra"]
    out: dict[str, Any] = {}
    if "uniform_pipeline" in results:
        out["efficiency_gain_vs_pipeline"] = dssra["efficiency"][0] / results["uniform_pipeline"]["efficiency"][0] - 1
    reductions = {name: 1.0 - dssra["delay_s"][0] / results[name]["delay_s"][0]
                  for name in BASELINES if name in results}
    out["latency_reduction"] = reductions
    if reductions:
        out["latency_reduction_min"] = min(reductions.values())
    if "vanilla_fl" in results:
        vanilla = results["vanilla_fl"]["peak_memory_gb"][0]
        out["memory_ratio_vs_vanillafl"] = dssra["peak_memory_gb"][0] / vanilla
        if "dssra_memory_cap" in results:
            capped = results["dssra_memory_cap"]
            out["memory_ratio_capped_vs_vanillafl"] = capped["peak_memory_gb"][0] / vanilla
            out["latency_ratio_capped_vs_dssra"] = capped["delay_s"][0] / dssra["delay_s"][0]
    return out


def partition_diagnosis(settings: Settings, seeds: int | None = None, rounds: int | None = None,
                        **overrides: Any) -> dict[str, Any]:
    """Why DSSRA keeps the encoder on one device: per cluster and round of DSSRA's episodes, its
    partition against the best **memory-halving** one (no device above 5 of the 12 layers, the
    partition of ``dssra_memory_cap``, re-solved by DSSRA on the same state and queues).

    Per record (cluster-round): ``bottleneck`` (the cluster sets the round latency), ``holders``,
    ``max_layers`` (most layers on one device), ``latency_s``/``energy_j`` of DSSRA's decision and
    ``halved_latency_s``/``halved_energy_j`` of the memory-halving one (both from
    :func:`mec_gym.model.costs.evaluate`); ``compute_s`` — the whole encoder's forward + backward
    compute for one iteration on the cluster's fastest device, and ``hop_s`` — one D2D hop of one
    iteration's activations forward and gradients back at p_max (median over the chain's
    consecutive pairs; DSSRA's tables, the model's formulas). Per round, ``objective`` and
    ``halved_objective``: the drift-plus-penalty V·T + Σ Z·E (divided by V) of both decisions.
    Summary: the share of cluster-rounds on one device, the median latency cost of halving for
    the bottleneck clusters and its median energy cost for the others, and the median hop/compute
    ratio. ``seeds`` and ``rounds`` default to ``settings.sweep_seeds`` and ``settings.rounds``.
    """
    seeds = settings.sweep_seeds if seeds is None else seeds
    env = make_env(settings, rounds=rounds, **overrides)
    config = env.config
    records: dict[str, list] = {key: [] for key in ("bottleneck", "holders", "max_layers", "latency_s", "energy_j",
                                                    "halved_latency_s", "halved_energy_j", "compute_s", "hop_s")}
    objective, halved_objective = [], []
    for i in range(seeds):
        seed = settings.seed_base + i
        policy, capped = make_policy("dssra", settings.v), make_policy("dssra_memory_cap", settings.v)
        env.reset(seed=seed)
        policy.reset(env, seed)
        capped.reset(env, seed)
        truncated = False
        while not truncated:
            state = env.system_state
            decision = policy.decide(state)
            mine = decision_model.complete(config, state, decision)
            halved = decision_model.complete(config, state, capped.decide(state))
            m, h = costs.evaluate(config, state, mine), costs.evaluate(config, state, halved)
            objective.append(float(policy.objective(config, m.latency_s, m.energy_device_j, state.energy_queue)[0]))
            halved_objective.append(float(policy.objective(config, h.latency_s, h.energy_device_j,
                                                           state.energy_queue)[0]))
            compute_s, hop_s = _compute_and_hop_seconds(config, state, mine)
            layers = mine.split[0, :, 1:]
            records["bottleneck"].extend(m.latency_s[0] >= m.latency_s[0].max())
            records["holders"].extend((layers > 0).sum(axis=-1))
            records["max_layers"].extend(layers.max(axis=-1))
            records["latency_s"].extend(m.latency_s[0])
            records["energy_j"].extend(m.energy_device_j[0])
            records["halved_latency_s"].extend(h.latency_s[0])
            records["halved_energy_j"].extend(h.energy_device_j[0])
            records["compute_s"].extend(compute_s)
            records["hop_s"].extend(hop_s)
            _, _, _, truncated, _ = env.step_decision(decision.select(0))
    data = {key: np.asarray(values, dtype=np.float64) for key, values in records.items()}
    neck = data["bottleneck"] > 0
    summary = {
        "cluster_rounds": int(neck.size),
        "one_device_share": float((data["holders"] == 1).mean()),
        "halving_share": float((data["max_layers"] <= math.floor(MEMORY_CAP_SHARE * config.num_layers)).mean()),
        "bottleneck_latency_cost_of_halving": float(np.median(data["halved_latency_s"][neck] / data["latency_s"][neck]
                                                              - 1.0)),
        "slack_energy_cost_of_halving": (float(np.median(data["halved_energy_j"][~neck] / data["energy_j"][~neck]
                                                         - 1.0)) if (~neck).any() else float("nan")),
        "hop_over_compute": float(np.median(data["hop_s"] / data["compute_s"])),
        "objective_cost_of_halving": float(np.median(np.asarray(halved_objective) / np.asarray(objective) - 1.0)),
    }
    return {"summary": summary, "records": {key: value.tolist() for key, value in data.items()},
            "objective": objective, "halved_objective": halved_objective}


def _compute_and_hop_seconds(config: SystemConfig, state: SystemState,
                             decision: Decision) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster of environment 0: the whole encoder's forward + backward compute time for one
    iteration on the fastest device, and the median over consecutive chain pairs of one D2D hop
    (activations forward + gradients back, p_max, equal sub-bands) — DSSRA's tables
    (:func:`agents.experts.dssra.chain_tables`, the model's formulas)."""
    k, layers = config.devices_per_user, config.num_layers
    rows = row_inputs(config, state, 1)  # environment 0 of a single env: B = 1
    n = config.num_users
    tables = chain_tables(config, rows, decision.server[0], decision.power[0],
                          np.full((n, k), config.radio.d2d_power_max_w), decision.bandwidth[0], np.zeros(n),
                          np.array([1]))
    compute_s = (tables.device_fwd_s[:, :, layers] + tables.device_bwd_s[:, :, layers]).min(axis=-1)
    if k < 2:
        return compute_s, np.zeros(n)
    pairs = np.arange(k - 1)
    hop_s = np.median(tables.hop_fwd_act_s[:, pairs, pairs + 1] + tables.hop_bwd_s[:, pairs, pairs + 1], axis=-1)
    return compute_s, hop_s


def v_tradeoff(settings: Settings) -> list[dict[str, float]]:
    """DSSRA over ``settings.v_values``: mean round latency, time-average queue backlog, worst
    cluster's time-average energy over the budget (the Lyapunov O(1/V) / O(V) trade-off)."""
    rows = []
    for v in settings.v_values:
        result = evaluate_policies(settings, ("dssra",), v=v, seeds=settings.sweep_seeds)["dssra"]
        rows.append({"V": v, "delay_s": result["delay_s"][0], "queue_j": result["queue_j"][0],
                     "violation": result["violation"][0], "energy_j": result["energy_j"][0]})
    return rows


def binding_seed(settings: Settings, tries: int = 50, rounds: int = 16, binds: float = 1.3) -> int:
    """The first evaluation seed on which the budget is feasible for every cluster and binds for one:
    over the first ``rounds`` rounds each cluster's minimum energy (DSSRA with an overwhelming energy
    price, stepped along the episode: the channels evolve whatever the policy does) averages below 90 %
    of the budget and never exceeds it by more than 10 %, and at the initial state some cluster's
    latency-optimal energy (V → ∞) is above ``binds`` × the budget."""
    env = make_env(settings, rounds=rounds)
    frugal, fast = DSSRA(V=1e-6), DSSRALatencyOnly()
    frugal.bind(env.config)
    fast.bind(env.config)
    for i in range(tries):
        env.reset(seed=settings.seed_base + i)
        state = env.system_state
        high = costs.evaluate(env.config, state, decision_model.complete(env.config, state, fast.decide(state)))
        if not (high.energy_device_j >= binds * settings.budget_j).any():
            continue
        minimum = []
        for _ in range(rounds):
            state = env.system_state
            pressed = state.copy()
            pressed.energy_queue[:] = 1.0
            decision = frugal.decide(pressed)
            minimum.append(costs.evaluate(env.config, state, decision_model.complete(env.config, state, decision))
                           .energy_device_j[0])
            env.step_decision(decision.select(0))
        minimum = np.asarray(minimum)
        if (minimum.mean(axis=0) <= 0.9 * settings.budget_j).all() and (minimum <= 1.1 * settings.budget_j).all():
            return settings.seed_base + i
    return settings.seed_base


def energy_trajectory(settings: Settings, seed: int | None = None) -> dict[str, Any]:
    """Running time-average device energy of every cluster, and its queue, for DSSRA and the
    latency-only variant over ``settings.energy_rounds`` rounds of one seed (default:
    :func:`binding_seed`)."""
    seed = binding_seed(settings) if seed is None else seed
    env = make_env(settings, rounds=settings.energy_rounds)
    out: dict[str, Any] = {"seed": seed}
    for name in ("dssra", "dssra_latency_only"):
        log = run_episode(env, make_policy(name, settings.v), seed)
        average = np.cumsum(log.energy_j, axis=0) / np.arange(1, len(log.energy_j) + 1)[:, None]
        out[name] = {"time_average_j": average.tolist(), "queue_j": log.queue_j.tolist()}
    return out


def sweep(settings: Settings, parameter: str, values: tuple[Any, ...],
          names: tuple[str, ...] = SWEEP_POLICIES) -> dict[str, Any]:
    """Mean round latency and efficiency of every policy for each value of the override ``parameter``."""
    table: dict[str, Any] = {"parameter": parameter, "values": list(values), "delay_s": {}, "efficiency": {}}
    for name in names:
        table["delay_s"][name] = []
        table["efficiency"][name] = []
    for value in values:
        result = evaluate_policies(settings, names, seeds=settings.sweep_seeds, **{parameter: value})
        for name in names:
            table["delay_s"][name].append(result[name]["delay_s"][0])
            table["efficiency"][name].append(result[name]["efficiency"][0])
    return table


# ----------------------------------------------------------------------------- figures


def plot_comparison(results: dict[str, dict[str, Any]], budget_j: float) -> Any:
    """Bars with 95 % CIs: round latency, computation efficiency, peak device memory, energy vs budget."""
    import matplotlib.pyplot as plt

    names = list(results)
    labels = [POLICY_LABELS[name] for name in names]
    panels = (("delay_s", "round latency (s)"), ("efficiency", "computation efficiency η"),
              ("peak_memory_gb", "peak device memory (GB)"), ("energy_j", "device energy per cluster (J/round)"))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (key, title) in zip(axes, panels, strict=True):
        means = [results[n][key][0] for n in names]
        errors = [results[n][key][1] for n in names]
        ax.bar(range(len(names)), means, yerr=errors, capsize=3, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), labels, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        if key == "energy_j":
            ax.axhline(budget_j, color="k", ls="--", lw=1, label="budget")
            ax.legend()
        if key == "delay_s":
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def plot_tradeoff(rows: list[dict[str, float]]) -> Any:
    """The V trade-off: latency falls and the queue backlog grows with V."""
    import matplotlib.pyplot as plt

    finite = [r for r in rows if math.isfinite(r["V"])]
    top = max((r["V"] for r in finite), default=1.0) * 10.0
    xs = [r["V"] if math.isfinite(r["V"]) else top for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(xs, [r["delay_s"] for r in rows], "o-", color="C0")
    ax.set_xscale("log")
    ax.set_xlabel("V (J²/s); rightmost point: V → ∞")
    ax.set_ylabel("mean round latency (s)", color="C0")
    twin = ax.twinx()
    twin.plot(xs, [r["queue_j"] for r in rows], "s--", color="C3")
    twin.set_ylabel("time-average energy queue (J)", color="C3")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_energy(trajectory: dict[str, Any], budget_j: float) -> Any:
    """Running time-average energy of each cluster against the budget, DSSRA and V → ∞."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    runs = {name: data for name, data in trajectory.items() if name != "seed"}
    for ax, (name, data) in zip(axes, runs.items(), strict=True):
        average = np.asarray(data["time_average_j"])
        for n in range(average.shape[1]):
            ax.plot(np.arange(1, len(average) + 1), average[:, n], label=f"cluster {n}")
        ax.axhline(budget_j, color="k", ls="--", lw=1, label="budget")
        ax.set_title(f"{POLICY_LABELS[name]} (seed {trajectory['seed']})")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("time-average device energy (J/round)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sweeps(sweeps: list[dict[str, Any]]) -> Any:
    """Mean round latency of every policy over each sweep."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 3.8))
    for ax, table in zip(np.atleast_1d(axes), sweeps, strict=True):
        scale = 1e-6 if "bandwidth" in table["parameter"] else 1.0
        xs = [v * scale for v in table["values"]]
        for name, values in table["delay_s"].items():
            ax.plot(xs, values, "o-", label=POLICY_LABELS[name])
        ax.set_yscale("log")
        ax.set_xlabel(table["parameter"] + (" (MHz)" if scale != 1.0 else ""))
        ax.set_ylabel("mean round latency (s)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the whole reproduction


SWEEPS: tuple[tuple[str, str], ...] = (("devices_per_user", "devices"), ("server.bandwidth_hz", "bandwidths_hz"))


def run(quick: bool, out: Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the reproduction (``mec-gym reproduce collapipe``): the policy comparison with the three
    headline measurements, the V trade-off, the time-average energy against the budget, and the
    sweeps over devices per cluster and uplink bandwidth. Writes ``results.json`` and four
    figures (``comparison.png``, ``tradeoff.png``, ``energy.png``, ``sweeps.png``) under
    ``out`` and returns the results (JSON-ready). ``log`` receives a line per stage (progress)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = settings_for(quick)
    say = log or (lambda line: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    say(f"collapipe: comparing {len(POLICY_LABELS)} policies on {settings.seeds} seeds x {settings.rounds} rounds")
    comparison = evaluate_policies(settings)
    say(f"V trade-off over {len(settings.v_values)} values ({time.perf_counter() - start:.0f} s so far)")
    tradeoff = v_tradeoff(settings)
    say(f"time-average energy over {settings.energy_rounds} rounds ({time.perf_counter() - start:.0f} s so far)")
    trajectory = energy_trajectory(settings)
    sweeps = []
    for parameter, attribute in SWEEPS:
        say(f"sweep over {parameter} ({time.perf_counter() - start:.0f} s so far)")
        sweeps.append(sweep(settings, parameter, getattr(settings, attribute)))
    efficiency_best = max(
        (table["efficiency"]["dssra"][i] / table["efficiency"]["uniform_pipeline"][i] - 1.0
         for table in sweeps for i in range(len(table["values"]))), default=float("nan"))
    results = {
        "settings": {key: (value if not isinstance(value, float) or math.isfinite(value) else "inf")
                     for key, value in asdict(settings).items()},
        "comparison": {name: {key: value for key, value in summary.items() if key != "episodes"}
                       for name, summary in comparison.items()},
        "headline": {**headline(comparison), "efficiency_gain_vs_pipeline_best_in_sweeps": efficiency_best},
        "tradeoff": [{**row, "V": row["V"] if math.isfinite(row["V"]) else "inf"} for row in tradeoff],
        "energy": trajectory,
        "sweeps": sweeps,
    }
    figures = {"comparison.png": plot_comparison(comparison, settings.budget_j),
               "tradeoff.png": plot_tradeoff(tradeoff),
               "energy.png": plot_energy(trajectory, settings.budget_j),
               "sweeps.png": plot_sweeps(sweeps)}
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
    temporary = out / "results.json.tmp"
    temporary.write_text(json.dumps(results, indent=2, default=_json_default))
    temporary.replace(out / "results.json")
    say(f"wrote {out / 'results.json'} and {len(figures)} figures ({time.perf_counter() - start:.0f} s)")
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


__all__: list[str] = ["FULL", "QUICK", "Settings", "binding_seed", "computation_efficiency", "energy_trajectory",
                      "evaluate_policies", "headline", "make_env", "make_policy", "partition_diagnosis",
                      "plot_comparison", "plot_energy", "plot_sweeps", "plot_tradeoff", "quick_from_env", "run",
                      "run_episode", "settings_for", "sweep", "v_tradeoff"]
