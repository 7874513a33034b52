"""The command line: speed benchmark, split inspection, simulate; bad input gives clear errors."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from agents.cli import app

runner = CliRunner()


def test_bench_speed_writes_csv_with_every_kind(tmp_path) -> None:
    result = runner.invoke(app, ["bench", "speed", "--num-envs", "8", "--sync-envs", "2", "--workers", "1,2",
                                 "--seconds", "0.05", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "speed.csv", encoding="utf-8")))
    kinds = {(r["kind"], r["num_envs"], r["workers"]) for r in rows}
    assert kinds == {("single", "1", "1"), ("sync", "2", "1"), ("native", "8", "1"), ("native", "8", "2")}
    assert all(float(r["steps_per_s"]) > 0 for r in rows)
    assert {r["backend"] for r in rows} == {"kernel"}  # default: the compiled kernel where it applies
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_bench_speed_backend_option(tmp_path) -> None:
    result = runner.invoke(app, ["bench", "speed", "--num-envs", "4", "--sync-envs", "2", "--workers", "1",
                                 "--seconds", "0.05", "--backend", "numpy", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {r["backend"] for r in csv.DictReader(open(tmp_path / "speed.csv", encoding="utf-8"))} == {"numpy"}
    result = runner.invoke(app, ["bench", "speed", "--backend", "gpu", "--seconds", "0.05", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "backend" in result.output


def test_bench_speed_rejects_unknown_scenario(tmp_path) -> None:
    result = runner.invoke(app, ["bench", "speed", "--scenario", "nope", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "valid names" in result.output


def test_simulate_and_inspect_split_run() -> None:
    result = runner.invoke(app, ["simulate", "--scenario", "collapipe", "--rounds", "2"])
    assert result.exit_code == 0, result.output
    assert "collapipe" in result.output
    result = runner.invoke(app, ["inspect", "split", "--samples", "2"])
    assert result.exit_code == 0, result.output
    assert "congested" in result.output


def test_simulate_rejects_unknown_override() -> None:
    result = runner.invoke(app, ["simulate", "--set", "num_userz=3"])
    assert result.exit_code != 0
    assert "valid names" in result.output


def test_bench_runs_dssra_on_collapipe(tmp_path) -> None:
    result = runner.invoke(app, ["bench", "--scenario", "collapipe", "--policies", "dssra,vanilla_fl", "--seeds", "1",
                                 "--rounds", "2", "--oracle-states", "0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {r["policy"]: r for r in csv.DictReader(open(tmp_path / "results.csv", encoding="utf-8"))}
    assert set(rows) == {"dssra", "vanilla_fl"}
    assert float(rows["dssra"]["delay_s_mean"]) < float(rows["vanilla_fl"]["delay_s_mean"])
