"""``EdgeTrainingEnv``: the single Gymnasium environment, a batch-of-one view of the core."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from mec_gym.config import SystemConfig
from mec_gym.envs.core import EdgeTrainingCore, StepResult, info_arrays
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState
from mec_gym.scenarios import make_config


class EdgeTrainingEnv(gym.Env):
    """Collaborative LLM fine-tuning at the mobile edge: one controller, one training round per step.

    ## Description
    N mobile users fine-tune the first layers of an LLM on their devices (a chain of K devices
    per user when K > 1, as in CollaPipe [CP25]); M edge servers train the remaining layers.
    Every round the agent decides, per user, where the model is split, which server the user
    uses, its uplink (and D2D) transmit power, its share of the server's bandwidth and compute,
    and optionally the devices' DVFS levels and the pipeline's micro-batch count. The round's
    latency, energy and model stability follow the system model of ``mec_gym.model``
    ([LZ24] Liu & Zhao 2024, [QZ24] Qian & Zhao 2024, [CP25] Chen et al. 2025).

    ## Action Space
    ``Box(-1, 1, (N·d_u,), float32)``: N blocks of d_u dims, one block per user, each holding
    the controlled fields (``config.controls``) in this order:

    | field        | dims        | meaning (decoding)                                             |
    |--------------|-------------|----------------------------------------------------------------|
    | split        | K + 1       | layer weights of nodes 1..K and the server (largest remainder) |
    | server       | M           | association scores (argmax)                                    |
    | power        | 1 (+K)      | uplink power level (then D2D levels when K > 1), linear        |
    | bandwidth    | 1           | weight of the server's band, normalized per server             |
    | compute      | 1           | weight of the server's compute, normalized per server          |
    | frequency    | K           | DVFS level of each node, linear in [u_min, 1]                  |
    | microbatches | 1           | pipeline micro-batches, 1..Q_max                               |

    Every action decodes to a feasible decision; ``info["repairs"]`` counts what decoding had
    to change (too few local layers, memory overflow, server capacity). Uncontrolled fields
    follow fixed rules (nearest server, α = split_min_local, p_max, equal bandwidth, compute ∝
    server work, full frequency, the scenario's micro-batch count).

    ## Observation Space
    ``Box(float32)`` flat vector, or a ``Dict`` with ``observation_mode="dict"``; every
    feature scaled to [-1, 1] or [0, 1]. ``env.unwrapped.observation_layout`` names each
    slice: channel gains (dB) user×server, data queues, energy-budget queues, server loads,
    users and work per server, server and device capability, device memory, p_max, sequence
    length, D2D gains (K > 1), service scores (SCR objective), round index.

    ## Rewards
    ``weighted`` objective: ``r = −(w_e·E/E_ref + w_d·D/D_ref + w_s·S/S_ref) − penalties``, with
    E the round's energy (J), D the mean/max latency (s), S the mean stability bound; ``scr``:
    ``r = Σ U_n / Σ_n (w_d·T_n/T_ref + w_e·E_n/E_ref) − penalties``. The references come from the
    scenario's reference policy on fixed states, so rewards are O(1). Penalties: energy-budget
    violation (w_budget) and the dropped-update rate (w_drop). ``info`` holds every component,
    raw and normalized.

    ## Starting State
    Users placed uniformly (or 100-500 m from a base station in ``collapipe``), hardware,
    sequence lengths, channels, queues and loads drawn from the scenario, all from ``np_random``.

    ## Episode End
    ``truncated`` after ``config.rounds`` rounds; ``terminated`` is always False (no terminal state).

    ## Arguments
    ``gym.make("mec_gym/EdgeTraining-v0", scenario="default", config=None, render_mode=None,
    observation_mode="flat", backend=None, **overrides)``: ``scenario`` names a preset of
    ``mec_gym.scenarios``; ``config`` replaces it with a ``SystemConfig``; ``overrides`` set
    any config field by dotted name (``num_users=20``, ``**{"weights.energy": 2}``), validated
    with clear errors. ``render_mode`` is ``"rgb_array"`` or ``"human"``. ``backend``:
    ``"kernel"`` steps Box actions through the compiled round kernel (:mod:`mec_gym.model.kernel`),
    ``"numpy"`` through the numpy model, ``None``/``"auto"`` the kernel where it supports the
    scenario (one device per user) unless the environment variable ``MEC_GYM_BACKEND`` says
    otherwise; the numbers are the same. Rendering and ``step_decision`` use the numpy model.

    ## Version History
    * v0: initial release. Round innovations come from per-environment xoshiro256** streams
      (:mod:`mec_gym.model.rng`); episodes of ``default`` and ``collapipe`` after their first round
      differ from the first builds', which drew them with numpy generators.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 4}

    def __init__(self, scenario: str = "default", config: SystemConfig | None = None,
                 render_mode: str | None = None, observation_mode: str = "flat", backend: str | None = None,
                 **overrides: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode: must be one of {modes} or None, got {render_mode!r}")
        if observation_mode not in ("flat", "dict"):
            raise ValueError(f"observation_mode: must be 'flat' or 'dict', got {observation_mode!r}")
        self.config = make_config(scenario, config=config, **overrides)
        self.scenario = scenario if config is None else "custom"
        self.render_mode = render_mode
        self.observation_mode = observation_mode
        if render_mode is not None:  # rendering draws the round's full metrics, which the numpy model returns
            if backend == "kernel":
                raise ValueError("backend: 'kernel' cannot render (it returns the info, not the full metrics); "
                                 "use render_mode=None or backend='numpy'")
            backend = "numpy"
        self._core = EdgeTrainingCore(self.config, 1, backend=backend)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self._core.action_width,), dtype=np.float32)
        self.observation_space = self._core.observer.space(observation_mode)
        self._last: StepResult | None = None
        self._history: list[dict[str, float]] = []
        self._figure = None

    # ------------------------------------------------------------------ properties
    @property
    def observation_layout(self) -> dict[str, tuple[slice, tuple[int, ...], float, float]]:
        """Name → (slice of the flat observation, shape, low, high)."""
        return self._core.observer.layout

    @property
    def system_state(self) -> SystemState:
        """A copy of the full true state (batch axis of 1). Privileged information for experts."""
        self._require_reset()
        return self._core.state.copy()

    @property
    def scales(self):
        """The reference normalizers E_ref, D_ref, S_ref, T_ref of this scenario."""
        return self._core.scales

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._core.reset(np.zeros(1, dtype=np.int64), [self.np_random])
        self._last = None
        self._history = []
        if self.render_mode == "human":
            self.render()
        return self._observation(), {}

    def step(self, action):
        self._require_reset()
        if self._core.state.round[0] >= self.config.rounds:
            raise RuntimeError("step: the episode is over (truncated); call reset() first")
        action = np.asarray(action)
        if action.shape != self.action_space.shape:
            per_user = self.action_space.shape[0] // self.config.num_users
            raise ValueError(f"action: expected shape {self.action_space.shape} (num_users {self.config.num_users} "
                             f"× {per_user} dims per user), got {action.shape}")
        if self._core.backend == "kernel":
            obs, reward, truncated, raw = self._core.step_batch(action.reshape(1, -1))
            self._last = None
            info = self._info(raw)
            self._history.append({"energy_j": info["energy_j"], "delay_s": info["delay_s"],
                                  "stability": info["stability"], "reward": float(reward[0])})
            return self._format(obs[0]), float(reward[0]), False, bool(truncated[0]), info
        return self._finish(self._core.step_action(action.reshape(1, -1)))

    @property
    def backend(self) -> str:
        """``"kernel"`` when Box actions step through the compiled round kernel, else ``"numpy"``
        (:mod:`mec_gym.model.kernel`; structured decisions always use the numpy model)."""
        return self._core.backend

    def step_decision(self, decision: Decision):
        """Step with a structured ``Decision`` (unbatched fields, or a batch axis of 1).

        The decision is validated (``ValueError`` naming the field and user when infeasible);
        ``None`` fields follow their rules.
        """
        self._require_reset()
        if self._core.state.round[0] >= self.config.rounds:
            raise RuntimeError("step_decision: the episode is over (truncated); call reset() first")
        batched, _ = decision_model.with_batch_axis(decision)
        return self._finish(self._core.step_decision(batched))

    def encode(self, decision: Decision) -> np.ndarray:
        """The Box action that decodes to ``decision`` in the current state (SPEC §4.2)."""
        self._require_reset()
        batched, _ = decision_model.with_batch_axis(decision)
        return decision_model.encode(self.config, self._core.state, batched)[0]

    def decode(self, action: np.ndarray) -> tuple[Decision, dict[str, int]]:
        """The decision (and repair counts) an action maps to in the current state."""
        self._require_reset()
        arr = self._core.check_action(np.asarray(action).reshape(1, -1))
        d, repairs = decision_model.decode(self.config, self._core.state, arr)
        return d.select(0), {k: int(v[0]) for k, v in repairs.items()}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render: no render_mode was set; pass render_mode='rgb_array' or 'human' to gym.make")
            return None
        self._require_reset()
        from mec_gym import render

        frame, self._figure = render.render_frame(self.config, self._core.state.select(0), self._last,
                                                  self._history, figure=self._figure)
        if self.render_mode == "human":
            render.show(self._figure)
            return None
        return frame

    def close(self):
        if self._figure is not None:
            from mec_gym import render

            render.close()
            self._figure = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_figure"] = None
        return state

    # ------------------------------------------------------------------ helpers
    def _require_reset(self) -> None:
        if self._core.state is None:
            raise RuntimeError("call reset() before stepping, encoding or reading the state")

    def _observation(self):
        return self._format(self._core.observe()[0])

    def _format(self, flat: np.ndarray):
        if self.observation_mode == "dict":
            return self._core.observer.to_dict(flat)
        return flat

    @staticmethod
    def _info(raw: dict) -> dict:
        """The single environment's info from the core's batch-of-one arrays: scalars as Python numbers."""
        info = {key: (value[0] if value.ndim > 1 else value[0].item()) for key, value in raw.items()
                if key != "repairs"}
        info["repairs"] = {key: int(value[0]) for key, value in raw["repairs"].items()}
        return info

    def _finish(self, result: StepResult):
        self._last = result
        info = self._info(info_arrays(result, self._core.state))
        self._history.append({"energy_j": info["energy_j"], "delay_s": info["delay_s"],
                              "stability": info["stability"], "reward": float(result.reward[0])})
        if self.render_mode == "human":
            self.render()
        return self._observation(), float(result.reward[0]), False, bool(result.truncated[0]), info
