"""RL agents: Stable-Baselines3 PPO and SAC on the batched environment (SPEC §6.7).

Training (:func:`train`, ``mec-gym train ppo|sac``) runs on any registered id through the native
batched environment's SB3 adapter (:func:`mec_gym.envs.sb3.make_sb3_vec_env`: one vectorized
model call steps all ``n_envs`` systems), wrapped in ``VecMonitor`` (episode returns for the
logs) and ``VecNormalize`` (observations, and rewards where the hyperparameters say so).

* **Hyperparameters** live in ``agents/hyperparams/{ppo,sac}.yml`` in rl-zoo3's format (one
  entry per env id: ``n_envs``, ``n_timesteps``, ``policy``, ``normalize``, ``policy_kwargs``
  as a ``dict(...)`` string, ``lin_X`` learning-rate schedules, then the algorithm's keyword
  arguments), so ``python -m rl_zoo3.train --algo ppo --env mec_gym/EdgeTraining-v0
  --gym-packages mec_gym --conf-file agents/hyperparams/ppo.yml`` trains with the same settings
  (rl-zoo3 steps Python envs; ``mec-gym train`` the batched one).
* **Seeds.** Training environments are reset with seeds ``seed … seed + n_envs − 1`` (later
  episodes continue those generators); all must lie below :data:`VALIDATION_SEED_BASE`.
  ``EvalCallback`` evaluates on the held-out seeds ``VALIDATION_SEED_BASE + i`` (5000, 5001, …;
  the same episodes at every evaluation), and the benchmark on ``EVAL_SEED_BASE + i`` (10000,
  …), so training, model selection and the reported evaluation never share a draw.
* **Outputs** under ``out``: ``model.zip`` + ``model_vecnormalize.pkl`` (final),
  ``best_model.zip`` + ``best_model_vecnormalize.pkl`` (best validation return),
  ``checkpoints/`` (model and VecNormalize every ``checkpoint_freq`` steps; ``resume=True``
  continues from the newest), ``logs/runK/progress.csv`` and TensorBoard event files (SB3's
  losses, the episode return, and the raw per-round metrics of the env's ``info`` under
  ``metrics/``: energy J, delay s, stability, SCR, drop rate, budget violation),
  ``evaluations.npz`` (validation returns), ``train.jsonl`` (one line of settings and timing per
  run) and, next to every
  saved model, ``<model>.json`` naming the algorithm and environment.
* **Behaviour-cloning warm start** (``bc_expert``): run a registered policy (an expert or a
  heuristic) through ``Policy.act`` on training seeds, fit the policy's deterministic action to
  the expert's encoded actions (MSE) and the value head to the expert's discounted normalized
  returns, then fine-tune with PPO/SAC as usual.
* **Threads.** ``torch.set_num_threads(threads)`` before anything is built; the default
  :data:`DEFAULT_THREADS` = 1 was measured on the 2-core development machine (shared with other
  jobs): PPO on ``default`` made 1 799 env-steps/s with one thread and 156 with two (the MLP is
  small; two threads oversubscribe the cores the environment also needs).
* **Resuming** loads the newest checkpoint (model and VecNormalize statistics); SAC's replay
  buffer is not checkpointed, so a resumed SAC run refills it.

Model files are pickles (SB3's zip holds pickled objects, VecNormalize statistics are a
pickle): **loading one runs code** — only load files you trust.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pickle
import re
import sys
import time
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents.base import ModelPolicy, Policy

ALGORITHMS = ("ppo", "sac")
"""Algorithms ``mec-gym train`` and ``--policies ALGO:PATH`` accept."""

HYPERPARAMS_DIR = Path(__file__).with_name("hyperparams")
"""``{algo}.yml`` files in rl-zoo3's format."""

MODELS_DIR = Path(__file__).with_name("models")
"""Models shipped with the package (package data)."""

SHIPPED_PPO_DEFAULT = MODELS_DIR / "ppo_default.zip"
"""The small PPO model of the README's main job (``default`` scenario); made by the command in
``agents/models/README.md``."""

VALIDATION_SEED_BASE = 5_000
"""First held-out seed of ``EvalCallback``; training seeds lie below it, the benchmark's start at 10 000."""

DEFAULT_THREADS = 1
"""``torch.set_num_threads`` during training and inference (measured on 2 cores; see the module docstring)."""

METRIC_KEYS = ("energy_j", "delay_s", "stability", "scr", "drop_rate", "budget_violation")
"""Raw per-round metrics of the env's ``info`` logged to TensorBoard/CSV under ``metrics/``."""

