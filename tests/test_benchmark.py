"""Benchmark protocol and ``mec-gym bench``: determinism, identical draws, the output contract,
clear errors, atomic writes (SPEC §6.8)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agents import benchmark
from agents.base import ModelPolicy
from agents.cli import app
from agents.heuristics import EdgeOnlyPolicy
from mec_gym.envs.edge_training import EdgeTrainingEnv
from mec_gym.model import decision as decision_model

REQUIRED_COLUMNS = ("scenario", "policy", "episodes", "return_mean", "return_ci95", "energy_j_mean", "delay_s_mean",
                    "stability_mean", "scr_mean", "drops_mean", "budget_violation_mean", "decision_ms_median",
                    "decision_ms_p95")

runner = CliRunner()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in benchmark.TIMING_COLUMNS} for row in rows]


def benchmark_obs_size(config) -> int:
    return EdgeTrainingEnv(config=config).observation_space.shape[0]


def small_run(**kwargs) -> benchmark.BenchmarkResult:
    options = {"scenario": "default", "policies": ["random", "greedy", "edge_only"], "seeds": 2, "rounds": 4,
               "oracle_states": 0}
    return benchmark.run_benchmark(**{**options, **kwargs})


def test_same_benchmark_twice_gives_identical_tables(tmp_path: Path) -> None:
    first = small_run(oracle_states=1)
    second = small_run(oracle_states=1)
    benchmark.write_results(first, tmp_path / "a")
    benchmark.write_results(second, tmp_path / "b")
    assert without_timing(read_csv(tmp_path / "a" / "results.csv")) == \
        without_timing(read_csv(tmp_path / "b" / "results.csv"))
    assert without_timing(read_csv(tmp_path / "a" / "episodes.csv")) == \
        without_timing(read_csv(tmp_path / "b" / "episodes.csv"))

    def strip_timing(markdown: str) -> list[str]:  # the decision-time column is the 10th cell
        return ["|".join(line.split("|")[:9] + line.split("|")[10:]) for line in markdown.splitlines()]

    assert strip_timing((tmp_path / "a" / "results.md").read_text()) == \
        strip_timing((tmp_path / "b" / "results.md").read_text())
    assert first.gaps["greedy"] == second.gaps["greedy"] and len(first.gaps["greedy"]) == 1


def test_every_policy_sees_identical_draws() -> None:
    benchmark.register_policy("edge_only_copy", EdgeOnlyPolicy)
    result = small_run(policies=["edge_only", "edge_only_copy"], episodes=2)
    rows = {row["policy"]: row for row in result.rows()}
    copy = rows["edge_only_copy"]
    for key, value in rows["edge_only"].items():
        if key not in ("policy", *benchmark.TIMING_COLUMNS):
            assert value == copy[key] or (math.isnan(value) and math.isnan(copy[key])), key
    seeds = [e.seed for e in result.episode_results]
    assert min(seeds) >= benchmark.EVAL_SEED_BASE and len(result.episode_results) == 2 * 2 * 2


def test_episodes_after_the_first_continue_the_seeded_generator() -> None:
    result = small_run(policies=["edge_only"], seeds=1, episodes=2)
    first, second = result.episode_results
    assert first.metrics != second.metrics  # a new episode, not a replay of the seed


def test_rows_have_the_documented_columns_and_statistics() -> None:
    result = small_run(episodes=2)
    rows = result.rows()
    assert [row["policy"] for row in rows] == ["random", "greedy", "edge_only"]
    for row in rows:
        assert set(REQUIRED_COLUMNS) <= set(row)
        assert row["episodes"] == 4 and row["decision_ms_median"] >= 0 and row["decision_ms_p95"] >= 0
        returns = [e.metrics["return"] for e in result.episode_results if e.policy == row["policy"]]
        mean, half = benchmark.mean_ci(returns)
        assert row["return_mean"] == pytest.approx(np.mean(returns)) and row["return_ci95"] == half


def test_mean_ci_is_the_student_t_interval() -> None:
    mean, half = benchmark.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert math.isnan(benchmark.mean_ci([5.0])[1])


def test_observation_based_policies_step_through_the_box_action() -> None:
    config = benchmark.resolve_config("default")
    width = config.num_users * decision_model.action_dim_per_user(config)

    class ZeroModel:  # an SB3-like model: the mid-point action of the Box
        def predict(self, obs, deterministic=True):
            assert obs.shape == (benchmark_obs_size(config),)
            return np.zeros(width, dtype=np.float32), None

    benchmark.register_policy("zero_model", lambda: ModelPolicy(ZeroModel(), name="zero_model"))
    result = small_run(policies=["zero_model"], seeds=1)
    assert len(result.episode_results) == 1 and np.isfinite(result.episode_results[0].metrics["return"])
    assert "zero_model" not in benchmark.optimality_gaps(benchmark.resolve_config("default"), ["zero_model"], 0)[1]


def test_quick_defaults_and_the_oracle_on_the_tiny_scenario() -> None:
    result = benchmark.run_benchmark("tiny", None, quick=True, seeds=1, rounds=2, oracle_states=0,
                                     overrides={"num_users": 2})
    assert result.policies == [*benchmark.HEURISTIC_NAMES, "oracle"]  # the oracle joins on tiny instances
    assert result.rounds == 2 and len(result.seeds) == 1
    rows = {row["policy"]: row for row in result.rows()}
    for name in benchmark.HEURISTIC_NAMES:
        assert rows["oracle"]["return_mean"] >= rows[name]["return_mean"] - 1e-9  # one-round optimal each round
    quick = benchmark.run_benchmark("default", ["edge_only"], quick=True, oracle_states=0)
    assert quick.rounds == benchmark.QUICK["rounds"] and len(quick.seeds) == benchmark.QUICK["seeds"]


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown policy 'nope'; valid names: random, greedy"):
        benchmark.make_policy("nope")
    with pytest.raises(ValueError, match="unknown scenario 'mars'; valid names: default, liu2024"):
        benchmark.resolve_config("mars")
    with pytest.raises(ValueError, match="unknown parameter 'num_userz'; valid names"):
        benchmark.resolve_config("default", {"num_userz": 3})
    with pytest.raises(ValueError, match="oracle: num_users = 12 exceeds"):
        small_run(policies=["oracle"])
    with pytest.raises(ValueError, match="no such file"):
        benchmark.make_policy("ppo:/nonexistent/model.zip")
    with pytest.raises(ValueError, match="seeds"):
        small_run(seeds=0)


def test_cli_bench_writes_the_contracted_tables(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--scenario", "default", "--policies", "greedy,edge_only", "--seeds", "2",
                                 "--episodes", "1", "--rounds", "3", "--set", "num_users=5", "--set",
                                 "weights.energy=5", "--oracle-states", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "results.csv")
    assert [row["policy"] for row in rows] == ["greedy", "edge_only"]
    assert set(REQUIRED_COLUMNS) <= set(rows[0]) and rows[0]["scenario"] == "default" and rows[0]["episodes"] == "2"
    assert (out / "results.md").read_text().count("\n| ") == 3  # header + 2 policies
    for name in ("episodes.csv", "summary.png", "rounds.png", "meta.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind
    meta = (out / "meta.json").read_text()
    assert '"num_users": "5"' in meta and '"weights.energy": "5"' in meta


@pytest.mark.parametrize(("args", "message"), [
    (["--policies", "greedy,bogus"], "unknown policy 'bogus'"),
    (["--scenario", "mars"], "unknown scenario 'mars'"),
    (["--set", "num_userz=3"], "valid names"),
    (["--set", "num_users"], "key=value"),
])
def test_cli_bench_rejects_bad_input_with_the_valid_choices(args: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", *args, "--seeds", "1", "--rounds", "1", "--oracle-states", "0",
                                 "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())  # rich wraps long messages


def test_cli_bench_speed_subcommand_still_works(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "speed", "--help"])
    assert result.exit_code == 0 and "speed" in result.output.lower()


def test_interrupted_write_leaves_the_previous_table_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = small_run(policies=["edge_only"], seeds=1)
    benchmark.write_results(result, tmp_path)
    before = (tmp_path / "results.csv").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark.os, "fsync", crash)  # dies after writing the temporary file, before the rename
    with pytest.raises(KeyboardInterrupt):
        benchmark.write_results(small_run(policies=["greedy"], seeds=1), tmp_path)
    assert (tmp_path / "results.csv").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
