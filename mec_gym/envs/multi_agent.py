"""``EdgeTrainingParallelEnv``: the multi-agent (PettingZoo ``ParallelEnv``) view of the same system.

One agent per user (``user_0 … user_{N-1}``), all acting at once every round. It wraps the single
environment :class:`~mec_gym.envs.edge_training.EdgeTrainingEnv` (and so the batched core and the
system model) without re-implementing any of it: the agents' actions are concatenated into the
central Box action, which the single env decodes and steps.

* **Action** of agent n: ``Box(-1, 1, (d_u,), float32)``, its own block of the central action, in the
  single env's per-user layout (split weights, server scores, power level(s), bandwidth and compute
  weights, frequency levels, micro-batches — only the scenario's controlled fields). Bandwidth and
  compute weights are normalized per server across the agents that chose it, as in the single env.
* **Observation** of agent n: its local view, the rows of the central observation that belong to it
  plus the servers' shared features, in this order (``local_layout`` names the slices):
  its channel gains to every server, its data and energy queues, the servers' loads, users and work,
  the servers' capability, its devices' capability and memory, its p_max and sequence length, its D2D
  gains (K > 1), its service scores (SCR objective), the round index. Every agent has the same space
  (parameter sharing works); features are scaled as in :mod:`mec_gym.envs.observation`.
* **State** (``state()``, ``state_space``): the single env's full flat observation, for centralized critics.
* **Reward**: ``reward_mode="team"`` (default) gives every agent the single env's reward (the shared team
  objective); ``reward_mode="user"`` gives agent n its own share,
  :func:`mec_gym.model.costs.user_reward_terms` (its energy, latency, stability or SCR and its penalties).
* **Episode end**: every agent is truncated after ``config.rounds`` rounds (no terminations), and
  ``agents`` becomes empty.
* ``infos[agent]``: the team reward, the agent's own reward, its latency (s), energy (J), server, local
  layers and whether its update was dropped; the single env's full info of the round (team energy,
  delay, stability, SCR, decoding repairs) is ``team_info()``.

Usage::

    from mec_gym.envs.multi_agent import parallel_env
    env = parallel_env(scenario="liu2024", reward_mode="team")
    observations, infos = env.reset(seed=0)
    actions = {agent: env.action_space(agent).sample() for agent in env.agents}
    observations, rewards, terminations, truncations, infos = env.step(actions)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from mec_gym.config import SystemConfig
from mec_gym.envs.edge_training import EdgeTrainingEnv
from mec_gym.model import costs
from mec_gym.model.decision import action_dim_per_user

USER_FIELDS = ("channel_gain_db", "data_queue", "energy_queue", "device_capability", "device_memory", "power_max",
               "sequence_length", "d2d_gain_db", "service_q0", "service_q1")
"""Observation fields with a leading user axis: agent n sees only its own row of each."""

REWARD_MODES = ("team", "user")


class EdgeTrainingParallelEnv(ParallelEnv):
    """PettingZoo ``ParallelEnv``: one agent per user over the single environment (see the module docstring).

    Args:
        scenario: a preset of :mod:`mec_gym.scenarios`; ``config`` replaces it with a ``SystemConfig``.
        reward_mode: ``"team"`` (every agent gets the shared reward) or ``"user"`` (its own share).
        render_mode: ``None``, ``"rgb_array"`` or ``"human"`` (the single env's rendering).
        **overrides: scenario parameters by dotted name, as for ``gym.make``.
    """

    metadata = {"name": "mec_gym_edge_training_v0", "render_modes": ["human", "rgb_array"], "render_fps": 4,
                "is_parallelizable": True}

    def __init__(self, scenario: str = "default", config: SystemConfig | None = None, reward_mode: str = "team",
                 render_mode: str | None = None, **overrides: Any) -> None:
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode: must be one of {REWARD_MODES}, got {reward_mode!r}")
        # the numpy model: the per-user rewards need each user's metrics, which the round kernel does not return
        self.env = EdgeTrainingEnv(scenario=scenario, config=config, render_mode=render_mode, backend="numpy",
                                   **overrides)
        self.config = self.env.config
        self.scenario = self.env.scenario
        self.reward_mode = reward_mode
        self.render_mode = render_mode
        n = self.config.num_users
        self.possible_agents = [f"user_{i}" for i in range(n)]
        self.agents: list[str] = []
        self._index, self.local_layout = _local_indices(self.env.observation_layout, n)
        low, high = self.env.observation_space.low, self.env.observation_space.high
        self._observation_space = spaces.Box(low[self._index[0]], high[self._index[0]], dtype=np.float32)
        self._action_space = spaces.Box(-1.0, 1.0, (action_dim_per_user(self.config),), dtype=np.float32)
        self.state_space = self.env.observation_space
        self.observation_spaces = {agent: self._observation_space for agent in self.possible_agents}
        self.action_spaces = {agent: self._action_space for agent in self.possible_agents}
        self._flat: np.ndarray | None = None
        self._team_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ spaces
    def observation_space(self, agent: str) -> spaces.Box:
        """The agent's local observation space (the same object for every agent)."""
        self._check_agent(agent)
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Box:
        """The agent's action space: its per-user block of the central action (the same for every agent)."""
        self._check_agent(agent)
        return self._action_space

    # ------------------------------------------------------------------ API
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Reset the underlying single env (same seeding: ``seed`` gives the single env's episode)."""
        flat, info = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        self._flat = flat
        self._team_info = dict(info)
        return self._observations(), {agent: {} for agent in self.agents}

    def step(self, actions: dict[str, np.ndarray]):
        """Concatenate the agents' blocks in agent order into the central action and step the single env."""
        if not self.agents:
            raise RuntimeError("step: no live agents (the episode is over or reset() was not called); call reset()")
        missing = [agent for agent in self.agents if agent not in actions]
        if missing:
            raise ValueError(f"actions: missing an action for {missing}; give one per live agent ({self.agents})")
        width = self._action_space.shape[0]
        blocks = []
        for agent in self.possible_agents:
            block = np.asarray(actions[agent], dtype=np.float32)
            if block.shape != (width,):
                raise ValueError(f"actions[{agent!r}]: expected shape ({width},) (its per-user block), "
                                 f"got {block.shape}")
            blocks.append(block)
        flat, team_reward, terminated, truncated, info = self.env.step(np.concatenate(blocks))
        self._flat, self._team_info = flat, info
        last = self.env._last  # the core's StepResult of this round (metrics [1, N])
        user = costs.user_reward_terms(self.config, last.metrics, self.env.scales)["reward"][0]
        agents = self.agents
        if self.reward_mode == "team":
            rewards = {agent: float(team_reward) for agent in agents}
        else:
            rewards = {agent: float(user[i]) for i, agent in enumerate(agents)}
        infos = {agent: {"team_reward": float(team_reward), "user_reward": float(user[i]),
                         "latency_s": float(info["latency_s"][i]), "energy_j": float(info["energy_j_user"][i]),
                         "server": int(info["server"][i]), "local_layers": int(info["local_layers"][i]),
                         "dropped": bool(last.metrics.dropped[0, i])}
                 for i, agent in enumerate(agents)}
        observations = self._observations()
        terminations = {agent: bool(terminated) for agent in agents}
        truncations = {agent: bool(truncated) for agent in agents}
        if terminated or truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """The global observation (the single env's flat observation) for centralized critics."""
        if self._flat is None:
            raise RuntimeError("state: call reset() first")
        return self._flat.copy()

    def team_info(self) -> dict[str, Any]:
        """The single env's info of the last round (team metrics: energy, delay, stability, SCR, repairs)."""
        return self._team_info

    def render(self):
        """The single env's rendering (topology, splits, metrics)."""
        return self.env.render()

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------------ helpers
    def _observations(self) -> dict[str, np.ndarray]:
        local = self._flat[self._index]  # [N, local size]
        return {agent: local[i] for i, agent in enumerate(self.possible_agents) if agent in self.agents}

    def _check_agent(self, agent: str) -> None:
        if agent not in self.observation_spaces:
            last = len(self.possible_agents) - 1
            raise ValueError(f"agent: unknown agent {agent!r}; valid names: user_0 … user_{last}")


def _local_indices(layout: dict[str, tuple[slice, tuple[int, ...], float, float]],
                   num_users: int) -> tuple[np.ndarray, dict[str, tuple[slice, tuple[int, ...]]]]:
    """Index matrix [N, local size] into the central flat observation, and the local layout."""
    rows: list[list[np.ndarray]] = [[] for _ in range(num_users)]
    local: dict[str, tuple[slice, tuple[int, ...]]] = {}
    start = 0
    for name, (sl, shape, _, _) in layout.items():
        if name in USER_FIELDS:
            if shape[0] != num_users:
                raise AssertionError(f"observation field {name} has no user axis: {shape}")
            width = int(np.prod(shape[1:]))
            for n in range(num_users):
                rows[n].append(sl.start + n * width + np.arange(width))
            local[name] = (slice(start, start + width), tuple(shape[1:]) or (1,))
        else:
            width = sl.stop - sl.start
            for n in range(num_users):
                rows[n].append(np.arange(sl.start, sl.stop))
            local[name] = (slice(start, start + width), shape)
        start += width
    return np.stack([np.concatenate(r) for r in rows]), local


def parallel_env(scenario: str = "default", **kwargs: Any) -> EdgeTrainingParallelEnv:
    """The multi-agent env of ``scenario`` (keyword arguments as :class:`EdgeTrainingParallelEnv`)."""
    return EdgeTrainingParallelEnv(scenario=scenario, **kwargs)
