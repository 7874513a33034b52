"""The batched environment core shared by the single and the vector environments (SPEC §3, §4).

``EdgeTrainingCore`` holds a batch of B system states, their random streams, the reference
normalizers and the observation builder; ``EdgeTrainingEnv`` is its B = 1 view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mec_gym.config import SystemConfig
from mec_gym.envs.observation import ObservationBuilder
from mec_gym.model import costs, decision, dynamics, reference


@dataclass
class StepResult:
    """Per-environment outputs of one batched round."""

    reward: np.ndarray  # [B]
    truncated: np.ndarray  # [B] bool
    metrics: costs.RoundMetrics
    terms: dict[str, np.ndarray]
    repairs: dict[str, np.ndarray]
    decision: decision.Decision


class EdgeTrainingCore:
    """B independent systems stepped together with one vectorized model call per round."""

    def __init__(self, config: SystemConfig, num_envs: int) -> None:
        self.config = config
        self.num_envs = num_envs
        self.scales = reference.reference_scales(config)
        self.observer = ObservationBuilder(config)
        self.randomness = dynamics.RoundRandomness(config, num_envs)
        self.state: dynamics.SystemState | None = None
        self.action_width = config.num_users * decision.action_dim_per_user(config)

    def reset(self, indices: np.ndarray, generators: list[np.random.Generator]) -> None:
        """Start new episodes for ``indices``, each from its environment's ``np_random``.

        Each generator spawns an episode generator (initial state) and a round generator
        (innovations), so an environment's trajectory depends only on its own generator.
        """
        children = [g.spawn(2) for g in generators]
        uniforms = dynamics.draw_episode_uniforms(self.config, [c[0] for c in children])
        fresh = dynamics.sample_episode(self.config, uniforms)
        everyone = len(indices) == self.num_envs and bool((np.diff(indices) > 0).all())  # 0..B-1 in order
        if self.state is None or everyone:
            assert everyone, "the first reset must cover every environment"
            self.state = fresh
        else:
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[indices] = True
            order = np.argsort(indices)  # boolean assignment fills rows in ascending index order
            self.state.assign(mask, fresh.select(order) if len(order) > 1 else fresh)
        for index, child in zip(indices, children, strict=True):
            self.randomness.start(int(index), child[1])

    def check_action(self, action: np.ndarray) -> np.ndarray:
        """Validate a batch of flat actions [B, N·d_u]: shape and finiteness (raises ValueError)."""
        arr = np.asarray(action)
        expected = (self.num_envs, self.action_width)
        if arr.shape != expected:
            if arr.size == self.num_envs * self.action_width and arr.ndim == 1 and self.num_envs == 1:
                arr = arr.reshape(expected)
            else:
                raise ValueError(f"action: expected shape {expected[1:] if self.num_envs == 1 else expected} "
                                 f"(num_users × {self.action_width // self.config.num_users} dims per user), "
                                 f"got {arr.shape}")
        # one sum is finite when every entry is (a sum that overflows from finite values is checked entrywise)
        with np.errstate(over="ignore"):
            total = arr.sum()
        if not np.isfinite(total) and not np.all(np.isfinite(arr)):
            raise ValueError("action: contains NaN or infinite values; actions must be finite and lie in [-1, 1]")
        clipped = arr.astype(np.float64)
        return np.clip(clipped, -1.0, 1.0, out=clipped)

    def step_action(self, action: np.ndarray) -> StepResult:
        """Decode a batch of Box actions (with repairs) and advance one round."""
        d, repairs = decision.decode(self.config, self.state, self.check_action(action))
        return self._advance(d, repairs)

    def step_decision(self, d: decision.Decision) -> StepResult:
        """Validate a batch of structured decisions (raises ValueError), fill rules, advance one round."""
        decision.validate(self.config, self.state, d)
        complete = decision.complete(self.config, self.state, d)
        zeros = np.zeros(self.num_envs, dtype=np.int64)
        return self._advance(complete, {"split_min_local": zeros, "memory": zeros.copy(), "capacity": zeros.copy()})

    def _advance(self, d: decision.Decision, repairs: dict[str, np.ndarray]) -> StepResult:
        config, state = self.config, self.state
        metrics = costs.evaluate(config, state, d)
        terms = costs.reward_terms(config, metrics, self.scales)
        normals, uniforms = self.randomness.current(state.round)
        trained = np.where(metrics.dropped, 0.0, metrics.sequences * config.workload.local_iterations)
        dynamics.transition(config, state, normals, uniforms, trained, metrics.energy_device_j, d.server,
                            metrics.server_work_flops)
        # a finished episode (round = T) never reads another innovation: its next step is ignored and reset
        exhausted = np.flatnonzero((state.round % self.randomness.block == 0) & (state.round < config.rounds))
        if len(exhausted):
            self.randomness.refill(exhausted)
        truncated = state.round >= config.rounds
        return StepResult(reward=terms["reward"], truncated=truncated, metrics=metrics, terms=terms,
                          repairs=repairs, decision=d)

    def observe(self) -> np.ndarray:
        return self.observer.flat(self.state)

    def step_batch(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step with Box actions and return (observations, rewards, model-truncations, info arrays)."""
        result = self.step_action(actions)
        return self.observe(), result.reward, result.truncated, info_arrays(result, self.state)


def info_arrays(result: StepResult, state: dynamics.SystemState) -> dict:
    """Per-round raw and normalized metrics as plain numpy arrays with a leading batch axis (SPEC §4.2)."""
    m, t = result.metrics, result.terms
    return {
        "energy_j": m.energy_j,
        "delay_s": m.delay_s,
        "stability": m.stability_mean,
        "scr": t["scr"],
        "energy_norm": t["energy_norm"],
        "delay_norm": t["delay_norm"],
        "stability_norm": t["stability_norm"],
        "budget_violation": t["budget_violation"],
        "drop_rate": t["drop_rate"],
        "drops": m.dropped.sum(axis=-1),
        "latency_s": m.latency_s,
        "energy_j_user": m.energy_j_user,
        "energy_device_j": m.energy_device_j,
        "energy_server_j": m.energy_server_j,
        "local_layers": result.decision.split[..., 1:].sum(axis=-1),
        "server": result.decision.server,
        "sequences": m.sequences,
        "peak_memory_bytes": m.memory_bytes.max(axis=(-1, -2)),
        "data_queue": state.data_queue.copy(),
        "energy_queue": state.energy_queue.copy(),
        "repairs": result.repairs,
    }
