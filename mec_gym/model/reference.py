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


def best_local_layers(config: SystemConfig, state: dynamics.SystemState) -> np.ndarray:
    """Per user, the α minimizing the round's cost with every other field at its rule (SPEC §5.1).

    For each user n and each α in [split_min_local, Υ] (node 1 holds the local layers, the
    others stay at the reference split, compute shares follow the ∝-work rule) the whole
    round is evaluated; returns the best α, [B, N] (lowest α on ties).
    """
    scales = reference_scales(config)
    layers, low = config.num_layers, config.split_min_local
    base = complete(config, state, Decision())
    best_cost = np.full(state.data_queue.shape, np.inf)
    best = np.full(state.data_queue.shape, low, dtype=np.int64)
    for user in range(config.num_users):
        for alpha in range(low, layers + 1):
            split = base.split.copy()
            split[:, user, :] = 0
            split[:, user, 1] = alpha
            split[:, user, 0] = layers - alpha
            fit = split[:, user, 1] <= state.max_layers[:, user, 0]
            candidate = complete(config, state, Decision(split=split, server=base.server))
            cost = -costs.reward_terms(config, costs.evaluate(config, state, candidate), scales)["reward"]
            better = fit & (cost < best_cost[:, user] - 1e-12)
            best_cost[:, user] = np.where(better, cost, best_cost[:, user])
            best[:, user] = np.where(better, alpha, best[:, user])
    return best


def split_regimes(config: SystemConfig, samples: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Best per-user α (:func:`best_local_layers`) on ``samples`` random states with every server at
    its lightest and at its heaviest background load level. Returns {"light": [S,N], "congested": [S,N]}."""
    rng = np.random.default_rng(seed)
    state = dynamics.sample_episode(config, rng.random((samples, dynamics.episode_draw_count(config))))
    out = {}
    for name, index in (("light", 0), ("congested", len(config.server.load_levels) - 1)):
        probe = state.copy()
        probe.load_index[:] = index
        probe.load[:] = config.server.load_levels[index]
        out[name] = best_local_layers(config, probe)
    return out
