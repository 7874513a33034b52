"""The native batched env (SPEC §4.4): ``gym.make_vec`` entry point, bit-for-bit equality with
``SyncVectorEnv`` over the single env in both autoreset modes, seeding, masked resets, the time
limit, bad input, spaces and memory scaling."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import mec_gym
from mec_gym.envs.vector import EdgeTrainingVectorEnv

IDS = list(mec_gym.ENV_IDS)
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]
ROUNDS = 4


def sync_env(env_id, num_envs, mode=AutoresetMode.NEXT_STEP, **kwargs):
    return SyncVectorEnv([lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)], autoreset_mode=mode)


def random_actions(venv, rng):
    return rng.uniform(-1.0, 1.0, venv.action_space.shape).astype(np.float32)


def assert_same(native, sync, path="info"):
    """Same structure (keys, masks, dtypes, shapes) and bit-identical values, as SyncVectorEnv builds infos."""
    if isinstance(sync, dict):
        assert isinstance(native, dict), path
        assert set(native) == set(sync), (path, sorted(set(native) ^ set(sync)))
        for key in sync:
            if key == "final_obs":  # object array: one observation per finished env, None elsewhere
                mask = sync["_final_obs"]
                assert np.array_equal(native["_final_obs"], mask), path
                for i in np.flatnonzero(mask):
                    assert_same(native["final_obs"][i], sync["final_obs"][i], f"{path}/final_obs[{i}]")
            else:
                assert_same(native[key], sync[key], f"{path}/{key}")
        return
    native, sync = np.asarray(native), np.asarray(sync)
    assert native.shape == sync.shape, (path, native.shape, sync.shape)
    assert native.dtype == sync.dtype, (path, native.dtype, sync.dtype)
    assert np.array_equal(native, sync), path


def assert_same_step(native_out, sync_out):
    for name, a, b in zip(("obs", "reward", "terminated", "truncated"), native_out[:4], sync_out[:4], strict=True):
        assert_same(a, b, name)
    assert_same(native_out[4], sync_out[4])


# ---------------------------------------------------------------------------------------------- make_vec


@pytest.mark.parametrize("env_id", IDS)
def test_make_vec_uses_native_env_with_batched_spaces(env_id):
    n = 3
    venv = gym.make_vec(env_id, num_envs=n)
    assert isinstance(venv, EdgeTrainingVectorEnv)
    assert venv.num_envs == n
    single = gym.make(env_id)
    d = single.action_space.shape[0]
    assert venv.single_action_space == single.action_space
    assert venv.single_observation_space == single.observation_space
    assert venv.action_space.shape == (n, d)
    assert venv.observation_space.shape == (n, *single.observation_space.shape)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = venv.reset(seed=0)
    assert obs.shape == venv.observation_space.shape and obs.dtype == np.float32
    assert info == {}
    explicit = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point")
    assert isinstance(explicit, EdgeTrainingVectorEnv)


def test_make_vec_passes_kwargs_and_overrides():
    venv = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=2, rounds=5, num_users=4,
                        autoreset_mode=AutoresetMode.SAME_STEP, max_episode_steps=3)
    single = gym.make("mec_gym/EdgeTraining-v0", rounds=5, num_users=4)
    assert venv.config.rounds == 5 and venv.config.num_users == 4
    assert venv.max_episode_steps == 3
    assert venv.autoreset_mode == AutoresetMode.SAME_STEP
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert venv.single_action_space == single.action_space
    assert venv.action_space.shape == (2, single.action_space.shape[0])
    assert single.action_space.shape[0] % 4 == 0
    default = gym.make("mec_gym/EdgeTraining-v0")
    assert default.action_space.shape[0] // default.unwrapped.config.num_users == single.action_space.shape[0] // 4
    # scenario of another id is used, not the default one
    qian = gym.make_vec("mec_gym/EdgeTraining-Qian2024-v0", num_envs=2)
    assert qian.config == gym.make("mec_gym/EdgeTraining-Qian2024-v0").unwrapped.config


# ------------------------------------------------------------------------------ equality with SyncVectorEnv


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("env_id", IDS)
def test_trajectories_equal_sync_vector_env(env_id, mode):
    n, steps = 3, 3 * ROUNDS  # three episode boundaries
    native = gym.make_vec(env_id, num_envs=n, rounds=ROUNDS, autoreset_mode=mode)
    sync = sync_env(env_id, n, mode, rounds=ROUNDS)
    obs_native, info_native = native.reset(seed=123)
    obs_sync, info_sync = sync.reset(seed=123)
    assert_same(obs_native, obs_sync, "reset obs")
    assert info_native == info_sync == {}
    rng = np.random.default_rng(7)
    ends, resetting = 0, False
    for _ in range(steps):
        actions = random_actions(native, rng)
        out_native, out_sync = native.step(actions), sync.step(actions)
        assert_same_step(out_native, out_sync)
        assert not out_native[2].any()
        info = out_native[4]
        if out_native[3].any():
            ends += 1
            if mode == AutoresetMode.SAME_STEP:
                done = out_native[3]
                assert np.array_equal(info["_final_obs"], done) and np.array_equal(info["_final_info"], done)
                # the finished episode's step metrics are in final_info; the reset left none at top level
                assert np.array_equal(info["final_info"]["_energy_j"], done)
                assert np.array_equal(info["final_info"]["energy_j"], out_sync[4]["final_info"]["energy_j"])
                assert np.all(info["final_info"]["energy_j"][done] > 0)
                assert np.all(info["final_info"]["delay_s"][done] > 0)
                for i in np.flatnonzero(done):
                    assert native.single_observation_space.contains(info["final_obs"][i])
                    # round index of the final observation: the episode's last round
                    assert info["final_obs"][i][-1] == pytest.approx(1.0)
        elif mode == AutoresetMode.NEXT_STEP and resetting:  # the reset step: no step metrics, zero reward
            assert info == {} and np.array_equal(out_native[1], np.zeros(n))
        else:
            assert np.array_equal(info["_energy_j"], np.ones(n, bool))
            assert np.array_equal(info["_delay_s"], np.ones(n, bool))
            assert np.array_equal(info["energy_j"], out_sync[4]["energy_j"])
            assert np.array_equal(info["delay_s"], out_sync[4]["delay_s"])
        resetting = bool(out_native[3].all())
    assert ends == steps // ROUNDS if mode == AutoresetMode.SAME_STEP else ends >= 2


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("env_id", ["mec_gym/EdgeTraining-v0", "mec_gym/EdgeTraining-Qian2024-v0",
                                    "mec_gym/EdgeTraining-CollaPipe-v0"])
def test_staggered_episodes_equal_sync_vector_env(env_id, mode):
    """Partial resets stagger the episodes, so some sub-envs end while others run: masks differ per env."""
    n = 3
    native = gym.make_vec(env_id, num_envs=n, rounds=ROUNDS, autoreset_mode=mode)
    sync = sync_env(env_id, n, mode, rounds=ROUNDS)
    assert_same(native.reset(seed=5)[0], sync.reset(seed=5)[0])
    rng = np.random.default_rng(11)
    partial = {1: ([None, 40, None], [False, True, False]), 2: ([None, None, 41], [False, False, True])}
    seen_partial_end = False
    for t in range(3 * ROUNDS):
        if t in partial:
            seeds, mask = partial[t]
            out_native = native.reset(seed=seeds, options={"reset_mask": np.array(mask)})
            out_sync = sync.reset(seed=seeds, options={"reset_mask": np.array(mask)})
            assert_same(out_native[0], out_sync[0], "partial reset obs")
        actions = random_actions(native, rng)
        out_native, out_sync = native.step(actions), sync.step(actions)
        assert_same_step(out_native, out_sync)
        truncated = out_native[3]
        if truncated.any() and not truncated.all():
            seen_partial_end = True
            if mode == AutoresetMode.SAME_STEP:
                info = out_native[4]
                assert np.array_equal(info["_energy_j"], ~truncated)
                assert np.array_equal(info["final_info"]["_energy_j"], truncated)
                assert np.array_equal(info["final_info"]["repairs"]["_memory"], truncated)
                assert np.all(info["energy_j"][truncated] == 0.0)
    assert seen_partial_end


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_sharded_workers_equal_sync_vector_env(mode):
    """Threaded shards (workers=2) split the batch; masked resets and autoresets cross the shard boundary."""
    env_id, n = "mec_gym/EdgeTraining-CollaPipe-v0", 5
    native = gym.make_vec(env_id, num_envs=n, rounds=ROUNDS, autoreset_mode=mode, workers=2)
    sync = sync_env(env_id, n, mode, rounds=ROUNDS)
    assert_same(native.reset(seed=1)[0], sync.reset(seed=1)[0])
    rng = np.random.default_rng(2)
    for t in range(3 * ROUNDS):
        if t == 2:
            mask = np.array([False, True, False, True, False])
            seeds = [None, 7, None, None, None]
            out_native = native.reset(seed=seeds, options={"reset_mask": mask.copy()})
            assert_same(out_native[0], sync.reset(seed=seeds, options={"reset_mask": mask.copy()})[0])
        actions = random_actions(native, rng)
        assert_same_step(native.step(actions), sync.step(actions))
    state = native.system_state
    assert state.batch_size == n
    assert np.array_equal(state.round, np.array([sync.envs[i].unwrapped.system_state.round[0] for i in range(n)]))
    native.close()


@pytest.mark.parametrize("workers", [2, 3])
def test_kernel_ranges_across_threads_equal_one_thread(workers):
    """With several workers the round kernel runs in guided ranges taken by whichever thread is free
    (EdgeTrainingVectorEnv._run_kernel): every environment is stepped once, as with one thread."""
    n = 301  # above the size that is split (4·MIN_CHUNK), not a multiple of anything
    one = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=n, rounds=ROUNDS, workers=1)
    many = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=n, rounds=ROUNDS, workers=workers)
    assert many.unwrapped.backend == "kernel" and len(many.unwrapped._shards) == workers
    assert_same(many.reset(seed=3)[0], one.reset(seed=3)[0])
    rng = np.random.default_rng(4)
    for t in range(2 * ROUNDS + 1):
        if t == 1:
            mask = rng.random(n) < 0.3
            assert_same(many.reset(options={"reset_mask": mask.copy()})[0],
                        one.reset(options={"reset_mask": mask.copy()})[0])
        actions = random_actions(one, rng)
        assert_same_step(many.step(actions), one.step(actions))
    many.close()
    one.close()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_dict_observations_equal_sync_vector_env(mode):
    env_id, n = "mec_gym/EdgeTraining-CollaPipe-v0", 2
    native = gym.make_vec(env_id, num_envs=n, rounds=3, autoreset_mode=mode, observation_mode="dict")
    sync = sync_env(env_id, n, mode, rounds=3, observation_mode="dict")
    assert native.single_observation_space == sync.single_observation_space
    obs, _ = native.reset(seed=2)
    assert_same(obs, sync.reset(seed=2)[0])
    assert native.observation_space.contains(obs)
    rng = np.random.default_rng(3)
    for _ in range(7):
        actions = random_actions(native, rng)
        out_native = native.step(actions)
        assert_same_step(out_native, sync.step(actions))
        assert native.observation_space.contains(out_native[0])


def test_time_limit_equals_sync_vector_env_with_time_limit_wrapper():
    env_id, n = "mec_gym/EdgeTraining-Liu2024-v0", 2
    native = gym.make_vec(env_id, num_envs=n, rounds=10, max_episode_steps=3)
    sync = sync_env(env_id, n, rounds=10, max_episode_steps=3)
    assert_same(native.reset(seed=9)[0], sync.reset(seed=9)[0])
    rng = np.random.default_rng(0)
    for _ in range(8):
        actions = random_actions(native, rng)
        assert_same_step(native.step(actions), sync.step(actions))


# ---------------------------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("env_id", IDS)
def test_seed_list_equals_sync_vector_env(env_id):
    seeds = [3, 99, 3]
    native = gym.make_vec(env_id, num_envs=3)
    obs, _ = native.reset(seed=seeds)
    assert_same(obs, sync_env(env_id, 3).reset(seed=seeds)[0])
    assert np.array_equal(obs[0], obs[2]) and not np.array_equal(obs[0], obs[1])
    for i, s in enumerate(seeds):
        assert np.array_equal(obs[i], gym.make(env_id).reset(seed=s)[0])


def test_seeding_is_deterministic_and_seed_dependent():
    venv = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=4)
    first, _ = venv.reset(seed=10)
    rng = np.random.default_rng(0)
    stepped = [venv.step(random_actions(venv, rng))[0] for _ in range(3)]
    again, _ = venv.reset(seed=10)
    assert np.array_equal(first, again)
    rng = np.random.default_rng(0)
    assert all(np.array_equal(o, venv.step(random_actions(venv, rng))[0]) for o in stepped)
    other, _ = venv.reset(seed=11)
    assert not np.array_equal(first, other)
    assert np.array_equal(other[:3], first[1:])  # int seed s gives sub-env i the seed s + i
    for i in range(4):  # the rows differ from each other
        for j in range(i):
            assert not np.array_equal(first[i], first[j])
    unseeded_a, _ = venv.reset()
    unseeded_b, _ = venv.reset()
    assert not np.array_equal(unseeded_a, unseeded_b)
    with pytest.raises(ValueError, match="seed"):
        venv.reset(seed=[1, 2])


# ---------------------------------------------------------------------------------------------- masked reset


@pytest.mark.parametrize("env_id", ["mec_gym/EdgeTraining-v0", "mec_gym/EdgeTraining-CollaPipe-v0"])
def test_reset_mask_resets_only_masked_envs(env_id):
    n = 4
    venv = gym.make_vec(env_id, num_envs=n)
    singles = [gym.make(env_id) for _ in range(n)]
    obs, _ = venv.reset(seed=0)
    for i, env in enumerate(singles):
        assert np.array_equal(obs[i], env.reset(seed=i)[0])
    rng = np.random.default_rng(1)
    for _ in range(2):
        actions = random_actions(venv, rng)
        obs = venv.step(actions)[0]
        for i, env in enumerate(singles):
            assert np.array_equal(obs[i], env.step(actions[i])[0])
    mask = np.array([False, True, False, True])
    new, info = venv.reset(seed=[None, 11, None, 13], options={"reset_mask": mask})
    assert info == {}
    assert np.array_equal(new[~mask], obs[~mask])
    assert np.array_equal(new[1], singles[1].reset(seed=11)[0])
    assert np.array_equal(new[3], singles[3].reset(seed=13)[0])
    assert not np.array_equal(new[1], obs[1])
    # every sub-env goes on exactly as its single env: reset ones from round 0, the others mid-episode
    actions = random_actions(venv, rng)
    obs, reward, _, _, info = venv.step(actions)
    for i, env in enumerate(singles):
        single_obs, single_reward, _, _, single_info = env.step(actions[i])
        assert np.array_equal(obs[i], single_obs)
        assert reward[i] == single_reward
        assert info["energy_j"][i] == single_info["energy_j"]
    # an int seed gives masked sub-env i the seed s + i
    mask = np.array([True, False, False, True])
    new, _ = venv.reset(seed=20, options={"reset_mask": mask})
    assert np.array_equal(new[0], gym.make(env_id).reset(seed=20)[0])
    assert np.array_equal(new[3], gym.make(env_id).reset(seed=23)[0])
    assert np.array_equal(new[1:3], obs[1:3])


def test_reset_mask_rejects_bad_shapes():
    venv = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=3)
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(seed=0, options={"reset_mask": np.array([True, False])})  # first reset must cover all, and shape
    venv.reset(seed=0)
    for bad in (np.array([True, False]), np.ones((3, 1), bool), np.array([True, False, True, False])):
        with pytest.raises(ValueError, match="reset_mask"):
            venv.reset(options={"reset_mask": bad})
    fresh = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=3)
    with pytest.raises(ValueError, match="first reset"):
        fresh.reset(seed=0, options={"reset_mask": np.array([True, False, True])})


# ---------------------------------------------------------------------------------------------- time limit


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_max_episode_steps_truncates_inside(mode):
    n = 2
    venv = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=n, rounds=10, max_episode_steps=3, autoreset_mode=mode)
    assert venv.max_episode_steps == 3
    venv.reset(seed=4)
    rng = np.random.default_rng(2)
    flags = [venv.step(random_actions(venv, rng))[3].copy() for _ in range(7)]
    if mode == AutoresetMode.NEXT_STEP:  # step 4 is the reset step
        expected = [False, False, True, False, False, False, True]
    else:
        expected = [False, False, True, False, False, True, False]
    assert [bool(f.all()) for f in flags] == expected
    assert [bool(f.any()) for f in flags] == expected
    # the bound cannot exceed the scenario's rounds
    capped = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=n, rounds=2, max_episode_steps=50)
    assert capped.max_episode_steps == 2
    capped.reset(seed=0)
    assert [bool(capped.step(random_actions(capped, rng))[3].all()) for _ in range(2)] == [False, True]


def test_next_step_reset_step_ignores_action_and_gives_zero_reward():
    venv = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=2, rounds=2)
    first, _ = venv.reset(seed=8)
    rng = np.random.default_rng(0)
    venv.step(random_actions(venv, rng))
    assert venv.step(random_actions(venv, rng))[3].all()
    obs, reward, terminated, truncated, info = venv.step(random_actions(venv, rng))
    assert np.array_equal(reward, np.zeros(2)) and not terminated.any() and not truncated.any()
    assert not info.get("_energy_j", np.zeros(2, bool)).any()  # no step metrics for a reset step
    # the reset continues each sub-env's generator: equal to a single env reset without a seed
    for i in range(2):
        env = gym.make("mec_gym/EdgeTraining-v0", rounds=2)
        env.reset(seed=8 + i)
        assert np.array_equal(obs[i], env.reset()[0])
        assert not np.array_equal(obs[i], first[i])


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_actions_raise_value_error():
    venv = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=2)
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros(venv.action_space.shape, np.float32))
    venv.reset(seed=0)
    n, d = venv.action_space.shape
    for shape in ((n, d + 1), (n + 1, d), (d,), (n * d,), (n, d, 1)):
        with pytest.raises(ValueError, match="action"):
            venv.step(np.zeros(shape, np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        actions = np.zeros((n, d), np.float32)
        actions[1, 3] = bad
        with pytest.raises(ValueError, match="action"):
            venv.step(actions)
    # still usable after rejected input
    obs = venv.step(np.zeros((n, d), np.float32))[0]
    assert venv.observation_space.contains(obs)


def test_bad_construction_raises_value_error():
    for num_envs in (0, -1, 2.0):
        with pytest.raises(ValueError, match="num_envs"):
            EdgeTrainingVectorEnv(num_envs=num_envs)
    with pytest.raises(ValueError, match="num_envs"):
        gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=0, vectorization_mode="vector_entry_point")
    for mode in ("bogus", AutoresetMode.DISABLED, 3):
        with pytest.raises(ValueError, match="autoreset_mode"):
            EdgeTrainingVectorEnv(num_envs=2, autoreset_mode=mode)
    assert EdgeTrainingVectorEnv(num_envs=1, autoreset_mode="SameStep").autoreset_mode == AutoresetMode.SAME_STEP
    with pytest.raises(ValueError, match="max_episode_steps"):
        EdgeTrainingVectorEnv(num_envs=2, max_episode_steps=0)
    with pytest.raises(ValueError, match="observation_mode"):
        EdgeTrainingVectorEnv(num_envs=2, observation_mode="pixels")
    with pytest.raises(ValueError):
        EdgeTrainingVectorEnv(num_envs=2, num_users=0)


# ---------------------------------------------------------------------------------------------- spaces and memory


@pytest.mark.parametrize("env_id", IDS)
def test_observations_lie_in_observation_space(env_id):
    venv = gym.make_vec(env_id, num_envs=4, rounds=3, autoreset_mode=AutoresetMode.SAME_STEP)
    obs, _ = venv.reset(seed=1)
    assert venv.observation_space.contains(obs)
    rng = np.random.default_rng(4)
    for t in range(4):
        actions = np.sign(random_actions(venv, rng)) if t % 2 else random_actions(venv, rng)  # include the bounds
        obs, reward, _, truncated, info = venv.step(actions)
        assert venv.observation_space.contains(obs)
        assert np.all(np.isfinite(reward)) and reward.dtype == np.float64
        for i in np.flatnonzero(truncated):
            assert venv.single_observation_space.contains(info["final_obs"][i])


def _state_bytes(venv):
    state = venv.system_state
    total = sum(getattr(state, f.name).nbytes for f in dataclasses.fields(state))
    cores = getattr(venv, "_shards", None) or [venv._core]
    kernel_bytes = sum(core._static_obs.nbytes for core in cores if core.backend == "kernel")
    return total + kernel_bytes + sum(core.randomness.states.nbytes for core in cores)


def test_state_memory_scales_linearly_with_num_envs():
    sizes = {}
    for n in (64, 128):
        venv = gym.make_vec("mec_gym/EdgeTraining-v0", num_envs=n)
        venv.reset(seed=0)
        assert venv.system_state.batch_size == n
        sizes[n] = _state_bytes(venv)
    assert sizes[64] > 0
    assert sizes[128] / sizes[64] == pytest.approx(2.0, rel=0.01)