_ALGO_KEYS = {"n_envs", "n_timesteps", "policy", "normalize", "policy_kwargs", "env_kwargs", "env_wrapper",
              "callback", "frame_stack", "vec_env_wrapper", "normalize_kwargs"}


# ----------------------------------------------------------------------------- environments and hyperparameters


def resolve_env_id(env: str) -> str:
    """A registered env id from an id (``mec_gym/EdgeTraining-v0``) or a scenario name (``default``).

    Raises ``ValueError`` listing the valid names otherwise.
    """
    import mec_gym

    if env in mec_gym.ENV_IDS:
        return env
    by_scenario = {scenario: env_id for env_id, scenario in mec_gym.ENV_IDS.items()}
    if env in by_scenario:
        return by_scenario[env]
    raise ValueError(f"env: unknown id or scenario {env!r}; valid: {', '.join([*mec_gym.ENV_IDS, *by_scenario])}")


def _check_algo(algo: str) -> str:
    if algo not in ALGORITHMS:
        raise ValueError(f"algo: unknown algorithm {algo!r}; valid names: {', '.join(ALGORITHMS)}")
    return algo


def load_hyperparams(algo: str, env_id: str, path: Path | None = None) -> dict[str, Any]:
    """The rl-zoo3 entry of ``env_id`` in ``agents/hyperparams/{algo}.yml`` (or ``path``), as written.

    Falls back to the file's ``default`` entry like rl-zoo3; raises ``ValueError`` when neither exists.
    """
    _check_algo(algo)
    path = path or HYPERPARAMS_DIR / f"{algo}.yml"
    with open(path) as handle:
        entries = yaml.safe_load(handle)
    if env_id in entries:
        return dict(entries[env_id])
    if "default" in entries:
        return dict(entries["default"])
    raise ValueError(f"hyperparams: no entry for {env_id!r} (nor 'default') in {path}; entries: {', '.join(entries)}")


def _parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``lr=3e-4`` → float, ``policy_kwargs=dict(...)`` → str)."""
    if "=" not in text:
        raise ValueError(f"hyperparams: expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    parsed = yaml.safe_load(value.strip())
    if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip(), parsed


def _policy_kwargs(value: Any) -> dict[str, Any]:
    """rl-zoo3's ``policy_kwargs`` string (``"dict(net_arch=[64, 64], log_std_init=-1)"``) or a dict.

    Only ``dict(...)`` with literal values and ``nn.<Activation>`` names are accepted (no arbitrary code).
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    import torch.nn as nn

    tree = ast.parse(str(value), mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in ("dict", "nn"):
            raise ValueError(f"policy_kwargs: only dict(...) and nn.<Layer> are allowed, got name {node.id!r}")
        if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "nn"):
            raise ValueError("policy_kwargs: only nn.<Layer> attributes are allowed")
    result = eval(compile(tree, "<policy_kwargs>", "eval"), {"__builtins__": {}}, {"dict": dict, "nn": nn})
    if not isinstance(result, dict):
        raise ValueError(f"policy_kwargs: must evaluate to a dict, got {type(result).__name__}")
    return result


def _schedule(value: Any) -> Any:
    """rl-zoo3 schedules: ``lin_3e-4`` → linear decay from 3e-4 to 0; numbers stay numbers."""
    if isinstance(value, str):
        match = re.fullmatch(r"lin_([0-9.eE+-]+)", value.strip())
        if not match:
            raise ValueError(f"schedule: expected a number or 'lin_<float>', got {value!r}")
        start = float(match.group(1))
        return lambda progress_remaining: progress_remaining * start
    return value


def _normalize_kwargs(value: Any) -> dict[str, Any] | None:
    """rl-zoo3's ``normalize``: ``true`` / ``false`` or a dict (or its string) of VecNormalize arguments."""
    if value in (None, False):
        return None
    if value is True:
        return {}
    if isinstance(value, str):
        value = ast.literal_eval(value)
    if not isinstance(value, dict):
        raise ValueError(f"normalize: expected true/false or a dict, got {value!r}")
    return dict(value)


@dataclasses.dataclass
class Settings:
    """Hyperparameters split into what :func:`train` uses itself and the algorithm's keyword arguments."""

    n_envs: int
    n_timesteps: int
    policy: str
    normalize: dict[str, Any] | None
    env_kwargs: dict[str, Any]
    algo_kwargs: dict[str, Any]
    raw: dict[str, Any]


