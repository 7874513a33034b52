"""Gymnasium/SB3 API contract, registration, seeding and determinism of the single environment."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import mec_gym
from mec_gym import Decision

IDS = list(mec_gym.ENV_IDS)

# Warnings the checkers may raise that are expected and justified:
ALLOWED_WARNINGS = (
    # SB3 suggests [-1, 1]-normalized observations; ours are, but it flags any Box whose
    # bounds are not symmetric (features in [0, 1]).
    "symmetric and normalized",
)


def rollout(env_id: str, seed: int, steps: int, **kwargs) -> tuple[list[np.ndarray], list[float]]:
    env = gym.make(env_id, **kwargs)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards = [obs], []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return observations, rewards


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_and_sb3_checkers_pass(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)
    unexpected = [str(w.message) for w in caught if not any(a in str(w.message) for a in ALLOWED_WARNINGS)]
    assert unexpected == []


def test_make_in_fresh_subprocess() -> None:
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('mec_gym:mec_gym/EdgeTraining-v0')\n"
        "obs, info = env.reset(seed=1)\n"
        "obs, r, term, trunc, info = env.step(env.action_space.sample())\n"
        "print(obs.shape[0], type(r).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    size, kind = out.stdout.split()
    assert int(size) == gym.make("mec_gym/EdgeTraining-v0").observation_space.shape[0]
    assert kind == "float"


def test_registration_is_idempotent() -> None:
    import importlib

    importlib.reload(mec_gym)
    assert all(env_id in gym.registry for env_id in IDS)


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory_different_seed_different(env_id: str) -> None:
    obs_a, rew_a = rollout(env_id, seed=7, steps=10)
    obs_b, rew_b = rollout(env_id, seed=7, steps=10)
    obs_c, rew_c = rollout(env_id, seed=8, steps=10)
    assert all(np.array_equal(a, b) for a, b in zip(obs_a, obs_b, strict=True))
    assert rew_a == rew_b
    assert not np.array_equal(obs_a[0], obs_c[0])
    assert rew_a != rew_c


def test_reset_with_seed_twice_gives_same_first_observation() -> None:
    env = gym.make("mec_gym/EdgeTraining-v0")
    first, _ = env.reset(seed=3)
    env.step(env.action_space.sample())
    again, _ = env.reset(seed=3)
    other, _ = env.reset()  # continues the seeded generator: a new episode
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("env_id", IDS)
def test_episode_truncates_after_rounds_and_layout_covers_observation(env_id: str) -> None:
    env = gym.make(env_id, rounds=5)
    obs, _ = env.reset(seed=0)
    layout = env.unwrapped.observation_layout
    assert sum(sl.stop - sl.start for sl, *_ in layout.values()) == obs.shape[0]
    ends = []
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert np.isfinite(reward)
        ends.append((terminated, truncated))
    assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_info_is_plain_numbers_and_arrays() -> None:
    env = gym.make("mec_gym/EdgeTraining-v0")
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    for key in ("energy_j", "delay_s", "stability", "scr", "energy_norm", "delay_norm", "drops"):
        assert isinstance(info[key], (int, float)), key
    n = env.unwrapped.config.num_users
    for key in ("latency_s", "energy_j_user", "local_layers", "data_queue"):
        assert isinstance(info[key], np.ndarray) and info[key].shape == (n,), key
    assert set(info["repairs"]) == {"split_min_local", "memory", "capacity"}
    assert info["energy_j"] > 0 and info["delay_s"] > 0


def test_dict_observation_mode_matches_flat() -> None:
    flat_env = gym.make("mec_gym/EdgeTraining-v0")
    dict_env = gym.make("mec_gym/EdgeTraining-v0", observation_mode="dict")
    flat, _ = flat_env.reset(seed=4)
    as_dict, _ = dict_env.reset(seed=4)
    assert dict_env.observation_space.contains(as_dict)
    layout = flat_env.unwrapped.observation_layout
    for name, (sl, shape, _, _) in layout.items():
        assert np.array_equal(as_dict[name], flat[sl].reshape(shape)), name


def test_env_pickles_and_continues_identically() -> None:
    env = gym.make("mec_gym/EdgeTraining-v0")
    env.reset(seed=5)
    env.step(env.action_space.sample())
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    action = env.action_space.sample()
    a = env.step(action)
    b = clone.step(action)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_step_decision_equals_step_with_encoded_action() -> None:
    env = gym.make("mec_gym/EdgeTraining-v0").unwrapped
    env.reset(seed=9)
    state = env.system_state
    split = np.zeros((env.config.num_users, 2), dtype=np.int64)
    split[:, 1] = np.arange(env.config.num_users) % 5 + 1
    split[:, 0] = env.config.num_layers - split[:, 1]
    decision = Decision(split=split, server=np.arange(env.config.num_users) % env.config.num_servers)
    action = env.encode(decision)
    obs_a, reward_a, *_ , info_a = env.step_decision(decision)
    env.reset(seed=9)
    assert np.array_equal(env.system_state.gain, state.gain)
    obs_b, reward_b, *_, info_b = env.step(action)
    assert np.array_equal(obs_a, obs_b)
    assert reward_a == pytest.approx(reward_b, rel=1e-9)
    assert np.array_equal(info_b["local_layers"], split[:, 1])


def test_reference_rewards_are_order_one() -> None:
    """Rewards are normalized by the scenario's reference policy (SPEC §3.4)."""
    for env_id in IDS:
        env = gym.make(env_id, rounds=4)
        env.reset(seed=0)
        rewards = [env.unwrapped.step_decision(Decision())[1] for _ in range(4)]
        assert all(0.05 < abs(r) < 20 for r in rewards), (env_id, rewards)
