"""Benchmark harness: the evaluation protocol of SPEC §6.8 behind ``mec-gym bench``.

Protocol
========

* **Identical random draws.** Every policy runs the same episodes: evaluation seed i is
  ``EVAL_SEED_BASE + i`` (10 000, 10 001, ...); each seed's environment is reset with it and
  then runs ``episodes`` consecutive episodes (later resets continue the seeded generator, so
  they too are the same for every policy). Training code must use seeds below
  ``EVAL_SEED_BASE`` (``agents.rl`` does), so evaluation never sees a training draw. Policies
  with randomness of their own (``random``) are seeded from the episode's seed and index.
* **Stepping.** State-based policies (experts, heuristics, the oracle) read
  ``env.unwrapped.system_state`` and step with ``env.unwrapped.step_decision``;
  observation-based ones (RL models) step with ``env.step(policy.act(obs, info))``.
* **Metrics per episode**: the return (sum of rewards), and the per-round means of energy (J),
  delay (s), stability bound, SCR, dropped updates and budget violation, all from the env's
  ``info``. Per policy: the mean and the half-width of the 95 % confidence interval over
  episodes (Student t; blank with a single episode).
* **Decision time**: ``time.perf_counter`` around ``decide``/``act`` only (not the env step),
  per round: median and 95th percentile, in milliseconds. The only columns that differ between
  two runs of the same benchmark.
* **Optimality gap**: on ``oracle_states`` random states of a tiny instance of the scenario
  (:func:`agents.experts.oracle.tiny_variant`; the scenario itself when the oracle accepts it)
  every state-based policy's one-round cost is compared with the oracle's optimum:
  ``gap = (cost − cost*) / |cost*|`` in percent (mean and 95 % CI over states). The states are
  drawn from seed ``GAP_SEED``, the same for every policy.

Outputs (under ``out``, every file written to a temporary name and renamed, so an interrupted
run never leaves a half-written table): ``results.csv`` (one row per scenario × policy),
``results.md`` (the same as a Markdown table), ``episodes.csv`` (one row per episode),
``summary.png`` (bars with CIs) and ``rounds.png`` (mean reward per round), ``meta.json``
(scenario, overrides, seeds, versions).

Parallel runs
=============

``workers=N`` (``mec-gym bench --workers N``) spreads the (policy, seed, episode) jobs and the
oracle-gap job over N spawned local processes; ``ray_address`` (``--ray``, ``--ray-address ADDRESS``) runs them as
Ray tasks, on a local Ray or a running cluster (whose nodes need ``mec-gym`` installed). Each job
builds a fresh env and policy (:func:`run_job`) and replays the seed's earlier resets, so the
results equal the serial run's apart from the timing columns. A failed job is logged and retried
once; a second failure is listed in ``failures`` (tables, ``meta.json``), never dropped. Ctrl-C
raises :class:`BenchmarkInterrupted` carrying the finished episodes, which ``mec-gym bench``
writes (``interrupted`` in ``meta.json``). Policies registered at run time reach the workers
when their factory pickles (a top-level class or function).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from agents.base import Policy
from agents.experts import oracle as oracle_module
from agents.experts.dashf import DashfPolicy
from agents.experts.dashf_baselines import BASELINES as DASHF_BASELINES
from agents.experts.dssra import DSSRA, DSSRALatencyOnly
from agents.experts.lz24_baselines import LZ24_POLICIES
from agents.experts.titanic import TitanicPolicy
from agents.heuristics import HEURISTICS
from mec_gym.config import SystemConfig
from mec_gym.model import costs, decision, reference
from mec_gym.scenarios import SCENARIOS, make_config

EVAL_SEED_BASE = 10_000
"""First evaluation seed; training seeds must be smaller (SPEC §6.8: evaluation seeds are held out)."""

GAP_SEED = 20_000
"""Seed of the tiny states the optimality gaps are measured on."""

HEURISTIC_NAMES = tuple(HEURISTICS)
"""The heuristics, in table order: what ``mec-gym bench`` runs when ``--policies`` is not given."""

QUICK = {"seeds": 3, "episodes": 1, "rounds": 16, "oracle_states": 4}
"""``--quick``: a few short episodes and a few oracle states (about a minute on a laptop CPU)."""

FULL = {"seeds": 10, "episodes": 1, "rounds": None, "oracle_states": 16}
"""Defaults without ``--quick`` (``rounds=None``: the scenario's episode length)."""

METRICS = ("return", "energy_j", "delay_s", "stability", "scr", "drops", "budget_violation")
"""Per-episode quantities reported with mean and 95 % CI (all but the return are per-round means)."""

TIMING_COLUMNS = ("decision_ms_median", "decision_ms_p95")
"""Columns that measure wall time and so differ between otherwise identical runs."""

# ----------------------------------------------------------------------------- registry

_POLICIES: dict[str, Callable[[], Policy]] = {**HEURISTICS, "oracle": oracle_module.OraclePolicy}
_PREFIXES: dict[str, Callable[[str], Policy]] = {}
# [CP25] DSSRA, its latency-only variant (V → ∞) and the TITANIC-like baseline
_POLICIES.update({"dssra": DSSRA, "dssra_latency_only": DSSRALatencyOnly, "titanic": TitanicPolicy})
# [QZ24] DASHF and the baselines of its figures (dashf_exhaustive: 252 DASHF solves per round at N = 10)
_POLICIES.update({"dashf": DashfPolicy, **DASHF_BASELINES})
# [LZ24] stable_fp (FP + CCCP) and the baselines of its figures (lz24_ao, lz24_greedy, ...)
_POLICIES.update(LZ24_POLICIES)


def register_policy(name: str, factory: Callable[[], Policy]) -> None:
    """Make ``name`` available to :func:`make_policy` and ``mec-gym bench --policies`` (experts, RL)."""
    _POLICIES[name] = factory


def register_prefix(prefix: str, factory: Callable[[str], Policy]) -> None:
    """Make ``prefix:ARGUMENT`` policies available (e.g. ``ppo:PATH``); ``factory`` gets ARGUMENT."""
    _PREFIXES[prefix] = factory


def policy_names() -> list[str]:
    """Valid policy names, plus ``prefix:ARGUMENT`` forms (e.g. ``ppo:PATH``)."""
    return list(_POLICIES) + [f"{prefix}:PATH" for prefix in _PREFIXES]


def make_policy(spec: str) -> Policy:
    """A fresh policy from its registry name (``greedy``) or ``prefix:ARGUMENT`` (``ppo:runs/model.zip``).

    Raises ``ValueError`` listing the valid names for an unknown one.
    """
    spec = spec.strip()
    if spec in _POLICIES:
        return _POLICIES[spec]()
    prefix, sep, argument = spec.partition(":")
    if sep and prefix in _PREFIXES:
        if not argument:
            raise ValueError(f"policy {spec!r}: give a path after '{prefix}:'")
        return _PREFIXES[prefix](argument)
    raise ValueError(f"unknown policy {spec!r}; valid names: {', '.join(policy_names())}")


def _load_sb3(algorithm: str) -> Callable[[str], Policy]:
    def load(path: str) -> Policy:
        """A saved stable-baselines3 model with its VecNormalize statistics (``<stem>_vecnormalize.pkl``,
        :func:`agents.rl.load_policy`). Loading unpickles the files: only load files you trust."""
        if not Path(path).exists():
            raise ValueError(f"policy {algorithm}:{path}: no such file")
        from agents import rl  # imported here: torch takes seconds to load

        return rl.load_policy(path, algorithm)

    return load


def _shipped_ppo() -> Policy:
    from agents import rl

    return rl.shipped_policy()


register_prefix("ppo", _load_sb3("ppo"))
register_prefix("sac", _load_sb3("sac"))
register_policy("ppo_default", _shipped_ppo)  # the small PPO model shipped in agents/models (default scenario)

SHIPPED_RL = {"default": ("ppo_default",)}
"""RL models shipped with the package, run by default (no ``--policies``) on their scenario."""


def _shipped_available(name: str) -> bool:
    from agents.rl import SHIPPED_PPO_DEFAULT  # a light import: agents.rl loads torch lazily

    return name != "ppo_default" or SHIPPED_PPO_DEFAULT.exists()


# ----------------------------------------------------------------------------- scenarios


def scenario_names() -> list[str]:
    """Scenario presets plus ``tiny`` (the oracle's instance, :func:`agents.experts.oracle.tiny_config`)."""
    return [*SCENARIOS, "tiny"]


def resolve_config(scenario: str, overrides: dict[str, Any] | None = None) -> SystemConfig:
    """The scenario's config with ``overrides`` (dotted names, values as Python objects or strings).

    Raises ``ValueError`` for an unknown scenario or parameter name, listing the valid ones.
    """
    if scenario == "tiny":
        base = oracle_module.tiny_config()
    elif scenario in SCENARIOS:
        base = make_config(scenario)
    else:
        raise ValueError(f"unknown scenario {scenario!r}; valid names: {', '.join(scenario_names())}")
    return base.override(overrides) if overrides else base


# ----------------------------------------------------------------------------- running


@dataclass
class EpisodeResult:
    """One episode of one policy: totals, per-round rewards and decision times."""

    policy: str
    seed: int
    episode: int
    metrics: dict[str, float]
    rewards: list[float]
    decision_ms: list[float]


@dataclass
class BenchmarkResult:
    """Everything a benchmark run produced; :meth:`rows` gives the results table."""

    scenario: str
    config: SystemConfig
    overrides: dict[str, Any]
    policies: list[str]
    seeds: list[int]
    episodes: int
    rounds: int
    episode_results: list[EpisodeResult]
    gaps: dict[str, list[float]] = field(default_factory=dict)
    gap_config: SystemConfig | None = None
    oracle_states: int = 0
    wall_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)  # jobs that failed twice (parallel runs)
    interrupted: bool = False  # a partial result: the run was interrupted (Ctrl-C)
    executor: str = "serial"  # serial, processes:N or ray:ADDRESS

    def rows(self) -> list[dict[str, Any]]:
        """One row per policy: means, 95 % CI half-widths, decision times and the oracle gap."""
        rows = []
        for policy in self.policies:
            episodes = [e for e in self.episode_results if e.policy == policy]
            row: dict[str, Any] = {"scenario": self.scenario, "policy": policy, "episodes": len(episodes)}
            for name in METRICS:
                mean, half = mean_ci([e.metrics[name] for e in episodes])
                row[f"{name}_mean"], row[f"{name}_ci95"] = mean, half
            times = np.concatenate([e.decision_ms for e in episodes]) if episodes else np.zeros(0)
            row["decision_ms_median"] = float(np.median(times)) if len(times) else math.nan
            row["decision_ms_p95"] = float(np.percentile(times, 95)) if len(times) else math.nan
            gaps = self.gaps.get(policy)
            row["oracle_gap_pct_mean"], row["oracle_gap_pct_ci95"] = mean_ci(gaps) if gaps else (math.nan, math.nan)
            row["oracle_states"] = len(gaps) if gaps else 0
            rows.append(row)
        return rows


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (NaN half-width for one value)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def run_episode(env: Any, policy: Policy, seed: int | None, episode: int, policy_seed: int) -> EpisodeResult:
    """One episode: reset (with ``seed`` if given, else continuing the env's generator), then step
    until truncation, timing only the policy's ``decide``/``act``."""
    obs, info = env.reset(seed=seed)
    policy.reset(env, seed=policy_seed)
    unwrapped = env.unwrapped
    sums = {name: 0.0 for name in METRICS if name != "return"}
    rewards, times = [], []
    done = False
    while not done:
        if policy.uses_state:
            state = unwrapped.system_state
            start = time.perf_counter()
            choice = policy.decide(state)
            times.append(1e3 * (time.perf_counter() - start))
            obs, reward, terminated, truncated, info = unwrapped.step_decision(choice)
        else:
            start = time.perf_counter()
            action = policy.act(obs, info)
            times.append(1e3 * (time.perf_counter() - start))
            obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        for name in sums:
            sums[name] += float(info[name])
        done = terminated or truncated
    rounds = len(rewards)
    metrics = {"return": float(np.sum(rewards)), **{name: value / rounds for name, value in sums.items()}}
    return EpisodeResult(policy=policy.name, seed=seed if seed is not None else -1, episode=episode,
                         metrics=metrics, rewards=rewards, decision_ms=times)