def settings(algo: str, env_id: str, overrides: Sequence[str] | dict[str, Any] | None = None) -> Settings:
    """Read the hyperparameters of ``algo`` on ``env_id`` and apply ``overrides`` (``key=value`` strings or a dict)."""
    raw = load_hyperparams(algo, env_id)
    if isinstance(overrides, dict):
        raw.update(overrides)
    else:
        raw.update(dict(_parse_override(item) for item in overrides or []))
    unsupported = {"env_wrapper", "callback", "frame_stack", "vec_env_wrapper"} & set(raw)
    if unsupported:
        raise ValueError(f"hyperparams: {', '.join(sorted(unsupported))} not supported by mec-gym train")
    kwargs = {key: value for key, value in raw.items() if key not in _ALGO_KEYS}
    for key in ("learning_rate", "clip_range"):
        if key in kwargs:
            kwargs[key] = _schedule(kwargs[key])
    kwargs["policy_kwargs"] = _policy_kwargs(raw.get("policy_kwargs"))
    normalize = _normalize_kwargs(raw.get("normalize", False))
    if normalize is not None and "gamma" in kwargs:
        normalize.setdefault("gamma", kwargs["gamma"])
    n_envs, n_timesteps = raw.get("n_envs", 1), raw.get("n_timesteps", 100_000)
    if not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs: must be an integer >= 1, got {n_envs!r}")
    if float(n_timesteps) < 1:
        raise ValueError(f"n_timesteps: must be >= 1, got {n_timesteps!r}")
    return Settings(n_envs=n_envs, n_timesteps=int(float(n_timesteps)), policy=raw.get("policy", "MlpPolicy"),
                    normalize=normalize, env_kwargs=dict(raw.get("env_kwargs") or {}), algo_kwargs=kwargs, raw=raw)


def set_threads(threads: int | None = None) -> int:
    """Set ``torch.set_num_threads`` (default :data:`DEFAULT_THREADS`) and return the value used."""
    import torch

    threads = DEFAULT_THREADS if threads is None else threads
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: must be an integer >= 1, got {threads!r}")
    torch.set_num_threads(threads)
    return threads


def make_training_env(env_id: str, n_envs: int, seed: int, normalize: dict[str, Any] | None,
                      env_kwargs: dict[str, Any] | None = None, training: bool = True):
    """The batched env of ``env_id`` for SB3: adapter → ``VecMonitor`` → ``VecNormalize`` (if ``normalize``).

    ``seed`` seeds the first reset (sub-env i gets ``seed + i``). For evaluation (``training=False``)
    the statistics are frozen and rewards are not normalized.
    """
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from mec_gym.envs.sb3 import make_sb3_vec_env

    venv = VecMonitor(make_sb3_vec_env(env_id, num_envs=n_envs, seed=seed, **(env_kwargs or {})))
    if normalize is None:
        return venv
    if training:
        return VecNormalize(venv, **normalize)
    return VecNormalize(venv, training=False, norm_obs=normalize.get("norm_obs", True), norm_reward=False,
                        clip_obs=normalize.get("clip_obs", 10.0))


# ----------------------------------------------------------------------------- callbacks


def _callbacks():
    """Callback classes (built lazily: importing SB3 pulls torch)."""
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

    class MetricsCallback(BaseCallback):
        """Logs the mean of the env's raw per-round metrics (``info``) under ``metrics/`` at every dump."""

        def _on_step(self) -> bool:
            infos = self.locals.get("infos") or []
            for key in METRIC_KEYS:
                values = [info[key] for info in infos if key in info]
                if values:
                    self.logger.record_mean(f"metrics/{key}", float(np.mean(values)))
            return True

    class SeededEvalCallback(EvalCallback):
        """``EvalCallback`` that re-seeds the evaluation env before every evaluation (same held-out
        episodes each time, so the curve compares like with like) and saves the VecNormalize
        statistics and metadata next to ``best_model.zip``."""

        def __init__(self, *args: Any, eval_seed: int, metadata: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.eval_seed = eval_seed
            self.metadata = metadata
            previous = Path(f"{self.log_path}.npz") if self.log_path else None
            if previous is not None and previous.exists():  # a resumed run continues the curve and the best
                with np.load(previous) as old:
                    self.evaluations_timesteps = [int(t) for t in old["timesteps"]]
                    self.evaluations_results = [list(r) for r in old["results"]]
                    self.evaluations_length = [list(n) for n in old["ep_lengths"]]
                if self.evaluations_results:
                    self.best_mean_reward = float(max(np.mean(r) for r in self.evaluations_results))

        def _on_step(self) -> bool:
            if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
                self.eval_env.seed(self.eval_seed)
            best = self.best_mean_reward
            keep_going = super()._on_step()
            if self.best_mean_reward > best and self.best_model_save_path is not None:
                _save_sidecars(self.model, Path(self.best_model_save_path) / "best_model.zip", self.metadata)
            return keep_going

    class WallClockCallback(BaseCallback):
        """Stops training after ``seconds`` of wall time (the model is then saved as usual)."""

        def __init__(self, seconds: float) -> None:
            super().__init__()
            self.seconds = seconds
            self.start = time.perf_counter()

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            return time.perf_counter() - self.start < self.seconds

    return MetricsCallback, SeededEvalCallback, WallClockCallback


def _save_sidecars(model: Any, path: Path, metadata: dict[str, Any]) -> None:
    """VecNormalize statistics (``<stem>_vecnormalize.pkl``) and metadata (``<stem>.json``) next to ``path``."""
    vecnorm = model.get_vec_normalize_env()
    if vecnorm is not None:
        vecnorm.save(str(vecnorm_path(path)))
    meta = {**metadata, "num_timesteps": int(model.num_timesteps)}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))


