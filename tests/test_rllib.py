"""RLlib recipe (issue #9): one PPO iteration with a tiny batch on the single-agent env (registered id) and on the
multi-agent env (PettingZoo wrapper, through ``mec-gym train rllib-ppo``). Runs when the rllib extra is installed;
CI installs it (make setup), so there a missing Ray fails instead of skipping."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents import rllib
from agents.cli import app

HAS_RLLIB = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.rllib") is not None
pytestmark = pytest.mark.skipif(not HAS_RLLIB and not os.environ.get("CI"),
                                reason="the rllib extra is not installed (make setup installs it)")

TINY = {"train_batch_size": 32, "minibatch_size": 16, "num_epochs": 1}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_single_agent_ppo_iteration(local_ray, tmp_path: Path) -> None:
    summary = rllib.train_ppo("qian2024", 1, False, overrides={"rounds": 8}, out=tmp_path, **TINY)
    (row,) = summary["history"]
    assert row["env_steps_sampled"] >= TINY["train_batch_size"]
    assert row["agent_steps_sampled"] == row["env_steps_sampled"]  # one agent
    assert math.isfinite(row["episode_return_mean"]) and math.isfinite(row["total_loss"])
    assert Path(summary["checkpoint"]).is_dir()


def test_multi_agent_ppo_iteration_through_the_cli(local_ray, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "rllib-ppo", "--scenario", "default", "--multi-agent",
                                      "--iterations", "1", "--train-batch-size", "32", "--minibatch-size", "16",
                                      "--num-epochs", "1", "--set", "rounds=8", "--set", "num_users=4",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    (row,) = summary["history"]
    assert summary["multi_agent"] is True
    assert row["agent_steps_sampled"] == 4 * row["env_steps_sampled"] > 0  # one step per user per round
    assert math.isfinite(row["episode_return_mean"]) and math.isfinite(row["total_loss"])


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="train_batch_size"):
        rllib.ppo_config(train_batch_size=0)
    with pytest.raises(ValueError, match="minibatch_size"):
        rllib.ppo_config(train_batch_size=32, minibatch_size=64)
    with pytest.raises(ValueError, match="seed"):
        rllib.ppo_config(seed=10_000)
    with pytest.raises(ValueError, match="scenario"):
        rllib.ppo_config(scenario="mars")
    with pytest.raises(ValueError, match="num_users"):
        rllib.ppo_config(overrides={"num_users": 0})