def optimality_gaps(config: SystemConfig, policies: Iterable[str], states: int, seed: int = GAP_SEED,
                    advance: Callable[[], None] | None = None) -> tuple[SystemConfig, dict[str, list[float]]]:
    """Relative one-round gap (%) of each state-based policy to the oracle on ``states`` tiny states.

    Returns the tiny config used and ``{policy: [gap per state]}``; observation-based policies
    (no ``decide``) and the oracle itself are skipped. ``advance`` is called after each state.
    """
    tiny = oracle_module.tiny_variant(config)
    scales = reference.reference_scales(tiny)
    makers = {name: make_policy(name) for name in policies}
    deciders = {name: p for name, p in makers.items() if p.can_decide and name != "oracle"}
    gaps: dict[str, list[float]] = {name: [] for name in deciders}
    for index, state in enumerate(oracle_module.iterate_states(tiny, states, seed)):
        best = oracle_module.solve(tiny, state)
        for name, policy in deciders.items():
            policy.bind(tiny, seed=seed + index)
            choice = decision.complete(tiny, state, policy.decide(state))
            cost = -float(costs.reward_terms(tiny, costs.evaluate(tiny, state, choice), scales)["reward"][0])
            gaps[name].append(100.0 * (cost - best.cost) / max(abs(best.cost), 1e-12))
        if "oracle" in makers:
            gaps.setdefault("oracle", []).append(100.0 * best.gap / max(abs(best.cost), 1e-12))
        if advance is not None:
            advance()
    return tiny, gaps


