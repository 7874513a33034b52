"""Reference policy and the normalizers E_ref, D_ref, S_ref, T_ref it defines (SPEC §3.4).

The reference policy is the rule of every field (:func:`mec_gym.model.decision.complete` with
nothing set): nearest server, α = split_min_local, p = p_max, equal shares. It is evaluated
on ``config.reference_samples`` initial states drawn from a generator seeded with
``config.reference_seed`` — deterministic for a given config, independent of any episode seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mec_gym.config import SystemConfig
from mec_gym.model import costs, dynamics
from mec_gym.model.decision import Decision, complete


def reference_states(config: SystemConfig) -> dynamics.SystemState:
    """The fixed sample of states the normalizers are computed on."""
    rng = np.random.default_rng(config.reference_seed)
    uniforms = rng.random((config.reference_samples, dynamics.episode_draw_count(config)))
    return dynamics.sample_episode(config, uniforms)


@lru_cache(maxsize=64)
def reference_scales(config: SystemConfig) -> costs.Scales:
    """Mean totals of the reference policy over the reference states (cached per config)."""
    state = reference_states(config)
    metrics = costs.evaluate(config, state, complete(config, state, Decision()))

    def positive(x: np.ndarray) -> float:
        value = float(np.mean(x))
        return value if value > 0 else 1.0

    return costs.Scales(
        energy_j=positive(metrics.energy_j),
        delay_s=positive(metrics.delay_s),
        stability=positive(metrics.stability_mean),
        latency_s=positive(metrics.latency_s),
        energy_j_user=positive(metrics.energy_j_user),
    )
