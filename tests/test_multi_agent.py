"""The PettingZoo multi-agent front-end (issue #9): API and seeding contracts, equality with the single env."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

from mec_gym import SCENARIOS
from mec_gym.envs.edge_training import EdgeTrainingEnv
from mec_gym.envs.multi_agent import USER_FIELDS, EdgeTrainingParallelEnv, parallel_env
from mec_gym.model import costs

ROUNDS = 6


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("reward_mode", ["team", "user"])
def test_parallel_api(scenario: str, reward_mode: str) -> None:
    env = parallel_env(scenario=scenario, reward_mode=reward_mode, rounds=ROUNDS)
    parallel_api_test(env, num_cycles=3 * ROUNDS)  # several episodes: truncation and reset are exercised
    assert env.possible_agents == [f"user_{i}" for i in range(env.config.num_users)]
    first_obs, first_act = env.observation_space("user_0"), env.action_space("user_0")
    for agent in env.possible_agents:  # identical spaces for every agent (parameter sharing)
        assert env.observation_space(agent) == first_obs and env.action_space(agent) == first_act


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_parallel_seed(scenario: str) -> None:
    parallel_seed_test(lambda: parallel_env(scenario=scenario, rounds=ROUNDS), num_cycles=2 * ROUNDS)


def _split(joint: np.ndarray, env: EdgeTrainingParallelEnv) -> dict[str, np.ndarray]:
    """The documented layout: agent n's action is block n of the central action (N blocks of d_u)."""
    blocks = joint.reshape(env.config.num_users, -1)
    return {agent: blocks[i] for i, agent in enumerate(env.possible_agents)}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_team_reward_equals_single_env(scenario: str) -> None:
    multi = parallel_env(scenario=scenario, rounds=ROUNDS)
    single = EdgeTrainingEnv(scenario=scenario, rounds=ROUNDS)
    observations, _ = multi.reset(seed=7)
    flat, _ = single.reset(seed=7)
    np.testing.assert_array_equal(multi.state(), flat)
    rng = np.random.default_rng(0)
    truncated = False
    steps = 0
    while not truncated:
        joint = rng.uniform(-1, 1, single.action_space.shape).astype(np.float32)
        observations, rewards, terminations, truncations, infos = multi.step(_split(joint, multi))
        flat, reward, terminated, truncated, info = single.step(joint)
        assert set(rewards.values()) == {reward}  # every agent gets the single env's reward, exactly
        np.testing.assert_array_equal(multi.state(), flat)
        assert [infos[a]["server"] for a in multi.possible_agents] == list(info["server"])
        assert all(t == truncated for t in truncations.values()) and not any(terminations.values())
        steps += 1
    assert steps == ROUNDS and multi.agents == []


@pytest.mark.parametrize("scenario", ["default", "collapipe"])
def test_local_view_is_the_agents_rows_plus_server_features(scenario: str) -> None:
    env = parallel_env(scenario=scenario)
    observations, _ = env.reset(seed=3)
    central = env.env.unwrapped._core.observer.to_dict(env.state())
    n, m = env.config.num_users, env.config.num_servers
    for i, agent in enumerate(env.possible_agents):
        local = observations[agent]
        assert env.observation_space(agent).contains(local)
        for name, (sl, _) in env.local_layout.items():
            expected = central[name][i] if name in USER_FIELDS else central[name]
            np.testing.assert_array_equal(local[sl], np.ravel(expected), err_msg=f"{agent} {name}")
    assert env.local_layout["channel_gain_db"][0].stop - env.local_layout["channel_gain_db"][0].start == m
    assert env.observation_space("user_0").shape[0] < env.state_space.shape[0] or n == 1


def test_agent_controls_its_own_user() -> None:
    """Agent n's server scores pick user n's server (no other user moves)."""
    env = parallel_env(scenario="default", **{"controls": ["split", "server"]})
    env.reset(seed=1)
    m = env.config.num_servers
    width = env.action_space("user_0").shape[0]
    actions = {a: np.zeros(width, dtype=np.float32) for a in env.possible_agents}  # ties → server 0
    actions["user_2"][env.config.devices_per_user + 1 + (m - 1)] = 1.0  # user 2 prefers the last server
    _, _, _, _, infos = env.step(actions)
    servers = [infos[a]["server"] for a in env.possible_agents]
    assert servers[2] == m - 1 and all(s == 0 for i, s in enumerate(servers) if i != 2)


@pytest.mark.parametrize("scenario", ["default", "qian2024"])
def test_user_reward_mode(scenario: str) -> None:
    env = parallel_env(scenario=scenario, reward_mode="user")
    team = parallel_env(scenario=scenario)
    env.reset(seed=5)
    team.reset(seed=5)
    joint = np.random.default_rng(1).uniform(-1, 1, env.env.action_space.shape).astype(np.float32)
    _, rewards, _, _, infos = env.step(_split(joint, env))
    _, team_rewards, _, _, _ = team.step(_split(joint, team))
    last = env.env._last
    expected = costs.user_reward_terms(env.config, last.metrics, env.env.scales)["reward"][0]
    np.testing.assert_allclose([rewards[a] for a in env.possible_agents], expected)
    assert len(set(rewards.values())) > 1  # users differ (own channels, devices)
    assert {infos[a]["team_reward"] for a in env.possible_agents} == set(team_rewards.values())


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_user_terms_average_to_team_terms(scenario: str) -> None:
    """Penalties and (weighted) stability: the users' mean equals the team term of ``reward_terms``."""
    env = EdgeTrainingEnv(scenario=scenario, backend="numpy")  # the full metrics of the round (env._last)
    env.reset(seed=11)
    env.step(np.random.default_rng(2).uniform(-1, 1, env.action_space.shape).astype(np.float32))
    metrics, scales = env._last.metrics, env.scales
    user = costs.user_reward_terms(env.config, metrics, scales)
    team = costs.reward_terms(env.config, metrics, scales)
    np.testing.assert_allclose(user["budget_violation"].mean(axis=-1), team["budget_violation"])
    np.testing.assert_allclose(user["dropped"].mean(axis=-1), team["drop_rate"])
    np.testing.assert_allclose(user["stability_norm"].mean(axis=-1), team["stability_norm"])
    assert user["reward"].shape == (1, env.config.num_users)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="reward_mode"):
        parallel_env(reward_mode="selfish")
    env = parallel_env(rounds=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})
    env.reset(seed=0)
    width = env.action_space("user_0").shape[0]
    actions = {a: np.zeros(width, dtype=np.float32) for a in env.agents}
    with pytest.raises(ValueError, match="user_1"):
        env.step({a: v for a, v in actions.items() if a != "user_1"})
    with pytest.raises(ValueError, match=r"actions\['user_0'\]"):
        env.step({**actions, "user_0": np.zeros(width + 1, dtype=np.float32)})
    with pytest.raises(ValueError, match="agent"):
        env.observation_space("server_0")
    with pytest.raises(ValueError, match="num_users"):
        parallel_env(num_users=0)


def test_pickle_round_trip() -> None:
    env = parallel_env(scenario="qian2024")
    env.reset(seed=4)
    clone = pickle.loads(pickle.dumps(env))
    actions = {a: env.action_space(a).sample() for a in env.agents}
    assert env.step(actions)[1] == clone.step(actions)[1]
