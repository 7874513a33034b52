"""``EdgeTrainingVectorEnv``: the native batched environment over the same core (SPEC §4.4)."""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from mec_gym.config import SystemConfig
from mec_gym.envs.core import EdgeTrainingCore
from mec_gym.model import kernel
from mec_gym.model.dynamics import SystemState
from mec_gym.scenarios import make_config

MIN_CHUNK = 64
"""The smallest range of environments one kernel call steps when several threads share a step (a call costs
about 20 µs to dispatch; 64 environments take about 0.3 ms)."""


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
        workers: threads that step contiguous shards of the batch in parallel (the round kernel and
            numpy's array loops release the GIL). Default: one per CPU core (at most 2) when
            ``num_envs >= 512``, else 1. Results do not depend on it: sub-environments are
            independent, so any sharding gives the same numbers.

        backend: ``"kernel"`` (the compiled round kernel, :mod:`mec_gym.model.kernel`), ``"numpy"`` (the
            numpy model) or ``None``/``"auto"``: the kernel where it supports the scenario (one device per
            user), unless the environment variable ``MEC_GYM_BACKEND`` says otherwise. Same numbers either way.

    ``reset(options={"reset_mask": mask})`` resets only the masked sub-environments (NEXT_STEP
    and SAME_STEP modes); ``info`` is Gymnasium's dict of arrays with ``_key`` masks.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, scenario: str = "default", config: SystemConfig | None = None,
                 max_episode_steps: int | None = None, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 observation_mode: str = "flat", workers: int | None = None, backend: str | None = None,
                 **overrides: Any) -> None:
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
        if workers is None:
            workers = min(os.cpu_count() or 1, 2) if num_envs >= 512 else 1
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: must be an integer >= 1, got {workers!r}")
        workers = min(workers, num_envs)
        bounds = np.linspace(0, num_envs, workers + 1).astype(int)
        self._shards = [EdgeTrainingCore(self.config, int(hi - lo), backend) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                                          strict=True)]
        self._bounds = bounds
        self._pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        self._workers = workers
        self._thread_scratch = threading.local()  # each worker thread's kernel work arrays
        self._ranges = self._guided_ranges()  # the same every step
        self._core = self._shards[0]
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (self._core.action_width,), dtype=np.float32)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = self._core.observer.space(observation_mode)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._generators: list[np.random.Generator] = [seeding.np_random()[0] for _ in range(num_envs)]
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    @property
    def backend(self) -> str:
        """``"kernel"`` or ``"numpy"``: what steps Box actions (see ``backend`` above)."""
        return self._core.backend

    @property
    def observation_layout(self) -> dict:
        return self._core.observer.layout

    @property
    def system_state(self) -> SystemState:
        """A copy of the full true state of every sub-environment (privileged information)."""
        if self._core.state is None:
            raise RuntimeError("call reset() before reading the state")
        return SystemState.concatenate([shard.state for shard in self._shards])

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        mask = np.ones(self.num_envs, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"options['reset_mask']: expected a bool array of shape ({self.num_envs},)")
            if self._shards[0].state is None and not mask.all():
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
        jobs = []
        for shard, lo, hi in zip(self._shards, self._bounds[:-1], self._bounds[1:], strict=True):
            local = indices[(indices >= lo) & (indices < hi)]
            if len(local):
                jobs.append((shard, local - lo, [self._generators[i] for i in local]))
        if self._pool is None or len(jobs) < 2:
            for shard, local, generators in jobs:
                shard.reset(local, generators)
        else:  # shards reset in parallel (the compiled seeding releases the GIL)
            list(self._pool.map(lambda job: job[0].reset(job[1], job[2]), jobs))
        self._steps[indices] = 0
        self._needs_reset[indices] = False

    def _map(self, function, *per_shard):
        if self._pool is None:
            return [function(shard, *args) for shard, *args in zip(self._shards, *per_shard, strict=True)]
        return list(self._pool.map(function, self._shards, *per_shard))

    def step(self, actions):
        if self._shards[0].state is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        expected = (self.num_envs, self._core.action_width)
        if actions.shape != expected:
            raise ValueError(f"actions: expected shape {expected} (num_envs, num_users × dims per user), "
                             f"got {actions.shape}")
        resetting = self._needs_reset.copy()
        chunks = [actions[lo:hi] for lo, hi in zip(self._bounds[:-1], self._bounds[1:], strict=True)]
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and resetting.all():
            # every sub-environment only resets this step: its round would be discarded, so skip it
            for shard, chunk in zip(self._shards, chunks, strict=True):
                shard.validate_action(chunk)  # the same errors as a stepped round
            self._reset_indices(np.arange(self.num_envs))
            self._needs_reset = np.zeros(self.num_envs, dtype=bool)
            zeros = np.zeros(self.num_envs, dtype=bool)
            return self._observation(), np.zeros(self.num_envs), zeros, zeros.copy(), {}
        if self.backend == "kernel":  # ranges of each shard's environments write their rows of one set of outputs
            out = kernel.outputs(self.config, self.num_envs, self._core.observer.size)
            self._run_kernel([shard.validate_action(chunk) for shard, chunk in zip(self._shards, chunks,
                                                                                   strict=True)], out)
            obs, reward = out[0], out[1][0]
            model_truncated = np.concatenate([shard.state.round for shard in self._shards]) >= self.config.rounds
            outputs = [(None, None, None, kernel.info(out))]
        else:
            outputs = self._map(EdgeTrainingCore.step_batch, chunks)
            obs = np.concatenate([o[0] for o in outputs]) if len(outputs) > 1 else outputs[0][0]
            reward = np.concatenate([o[1] for o in outputs]).astype(np.float64)
            model_truncated = np.concatenate([o[2] for o in outputs])
        self._steps += 1
        truncated = (self._steps >= self.max_episode_steps) | model_truncated
        terminated = np.zeros(self.num_envs, dtype=bool)
        shard_infos = [o[3] for o in outputs]
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            infos = self._infos(shard_infos, ~resetting)
            if resetting.any():
                self._reset_indices(np.flatnonzero(resetting))
                reward = np.where(resetting, 0.0, reward)
                truncated = truncated & ~resetting
            self._needs_reset = truncated.copy()
            observation = self._observation() if resetting.any() else self._format(obs)
            return observation, reward, terminated, truncated, infos
        # SAME_STEP, built as SyncVectorEnv builds it: a finished sub-environment's step info goes to
        # ``final_info`` (its top-level entries would come from its reset, which has none) and its last
        # observation to ``final_obs``, an object array holding None for the other sub-environments.
        done = truncated
        infos = self._infos(shard_infos, ~done)
        if not done.any():
            return self._format(obs), reward, terminated, truncated, infos
        final_obs = self._format(obs)
        infos["final_obs"] = np.full(self.num_envs, None, dtype=object)
        for i in np.flatnonzero(done):
            infos["final_obs"][i] = final_obs[i] if self.observation_mode == "flat" else \
                {k: v[i] for k, v in final_obs.items()}
        infos["_final_obs"] = done.copy()
        infos["final_info"] = self._infos(shard_infos, done)
        infos["_final_info"] = done.copy()
        self._reset_indices(np.flatnonzero(done))
        return self._observation(), reward, terminated, truncated, infos

    def _guided_ranges(self) -> list[tuple[int, int, int]]:
        """(shard, start, stop) ranges of the shards' environments for :meth:`_run_kernel`, the big ones first:
        about half the remaining environments per worker and range, down to MIN_CHUNK, alternating shards."""
        sizes = [shard.num_envs for shard in self._shards]
        ranges, cursors, remaining, shard = [], [0] * len(sizes), self.num_envs, 0
        while remaining:
            size = max(MIN_CHUNK, remaining // (2 * self._workers))
            while cursors[shard] == sizes[shard]:
                shard = (shard + 1) % len(sizes)
            start = cursors[shard]
            stop = min(start + size, sizes[shard])
            ranges.append((shard, start, stop))
            cursors[shard] = stop
            remaining -= stop - start
            shard = (shard + 1) % len(sizes)
        return ranges

    def _run_kernel(self, actions: list[np.ndarray], out: tuple) -> None:
        """Step every environment with the round kernel: each shard's validated ``actions`` into its rows of
        ``out``. With several workers the batch is cut into ranges of decreasing size (guided scheduling,
        :meth:`_guided_ranges`), which the calling thread and the pool's threads take in turn until none are left;
        so a thread on a slower or busier core takes fewer, and the step ends with small ranges."""
        if self._pool is None or self.num_envs < 4 * MIN_CHUNK:  # small batches: handing out costs more than it saves
            for shard, action, lo, hi in zip(self._shards, actions, self._bounds[:-1], self._bounds[1:], strict=True):
                shard.run_kernel(action, kernel.rows(out, lo, hi))
            return
        tasks = [(shard, action, kernel.rows(out, lo, hi)) for shard, action, lo, hi in
                 zip(self._shards, actions, self._bounds[:-1], self._bounds[1:], strict=True)]
        ranges = self._ranges
        turn = itertools.count()  # next() on it is atomic under the GIL: each range is taken once

        def work() -> None:
            scratch = getattr(self._thread_scratch, "arrays", None)
            if scratch is None:
                scratch = self._thread_scratch.arrays = kernel.scratch(self.config)
            while (i := next(turn)) < len(ranges):
                index, start, stop = ranges[i]
                core, action, rows = tasks[index]
                core.run_kernel(action, rows, start, stop, scratch)

        helpers = [self._pool.submit(work) for _ in range(min(self._workers, len(ranges)) - 1)]
        work()
        for helper in helpers:
            helper.result()

    def _infos(self, shard_infos: list[dict], valid: np.ndarray) -> dict:
        """Gymnasium's dict of arrays with ``_key`` masks, as SyncVectorEnv builds it: rows outside
        ``valid`` are zero, and no keys at all when no sub-environment is valid."""
        if not valid.any():
            return {}

        everyone = bool(valid.all())

        def masked(parts: list[np.ndarray]) -> np.ndarray:
            # the shards' info arrays are fresh each step and not kept, so they may be handed out as they are
            value = np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
            if everyone:
                return value
            return np.where(valid.reshape(-1, *[1] * (value.ndim - 1)), value, np.zeros((), dtype=value.dtype))

        infos: dict[str, Any] = {}
        for key, first in shard_infos[0].items():
            if key == "repairs":
                infos[key] = {k: masked([i[key][k] for i in shard_infos]) for k in first}
                infos[key].update({f"_{k}": valid.copy() for k in first})
            else:
                infos[key] = masked([i[key] for i in shard_infos])
            infos[f"_{key}"] = valid.copy()
        return infos

    def _observation(self):
        return self._format(np.concatenate([shard.observe() for shard in self._shards]))

    def _format(self, flat: np.ndarray):
        if self.observation_mode == "dict":
            return self._core.observer.to_dict(flat)
        return flat

    def close_extras(self, **kwargs: Any) -> None:
        if getattr(self, "_pool", None) is not None:  # absent when __init__ raised
            self._pool.shutdown(wait=True)
            self._pool = None
