"""One policy interface for experts, heuristics and RL models (SPEC §6.1).

A :class:`Policy` is reset once per episode with the environment it will act in, then asked
once per round for a decision. Two kinds exist, and the benchmark treats them alike:

* **state-based** policies (heuristics, optimization experts, the oracle) read the full true
  state — privileged information, ``env.unwrapped.system_state`` — and return a structured
  :class:`~mec_gym.model.decision.Decision` from :meth:`Policy.decide`. They step the
  environment with ``env.unwrapped.step_decision(decision)``; their :meth:`Policy.act`
  returns ``env.unwrapped.encode(decision)``, the Box action that decodes to the same
  decision, so they also drive any code written for RL agents.
* **observation-based** policies (RL models, uniform random actions) map the observation to
  a Box action in :meth:`Policy.act` and step with ``env.step(action)``.

Every decision a state-based policy returns respects the scenario's ``controls``: fields the
agent does not control are ``None``, so the environment applies their documented rules
(SPEC §3.2) exactly as it does for RL agents (:func:`restrict_to_controls`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from mec_gym.config import SystemConfig
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState

# Decision fields governed by each control name: the D2D powers of a chain are part of "power".
_CONTROLLED_FIELDS = {
    "split": ("split",),
    "server": ("server",),
    "power": ("power", "d2d_power"),
    "bandwidth": ("bandwidth",),
    "compute": ("compute",),
    "frequency": ("frequency",),
    "microbatches": ("microbatches",),
}


def restrict_to_controls(config: SystemConfig, decision: Decision) -> Decision:
    """A copy of ``decision`` with every field the scenario does not control set to ``None``.

    The environment then fills those fields by their rules (SPEC §3.2), so a policy can never
    use a lever the RL agent does not have. Controlled fields are kept as they are.
    """
    allowed = {field for name in config.controls for field in _CONTROLLED_FIELDS[name]}
    return dataclasses.replace(decision, **{f.name: None for f in dataclasses.fields(decision)
                                            if f.name not in allowed})


class Policy:
    """A per-round controller: ``reset(env)`` once per episode, then ``act`` or ``decide`` every round.

    Class attributes:
        name: the registry name (``"greedy"``, ``"oracle"``, ...), used in benchmark tables.
        uses_state: ``True`` for policies that read the full state and return a ``Decision``
            (:meth:`decide`), ``False`` for policies that map observations to Box actions
            (:meth:`act`). The benchmark steps the former with ``step_decision`` and the latter
            with ``env.step``.

    ``stats`` collects per-policy counters (solve times, iterations, fallbacks) that the
    benchmark reports; :meth:`reset` clears it.
    """

    name: ClassVar[str] = "policy"
    uses_state: ClassVar[bool] = True

    def __init__(self) -> None:
        self.env: Any = None
        self.config: SystemConfig | None = None
        self.stats: dict[str, float] = {}

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Bind the policy to ``env`` (a Gymnasium env or its wrapper) for a new episode.

        ``seed`` seeds the policy's own randomness (if any) so that benchmark runs repeat;
        deterministic policies ignore it.
        """
        self.env = env
        self.config = env.unwrapped.config
        self.stats = {}

    def bind(self, config: SystemConfig, seed: int | None = None) -> None:
        """Use the policy on states of ``config`` without an environment (tests, oracle gaps).

        Only :meth:`decide` is available afterwards; :meth:`act` needs an environment.
        """
        self.env = None
        self.config = config
        self.stats = {}

    @property
    def can_decide(self) -> bool:
        """Whether :meth:`decide` works without an environment (state-based policies, ``random``)."""
        return type(self).decide is not Policy.decide

    def decide(self, state: SystemState) -> Decision:
        """The decision for every system in ``state`` (batch axis B kept: fields are [B, N, ...]).

        Uncontrolled fields are ``None``. Observation-based policies do not implement it.
        """
        raise NotImplementedError(f"policy {self.name!r} acts on observations only; use act(obs, info)")

    def act(self, obs: Any, info: dict | None = None) -> np.ndarray:
        """The Box action for the current round.

        State-based policies encode their decision for the environment's current state, so
        ``env.step(policy.act(obs, info))`` applies the same decision as ``step_decision``.
        """
        if self.env is None:
            raise RuntimeError(f"policy {self.name!r}: call reset(env) before act()")
        unwrapped = self.env.unwrapped
        decision = self.decide(unwrapped.system_state)
        return unwrapped.encode(decision)

    def _require_config(self) -> SystemConfig:
        if self.config is None:
            raise RuntimeError(f"policy {self.name!r}: call reset(env) or bind(config) before deciding")
        return self.config


class ModelPolicy(Policy):
    """Wraps any object with an SB3-style ``predict(obs, deterministic=True) -> (action, state)``.

    RL models (stable-baselines3 PPO/SAC, or anything with the same method) become policies
    that the benchmark runs exactly like the experts, through ``env.step``.
    """

    uses_state = False

    def __init__(self, model: Any, name: str = "model", deterministic: bool = True) -> None:
        super().__init__()
        if not callable(getattr(model, "predict", None)):
            raise ValueError(f"model: expected an object with a predict(obs, deterministic=...) method, "
                             f"got {type(model).__name__}")
        self.model = model
        self.name = name  # instance attribute: the benchmark labels rows by it
        self.deterministic = deterministic

    def act(self, obs: Any, info: dict | None = None) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return np.asarray(action, dtype=np.float32)


PolicyFactory = Callable[[], Policy]
