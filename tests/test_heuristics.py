"""Heuristic baselines: feasibility on every scenario, controls respected, the Box-action path,
and what each heuristic claims to model (SPEC §6.1, §6.2)."""

from __future__ import annotations

import copy
import dataclasses
import zlib

import numpy as np
import pytest

import mec_gym
from agents.base import ModelPolicy, Policy, restrict_to_controls
from agents.experts.oracle import tiny_config
from agents.heuristics import HEURISTICS, place_layers
from mec_gym.config import CONTROL_FIELDS
from mec_gym.model import costs, dynamics, reference
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision

# every preset, the oracle's tiny instance, and a chain of 2 devices with every lever controlled
CONFIGS = {
    **{name: mec_gym.make_config(name) for name in mec_gym.SCENARIOS},
    "tiny": tiny_config(),
    "all-controls-K2": mec_gym.make_config("default", devices_per_user=2, controls=list(CONTROL_FIELDS),
                                           num_users=6),
}


def random_states(config, count: int, seed: int) -> dynamics.SystemState:
    """``count`` random states: initial draws, then a few rounds of dynamics so queues and loads move."""
    rng = np.random.default_rng(seed)
    state = dynamics.sample_episode(config, rng.random((count, dynamics.episode_draw_count(config))))
    # empty some queues: users with nothing to train must still get feasible decisions
    state.data_queue[:, 0] = np.where(rng.random(count) < 0.3, 0.0, state.data_queue[:, 0])
    return state


@pytest.mark.parametrize("scenario", list(CONFIGS))
@pytest.mark.parametrize("name", list(HEURISTICS))
def test_every_heuristic_is_feasible_on_100_random_states(scenario: str, name: str) -> None:
    config = CONFIGS[scenario]
    state = random_states(config, 100, seed=zlib.crc32(f"{scenario}/{name}".encode()))
    policy = HEURISTICS[name]()
    policy.bind(config, seed=3)
    choice = policy.decide(state)
    decision_model.validate(config, state, choice)  # raises ValueError naming field and user if infeasible
    full = decision_model.complete(config, state, choice)
    assert full.split.shape == (100, config.num_users, config.devices_per_user + 1)
    assert np.all(full.split.sum(axis=-1) == config.num_layers)
    assert np.all(full.split[..., 1:] <= state.max_layers)
    assert np.all(full.split[..., 1:].sum(axis=-1) >= config.split_min_local)
    metrics = costs.evaluate(config, state, full)
    assert np.all(np.isfinite(metrics.latency_s)) and np.all(metrics.energy_j >= 0)


@pytest.mark.parametrize("scenario", list(CONFIGS))
def test_uncontrolled_fields_are_left_to_the_rules(scenario: str) -> None:
    config = CONFIGS[scenario]
    state = random_states(config, 4, seed=1)
    governed = {"power": ("power", "d2d_power")}
    for name, cls in HEURISTICS.items():
        policy = cls()
        policy.bind(config, seed=0)
        choice = policy.decide(state)
        for control in CONTROL_FIELDS:
            if control in config.controls:
                continue
            for field in governed.get(control, (control,)):
                assert getattr(choice, field) is None, f"{name} sets uncontrolled {field} in {scenario}"


def test_restrict_to_controls_keeps_only_controlled_fields() -> None:
    config = mec_gym.make_config("default")  # controls split, server, power, bandwidth, compute
    full = Decision(split=1, server=1, power=1, d2d_power=1, bandwidth=1, compute=1, frequency=1, microbatches=1)
    kept = restrict_to_controls(config, full)
    assert {f.name for f in dataclasses.fields(kept) if getattr(kept, f.name) is not None} == {
        "split", "server", "power", "d2d_power", "bandwidth", "compute"}


@pytest.mark.parametrize("name", [n for n in HEURISTICS if n != "random"])
def test_act_encodes_the_decision_so_env_step_equals_step_decision(name: str) -> None:
    env = mec_gym.EdgeTrainingEnv(scenario="collapipe")
    env.reset(seed=4)
    twin = copy.deepcopy(env)
    policy = HEURISTICS[name]()
    policy.reset(env, seed=0)
    for _ in range(3):
        choice = policy.decide(env.unwrapped.system_state)
        action = policy.act(None, None)
        _, reward_action, _, _, info = env.step(action)
        _, reward_decision, _, _, _ = twin.unwrapped.step_decision(choice)
        assert info["repairs"] == {"split_min_local": 0, "memory": 0, "capacity": 0}
        assert reward_action == pytest.approx(reward_decision, rel=1e-5)


def test_random_policy_repeats_with_its_seed_and_acts_in_the_box() -> None:
    config = CONFIGS["default"]
    state = random_states(config, 2, seed=0)
    first, second, other = HEURISTICS["random"](), HEURISTICS["random"](), HEURISTICS["random"]()
    first.bind(config, seed=7)
    second.bind(config, seed=7)
    other.bind(config, seed=8)
    assert np.array_equal(first.decide(state).split, second.decide(state).split)
    assert not np.array_equal(first.decide(state).power, other.decide(state).power)
    env = mec_gym.EdgeTrainingEnv()
    env.reset(seed=0)
    first.reset(env, seed=1)
    action = first.act(None)
    assert env.action_space.contains(action)


