"""Parallel benchmarks (issue #9): ``--workers N`` and ``--ray`` equal the serial run; failed jobs are retried
once and reported; an interrupt keeps the finished episodes."""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents import benchmark
from agents.cli import app
from agents.heuristics import GreedyPolicy

runner = CliRunner()
HAS_RAY = importlib.util.find_spec("ray") is not None
# CI installs the rllib extra (make setup): there a missing Ray is a failure, not a skip
needs_ray = pytest.mark.skipif(not HAS_RAY and not os.environ.get("CI"), reason="Ray is not installed (rllib extra)")

ARGS = ["--scenario", "default", "--policies", "random,greedy,edge_only", "--seeds", "2", "--episodes", "2",
        "--rounds", "3", "--oracle-states", "1"]


def table(path: Path, name: str) -> list[dict[str, str]]:
    with open(path / name, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if k not in benchmark.TIMING_COLUMNS} for row in rows]


def same_results(a: Path, b: Path) -> None:
    assert table(a, "results.csv") == table(b, "results.csv")
    assert table(a, "episodes.csv") == table(b, "episodes.csv")


def test_workers_equal_serial(tmp_path: Path) -> None:
    serial = runner.invoke(app, ["bench", *ARGS, "--out", str(tmp_path / "serial")])
    assert serial.exit_code == 0, serial.output
    parallel = runner.invoke(app, ["bench", *ARGS, "--workers", "2", "--out", str(tmp_path / "workers")])
    assert parallel.exit_code == 0, parallel.output
    same_results(tmp_path / "serial", tmp_path / "workers")
    rows = table(tmp_path / "workers", "episodes.csv")
    assert len(rows) == 3 * 2 * 2 and {r["episode"] for r in rows} == {"0", "1"}  # later episodes replayed exactly
    assert table(tmp_path / "workers", "results.csv")[1]["oracle_gap_pct_mean"] != ""  # the gap job ran too
    meta = json.loads((tmp_path / "workers" / "meta.json").read_text())
    assert meta["executor"] == "processes:2" and meta["failures"] == [] and not meta["interrupted"]


@needs_ray
def test_ray_equals_serial(tmp_path: Path) -> None:
    import ray

    serial = runner.invoke(app, ["bench", *ARGS, "--out", str(tmp_path / "serial")])
    assert serial.exit_code == 0, serial.output
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # what --ray does without an address
        result = runner.invoke(app, ["bench", *ARGS, "--ray", "--out", str(tmp_path / "ray")])
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    same_results(tmp_path / "serial", tmp_path / "ray")
    assert json.loads((tmp_path / "ray" / "meta.json").read_text())["executor"] == "ray:local"


class AlwaysFails(GreedyPolicy):
    """A policy whose every decision raises."""

    def decide(self, state):
        raise RuntimeError("injected failure")


class FailsOnce(GreedyPolicy):
    """Greedy, except that the first attempt across all processes fails (a marker file records it)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = Path(marker)

    def decide(self, state):
        if not self.marker.exists():
            self.marker.write_text("failed once")
            raise RuntimeError("transient failure")
        return super().decide(state)


def test_failed_job_retried_once_then_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(benchmark._POLICIES, "always_fails", AlwaysFails)
    monkeypatch.setitem(benchmark._POLICIES, "fails_once", functools.partial(FailsOnce, str(tmp_path / "marker")))
    messages: list[str] = []
    options = {"scenario": "default", "seeds": 1, "rounds": 3, "oracle_states": 0}
    result = benchmark.run_benchmark(policies=["greedy", "always_fails", "fails_once"], workers=2,
                                     log=messages.append, **options)
    assert [(f["policy"], f["seed"], f["episode"]) for f in result.failures] == [("always_fails", 10000, 0)]
    assert "injected failure" in result.failures[0]["error"]
    assert sum("retrying once" in m for m in messages) == 2  # always_fails and fails_once were each retried
    assert any("failed twice" in m and "always_fails" in m for m in messages)
    by_policy = {e.policy: e for e in result.episode_results}
    assert set(by_policy) == {"greedy", "fails_once"}  # the retried job's episode is kept
    assert by_policy["fails_once"].rewards == by_policy["greedy"].rewards
    rows = {row["policy"]: row for row in result.rows()}
    assert rows["always_fails"]["episodes"] == 0  # reported, not silently dropped
    assert "Failed job" in benchmark.markdown_table(result)


class _InterruptAfter:
    """Stands in for the progress bar: raises KeyboardInterrupt (as Ctrl-C) at the third finished job."""

    def __init__(self, enabled, total, label) -> None:
        self.count = 0

    def __enter__(self):
        def advance() -> None:
            self.count += 1
            if self.count == 3:
                raise KeyboardInterrupt

        return advance

    def __exit__(self, *exc) -> None:
        return None


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupt_keeps_finished_episodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    real_progress = benchmark._progress
    monkeypatch.setattr(benchmark, "_progress", _InterruptAfter)
    if workers == 1:  # through the CLI: the partial tables are written, exit code 130
        result = runner.invoke(app, ["bench", "--scenario", "default", "--policies", "greedy,edge_only",
                                     "--seeds", "3", "--rounds", "3", "--oracle-states", "0",
                                     "--out", str(tmp_path)])
        assert result.exit_code == 130, result.output
        assert len(table(tmp_path, "episodes.csv")) == 3
        assert json.loads((tmp_path / "meta.json").read_text())["interrupted"] is True
        assert "Interrupted" in (tmp_path / "results.md").read_text()
        return
    with pytest.raises(benchmark.BenchmarkInterrupted) as caught:
        benchmark.run_benchmark("default", ["greedy", "edge_only"], seeds=3, rounds=3, oracle_states=0, workers=2)
    partial = caught.value.result
    assert partial.interrupted and len(partial.episode_results) == 3
    monkeypatch.setattr(benchmark, "_progress", real_progress)
    full = benchmark.run_benchmark("default", ["greedy", "edge_only"], seeds=3, rounds=3, oracle_states=0)
    finished = {(e.policy, e.seed): e.rewards for e in full.episode_results}
    assert all(finished[(e.policy, e.seed)] == e.rewards for e in partial.episode_results)


def test_bad_workers() -> None:
    with pytest.raises(ValueError, match="workers"):
        benchmark.run_benchmark("default", ["greedy"], seeds=1, rounds=2, oracle_states=0, workers=0)
