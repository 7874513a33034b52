"""RLlib recipe (optional extra ``pip install -e ".[rllib]"``): PPO on the single-agent env by its registered
id and on the multi-agent env through RLlib's PettingZoo wrapper, locally or on a Ray cluster.

Single agent — the Gymnasium id, with the module prefix so that every Ray worker imports ``mec_gym``
(which registers the ids) before ``gym.make``::

    from ray.rllib.algorithms.ppo import PPOConfig
    config = PPOConfig().environment("mec_gym:mec_gym/EdgeTraining-v0", env_config={"rounds": 16})

Multi agent — one agent per user, one shared module (parameter sharing: every agent has the same spaces)::

    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
    from ray.tune.registry import register_env
    from mec_gym.envs.multi_agent import parallel_env
    register_env("mec_gym_multi", lambda cfg: ParallelPettingZooEnv(parallel_env(**cfg)))
    config = (PPOConfig().environment("mec_gym_multi", env_config={"scenario": "default"})
              .multi_agent(policies={"shared"}, policy_mapping_fn=lambda agent_id, *args, **kwargs: "shared"))

:func:`ppo_config` builds either (RLlib's new API stack, torch), :func:`train_ppo` runs it and
``mec-gym train rllib-ppo --scenario ... [--multi-agent] [--address ray://HOST:10001]`` is the command
line. Without an address Ray starts locally; with one, the driver joins that cluster (its nodes need
``mec-gym`` installed, as any RLlib env package). Training seeds are below the benchmark's evaluation
seeds (``agents.benchmark.EVAL_SEED_BASE``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MULTI_ENV = "mec_gym_multi"
"""Name of the multi-agent env in Ray's env registry (:func:`register_envs`)."""

SHARED_MODULE = "shared"
"""The one RL module every agent maps to (parameter sharing)."""

INSTALL_HINT = 'RLlib is an optional extra: pip install -e ".[rllib]" torch==2.13.0 (or make setup)'


def require_rllib() -> None:
    """Raise ``ImportError`` with the install command when ``ray[rllib]`` is missing."""
    try:
        import ray.rllib  # noqa: F401
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error


def env_id(scenario: str) -> str:
    """The registered Gymnasium id of ``scenario``, with the ``mec_gym:`` module prefix (imports on every worker)."""
    import mec_gym

    ids = {name: key for key, name in mec_gym.ENV_IDS.items()}
    if scenario not in ids:
        raise ValueError(f"scenario: unknown scenario {scenario!r}; valid names: {sorted(ids)}")
    return f"mec_gym:{ids[scenario]}"


def _make_multi(env_config: dict[str, Any]):
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    from mec_gym.envs.multi_agent import parallel_env

    return ParallelPettingZooEnv(parallel_env(**dict(env_config)))


def register_envs() -> None:
    """Register the multi-agent env with Ray's registry under :data:`MULTI_ENV` (idempotent)."""
    require_rllib()
    from ray.tune.registry import register_env

    register_env(MULTI_ENV, _make_multi)


def _shared_module(agent_id: Any, *args: Any, **kwargs: Any) -> str:
    return SHARED_MODULE


