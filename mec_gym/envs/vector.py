"""``EdgeTrainingVectorEnv``: the native batched environment over the same core (SPEC §4.4)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from mec_gym.config import SystemConfig
from mec_gym.envs.core import EdgeTrainingCore, StepResult, info_arrays
from mec_gym.scenarios import make_config


class EdgeTrainingVectorEnv(VectorEnv):
    """``num_envs`` independent edge-training systems stepped by one vectorized model call per round.

    Same MDP as :class:`mec_gym.envs.edge_training.EdgeTrainingEnv`, with identical
    trajectories: ``reset(seed=s)`` seeds sub-environment i with ``s + i`` (as
    ``SyncVectorEnv`` does) and each sub-environment draws exactly the random numbers the
    single environment would, so the two agree bit for bit for the same seeds and actions.

    Args:
        num_envs: batch size B.
        scenario / config / overrides: as for the single environment.
        max_episode_steps: truncate episodes after this many rounds (default and upper bound:
            the scenario's ``rounds``); the time limit lives inside, no wrapper needed.
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default: the step after an episode ends
            resets that sub-environment and ignores its action) or ``SAME_STEP`` (reset in the
            same step; the last observation and info go to ``info["final_obs"]`` and
            ``info["final_info"]`` with the ``_final_obs`` mask).
        observation_mode: ``"flat"`` (Box) or ``"dict"`` (Dict of batched arrays).

    ``reset(options={"reset_mask": mask})`` resets only the masked sub-environments (NEXT_STEP
    and SAME_STEP modes); ``info`` is Gymnasium's dict of arrays with ``_key`` masks.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, scenario: str = "default", config: SystemConfig | None = None,
                 max_episode_steps: int | None = None, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 observation_mode: str = "flat", **overrides: Any) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs: must be an integer >= 1, got {num_envs!r}")
        if observation_mode not in ("flat", "dict"):
            raise ValueError(f"observation_mode: must be 'flat' or 'dict', got {observation_mode!r}")
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError as error:
            raise ValueError(f"autoreset_mode: must be NEXT_STEP or SAME_STEP, got {autoreset_mode!r}") from error
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode: must be NEXT_STEP or SAME_STEP, got {mode}")
        self.config = make_config(scenario, config=config, **overrides)
        if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
            raise ValueError(f"max_episode_steps: must be an integer >= 1, got {max_episode_steps!r}")
        self.max_episode_steps = min(max_episode_steps or self.config.rounds, self.config.rounds)
        self.num_envs = num_envs
        self.autoreset_mode = mode
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.observation_mode = observation_mode
        self._core = EdgeTrainingCore(self.config, num_envs)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (self._core.action_width,), dtype=np.float32)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = self._core.observer.space(observation_mode)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._generators: list[np.random.Generator] = [seeding.np_random()[0] for _ in range(num_envs)]
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    @property
    def observation_layout(self) -> dict:
        return self._core.observer.layout

    @property
    def system_state(self):
        """A copy of the full true state of every sub-environment (privileged information)."""
        return self._core.state.copy()

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        mask = np.ones(self.num_envs, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"options['reset_mask']: expected a bool array of shape ({self.num_envs},)")
            if self._core.state is None and not mask.all():
                raise ValueError("options['reset_mask']: the first reset must reset every sub-environment")
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed: expected an int or {self.num_envs} seeds, got {len(seeds)}")
        indices = np.flatnonzero(mask)
        for i in indices:
            if seeds[i] is not None:
                self._generators[i], _ = seeding.np_random(seeds[i])
        self._reset_indices(indices)
        obs = self._observation()
        return obs, {}

    def _reset_indices(self, indices: np.ndarray) -> None:
        self._core.reset(indices, [self._generators[i] for i in indices])
        self._steps[indices] = 0
        self._needs_reset[indices] = False

    def step(self, actions):
        core = self._core
        if core.state is None:
            raise RuntimeError("call reset() before step()")
        resetting = self._needs_reset.copy()
        result = core.step_action(actions)
        self._steps += 1
        truncated = (self._steps >= self.max_episode_steps) | result.truncated
        reward = result.reward.astype(np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        infos = self._infos(result, ~resetting)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            if resetting.any():
                self._reset_indices(np.flatnonzero(resetting))
                reward = np.where(resetting, 0.0, reward)
                truncated = truncated & ~resetting
            self._needs_reset = truncated.copy()
            return self._observation(), reward, terminated, truncated, infos
        done = truncated
        if done.any():
            final_obs = self._observation()
            infos["final_obs"] = np.where(done[:, None], final_obs, 0.0) if self.observation_mode == "flat" else \
                {k: np.where(done.reshape(-1, *[1] * (v.ndim - 1)), v, 0) for k, v in final_obs.items()}
            infos["_final_obs"] = done.copy()
            infos["final_info"] = {k: v for k, v in infos.items() if k not in ("final_obs", "_final_obs")}
            infos["_final_info"] = done.copy()
            self._reset_indices(np.flatnonzero(done))
        return self._observation(), reward, terminated, truncated, infos

    def _infos(self, result: StepResult, valid: np.ndarray) -> dict:
        infos: dict[str, Any] = {}
        for key, value in info_arrays(result, self._core.state).items():
            if key == "repairs":
                infos[key] = {k: v.copy() for k, v in value.items()}
                infos[key].update({f"_{k}": valid.copy() for k in value})
            else:
                infos[key] = np.asarray(value).copy()
            infos[f"_{key}"] = valid.copy()
        return infos

    def _observation(self):
        flat = self._core.observe()
        if self.observation_mode == "dict":
            return self._core.observer.to_dict(flat)
        return flat
