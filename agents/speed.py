"""Environment speed benchmark behind ``mec-gym bench speed`` (SPEC §7: speed is measured, not asserted).

Measures env-steps/s with uniformly random actions for: the single environment, Gymnasium's
``SyncVectorEnv`` over single environments, and the native batched environment at several
``num_envs`` (1 worker and, where it helps, one thread per core), with the backend that stepped them
(the compiled round kernel or the numpy model); plus the peak memory a
batched environment allocates (tracemalloc, which sees numpy's buffers), reported per env.
"""

from __future__ import annotations

import csv
import gc
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

import mec_gym


@dataclass
class SpeedRow:
    """One measurement: ``kind`` is single, sync or native; steps/s counts environment steps."""

    scenario: str
    kind: str
    num_envs: int
    workers: int
    steps_per_s: float
    peak_bytes_per_env: float
    backend: str = "auto"  # what stepped the Box actions: kernel or numpy (mec_gym.model.kernel)


def env_id(scenario: str) -> str:
    ids = {name: key for key, name in mec_gym.ENV_IDS.items()}
    if scenario not in ids:
        raise ValueError(f"scenario: unknown scenario {scenario!r}; valid names: {sorted(ids)}")
    return ids[scenario]


def _time_steps(step: Callable[[], None], min_seconds: float, min_calls: int) -> tuple[float, int]:
    """Wall time of at least ``min_calls`` calls and ``min_seconds`` (after two warm-up calls)."""
    step()
    step()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        step()
        calls += 1
    return time.perf_counter() - start, calls


def measure_single(scenario: str, seconds: float, backend: str | None = None) -> SpeedRow:
    env = gym.make(env_id(scenario), backend=backend)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (64, *env.action_space.shape)).astype(np.float32)
    counter = iter(range(10**12))

    def step() -> None:
        if env.step(actions[next(counter) % 64])[3]:
            env.reset()

    elapsed, calls = _time_steps(step, seconds, 50)
    return SpeedRow(scenario, "single", 1, 1, calls / elapsed, float("nan"), env.unwrapped.backend)


def measure_sync(scenario: str, num_envs: int, seconds: float, backend: str | None = None) -> SpeedRow:
    venv = gym.make_vec(env_id(scenario), num_envs=num_envs, vectorization_mode="sync", backend=backend)
    venv.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, venv.action_space.shape).astype(np.float32)
    elapsed, calls = _time_steps(lambda: venv.step(actions), seconds, 3)
    used = venv.envs[0].unwrapped.backend
    venv.close()
    return SpeedRow(scenario, "sync", num_envs, 1, num_envs * calls / elapsed, float("nan"), used)


def measure_native(scenario: str, num_envs: int, workers: int, seconds: float,
                   backend: str | None = None) -> SpeedRow:
    gc.collect()
    tracemalloc.start()
    venv = gym.make_vec(env_id(scenario), num_envs=num_envs, workers=workers, backend=backend)
    venv.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, venv.action_space.shape).astype(np.float32)
    venv.step(actions)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    elapsed, calls = _time_steps(lambda: venv.step(actions), seconds, 3)
    used = venv.unwrapped.backend
    venv.close()
    return SpeedRow(scenario, "native", num_envs, workers, num_envs * calls / elapsed, peak / num_envs, used)


def run(scenarios: Sequence[str], num_envs: Sequence[int], sync_envs: Sequence[int], workers: Sequence[int],
        seconds: float, progress: Callable[[str], None] | None = None, backend: str | None = None) -> list[SpeedRow]:
    """All measurements for the given scenarios (each ``seconds`` long at least); ``backend`` as for the envs."""
    rows: list[SpeedRow] = []
    for scenario in scenarios:
        env_id(scenario)
        jobs: list[tuple[str, Callable[[], SpeedRow]]] = [
            ("single", lambda s=scenario: measure_single(s, seconds, backend))]
        jobs += [(f"sync {n}", lambda s=scenario, n=n: measure_sync(s, n, seconds, backend)) for n in sync_envs]
        jobs += [(f"native {n}×{w}", lambda s=scenario, n=n, w=w: measure_native(s, n, w, seconds, backend))
                 for n in num_envs for w in workers if w <= n]
        for label, job in jobs:
            if progress:
                progress(f"{scenario}: {label}")
            rows.append(job())
    return rows


def write(rows: list[SpeedRow], out: Path) -> tuple[Path, Path]:
    """CSV and plot (env-steps/s vs num_envs) under ``out``, written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "speed.csv", out / "speed.png"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    tmp.replace(csv_path)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for scenario in dict.fromkeys(r.scenario for r in rows):
        for workers in sorted({r.workers for r in rows if r.kind == "native"}):
            native = [r for r in rows if r.scenario == scenario and r.kind == "native" and r.workers == workers]
            if native:
                ax.plot([r.num_envs for r in native], [r.steps_per_s for r in native], "o-",
                        label=f"{scenario} native ({workers} thread{'s' if workers > 1 else ''})")
        sync = [r for r in rows if r.scenario == scenario and r.kind == "sync"]
        if sync:
            ax.plot([r.num_envs for r in sync], [r.steps_per_s for r in sync], "s--", label=f"{scenario} SyncVectorEnv")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("num_envs")
    ax.set_ylabel("env-steps/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp_png = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp_png, dpi=110)
    plt.close(fig)
    tmp_png.replace(png_path)
    return csv_path, png_path
