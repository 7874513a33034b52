"""Random streams (mec_gym.model.rng): distributions, independence, compiled = Python, and the reset
spawning reproducing numpy's SeedSequence/PCG64 bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mec_gym.envs.core import EdgeTrainingCore
from mec_gym.model import dynamics, rng
from mec_gym.model.numeric import compile_cached
from mec_gym.scenarios import make_config


def _streams(count: int, seed: int = 0) -> np.ndarray:
    return np.stack([rng.seed_state(s) for s in np.random.SeedSequence(seed).spawn(count)])


def test_normals_are_standard_normal() -> None:
    normals, uniforms = rng.draw_round_arrays(_streams(50), 40_000, 200)
    x = normals.ravel()  # 2,000,000 draws
    se = 1.0 / np.sqrt(x.size)
    assert abs(x.mean()) < 5 * se
    assert abs(x.var() - 1.0) < 5 * np.sqrt(2.0) * se
    assert abs(stats.skew(x)) < 5 * np.sqrt(6.0) * se
    assert abs(stats.kurtosis(x)) < 5 * np.sqrt(24.0) * se
    assert stats.kstest(x[:1_000_000], "norm").pvalue > 1e-4
    tail = np.mean(np.abs(x) > rng.ZIGGURAT_R)  # the ziggurat's tail branch
    assert tail == pytest.approx(2 * stats.norm.sf(rng.ZIGGURAT_R), rel=0.15)
    u = uniforms.ravel()
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4


def test_streams_are_independent_across_environments() -> None:
    normals, _ = rng.draw_round_arrays(_streams(64, seed=9), 5_000, 1)
    corr = np.corrcoef(normals)
    off = corr[~np.eye(64, dtype=bool)]
    assert np.abs(off).max() < 6.0 / np.sqrt(5_000)
    lag = np.corrcoef(normals[:, :-1].ravel(), normals[:, 1:].ravel())[0, 1]  # serial correlation
    assert abs(lag) < 6.0 / np.sqrt(normals.size)


def test_compiled_draws_equal_python_draws() -> None:
    states = _streams(3, seed=4)
    expected_states = states.copy()
    normals, uniforms = np.empty((3, 300)), np.empty((3, 7))
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        rng.draw_round(expected_states, normals, uniforms)  # the plain Python function
    got_normals, got_uniforms = rng.draw_round_arrays(states, 300, 7)
    np.testing.assert_array_equal(got_normals, normals)
    np.testing.assert_array_equal(got_uniforms, uniforms)
    np.testing.assert_array_equal(states, expected_states)


def test_seed_state_is_never_zero() -> None:
    state = rng.seed_state(np.random.SeedSequence(0))
    assert state.dtype == np.uint64 and state.shape == (4,) and state.any()


GENERATORS = {
    "zero": lambda: np.random.default_rng(0),
    "small": lambda: np.random.default_rng(42),
    "two-words": lambda: np.random.default_rng(2**40 + 7),
    "huge": lambda: np.random.default_rng(123456789012345678901234567890),
    "os-entropy": lambda: np.random.default_rng(),
    "spawned": lambda: np.random.default_rng(5).spawn(3)[2],
    "spawned-twice": lambda: np.random.default_rng(9).spawn(1)[0].spawn(2)[1],
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_spawned_streams_equal_numpy_spawn(name: str) -> None:
    g = GENERATORS[name]()
    seed_seq = g.bit_generator.seed_seq
    prefix = rng.entropy_prefix(seed_seq)
    assert prefix is not None
    for child in (0, 2, 10, 2**31 + 3):
        uniforms, states = rng.spawn_streams([prefix], np.array([child]), 64)
        kids = [np.random.SeedSequence(seed_seq.entropy, spawn_key=seed_seq.spawn_key + (child + i,),
                                       pool_size=seed_seq.pool_size) for i in range(2)]
        np.testing.assert_array_equal(uniforms[0], np.random.Generator(np.random.PCG64(kids[0])).random(64))
        np.testing.assert_array_equal(states[0], kids[1].generate_state(4, np.uint64))


def test_reset_draws_what_np_random_spawn_would() -> None:
    """Episode after episode, the core's initial states are those of ``np_random.spawn(2)[0]``, and a
    generator it has not seen (a reseed) starts from that generator's own spawn count."""
    config = make_config("default")
    core = EdgeTrainingCore(config, 2)
    count = dynamics.episode_draw_count(config)
    mine = [np.random.default_rng(11), np.random.default_rng(12)]
    reference = [np.random.default_rng(11), np.random.default_rng(12)]
    reference[1].spawn(4)  # a generator that spawned before: the core must continue from its count
    mine[1].spawn(4)
    for _ in range(3):
        core.reset(np.arange(2), mine)
        expected = dynamics.sample_episode(config, np.stack([g.spawn(2)[0].random(count) for g in reference]))
        np.testing.assert_array_equal(core.state.seq_len, expected.seq_len)
        np.testing.assert_array_equal(core.state.gain, expected.gain)
        np.testing.assert_array_equal(core.state.device_rate_flops, expected.device_rate_flops)


def test_other_bit_generators_fall_back_to_numpy_spawn() -> None:
    config = make_config("default")
    core = EdgeTrainingCore(config, 1)
    g = np.random.Generator(np.random.Philox(3))
    core.reset(np.arange(1), [g])
    expected = np.random.Generator(np.random.Philox(3)).spawn(2)[0].random(dynamics.episode_draw_count(config))
    np.testing.assert_array_equal(core.state.seq_len, dynamics.sample_episode(config, expected[None]).seq_len)


def _plus_one(x):
    return x + 1


def test_disk_cache_is_flushed_when_the_model_sources_change() -> None:
    """A stamp from other sources makes compile_cached flush numba's cache and write the current stamp."""
    from pathlib import Path

    first = compile_cached(_plus_one)
    assert first(1) == 2
    stamp = Path(first._cache.cache_path) / f"{__name__}._plus_one.sources"
    current = stamp.read_text()
    stamp.write_text("stale")
    second = compile_cached(_plus_one)
    assert second(2) == 3
    assert stamp.read_text() == current
