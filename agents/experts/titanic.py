"""``titanic``: a TITANIC-like baseline for the [CP25] comparison (SPEC §6.5, notes §6.2).

B. Su, W. Hu, B. Li, B. Li, "TITANIC: Towards Production Federated Learning with Large Language
Models", IEEE INFOCOM 2024. From its abstract (all that is known, notes
shared/papers/CP25-collapipe.md §6.2): it *selects a subset of clients by solving an integer
optimization problem* and *splits the LLM across several client devices with an automatic,
model-agnostic partitioner*. [CP25] compares against it. Our reconstruction, per cluster and
with no energy control and no radio optimization:

* **Client selection (integer program).** Choose devices x ∈ {0, 1}^K maximizing the
  aggregate compute Σ_k x_k·R_k subject to a participation budget Σ_k x_k ≤ S (at most
  ``max_devices``, default ⌈K/2⌉: fewer D2D hops) and memory: the selected devices hold the
  encoder at a full batch, Σ_k x_k·(layers node k holds) ≥ Υ_local. Solved with
  :func:`scipy.optimize.milp` (HiGHS). When even all K devices cannot hold it (never under a
  validated config) every device is selected.
* **Static partition.** Layers in proportion to the selected devices' compute rates (largest
  remainder), memory-capped with the overflow spilled along the chain
  (:func:`agents.heuristics.place_layers`): it depends only on the episode's hardware, so it
  does not change from round to round.
* Everything else at the scenario's rules: nearest server, p_max, equal bandwidth, the fixed
  micro-batch count (SPEC §3.2).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from scipy import optimize

from agents.base import Policy, restrict_to_controls
from agents.heuristics import place_layers
from mec_gym.config import SystemConfig
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision
from mec_gym.model.dynamics import SystemState


def select_devices(rate_flops: np.ndarray, max_layers: np.ndarray, layers: int, max_devices: int) -> np.ndarray:
    """TITANIC-like client selection for one cluster: the 0-1 program
    max Σ x_k R_k s.t. Σ x_k ≤ ``max_devices``, Σ x_k·max_layers_k ≥ ``layers``; returns x [K] bool."""
    k = rate_flops.shape[0]
    scale = rate_flops.max() if rate_flops.max() > 0 else 1.0
    constraints = [optimize.LinearConstraint(np.ones((1, k)), 0, max_devices),
                   optimize.LinearConstraint(np.minimum(max_layers, layers)[None, :].astype(float), layers, np.inf)]
    result = optimize.milp(-rate_flops / scale, constraints=constraints, integrality=np.ones(k),
                           bounds=optimize.Bounds(0, 1))
    if result.x is None:  # no subset within the budget holds the encoder: every device takes part
        return np.ones(k, dtype=bool)
    return np.round(result.x).astype(bool)


class TitanicPolicy(Policy):
    """TITANIC-like baseline (module docstring): integer-program device selection per cluster and a
    static compute-proportional partition; no energy control, radio and micro-batches at the rules.

    Args:
        max_devices: participation budget per cluster (devices that may hold layers); ``None``
            gives ⌈K/2⌉.
    """

    name: ClassVar[str] = "titanic"

    def __init__(self, max_devices: int | None = None) -> None:
        super().__init__()
        if max_devices is not None and max_devices < 1:
            raise ValueError(f"max_devices: must be >= 1 or None, got {max_devices!r}")
        self.max_devices = max_devices
        self._cache: dict[bytes, np.ndarray] = {}

    def decide(self, state: SystemState) -> Decision:
        config = self._require_config()
        return restrict_to_controls(config, self._decide(config, state))

    def _decide(self, config: SystemConfig, state: SystemState) -> Decision:
        k = config.devices_per_user
        budget = self.max_devices or math.ceil(k / 2)
        # the encoder stays on the cluster when the task head is on the server ([CP25]); else edge-heavy
        local = config.num_layers if config.head_on_server else config.split_min_local
        # the selection depends on episode constants only: solve once per hardware draw
        key = state.device_rate_flops.tobytes() + state.max_layers.tobytes() + bytes([budget])
        if key not in self._cache:
            rate = state.device_rate_flops.reshape(-1, k)
            capacity = state.max_layers.reshape(-1, k)
            chosen = np.stack([select_devices(rate[i], capacity[i], local, budget) for i in range(rate.shape[0])])
            self._cache = {key: chosen.reshape(state.device_rate_flops.shape)}
        weights = np.where(self._cache[key], state.device_rate_flops, 0.0)
        split = place_layers(config, state, np.full(state.data_queue.shape, local), weights)
        return Decision(split=split, server=decision_model.nearest_server(config, state))
