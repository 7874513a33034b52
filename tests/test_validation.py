"""Bad input gets a clear ValueError naming the field, never a silent wrong number (SPEC §3.7, §4.1, §7)."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest

import mec_gym
from mec_gym import Decision, SystemConfig, make_config
from mec_gym.config import CONTROL_FIELDS, ServerSpec, Weights, field_names
from mec_gym.model import decision as decision_model

# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_num_users_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="num_users"):
        SystemConfig(num_users=value)
    with pytest.raises(ValueError, match="num_users"):
        make_config("default", num_users=value)


def test_negative_bandwidth():
    with pytest.raises(ValueError, match=re.escape("server.bandwidth_hz")):
        make_config("default", **{"server.bandwidth_hz": -20e6})
    with pytest.raises(ValueError, match=re.escape("server.bandwidth_hz")):
        SystemConfig(server=ServerSpec(bandwidth_hz=-1.0))
    with pytest.raises(ValueError, match=re.escape("server.bandwidth_hz")):
        make_config("liu2024", **{"server.bandwidth_hz": float("nan")})


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="model") as err:
        make_config("default", model="gpt-17")
    assert "gpt-17" in str(err.value) and "llama-3.2-1b" in str(err.value)
    with pytest.raises(ValueError, match="model"):
        SystemConfig(model="no-such-llm")


def test_all_zero_weights():
    zero = {"weights.energy": 0.0, "weights.delay": 0.0, "weights.stability": 0.0}
    with pytest.raises(ValueError, match="weights"):
        make_config("default", **zero)
    with pytest.raises(ValueError, match="weights"):
        SystemConfig(weights=Weights(energy=0.0, delay=0.0, stability=0.0))
    # one positive weight is enough
    assert make_config("default", **dict(zero, **{"weights.delay": 1.0})).weights.delay == 1.0


def test_negative_weight_names_the_field():
    with pytest.raises(ValueError, match=re.escape("weights.energy")):
        make_config("default", **{"weights.energy": -1.0})


def test_unknown_override_lists_valid_names():
    with pytest.raises(ValueError, match="bogus_field") as err:
        make_config("default", bogus_field=1)
    message = str(err.value)
    for name in ("num_users", "num_servers", "devices_per_user", "model", "rounds", "weights.energy", "controls"):
        assert name in message
    with pytest.raises(ValueError, match=re.escape("radio.no_such")):
        make_config("default", **{"radio.no_such": 1})
    assert "radio.noise_figure_db" in field_names()


def test_unknown_scenario_lists_valid_names():
    with pytest.raises(ValueError, match="scenario") as err:
        make_config("liu2025")
    for name in ("default", "liu2024", "qian2024", "collapipe"):
        assert name in str(err.value)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"controls": ("split", "teleport")}, "controls"),
    ({"objective": "profit"}, "objective"),
    ({"delay_aggregate": "median"}, "delay_aggregate"),
    ({"num_servers": 0}, "num_servers"),
    ({"devices_per_user": 0}, "devices_per_user"),
    ({"radio.power_max_w": (0.5, 0.1)}, "radio.power_max_w"),
    ({"workload.microbatches": 99}, "workload.microbatches"),
    ({"server.load_levels": (0.5, 1.2)}, "server.load_levels"),
    ({"split_min_local": 17}, "split_min_local"),
    ({"num_users": 11, "server.capacity": 5}, "server.capacity"),
])
def test_other_invalid_fields_are_named(overrides, field):
    base = "qian2024" if field == "server.capacity" else "default"
    with pytest.raises(ValueError, match=re.escape(field)):
        make_config(base, **overrides)


# ----------------------------------------------------------------------------- gym.make


def test_gym_make_bad_kwarg():
    with pytest.raises(ValueError, match="not_a_parameter") as err:
        gym.make("mec_gym/EdgeTraining-v0", not_a_parameter=3)
    assert "num_users" in str(err.value)
    with pytest.raises(ValueError, match="num_users"):
        gym.make("mec_gym/EdgeTraining-Liu2024-v0", num_users=0)
    with pytest.raises(ValueError, match="model"):
        gym.make("mec_gym/EdgeTraining-v0", model="gpt-17")
    with pytest.raises(ValueError, match="render_mode"), pytest.warns(UserWarning, match="render_mode"):
        gym.make("mec_gym/EdgeTraining-v0", render_mode="ascii")  # gymnasium warns before the env raises
    with pytest.raises(ValueError, match="observation_mode"):
        gym.make("mec_gym/EdgeTraining-v0", observation_mode="graph")


# ----------------------------------------------------------------------------- env.step


@pytest.fixture
def env():
    environment = gym.make("mec_gym/EdgeTraining-v0")
    environment.reset(seed=0)
    yield environment
    environment.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_step_rejects_non_finite_actions(env, bad):
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    action[5] = bad
    with pytest.raises(ValueError, match="action") as err:
        env.step(action)
    assert "NaN" in str(err.value) or "infinite" in str(err.value)
    assert env.unwrapped.system_state.round[0] == 0  # nothing advanced


@pytest.mark.parametrize("shape", [(5,), (97,), (2, 96), (12, 8)])
def test_step_rejects_wrong_action_shape(env, shape):
    expected = env.action_space.shape
    assert expected == (96,)  # 12 users × (2 split + 3 servers + power + bandwidth + compute)
    with pytest.raises(ValueError, match="action") as err:
        env.step(np.zeros(shape, dtype=np.float32))
    assert str(expected) in str(err.value)


def test_step_accepts_a_valid_action_after_rejections(env):
    with pytest.raises(ValueError):
        env.step(np.full(env.action_space.shape, np.nan, dtype=np.float32))
    _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert np.isfinite(reward) and not terminated and not truncated


# ----------------------------------------------------------------------------- env.step_decision


@pytest.fixture
def direct():
    environment = mec_gym.EdgeTrainingEnv()
    environment.reset(seed=3)
    state = environment.system_state
    rules = decision_model.complete(environment.config, state, Decision()).select(0)
    return environment, state, rules


def _rejects(environment, d: Decision, *fragments: str) -> None:
    with pytest.raises(ValueError) as err:
        environment.step_decision(d)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert environment.system_state.round[0] == 0  # a rejected decision does not advance the episode


def test_rule_decision_is_accepted(direct):
    environment, _, rules = direct
    _, reward, _, _, info = environment.step_decision(Decision(split=rules.split, server=rules.server,
                                                               power=rules.power))
    assert np.isfinite(reward)
    assert info["repairs"] == {"split_min_local": 0, "memory": 0, "capacity": 0}


def test_layers_not_summing_to_upsilon(direct):
    environment, _, rules = direct
    split = rules.split.copy()
    split[2, 0] -= 1
    _rejects(environment, Decision(split=split), "decision.split", "user 2", "16")
    split = rules.split.copy()
    split[4, 0] += 3
    _rejects(environment, Decision(split=split), "decision.split", "user 4")


def test_split_wrong_shape_names_expected_shape(direct):
    environment, _, _ = direct
    n = environment.config.num_users
    _rejects(environment, Decision(split=np.zeros((n, 3), dtype=np.int64)), "decision.split", str((n, 2)))


def test_split_other_infeasibilities(direct):
    environment, state, rules = direct
    split = rules.split.copy()
    split[1] = [16, 0]  # α = 0 < split_min_local = 1
    _rejects(environment, Decision(split=split), "decision.split", "user 1", "split_min_local")
    split = rules.split.astype(np.float64)
    split[0] = [14.5, 1.5]
    _rejects(environment, Decision(split=split), "decision.split", "integer")


def test_split_beyond_node_memory():
    environment = mec_gym.EdgeTrainingEnv(**{"device.memory_gb": (1.0, 2.0)})  # 2-4 layers of 0.41 GB fit
    environment.reset(seed=0)
    state = environment.system_state
    assert np.all(state.max_layers[0, :, 0] < 16)
    split = decision_model.complete(environment.config, state, Decision()).select(0).split.copy()
    split[3] = [0, 16]
    _rejects(environment, Decision(split=split), "decision.split", "user 3", "memory")


def test_server_index_out_of_range(direct):
    environment, _, rules = direct
    server = rules.server.copy()
    server[4] = environment.config.num_servers
    _rejects(environment, Decision(server=server), "decision.server", "user 4")
    server[4] = -1
    _rejects(environment, Decision(server=server), "decision.server", "user 4")


def test_bandwidth_above_one_per_server(direct):
    environment, _, rules = direct
    bandwidth = rules.bandwidth.copy()
    user = 0
    bandwidth[user] += 0.05  # its server's shares now sum to 1.05
    _rejects(environment, Decision(bandwidth=bandwidth), "decision.bandwidth", "sum above 1")
    _rejects(environment, Decision(bandwidth=np.ones(environment.config.num_users)), "decision.bandwidth")
    bandwidth = rules.bandwidth.copy()
    bandwidth[7] = -0.01
    _rejects(environment, Decision(bandwidth=bandwidth), "decision.bandwidth", "user 7")


def test_compute_shares(direct):
    environment, _, rules = direct
    compute = rules.compute.copy()
    compute[1] = 0.0  # user 1 has server layers but no compute
    _rejects(environment, Decision(compute=compute), "decision.compute", "user 1")
    _rejects(environment, Decision(compute=np.full(environment.config.num_users, 0.9)), "decision.compute")


def test_negative_power(direct):
    environment, state, rules = direct
    power = rules.power.copy()
    power[5] = -0.1
    _rejects(environment, Decision(power=power), "decision.power", "user 5")
    power = rules.power.copy()
    power[6] = state.power_max_w[0, 6] * 1.5
    _rejects(environment, Decision(power=power), "decision.power", "user 6")
    power = rules.power.copy()
    power[2] = np.nan
    _rejects(environment, Decision(power=power), "decision.power", "NaN")


def test_uncontrolled_field_must_follow_its_rule(direct):
    environment, _, _ = direct
    assert "frequency" not in environment.config.controls
    n = environment.config.num_users
    _rejects(environment, Decision(frequency=np.full((n, 1), 0.5)), "decision.frequency", "controls")
    _rejects(environment, Decision(microbatches=np.full(n, 2)), "decision.microbatches", "controls")
    # the rule's own value is accepted
    _, reward, _, _, _ = environment.step_decision(Decision(frequency=np.ones((n, 1))))
    assert np.isfinite(reward)


def test_controlled_ranges_in_collapipe():
    environment = mec_gym.EdgeTrainingEnv(scenario="collapipe")
    environment.reset(seed=1)
    state = environment.system_state
    rules = decision_model.complete(environment.config, state, Decision()).select(0)
    n = environment.config.num_users
    _rejects(environment, Decision(microbatches=np.full(n, 17)), "decision.microbatches", "max_microbatches")
    _rejects(environment, Decision(microbatches=np.zeros(n, dtype=np.int64)), "decision.microbatches")
    d2d = rules.d2d_power.copy()
    d2d[2, 1] = 5.0
    _rejects(environment, Decision(d2d_power=d2d), "decision.d2d_power", "user 2")


def test_server_capacity_in_qian2024():
    environment = mec_gym.EdgeTrainingEnv(scenario="qian2024")
    environment.reset(seed=2)
    assert environment.config.server.capacity == 5
    n = environment.config.num_users
    _rejects(environment, Decision(server=np.zeros(n, dtype=np.int64)), "decision.server", "capacity")
    _, reward, _, _, _ = environment.step_decision(Decision(server=np.arange(n) % 2))
    assert np.isfinite(reward)


def test_all_controls_accept_in_range_values():
    environment = mec_gym.EdgeTrainingEnv(controls=CONTROL_FIELDS)
    environment.reset(seed=4)
    n = environment.config.num_users
    _rejects(environment, Decision(frequency=np.full((n, 1), 0.1)), "decision.frequency", "frequency_min")
    _, reward, _, _, _ = environment.step_decision(Decision(frequency=np.full((n, 1), 0.5),
                                                            microbatches=np.full(n, 2)))
    assert np.isfinite(reward)
