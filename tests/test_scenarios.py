"""Scenario presets (SPEC §5): paper values, overrides, and that the default's decision matters."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import mec_gym
from mec_gym import make_config
from mec_gym.model import reference


def test_presets_carry_the_papers_settings() -> None:
    liu = make_config("liu2024")
    assert (liu.num_users, liu.num_servers, liu.num_layers, liu.llm.hidden) == (50, 10, 32, 1024)
    assert liu.workload.flops_model == "lz24" and liu.workload.batch_max == 512
    assert liu.workload.seq_len == (512, 1024) and liu.radio.noise_psd_dbm_hz == -134.0
    assert liu.device.clock_hz == (0.5e9, 1.0e9) and liu.server.cores == (2560, 5120)
    qian = make_config("qian2024")
    assert (qian.num_users, qian.num_servers, qian.objective, qian.server.capacity) == (10, 2, "scr", 5)
    pipe = make_config("collapipe")
    assert (pipe.num_users, pipe.devices_per_user, pipe.model, pipe.delay_aggregate) == (4, 4, "bert-base", "max")
    assert pipe.workload.max_microbatches == 16 and pipe.device.memory_choices_gb == (2.0, 4.0, 8.0)
    default = make_config("default")
    assert (default.num_users, default.num_servers, default.num_layers, default.workload.microbatches) == (12, 3, 16, 4)


def test_overrides_by_common_names_reach_the_env() -> None:
    env = gym.make("mec_gym/EdgeTraining-v0", num_users=5, rounds=3, **{"weights.energy": 2.0},
                   controls=["split", "server"])
    config = env.unwrapped.config
    assert (config.num_users, config.rounds, config.weights.energy) == (5, 3, 2.0)
    assert env.action_space.shape == (5 * (2 + config.num_servers),)


def test_unknown_scenario_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid names"):
        make_config("nope")


@pytest.mark.parametrize("name", sorted(mec_gym.SCENARIOS))
def test_reference_scales_are_deterministic_and_positive(name: str) -> None:
    config = make_config(name)
    scales = reference.reference_scales(config)
    reference.reference_scales.cache_clear()
    assert reference.reference_scales(config) == scales
    assert min(scales.energy_j, scales.delay_s, scales.stability, scales.latency_s) > 0


def test_default_best_split_depends_on_server_load() -> None:
    """SPEC §5.1: searched per user with the other fields at their rules, the best split is edge-heavy
    (α = split_min_local) in lightly loaded states and moves layers onto the device (interior α)
    when servers are congested. Measured figures are in the README (`mec-gym inspect split`)."""
    config = make_config("default")
    regimes = reference.split_regimes(config, samples=16, seed=0)
    low, top = config.split_min_local, config.num_layers
    light, congested = regimes["light"], regimes["congested"]
    interior_light = ((light > low) & (light < top)).mean()
    interior_congested = ((congested > low) & (congested < top)).mean()
    assert (light == low).mean() >= 0.95
    assert interior_light <= 0.01
    assert interior_congested >= 0.05
    assert congested.mean() > light.mean()


def test_interior_split_when_server_share_is_below_the_phone_rate() -> None:
    """The mechanism behind the regime change: a user whose server share is well below its phone's
    rate is best served by an interior split; with a share far above it, by the edge-heavy one."""
    config = make_config("default")
    rng = np.random.default_rng(0)
    from mec_gym.model import decision, dynamics

    state = dynamics.sample_episode(config, rng.random((16, dynamics.episode_draw_count(config))))
    state.load_index[:] = len(config.server.load_levels) - 1
    state.load[:] = config.server.load_levels[-1]
    best = reference.best_local_layers(config, state)
    rule = decision.complete(config, state, decision.Decision())
    peak = np.take_along_axis(state.server_peak_flops, rule.server, -1) * config.server.utilization
    share = peak * (1 - state.load[0, 0]) * rule.compute
    ratio = share / state.device_rate_flops[..., 0]
    slow = ratio < 0.5
    fast = ratio > 1.5
    assert slow.sum() >= 5 and fast.sum() >= 5
    assert ((best[slow] > config.split_min_local) & (best[slow] < config.num_layers)).mean() >= 0.5
    assert (best[fast] == config.split_min_local).mean() >= 0.9