def test_greedy_picks_the_best_rate_server_and_spreads_a_crowd() -> None:
    config = mec_gym.make_config("default", num_users=1)
    state = random_states(config, 50, seed=2)
    policy = HEURISTICS["greedy"]()
    policy.bind(config)
    assert np.array_equal(policy.decide(state).server[:, 0], state.gain[:, 0].argmax(axis=-1))
    # identical users: equal-share rates make the second user avoid the first one's server
    crowd = mec_gym.make_config("default", num_users=2, num_servers=2)
    state = random_states(crowd, 1, seed=3)
    state.gain[:] = [[1e-10, 0.5e-10], [1e-10, 0.5e-10]]
    policy.bind(crowd)
    assert sorted(policy.decide(state).server[0].tolist()) == [0, 1]


def test_greedy_respects_server_capacity() -> None:
    config = mec_gym.make_config("qian2024")  # capacity 5 users per server
    state = random_states(config, 30, seed=5)
    state.gain[..., 0] *= 1e3  # everyone prefers server 0
    policy = HEURISTICS["greedy"]()
    policy.bind(config)
    server = policy.decide(state).server
    assert np.all((server == 0).sum(axis=-1) == config.server.capacity)


def test_split_of_each_heuristic_is_what_it_models() -> None:
    config = mec_gym.make_config("default", **{"device.memory_gb": (1000.0, 1000.0)})  # memory never binds
    state = random_states(config, 5, seed=6)
    layers = config.num_layers

    def local(name: str) -> np.ndarray:
        policy = HEURISTICS[name]()
        policy.bind(config)
        return policy.decide(state).split[..., 1:].sum(axis=-1)

    assert np.all(local("local_only") == layers)
    assert np.all(local("edge_only") == config.split_min_local)
    assert np.all(local("equal_share") == layers // 2)
    assert np.all(local("uniform_pipeline") == layers // 2)  # K = 1: device and server are the two stages
    policy = HEURISTICS["equal_share"]()
    policy.bind(config)
    choice = policy.decide(state)
    np.testing.assert_allclose(choice.power, state.power_max_w)
    for field in ("bandwidth", "compute"):
        shares = getattr(choice, field)
        for b in range(5):
            for m in range(config.num_servers):
                users = (choice.server[b] == m) & ((choice.split[b, :, 0] > 0) if field == "compute" else True)
                if users.any():
                    np.testing.assert_allclose(shares[b, users], 1.0 / users.sum())


def test_pipeline_segments_are_equal_and_vanilla_fl_uses_one_device() -> None:
    config = mec_gym.make_config("collapipe", **{"device.memory_choices_gb": (1000.0,)})
    state = random_states(config, 5, seed=8)
    pipeline, vanilla = HEURISTICS["uniform_pipeline"](), HEURISTICS["vanilla_fl"]()
    pipeline.bind(config)
    vanilla.bind(config)
    segments = pipeline.decide(state).split
    assert np.all(segments[..., 0] == 0)  # head on the server: the encoder stays on the cluster
    assert np.all(segments[..., 1:] == config.num_layers // config.devices_per_user)
    whole = vanilla.decide(state)
    assert np.all(whole.split[..., 1] == config.num_layers) and np.all(whole.microbatches == 1)


def test_place_layers_respects_memory_and_minimum() -> None:
    config = mec_gym.make_config("collapipe")  # 2-8 GB devices: BERT layers do not all fit on one
    state = random_states(config, 200, seed=9)
    rng = np.random.default_rng(0)
    local = rng.integers(0, config.num_layers + 1, size=(200, config.num_users))
    weights = rng.random((200, config.num_users, config.devices_per_user))
    for spill in (True, False):
        split = place_layers(config, state, local, weights, spill_to_devices=spill)
        assert np.all(split.sum(axis=-1) == config.num_layers)
        assert np.all(split[..., 1:] <= state.max_layers)
        assert np.all(split[..., 1:].sum(axis=-1) >= config.split_min_local)
        assert np.all(split >= 0)


def test_policy_interface_errors_are_clear() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        HEURISTICS["greedy"]().decide(random_states(CONFIGS["default"], 1, 0))
    with pytest.raises(NotImplementedError, match="observations"):
        Policy().decide(random_states(CONFIGS["default"], 1, 0))
    with pytest.raises(ValueError, match="predict"):
        ModelPolicy(object())


def test_every_heuristic_documents_its_source() -> None:
    for cls in HEURISTICS.values():
        assert cls.__doc__ and len(cls.__doc__.split()) > 15


def test_heuristic_costs_are_ordered_sensibly_on_default() -> None:
    """Sanity of the baselines' meaning: local-only pays the device's compute and the stability
    bound, so it is worse than edge-only on the default scenario; random is the worst."""
    config = CONFIGS["default"]
    state = random_states(config, 64, seed=10)
    scales = reference.reference_scales(config)
    cost = {}
    for name, cls in HEURISTICS.items():
        policy = cls()
        policy.bind(config, seed=0)
        full = decision_model.complete(config, state, policy.decide(state))
        cost[name] = float(np.mean(-costs.reward_terms(config, costs.evaluate(config, state, full), scales)["reward"]))
    assert cost["local_only"] > cost["edge_only"]
    assert cost["random"] == max(cost.values())