def run_benchmark(scenario: str = "default", policies: Sequence[str] | None = None, seeds: int | None = None,
                  episodes: int | None = None, rounds: int | None = None, overrides: dict[str, Any] | None = None,
                  quick: bool = False, oracle_states: int | None = None, progress: bool = False,
                  workers: int = 1, ray_address: str | None = None,
                  log: Callable[[str], None] | None = None) -> BenchmarkResult:
    """Run the protocol of the module docstring and return the results (nothing is written).

    Args:
        scenario: a preset name or ``tiny``.
        policies: registry names (default: the heuristics, plus the oracle on instances it accepts).
        seeds: evaluation seeds (``EVAL_SEED_BASE + i``); episodes: episodes per seed; rounds:
            rounds per episode (default: the scenario's). ``None`` takes the ``--quick`` or full default.
        overrides: scenario parameters by dotted name (as ``--set``).
        oracle_states: tiny states for the optimality gaps (0 disables them).
        progress: show a rich progress bar.
        workers: > 1 spreads the (policy, seed, episode) jobs and the oracle-gap job over that many
            local processes (see "Parallel runs" in the module docstring); the results equal the serial run's.
        ray_address: run the jobs as Ray tasks instead: ``"local"`` starts Ray on this machine (``workers``
            CPUs when > 1), anything else is passed to ``ray.init(address=...)`` (``ray://HOST:10001``, ``auto``).
        log: called with a message when a parallel job fails (and is retried).

    Raises:
        ValueError: unknown scenario, parameter or policy, or a policy that cannot run on the
            scenario (the oracle on a large instance), with the valid choices in the message.
        BenchmarkInterrupted: on Ctrl-C; its ``result`` holds the episodes finished so far.
    """
    defaults = QUICK if quick else FULL
    seeds = defaults["seeds"] if seeds is None else seeds
    episodes = defaults["episodes"] if episodes is None else episodes
    oracle_states = defaults["oracle_states"] if oracle_states is None else oracle_states
    for name, value in (("seeds", seeds), ("episodes", episodes), ("workers", workers)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if not isinstance(oracle_states, int) or oracle_states < 0:
        raise ValueError(f"oracle_states: must be an integer >= 0, got {oracle_states!r}")
    overrides = dict(overrides or {})
    rounds = rounds if rounds is not None else defaults["rounds"]
    if rounds is not None:
        overrides["rounds"] = rounds
    config = resolve_config(scenario, overrides)
    if policies is None:
        policies = list(HEURISTIC_NAMES)
        if _oracle_accepts(config):
            policies.append("oracle")
        policies += [name for name in SHIPPED_RL.get(scenario, ()) if _shipped_available(name)]
    policies = list(dict.fromkeys(p.strip() for p in policies if p.strip()))
    if not policies:
        raise ValueError(f"policies: give at least one; valid names: {', '.join(policy_names())}")
    instances = {name: make_policy(name) for name in policies}  # unknown names fail here, before any work
    if "oracle" in instances:
        oracle_module.check_instance(config)
    for name, instance in instances.items():  # experts that cannot model the scenario fail here too
        check = getattr(instance, "check_config", None)
        if check is not None:
            try:
                check(config)
            except ValueError as error:
                raise ValueError(f"policy {name!r} cannot run on scenario {scenario!r}: {error}") from error

    from mec_gym.envs.edge_training import EdgeTrainingEnv

    seed_list = [EVAL_SEED_BASE + i for i in range(seeds)]
    total = len(policies) * seeds * episodes + oracle_states
    start = time.perf_counter()
    results: list[EpisodeResult] = []
    gap_config, gaps, failures = None, {}, []
    executor = "serial" if workers == 1 and ray_address is None else (
        f"ray:{ray_address}" if ray_address is not None else f"processes:{workers}")

    def finish(interrupted: bool = False) -> BenchmarkResult:
        order = {(p, s, e): i for i, (p, s, e) in enumerate(_job_keys(policies, seed_list, episodes))}
        ordered = sorted(results, key=lambda r: order[(r.policy, r.seed, r.episode)])
        return BenchmarkResult(scenario=scenario, config=config, overrides=overrides, policies=policies,
                               seeds=seed_list, episodes=episodes, rounds=config.rounds, episode_results=ordered,
                               gaps=gaps, gap_config=gap_config, oracle_states=oracle_states,
                               wall_s=time.perf_counter() - start, failures=failures, interrupted=interrupted,
                               executor=executor)

    try:
        with _progress(progress, total, f"bench {scenario}") as advance:
            if executor != "serial":
                gap_config, gaps = _run_parallel(config, policies, seed_list, episodes, oracle_states, workers,
                                                 ray_address, results, failures, advance, log)
            else:
                for name, policy in instances.items():
                    env = EdgeTrainingEnv(config=config)
                    for seed in seed_list:
                        for episode in range(episodes):
                            result = run_episode(env, policy, seed if episode == 0 else None, episode,
                                                 policy_seed=seed * 1000 + episode)
                            result.policy, result.seed = name, seed
                            results.append(result)
                            advance()
                    env.close()
                if oracle_states > 0:
                    gap_config, gaps = optimality_gaps(config, policies, oracle_states, advance=advance)
    except KeyboardInterrupt as interrupt:
        raise BenchmarkInterrupted(finish(interrupted=True)) from interrupt
    return finish()


# ----------------------------------------------------------------------------- parallel runs


class BenchmarkInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_benchmark`: ``result`` holds the finished episodes (``interrupted=True``)."""

    def __init__(self, result: BenchmarkResult) -> None:
        super().__init__(f"benchmark interrupted after {len(result.episode_results)} episodes")
        self.result = result


@dataclass(frozen=True)
class EpisodeJob:
    """One (policy, seed, episode) job: everything a worker process or Ray task needs, picklable.

    ``factory`` is the registry's factory when it pickles (top-level classes and functions do), else ``None``
    and the worker looks ``policy`` up in its own registry (built-ins and ``prefix:PATH`` forms).
    """

    config: SystemConfig
    policy: str
    seed: int
    episode: int
    factory: Callable[[], Policy] | None = None


@dataclass(frozen=True)
class GapJob:
    """The optimality-gap measurement (:func:`optimality_gaps`) as one job."""

    config: SystemConfig
    policies: tuple[str, ...]
    states: int
    factories: tuple[tuple[str, Callable[[], Policy]], ...] = ()


def run_job(job: EpisodeJob | GapJob) -> Any:
    """Run one job in a fresh environment (top level, so spawned processes and Ray tasks can import it).

    Episode e of a seed is the serial run's: the env is reset with the seed, then reset e more times
    (later resets continue the seeded generator exactly as consecutive episodes do; steps never draw from it).
    """
    if isinstance(job, GapJob):
        for name, factory in job.factories:
            _POLICIES.setdefault(name, factory)
        return optimality_gaps(job.config, job.policies, job.states)
    from mec_gym.envs.edge_training import EdgeTrainingEnv

    if job.factory is not None:
        _POLICIES.setdefault(job.policy, job.factory)
    policy = make_policy(job.policy)
    env = EdgeTrainingEnv(config=job.config)
    try:
        if job.episode > 0:
            env.reset(seed=job.seed)
            for _ in range(job.episode - 1):
                env.reset()
        result = run_episode(env, policy, job.seed if job.episode == 0 else None, job.episode,
                             policy_seed=job.seed * 1000 + job.episode)
    finally:
        env.close()
    result.policy, result.seed = job.policy, job.seed
    return result


def _job_keys(policies: Sequence[str], seeds: Sequence[int], episodes: int) -> list[tuple[str, int, int]]:
    """(policy, seed, episode) in the serial run's order."""
    return [(p, s, e) for p in policies for s in seeds for e in range(episodes)]


def _shippable_factory(name: str) -> Callable[[], Policy] | None:
    import pickle

    factory = _POLICIES.get(name)
    if factory is None:
        return None
    try:
        pickle.dumps(factory)
    except Exception:  # lambdas, closures: the worker resolves the name in its own registry
        return None
    return factory


def _run_parallel(config: SystemConfig, policies: Sequence[str], seeds: Sequence[int], episodes: int,
                  oracle_states: int, workers: int, ray_address: str | None, results: list[EpisodeResult],
                  failures: list[dict[str, Any]], advance: Callable[[], None],
                  log: Callable[[str], None] | None) -> tuple[SystemConfig | None, dict[str, list[float]]]:
    """Run every job on the process pool or Ray; append episodes to ``results`` as they finish.

    A failed job is logged and submitted once more; a second failure is recorded in ``failures`` (policy,
    seed, episode, error) — never dropped silently. Returns the gap instance and gaps.
    """
    jobs: list[EpisodeJob | GapJob] = []
    if oracle_states > 0:  # the longest job first, so that it does not run alone at the end
        factories = tuple((p, f) for p in policies if (f := _shippable_factory(p)) is not None)
        jobs.append(GapJob(config, tuple(policies), oracle_states, factories))
    jobs += [EpisodeJob(config, p, s, e, _shippable_factory(p)) for p, s, e in _job_keys(policies, seeds, episodes)]
    gap_result: tuple[SystemConfig | None, dict[str, list[float]]] = (None, {})
    runner = _RayRunner(ray_address, workers) if ray_address is not None else _ProcessRunner(workers)
    attempts = dict.fromkeys(range(len(jobs)), 0)
    pending: dict[Any, int] = {}
    try:
        pending.update({runner.submit(jobs[i]): i for i in range(len(jobs))})
        while pending:
            for handle, outcome, error in runner.wait(list(pending)):
                index = pending.pop(handle)
                attempts[index] += 1
                if error is None:
                    if isinstance(jobs[index], GapJob):
                        gap_result = outcome
                        for _ in range(oracle_states):
                            advance()
                    else:
                        results.append(outcome)
                        advance()
                    continue
                label = _job_label(jobs[index])
                if attempts[index] < 2:
                    if log is not None:
                        log(f"job {label} failed ({error}); retrying once")
                    pending[runner.submit(jobs[index])] = index
                else:
                    if log is not None:
                        log(f"job {label} failed twice ({error}); reported in failures")
                    job = jobs[index]
                    failures.append({"policy": getattr(job, "policy", "oracle gaps"), "seed": getattr(job, "seed", -1),
                                     "episode": getattr(job, "episode", -1), "error": error})
    except KeyboardInterrupt:
        runner.cancel(list(pending))
        raise
    finally:
        runner.close()
    return gap_result


def _job_label(job: EpisodeJob | GapJob) -> str:
    if isinstance(job, GapJob):
        return f"oracle gaps ({job.states} states)"
    return f"{job.policy} seed {job.seed} episode {job.episode}"


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class _ProcessRunner:
    """Jobs on a pool of ``workers`` spawned processes (spawn: no forked threads or locks).

    The workers' BLAS/OpenMP pools get ``cpu_count // workers`` threads (the variables are set while the
    pool lives, since spawned processes read them at start-up): N processes with a full-size pool each
    would oversubscribe the cores. Each worker pays the package import once (about 3.5 s of CPU here).
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        self._saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
        os.environ.update({name: threads for name in _THREAD_VARIABLES if self._saved[name] is None})
        self._pool = self._new_pool()

    def _new_pool(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self._workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, job: EpisodeJob | GapJob) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(run_job, job)
        except BrokenProcessPool:  # a worker died (killed, crashed): retries go to a fresh pool
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_job, job)

    def wait(self, handles: list[Any]) -> list[tuple[Any, Any, str | None]]:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            error = future.exception()
            out.append((future, None if error else future.result(), None if error is None else _error_text(error)))
        return out

    def cancel(self, handles: list[Any]) -> None:
        for future in handles:
            future.cancel()

    def close(self) -> None:
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)  # waits only for the jobs already running
        finally:
            for name, value in self._saved.items():
                if value is None:
                    os.environ.pop(name, None)


class _RayRunner:
    """Jobs as Ray tasks: on a running cluster (``address``) or a local Ray (``"local"``)."""

    def __init__(self, address: str, workers: int) -> None:
        try:
            import ray
        except ImportError as error:
            raise ValueError('ray_address: Ray is not installed; pip install -e ".[rllib]" torch==2.13.0') from error
        self._ray = ray
        if not ray.is_initialized():
            if address == "local":
                ray.init(num_cpus=workers if workers > 1 else None, include_dashboard=False, log_to_driver=False)
            else:
                try:
                    ray.init(address=address, log_to_driver=False)
                except ConnectionError as error:
                    raise ValueError(f"ray_address: cannot reach a Ray cluster at {address!r} ({error}); start one "
                                     "with `ray start --head` (then use 'auto') or run a local Ray (--ray)") from error
        self._task = ray.remote(max_retries=0)(run_job)

    def submit(self, job: EpisodeJob | GapJob) -> Any:
        return self._task.remote(job)

    def wait(self, handles: list[Any]) -> list[tuple[Any, Any, str | None]]:
        ready, _ = self._ray.wait(handles, num_returns=1)
        out = []
        for ref in ready:
            try:
                out.append((ref, self._ray.get(ref), None))
            except self._ray.exceptions.RayTaskError as error:
                cause = error.cause if getattr(error, "cause", None) is not None else error
                out.append((ref, None, _error_text(cause)))
        return out

    def cancel(self, handles: list[Any]) -> None:
        for ref in handles:
            self._ray.cancel(ref)

    def close(self) -> None:
        pass  # the Ray session stays up for later calls (ray.shutdown() ends it)


def _oracle_accepts(config: SystemConfig) -> bool:
    try:
        oracle_module.check_instance(config)
    except ValueError:
        return False
    return oracle_module.tiny_variant(config) is config


class _progress:
    """A rich progress bar (or nothing) exposing ``advance()``."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn())
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=self.total)
        return lambda: self._bar.advance(self._task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


# ----------------------------------------------------------------------------- output


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # interrupted (Ctrl-C included): the old file stays, the temporary one goes
        tmp.unlink(missing_ok=True)
        raise


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(value) for key, value in row.items()})
    return buffer.getvalue().encode()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def _fmt(mean: float, half: float, digits: int) -> str:
    if math.isnan(mean):
        return "—"
    text = f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def markdown_table(result: BenchmarkResult) -> str:
    """The results as a Markdown table (means ± 95 % CI half-widths), with a one-line protocol note."""
    rows = result.rows()
    header = ("| policy | return | energy J | delay s | stability | SCR | drops | budget viol. | "
              "decision ms (median / p95) | oracle gap % |")
    lines = [f"Scenario `{result.scenario}`: {len(result.seeds)} evaluation seeds "
             f"({result.seeds[0]}–{result.seeds[-1]}) × {result.episodes} episode(s) × {result.rounds} rounds; "
             f"per-round means ± 95 % CI over episodes.", "", header, "|" + "---|" * 10]
    for row in rows:
        gap = _fmt(row["oracle_gap_pct_mean"], row["oracle_gap_pct_ci95"], 2)
        lines.append(
            f"| {row['policy']} | {_fmt(row['return_mean'], row['return_ci95'], 2)} "
            f"| {_fmt(row['energy_j_mean'], row['energy_j_ci95'], 2)} "
            f"| {_fmt(row['delay_s_mean'], row['delay_s_ci95'], 3)} "
            f"| {_fmt(row['stability_mean'], row['stability_ci95'], 4)} "
            f"| {_fmt(row['scr_mean'], row['scr_ci95'], 3)} "
            f"| {_fmt(row['drops_mean'], row['drops_ci95'], 2)} "
            f"| {_fmt(row['budget_violation_mean'], row['budget_violation_ci95'], 3)} "
            f"| {row['decision_ms_median']:.3f} / {row['decision_ms_p95']:.3f} | {gap} |")
    if result.interrupted:
        lines += ["", f"**Interrupted**: partial results, {len(result.episode_results)} of "
                  f"{len(result.policies) * len(result.seeds) * result.episodes} episodes finished."]
    for failure in result.failures:
        lines += ["", f"**Failed job** (after one retry): {failure['policy']} seed {failure['seed']} "
                  f"episode {failure['episode']}: {failure['error']}"]
    if result.gap_config is not None and result.gaps:
        tiny = result.gap_config
        lines += ["", f"Oracle gaps: one-round cost vs the exhaustive oracle on {result.oracle_states} random states "
                  f"of a tiny instance ({tiny.num_users} users, {tiny.num_servers} servers, {tiny.model}, "
                  f"K = {tiny.devices_per_user}); the oracle's own row is its certified gap."]
    return "\n".join(lines) + "\n"


def write_results(result: BenchmarkResult, out: Path) -> list[Path]:
    """Write the tables, per-episode rows, plots and metadata under ``out`` (atomically, file by file)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows = result.rows()
    for name, data in (("results.csv", _csv_bytes(rows)), ("results.md", markdown_table(result).encode()),
                       ("episodes.csv", _csv_bytes(_episode_rows(result))),
                       ("meta.json", json.dumps(_meta(result), indent=2, default=str).encode())):
        _atomic_write(out / name, data)
        written.append(out / name)
    for name, data in _plots(result, rows).items():
        _atomic_write(out / name, data)
        written.append(out / name)
    return written


def _episode_rows(result: BenchmarkResult) -> list[dict[str, Any]]:
    return [{"scenario": result.scenario, "policy": e.policy, "seed": e.seed, "episode": e.episode,
             **{name: e.metrics[name] for name in METRICS},
             "decision_ms_median": float(np.median(e.decision_ms))} for e in result.episode_results]


def _meta(result: BenchmarkResult) -> dict[str, Any]:
    import mec_gym

    return {"scenario": result.scenario, "overrides": result.overrides, "policies": result.policies,
            "evaluation_seeds": result.seeds, "episodes_per_seed": result.episodes, "rounds": result.rounds,
            "oracle_states": result.oracle_states, "gap_seed": GAP_SEED,
            "gap_instance": None if result.gap_config is None else {
                "num_users": result.gap_config.num_users, "num_servers": result.gap_config.num_servers,
                "model": result.gap_config.model, "devices_per_user": result.gap_config.devices_per_user},
            "executor": result.executor, "interrupted": result.interrupted, "failures": result.failures,
            "mec_gym_version": mec_gym.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "wall_s": result.wall_s}


def _plots(result: BenchmarkResult, rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """summary.png (bars of the main metrics with 95 % CIs) and rounds.png (mean reward per round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["policy"] for row in rows]
    panels = (("return", "episode return"), ("energy_j", "energy per round (J)"),
              ("delay_s", "delay per round (s)"), ("stability", "stability bound"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (key, title) in zip(axes, panels, strict=True):
        means = [row[f"{key}_mean"] for row in rows]
        errors = [0.0 if math.isnan(row[f"{key}_ci95"]) else row[f"{key}_ci95"] for row in rows]
        ax.bar(range(len(names)), means, yerr=errors, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if _spans_decades(means):  # one bad baseline (random) would flatten every other bar
            ax.set_yscale("symlog", linthresh=max(min(abs(m) for m in means if m and np.isfinite(m)), 1e-6))
    fig.suptitle(f"{result.scenario}: mean ± 95 % CI over {len(result.seeds) * result.episodes} episodes", fontsize=10)
    fig.tight_layout()
    summary = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name in names:
        curves = [e.rewards for e in result.episode_results if e.policy == name]
        if not curves:  # every job of the policy failed, or an interrupted run never reached it
            continue
        length = min(len(c) for c in curves)
        ax.plot(np.mean([c[:length] for c in curves], axis=0), label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("mean reward")
    if _spans_decades([value for line in ax.get_lines() for value in line.get_ydata()]):
        ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    per_round = _png(fig)
    plt.close(fig)
    return {"summary.png": summary, "rounds.png": per_round}


def _spans_decades(values: Iterable[float], decades: float = 1.0) -> bool:
    magnitudes = [abs(v) for v in values if np.isfinite(v) and v != 0]
    return bool(magnitudes) and max(magnitudes) / min(magnitudes) > 10**decades


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