def vecnorm_path(model_path: Path | str) -> Path:
    """Where the VecNormalize statistics of a saved model live: ``<stem>_vecnormalize.pkl`` beside it."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}_vecnormalize.pkl")


# ----------------------------------------------------------------------------- behaviour cloning


def collect_expert(expert: str, env_id: str, episodes: int, seed: int = 0,
                   env_kwargs: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run the registered policy ``expert`` for ``episodes`` episodes on training seeds ``seed + i``.

    Actions come from ``Policy.act`` (the Box action that decodes to the expert's decision).
    Returns ``obs`` [S, D], ``actions`` [S, A], ``rewards`` [S], ``episode_starts`` [S] (bool).
    """
    import gymnasium as gym

    from agents.benchmark import make_policy

    if episodes < 1:
        raise ValueError(f"bc_episodes: must be >= 1, got {episodes!r}")
    if seed + episodes > VALIDATION_SEED_BASE:
        raise ValueError(f"bc_episodes: seeds {seed}..{seed + episodes - 1} reach the held-out seeds "
                         f"(>= {VALIDATION_SEED_BASE}); use fewer episodes or a smaller seed")
    policy = make_policy(expert)
    env = gym.make(env_id, **(env_kwargs or {}))
    obs_list, act_list, rew_list, starts = [], [], [], []
    for index in range(episodes):
        obs, info = env.reset(seed=seed + index)
        policy.reset(env, seed=seed + index)
        done, first = False, True
        while not done:
            action = np.asarray(policy.act(obs, info), dtype=np.float32)
            obs_list.append(obs)
            act_list.append(action)
            starts.append(first)
            obs, reward, terminated, truncated, info = env.step(action)
            rew_list.append(float(reward))
            done, first = terminated or truncated, False
    env.close()
    return {"obs": np.asarray(obs_list, dtype=np.float32), "actions": np.asarray(act_list, dtype=np.float32),
            "rewards": np.asarray(rew_list, dtype=np.float64), "episode_starts": np.asarray(starts, dtype=bool)}