def ppo_config(scenario: str = "default", multi_agent: bool = False, *, reward_mode: str = "team",
               overrides: dict[str, Any] | None = None, train_batch_size: int = 4000, minibatch_size: int = 256,
               num_epochs: int = 4, num_env_runners: int = 0, lr: float = 3e-4, seed: int = 0):
    """An RLlib ``PPOConfig`` for the single env (``multi_agent=False``) or the per-user multi-agent env.

    Args:
        scenario: preset name; ``overrides`` set scenario parameters by dotted name (``{"rounds": 16}``).
        reward_mode: multi-agent reward, ``"team"`` or ``"user"`` (see :mod:`mec_gym.envs.multi_agent`).
        train_batch_size, minibatch_size, num_epochs, lr: PPO's (env steps per iteration; in the multi-agent
            case agent steps are N times the env steps).
        num_env_runners: remote sampling workers (0: sample in the driver).
        seed: training seed, below the benchmark's evaluation seeds.

    Raises:
        ValueError: bad sizes or an unknown scenario, naming the field.
        ImportError: RLlib is not installed (with the install command).
    """
    require_rllib()
    from ray.rllib.algorithms.ppo import PPOConfig

    from agents.benchmark import EVAL_SEED_BASE

    for name, value in (("train_batch_size", train_batch_size), ("minibatch_size", minibatch_size),
                        ("num_epochs", num_epochs)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if minibatch_size > train_batch_size:
        raise ValueError(f"minibatch_size: must be <= train_batch_size ({train_batch_size}), got {minibatch_size}")
    if not isinstance(num_env_runners, int) or num_env_runners < 0:
        raise ValueError(f"num_env_runners: must be an integer >= 0, got {num_env_runners!r}")
    if not 0 <= seed < EVAL_SEED_BASE:
        raise ValueError(f"seed: training seeds must lie in [0, {EVAL_SEED_BASE}) (evaluation seeds are held out), "
                         f"got {seed}")
    overrides = dict(overrides or {})
    _check_scenario(scenario, overrides)
    config = PPOConfig()
    if multi_agent:
        register_envs()
        config = (config.environment(MULTI_ENV, env_config={"scenario": scenario, "reward_mode": reward_mode,
                                                            **overrides})
                  .multi_agent(policies={SHARED_MODULE}, policy_mapping_fn=_shared_module))
    else:
        config = config.environment(env_id(scenario), env_config=overrides)
    per_runner = max(1, math.ceil(train_batch_size / max(1, num_env_runners)))
    return (config.framework("torch")
            .env_runners(num_env_runners=num_env_runners, rollout_fragment_length=per_runner)
            .training(train_batch_size=train_batch_size, minibatch_size=minibatch_size, num_epochs=num_epochs, lr=lr)
            .debugging(seed=seed))


def _check_scenario(scenario: str, overrides: dict[str, Any]) -> None:
    """Fail in the driver, with the model's message, before Ray starts workers on a bad scenario."""
    from mec_gym.scenarios import make_config

    env_id(scenario)
    make_config(scenario, **overrides)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster at ``address`` (``ray://HOST:10001`` or ``auto``), or start Ray locally."""
    require_rllib()
    import ray

    if ray.is_initialized():
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as error:
            raise ValueError(f"address: cannot reach a Ray cluster at {address!r} ({error}); start one with "
                             "`ray start --head` (then use 'auto') or leave the address out for a local Ray") from error
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def train_ppo(scenario: str = "default", iterations: int = 1, multi_agent: bool = False, *,
              address: str | None = None, num_cpus: int | None = None, out: Path | None = None,
              log: Callable[[str], None] | None = None, **config_kwargs: Any) -> dict[str, Any]:
    """Train RLlib PPO for ``iterations`` iterations; returns a summary (and saves a checkpoint under ``out``).

    The summary: scenario, multi_agent, per-iteration ``history`` (env steps sampled, mean episode return,
    total loss), the checkpoint path (or None) and the wall time. ``config_kwargs`` go to :func:`ppo_config`.
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations: must be an integer >= 1, got {iterations!r}")
    config = ppo_config(scenario, multi_agent, **config_kwargs)
    init_ray(address, num_cpus)
    start = time.perf_counter()
    algo = config.build_algo()
    history = []
    try:
        for iteration in range(iterations):
            result = algo.train()
            row = _summarize(result, iteration)
            history.append(row)
            if log is not None:
                log(f"iteration {iteration + 1}/{iterations}: {row['env_steps_sampled']} env steps, "
                    f"mean episode return {row['episode_return_mean']:.3f}, loss {row['total_loss']:.4g}")
        checkpoint = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            checkpoint = str(algo.save_to_path(str((out / "checkpoint").resolve())))
    finally:
        algo.stop()
    summary = {"scenario": scenario, "multi_agent": multi_agent, "iterations": iterations, "history": history,
               "checkpoint": checkpoint, "wall_s": time.perf_counter() - start}
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _summarize(result: dict[str, Any], iteration: int) -> dict[str, Any]:
    runners = result.get("env_runners", {})
    learners = result.get("learners", {})
    module = learners.get(SHARED_MODULE) or learners.get("default_policy") or {}
    return {"iteration": iteration + 1,
            "env_steps_sampled": int(runners.get("num_env_steps_sampled", 0)),
            "agent_steps_sampled": int(sum(runners.get("num_agent_steps_sampled", {}).values())),
            "episode_return_mean": float(runners.get("episode_return_mean", math.nan)),
            "total_loss": float(module.get("total_loss", math.nan))}
