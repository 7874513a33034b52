"""Stable-Baselines3 ``VecEnv`` adapter over the native batched environment (SPEC §4.4).

SB3 collects rollouts from a ``VecEnv``; this adapter lets PPO/SAC step all B systems in one
vectorized call instead of B Python environments. It follows SB3's conventions: episodes reset
in the same step they end, the last observation goes to ``infos[i]["terminal_observation"]``
and time-limit ends set ``infos[i]["TimeLimit.truncated"] = True``; ``seed(s)`` seeds the next
reset with s, s+1, ... (as SB3's ``DummyVecEnv`` does).

Example::

    from stable_baselines3 import PPO
    from mec_gym.envs.sb3 import make_sb3_vec_env

    venv = make_sb3_vec_env("mec_gym/EdgeTraining-v0", num_envs=64, seed=0)
    PPO("MlpPolicy", venv, n_steps=64).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from mec_gym.envs.vector import EdgeTrainingVectorEnv


class EdgeTrainingSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` view of an :class:`EdgeTrainingVectorEnv` (flat observations only).

    Args:
        venv: the batched environment; it is switched to same-step autoreset.
    """

    def __init__(self, venv: EdgeTrainingVectorEnv) -> None:
        if not isinstance(venv, EdgeTrainingVectorEnv):
            raise ValueError(f"venv: expected an EdgeTrainingVectorEnv, got {type(venv).__name__}")
        if venv.observation_mode != "flat":
            raise ValueError("venv: the SB3 adapter needs observation_mode='flat'")
        venv.autoreset_mode = AutoresetMode.SAME_STEP
        venv.metadata = {**venv.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._next_seed: int | None = None

    def reset(self):
        obs, _ = self.venv.reset(seed=self._next_seed)
        self._next_seed = None
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def seed(self, seed: int | None = None) -> Sequence[None | int]:
        self._next_seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1)

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        done = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        final = info.get("final_info", {})  # the step metrics of the sub-environments that finished
        for key in ("energy_j", "delay_s", "stability", "scr", "drop_rate", "budget_violation"):
            values = np.where(done, final[key], 0.0) if key in final else np.zeros(self.num_envs)
            if key in info:
                values = np.where(info[f"_{key}"], info[key], values)
            for i, value in enumerate(values):
                infos[i][key] = float(value)
        if done.any():
            for i in np.flatnonzero(done):
                infos[i]["terminal_observation"] = info["final_obs"][i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward.astype(np.float32), done, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        method = getattr(self.venv, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


def make_sb3_vec_env(env_id: str = "mec_gym/EdgeTraining-v0", num_envs: int = 8, seed: int | None = None,
                     **kwargs: Any) -> EdgeTrainingSB3VecEnv:
    """Build the batched environment of a registered id and wrap it for SB3; ``kwargs`` go to the env."""
    import mec_gym  # noqa: F401  (registers the ids)

    venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                        autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    adapter = EdgeTrainingSB3VecEnv(venv)
    if seed is not None:
        adapter.seed(seed)
    return adapter