def behaviour_clone(model: Any, data: dict[str, np.ndarray], epochs: int = 50, batch_size: int = 256,
                    learning_rate: float = 1e-3, log_std: float | None = -1.5) -> dict[str, list[float]]:
    """Pre-train ``model``'s policy on expert ``data`` (from :func:`collect_expert`).

    * Observations go through the model's VecNormalize (its running mean/variance are first
      updated with the expert's observations), as they will during fine-tuning.
    * The deterministic action (PPO: the Gaussian mean; SAC: tanh of the mean) is fitted to the
      expert's actions by mean squared error.
    * PPO's value head is fitted to the expert's discounted returns of normalized rewards (the
      return statistics of VecNormalize are updated the way it does during rollouts), so the
      first PPO updates do not start from a random critic.
    * ``log_std`` (PPO): afterwards the exploration noise is set to exp(log_std), so the first
      rollouts stay near the expert.

    Returns the per-epoch losses (``policy``, and ``value`` for PPO).
    """
    import torch
    import torch.nn.functional as F

    if epochs < 0:
        raise ValueError(f"bc_epochs: must be >= 0, got {epochs!r}")
    obs, actions = data["obs"], np.clip(data["actions"], -1.0, 1.0)
    vecnorm = model.get_vec_normalize_env()
    gamma = float(getattr(model, "gamma", 0.99))
    targets = None
    if vecnorm is not None:
        if vecnorm.norm_obs:
            vecnorm.obs_rms.update(obs)
        obs = vecnorm.normalize_obs(obs)
    rewards = data["rewards"].copy()
    if vecnorm is not None and vecnorm.norm_reward:
        running = 0.0
        discounted = np.empty_like(rewards)
        for i, (reward, start) in enumerate(zip(rewards, data["episode_starts"], strict=True)):
            running = reward + gamma * (0.0 if start else running)
            discounted[i] = running
        vecnorm.ret_rms.update(discounted)
        rewards = np.clip(rewards / np.sqrt(vecnorm.ret_rms.var + vecnorm.epsilon),
                          -vecnorm.clip_reward, vecnorm.clip_reward)
    is_ppo = hasattr(model.policy, "predict_values")
    if is_ppo:  # discounted returns to go within each episode
        targets = np.empty_like(rewards)
        running = 0.0
        ends = np.roll(data["episode_starts"], -1)
        ends[-1] = True
        for i in range(len(rewards) - 1, -1, -1):
            running = rewards[i] + gamma * (0.0 if ends[i] else running)
            targets[i] = running
    if not is_ppo:  # SAC's tanh cannot reach ±1 exactly
        actions = np.clip(actions, -0.995, 0.995)
    policy = model.policy
    device = policy.device
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
    act_t = torch.as_tensor(actions, dtype=torch.float32, device=device)
    val_t = None if targets is None else torch.as_tensor(targets, dtype=torch.float32, device=device)
    parameters = list(policy.actor.parameters()) if not is_ppo else list(policy.parameters())
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    generator = torch.Generator().manual_seed(0)
    history: dict[str, list[float]] = {"policy": [], "value": []} if is_ppo else {"policy": []}
    policy.set_training_mode(True)
    for _ in range(epochs):
        order = torch.randperm(len(obs_t), generator=generator)
        sums = {key: 0.0 for key in history}
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            predicted = policy._predict(obs_t[idx], deterministic=True)
            loss_pi = F.mse_loss(predicted, act_t[idx])
            loss = loss_pi
            sums["policy"] += loss_pi.item() * len(idx)
            if is_ppo:
                loss_v = F.mse_loss(policy.predict_values(obs_t[idx]).flatten(), val_t[idx])
                loss = loss + 0.5 * loss_v
                sums["value"] += loss_v.item() * len(idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for key in history:
            history[key].append(sums[key] / len(obs_t))
    policy.set_training_mode(False)
    if is_ppo and log_std is not None and hasattr(policy, "log_std"):
        with torch.no_grad():
            policy.log_std.fill_(log_std)
    return history


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` produced: paths, steps and timing."""

    algo: str
    env_id: str
    out: Path
    model_path: Path
    best_model_path: Path | None
    num_timesteps: int
    wall_s: float
    learn_s: float
    steps_per_s: float
    bc_history: dict[str, list[float]] | None = None


def _latest_checkpoint(folder: Path) -> tuple[Path, Path | None] | None:
    """The newest ``checkpoints/rl_model_<steps>_steps.zip`` and its VecNormalize file, if any."""
    best, best_steps = None, -1
    for path in folder.glob("rl_model_*_steps.zip"):
        match = re.fullmatch(r"rl_model_(\d+)_steps\.zip", path.name)
        if match and int(match.group(1)) > best_steps:
            best, best_steps = path, int(match.group(1))
    if best is None:
        return None
    stats = folder / f"rl_model_vecnormalize_{best_steps}_steps.pkl"
    return best, stats if stats.exists() else None


def train(algo: str, env: str = "mec_gym/EdgeTraining-v0", timesteps: int | None = None, out: Path | str | None = None,
          seed: int = 0, n_envs: int | None = None, hyperparams: Sequence[str] | dict[str, Any] | None = None,
          env_kwargs: dict[str, Any] | None = None, eval_freq: int = 20_000, eval_episodes: int = 8,
          checkpoint_freq: int = 100_000, resume: bool = False, bc_expert: str | None = None,
          bc_episodes: int = 32, bc_epochs: int = 50, threads: int | None = None, progress_bar: bool = True,
          tensorboard: bool = True, verbose: int = 0, max_minutes: float | None = None) -> TrainResult:
    """Train ``algo`` (``ppo`` or ``sac``) on ``env`` (an id or scenario name); see the module docstring.

    Args:
        timesteps: total env-steps (default: the hyperparameters' ``n_timesteps``); with ``resume``
            the run continues until the model has seen this many.
        out: output folder (default ``runs/train/{algo}_{scenario}``).
        seed: first training seed (sub-env i resets with ``seed + i``) and the algorithm's seed.
        hyperparams: overrides of the yml entry (``["learning_rate=1e-4", ...]`` or a dict).
        env_kwargs: scenario overrides passed to the env (as ``gym.make`` keywords).
        eval_freq / checkpoint_freq: in env-steps (0 disables); eval_episodes: held-out episodes
            per evaluation (seeds ``VALIDATION_SEED_BASE + i``).
        resume: continue from the newest checkpoint in ``out/checkpoints`` (or ``out/model.zip``).
        bc_expert: registered policy name for the behaviour-cloning warm start (None: off).
        threads: torch threads (default :data:`DEFAULT_THREADS`).
        max_minutes: stop learning after this much wall time (the model is saved as usual).

    Raises:
        ValueError: unknown algorithm, env or expert; seeds reaching the held-out range; bad sizes.
    """
    import torch  # noqa: F401
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import VecNormalize

    start_wall = time.perf_counter()
    _check_algo(algo)
    env_id = resolve_env_id(env)
    threads = set_threads(threads)
    cfg = settings(algo, env_id, hyperparams)
    n_envs = cfg.n_envs if n_envs is None else n_envs
    total = cfg.n_timesteps if timesteps is None else int(timesteps)
    if not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs: must be an integer >= 1, got {n_envs!r}")
    if total < 1:
        raise ValueError(f"timesteps: must be >= 1, got {total!r}")
    last_seed = seed + n_envs + (bc_episodes if bc_expert else 0)
    if not isinstance(seed, int) or seed < 0 or last_seed > VALIDATION_SEED_BASE:
        raise ValueError(f"seed: training seeds {seed}..{seed + n_envs - 1} must lie in [0, {VALIDATION_SEED_BASE}) "
                         f"(held-out seeds start there); use a smaller seed")
    env_kwargs = {**cfg.env_kwargs, **(env_kwargs or {})}
    import mec_gym

    scenario = mec_gym.ENV_IDS[env_id]
    out = Path(out) if out is not None else Path("runs/train") / f"{algo}_{scenario}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    metadata = {"algo": algo, "env_id": env_id, "scenario": scenario, "env_kwargs": env_kwargs, "seed": seed,
                "n_envs": n_envs, "hyperparams": cfg.raw, "bc_expert": bc_expert,
                "command": " ".join(sys.argv), "threads": threads}
    algo_class = {"ppo": PPO, "sac": SAC}[algo]

    venv = make_training_env(env_id, n_envs, seed, cfg.normalize, env_kwargs)
    model = None
    resumed_from = None
    if resume:
        found = _latest_checkpoint(out / "checkpoints")
        if found is None and (out / "model.zip").exists():
            found = (out / "model.zip", vecnorm_path(out / "model.zip"))
        if found is None:
            raise ValueError(f"resume: no checkpoint in {out / 'checkpoints'} and no {out / 'model.zip'}")
        model_file, stats_file = found
        if isinstance(venv, VecNormalize) and stats_file is not None and stats_file.exists():
            venv = VecNormalize.load(str(stats_file), venv.venv)
        model = algo_class.load(str(model_file), env=venv, device="cpu")
        resumed_from = str(model_file)
    else:
        model = algo_class(cfg.policy, venv, seed=seed, device="cpu", verbose=verbose, **cfg.algo_kwargs)

    bc_history = None
    if bc_expert and not resume:
        data = collect_expert(bc_expert, env_id, bc_episodes, seed=seed + n_envs, env_kwargs=env_kwargs)
        bc_history = behaviour_clone(model, data, epochs=bc_epochs)
        np.savez(out / "bc_data_summary.npz", samples=len(data["obs"]), policy_loss=bc_history["policy"])
        metadata["bc"] = {"episodes": bc_episodes, "seeds": [seed + n_envs, seed + n_envs + bc_episodes - 1],
                          "epochs": bc_epochs, "samples": int(len(data["obs"])),
                          "final_policy_mse": bc_history["policy"][-1] if bc_history["policy"] else None}
        model.save(out / "bc_model.zip")
        _save_sidecars(model, out / "bc_model.zip", metadata)

    runs = sorted((out / "logs").glob("run*")) if (out / "logs").exists() else []
    log_dir = out / "logs" / f"run{len(runs)}"
    formats = ["csv", "tensorboard"] if tensorboard else ["csv"]
    if verbose:
        formats.append("stdout")
    model.set_logger(configure(str(log_dir), formats))

    MetricsCallback, SeededEvalCallback, WallClockCallback = _callbacks()
    callbacks = [MetricsCallback()]
    if max_minutes is not None:
        if max_minutes <= 0:
            raise ValueError(f"max_minutes: must be > 0, got {max_minutes!r}")
        callbacks.append(WallClockCallback(60.0 * max_minutes))
    if checkpoint_freq > 0:
        callbacks.append(CheckpointCallback(max(checkpoint_freq // n_envs, 1), str(out / "checkpoints"),
                                            save_vecnormalize=True))
    if eval_freq > 0:
        if not resume:
            (out / "evaluations.npz").unlink(missing_ok=True)
        eval_env = make_training_env(env_id, eval_episodes, VALIDATION_SEED_BASE, cfg.normalize, env_kwargs,
                                     training=False)
        callbacks.append(SeededEvalCallback(eval_env, eval_seed=VALIDATION_SEED_BASE, metadata=metadata,
                                            n_eval_episodes=eval_episodes, eval_freq=max(eval_freq // n_envs, 1),
                                            best_model_save_path=str(out), log_path=str(out),
                                            deterministic=True, verbose=verbose, warn=False))
    remaining = total - int(model.num_timesteps)
    learn_start = time.perf_counter()
    steps_before = int(model.num_timesteps)
    if remaining > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*progress bar.*")
            model.learn(remaining, callback=CallbackList(callbacks), progress_bar=progress_bar,
                        reset_num_timesteps=not resume)
    learn_s = time.perf_counter() - learn_start
    model.save(out / "model.zip")
    _save_sidecars(model, out / "model.zip", metadata)
    best = out / "best_model.zip"
    steps = int(model.num_timesteps) - steps_before
    result = TrainResult(algo=algo, env_id=env_id, out=out, model_path=out / "model.zip",
                         best_model_path=best if best.exists() else None, num_timesteps=int(model.num_timesteps),
                         wall_s=time.perf_counter() - start_wall, learn_s=learn_s,
                         steps_per_s=steps / learn_s if learn_s > 0 and steps > 0 else float("nan"),
                         bc_history=bc_history)
    record = {**metadata, "resumed_from": resumed_from, "num_timesteps": result.num_timesteps, "wall_s": result.wall_s,
              "learn_s": learn_s, "steps_per_s": result.steps_per_s, "log_dir": str(log_dir)}
    _append_json_lines(out / "train.jsonl", record)
    venv.close()
    return result


def _append_json_lines(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


# ----------------------------------------------------------------------------- loading and evaluating


def detect_algo(path: Path | str) -> str:
    """``ppo`` or ``sac``, read from the saved model's metadata (``<stem>.json``) or its zip's policy class."""
    path = Path(path)
    meta = path.with_suffix(".json")
    if meta.exists():
        algo = json.loads(meta.read_text()).get("algo")
        if algo in ALGORITHMS:
            return algo
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise ValueError(f"model: {path} is not a Stable-Baselines3 model file ({error})") from error
    module = str(data.get("policy_class", {}).get("__module__", ""))
    for algo in ALGORITHMS:
        if f".{algo}." in module:
            return algo
    raise ValueError(f"model: cannot tell the algorithm of {path} (policy module {module!r}); give it explicitly")


def load_model(path: Path | str, algo: str | None = None) -> tuple[Any, Any]:
    """Load a saved model and its VecNormalize statistics (``None`` when the model has none).

    **Loading unpickles the files: it runs code. Only load models you trust.**
    """
    from stable_baselines3 import PPO, SAC

    path = Path(path)
    if not path.exists():
        raise ValueError(f"model: no such file {path}")
    algo = _check_algo(algo) if algo else detect_algo(path)
    model = {"ppo": PPO, "sac": SAC}[algo].load(str(path), device="cpu")
    stats = vecnorm_path(path)
    vecnorm = None
    if stats.exists():
        with open(stats, "rb") as handle:
            vecnorm = pickle.load(handle)
        vecnorm.training = False
    return model, vecnorm


class RLPolicy(ModelPolicy):
    """A saved SB3 model as a benchmark policy: observations normalized with its VecNormalize
    statistics (frozen), then ``model.predict(obs, deterministic=True)``."""

    def __init__(self, model: Any, vecnorm: Any = None, name: str = "rl") -> None:
        super().__init__(model, name=name, deterministic=True)
        self.vecnorm = vecnorm

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Bind to ``env``; checks that the observation shape matches the model's."""
        super().reset(env, seed)
        expected = self.model.observation_space.shape
        got = env.observation_space.shape
        if expected != got:
            raise ValueError(f"policy {self.name!r}: the model expects observations of shape {expected}, the "
                             f"environment gives {got}; evaluate it on the scenario it was trained on")

    def act(self, obs: Any, info: dict | None = None) -> np.ndarray:
        """The deterministic action for ``obs`` (normalized first when the model has statistics)."""
        if self.vecnorm is not None:
            obs = self.vecnorm.normalize_obs(np.asarray(obs, dtype=np.float32))
        action, _ = self.model.predict(obs, deterministic=True)
        return np.asarray(action, dtype=np.float32)


def load_policy(path: Path | str, algo: str | None = None, name: str | None = None) -> RLPolicy:
    """A saved model as a :class:`RLPolicy` (``torch`` threads set to :data:`DEFAULT_THREADS`).

    **Loading unpickles the files: it runs code. Only load models you trust.**
    """
    set_threads(DEFAULT_THREADS)
    model, vecnorm = load_model(path, algo)
    algo = algo or detect_algo(path)
    return RLPolicy(model, vecnorm, name=name or f"{algo}:{Path(path).name}")


def shipped_policy() -> Policy:
    """The PPO model shipped with the package for the ``default`` scenario (``ppo_default``)."""
    if not SHIPPED_PPO_DEFAULT.exists():
        raise ValueError(f"ppo_default: the shipped model {SHIPPED_PPO_DEFAULT} is missing from this installation")
    return load_policy(SHIPPED_PPO_DEFAULT, "ppo", name="ppo_default")


def evaluate(path: Path | str, scenario: str | None = None, against: Sequence[str] = (), algo: str | None = None,
             **benchmark_kwargs: Any):
    """Evaluate a saved model through the benchmark harness (:func:`agents.benchmark.run_benchmark`).

    ``scenario`` defaults to the one the model was trained on (its ``<stem>.json``), else ``default``;
    ``against`` adds other registered policies on the same seeds. Returns the ``BenchmarkResult``.
    """
    from agents import benchmark

    path = Path(path)
    algo = algo or detect_algo(path)
    meta = path.with_suffix(".json")
    if scenario is None:
        scenario = json.loads(meta.read_text()).get("scenario", "default") if meta.exists() else "default"
    benchmark_kwargs.setdefault("oracle_states", 0)
    return benchmark.run_benchmark(scenario, [*against, f"{algo}:{path}"], **benchmark_kwargs)


# ----------------------------------------------------------------------------- throughput


def throughput(algo: str = "ppo", env: str = "mec_gym/EdgeTraining-v0", timesteps: int = 20_000,
               n_envs: int | None = None, kind: str = "native", threads: int | None = None,
               hyperparams: Sequence[str] | dict[str, Any] | None = None) -> float:
    """Env-steps/s of ``algo`` learning (collection + updates) for ``timesteps`` steps.

    ``kind="native"``: the batched env through the SB3 adapter; ``kind="make_vec_env"``: SB3's
    ``make_vec_env`` (``DummyVecEnv`` of single envs), same hyperparameters, both behind
    ``VecNormalize`` when the hyperparameters ask for it.
    """
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env_id = resolve_env_id(env)
    set_threads(threads)
    cfg = settings(algo, env_id, hyperparams)
    n_envs = cfg.n_envs if n_envs is None else n_envs
    if kind == "native":
        venv = make_training_env(env_id, n_envs, 0, cfg.normalize, cfg.env_kwargs)
    elif kind == "make_vec_env":
        venv = make_vec_env(env_id, n_envs=n_envs, seed=0, env_kwargs=cfg.env_kwargs)
        if cfg.normalize is not None:
            venv = VecNormalize(venv, **cfg.normalize)
    else:
        raise ValueError(f"kind: must be 'native' or 'make_vec_env', got {kind!r}")
    model = {"ppo": PPO, "sac": SAC}[_check_algo(algo)](cfg.policy, venv, seed=0, device="cpu", **cfg.algo_kwargs)
    start = time.perf_counter()
    model.learn(timesteps)
    elapsed = time.perf_counter() - start
    venv.close()
    return model.num_timesteps / elapsed
