"""The SB3 ``VecEnv`` adapter over the native batched env (SPEC §4.4): SB3's VecEnv contract,
equality with ``DummyVecEnv`` over the single env, seeding, VecNormalize and a short PPO run."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from mec_gym.envs.sb3 import EdgeTrainingSB3VecEnv, make_sb3_vec_env
from mec_gym.envs.vector import EdgeTrainingVectorEnv

ENV_ID = "mec_gym/EdgeTraining-v0"
METRICS = ("energy_j", "delay_s", "stability", "scr", "drop_rate", "budget_violation")


def random_actions(venv, rng):
    return rng.uniform(-1.0, 1.0, (venv.num_envs, *venv.action_space.shape)).astype(np.float32)


def test_vec_env_contract_and_episode_end():
    n, rounds = 3, 3
    venv = make_sb3_vec_env(ENV_ID, num_envs=n, seed=0, rounds=rounds)
    assert isinstance(venv, VecEnv) and venv.num_envs == n
    native = gym.make_vec(ENV_ID, num_envs=n, rounds=rounds, autoreset_mode=AutoresetMode.SAME_STEP)
    singles = [gym.make(ENV_ID, rounds=rounds) for _ in range(n)]
    obs = venv.reset()
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32
    assert obs.shape == (n, *venv.observation_space.shape)
    assert np.array_equal(obs, native.reset(seed=0)[0])
    for i, env in enumerate(singles):
        env.reset(seed=i)
    rng = np.random.default_rng(0)
    for t in range(2 * rounds + 1):
        actions = random_actions(venv, rng)
        obs, rewards, dones, infos = venv.step(actions)
        native_obs, native_reward, _, native_truncated, native_info = native.step(actions)
        assert obs.shape == (n, *venv.observation_space.shape) and obs.dtype == np.float32
        assert rewards.shape == (n,) and rewards.dtype == np.float32
        assert dones.shape == (n,) and dones.dtype == np.bool_
        assert isinstance(infos, list) and len(infos) == n and all(isinstance(info, dict) for info in infos)
        assert np.array_equal(obs, native_obs)
        assert np.array_equal(rewards, native_reward.astype(np.float32))
        assert np.array_equal(dones, native_truncated)
        end = (t + 1) % rounds == 0
        assert dones.all() == end and dones.any() == end
        for i, env in enumerate(singles):
            single_obs, single_reward, _, single_truncated, single_info = env.step(actions[i])
            assert single_truncated == end
            for key in METRICS:  # the step's own metrics, also on the step that ends the episode
                assert infos[i][key] == float(single_info[key]), key
            if end:
                assert np.array_equal(infos[i]["terminal_observation"], single_obs)
                assert np.array_equal(infos[i]["terminal_observation"], native_info["final_obs"][i])
                assert infos[i]["TimeLimit.truncated"] is True
                assert np.array_equal(obs[i], env.reset()[0])  # the next episode's first observation
                assert not np.array_equal(obs[i], infos[i]["terminal_observation"])
                assert obs[i][-1] == 0.0  # round index of a fresh episode
            else:
                assert "terminal_observation" not in infos[i]
                assert not infos[i].get("TimeLimit.truncated", False)
                assert np.array_equal(obs[i], single_obs)


def test_equals_dummy_vec_env():
    n, rounds = 3, 3
    venv = make_sb3_vec_env("mec_gym/EdgeTraining-Qian2024-v0", num_envs=n, rounds=rounds)
    dummy = DummyVecEnv([lambda: gym.make("mec_gym/EdgeTraining-Qian2024-v0", rounds=rounds) for _ in range(n)])
    assert venv.seed(17) == dummy.seed(17) == [17, 18, 19]
    assert np.array_equal(venv.reset(), dummy.reset())
    rng = np.random.default_rng(1)
    for _ in range(2 * rounds):
        actions = random_actions(venv, rng)
        obs, rewards, dones, infos = venv.step(actions)
        dummy_obs, dummy_rewards, dummy_dones, dummy_infos = dummy.step(actions)
        assert np.array_equal(obs, dummy_obs)
        assert np.array_equal(rewards, dummy_rewards) and rewards.dtype == dummy_rewards.dtype
        assert np.array_equal(dones, dummy_dones) and dones.dtype == dummy_dones.dtype
        for info, dummy_info in zip(infos, dummy_infos, strict=True):
            assert {key: info[key] for key in METRICS} == {key: float(dummy_info[key]) for key in METRICS}
            assert ("terminal_observation" in info) == ("terminal_observation" in dummy_info)
            if "terminal_observation" in info:
                assert np.array_equal(info["terminal_observation"], dummy_info["terminal_observation"])
                assert info["TimeLimit.truncated"] == dummy_info["TimeLimit.truncated"]


def test_seed_then_reset_is_deterministic_and_follows_dummy_vec_env_convention():
    n, seed = 4, 42
    a = make_sb3_vec_env(ENV_ID, num_envs=n)
    b = make_sb3_vec_env(ENV_ID, num_envs=n)
    assert a.seed(seed) == [seed + i for i in range(n)]
    b.seed(seed)
    first = a.reset()
    assert np.array_equal(first, b.reset())
    for i in range(n):  # env i gets seed s + i
        assert np.array_equal(first[i], gym.make(ENV_ID).reset(seed=seed + i)[0])
    rng = np.random.default_rng(5)
    for _ in range(5):
        actions = random_actions(a, rng)
        out_a, out_b = a.step(actions), b.step(actions)
        assert np.array_equal(out_a[0], out_b[0]) and np.array_equal(out_a[1], out_b[1])
    # the seed is used once: a later reset without seed() continues the streams
    assert not np.array_equal(a.reset(), first)
    a.seed(seed)
    assert np.array_equal(a.reset(), first)
    # make_sb3_vec_env(seed=s) is seed(s) before the first reset
    assert np.array_equal(make_sb3_vec_env(ENV_ID, num_envs=n, seed=seed).reset(), first)
    assert not np.array_equal(make_sb3_vec_env(ENV_ID, num_envs=n, seed=seed + 1).reset(), first)


def test_vec_normalize_wraps_and_steps():
    n = 4
    venv = VecNormalize(make_sb3_vec_env(ENV_ID, num_envs=n, seed=0, rounds=3), gamma=0.9)
    obs = venv.reset()
    assert obs.shape == (n, *venv.observation_space.shape)
    rng = np.random.default_rng(0)
    ends = []
    for _ in range(4):
        obs, rewards, dones, infos = venv.step(random_actions(venv, rng))
        assert np.all(np.isfinite(obs)) and np.all(np.abs(obs) <= venv.clip_obs)
        assert np.all(np.isfinite(rewards)) and rewards.shape == (n,)
        ends.append(bool(dones.all()))
        if dones.any():  # VecNormalize normalizes the terminal observations too
            assert all(np.abs(info["terminal_observation"]).max() <= venv.clip_obs for info in infos)
    assert ends == [False, False, True, False]
    assert venv.obs_rms.count > 4 * n  # updated at reset and every step
    raw = venv.get_original_obs()
    assert raw.shape == obs.shape and not np.allclose(raw, obs)


def test_short_ppo_run():
    torch.set_num_threads(1)
    venv = make_sb3_vec_env(ENV_ID, num_envs=8, seed=0, rounds=8)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, seed=0)
    model.learn(256)
    assert model.num_timesteps >= 256
    obs = venv.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (8, *venv.action_space.shape)
    assert np.all(np.isfinite(actions))
    obs, rewards, dones, infos = venv.step(np.clip(actions, -1, 1))
    assert obs.shape == (8, *venv.observation_space.shape) and len(infos) == 8
    single, _ = model.predict(obs[0], deterministic=True)
    assert single.shape == venv.action_space.shape


def test_get_attr_env_method_env_is_wrapped():
    n = 3
    venv = make_sb3_vec_env(ENV_ID, num_envs=n, seed=0, rounds=4)
    venv.reset()
    assert venv.get_attr("num_envs") == [n] * n
    assert venv.get_attr("max_episode_steps") == [4] * n
    assert venv.get_attr("num_envs", indices=[0, 2]) == [n, n]
    assert venv.get_attr("num_envs", indices=1) == [n]
    layouts = venv.env_method("__getattribute__", "observation_layout")
    assert len(layouts) == n and all(layout is layouts[0] for layout in layouts)
    assert len(venv.env_method("__getattribute__", "num_envs", indices=[1, 2])) == 2
    assert venv.env_is_wrapped(gym.wrappers.TimeLimit) == [False] * n
    assert venv.env_is_wrapped(gym.Wrapper, indices=[0]) == [False]
    venv.set_attr("max_episode_steps", 2)
    assert venv.get_attr("max_episode_steps") == [2] * n
    rng = np.random.default_rng(0)
    assert [bool(venv.step(random_actions(venv, rng))[2].all()) for _ in range(2)] == [False, True]


def test_adapter_rejects_unsupported_envs():
    with pytest.raises(ValueError, match="EdgeTrainingVectorEnv"):
        EdgeTrainingSB3VecEnv(gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="sync"))
    with pytest.raises(ValueError, match="flat"):
        EdgeTrainingSB3VecEnv(EdgeTrainingVectorEnv(num_envs=2, observation_mode="dict"))
    adapter = EdgeTrainingSB3VecEnv(EdgeTrainingVectorEnv(num_envs=2))  # switched to same-step autoreset
    assert adapter.venv.autoreset_mode == AutoresetMode.SAME_STEP
