"""The hot path's faster spellings give exactly the values of the plain numpy spellings they replace.

Large and small batches take different code paths (``mec_gym.model.numeric.LARGE``); every check
compares the two, or the path against the one-call numpy expression, bit for bit. No timings here:
speed is measured by ``mec-gym bench speed``.
"""

from __future__ import annotations

import numpy as np
import pytest

from mec_gym import make_config
from mec_gym.envs.core import EdgeTrainingCore
from mec_gym.model import channel, decision, dynamics, pipeline
from mec_gym.model.numeric import LARGE, divide_where


@pytest.mark.parametrize("size", [5, 40, 4000])
def test_divide_where_equals_masked_divide(size):
    rng = np.random.default_rng(size)
    numerator = rng.uniform(0.0, 2.0, size)
    denominator = rng.uniform(0.0, 2.0, size)
    numerator[::7] = 0.0
    denominator[::5] = 0.0  # zero over zero and x over zero where masked out
    where = numerator > 0
    with np.errstate(divide="ignore"):
        expected = np.divide(numerator, denominator, out=np.zeros(size), where=where)
        got = divide_where(numerator, denominator, where)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(divide_where(numerator, 2.0, np.ones(size, dtype=bool)), numerator / 2.0)


@pytest.mark.parametrize("rate", [0.5, 6.0, 40.0])
def test_poisson_quantile_equals_binary_search(rate):
    rng = np.random.default_rng(1)
    uniforms = rng.random((3000, 20))[:, 2:14]  # strided, as the round's uniforms are
    uniforms[0, :4] = [0.0, 0.5, 1.0 - 2.0**-53, 1.0 / 4096]
    expected = np.searchsorted(dynamics.poisson_cdf(rate), uniforms, side="right")
    np.testing.assert_array_equal(dynamics.poisson_quantile(rate, uniforms), expected)
    np.testing.assert_array_equal(dynamics.poisson_quantile(rate, uniforms[:3]), expected[:3])


def test_first_argmax_equals_argmax_with_ties():
    rng = np.random.default_rng(2)
    scores = rng.choice([-1.0, 0.0, 0.25, 1.0], size=(500, 12, 4))  # many ties
    np.testing.assert_array_equal(decision.first_argmax(scores), np.argmax(scores, axis=-1))


def test_pipeline_stage_list_equals_stage_array():
    rng = np.random.default_rng(3)
    stages = rng.uniform(0.0, 3.0, (3, 200, 12))
    stages[:, ::3] = 0.0
    micro = rng.integers(1, 9, (200, 12))
    expected = pipeline.makespan(pipeline.stage_times(stages, micro, 0.01), micro)
    got = pipeline.makespan(pipeline.stage_times(list(stages), micro, 0.01), micro)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("scenario", ["default", "collapipe"])
def test_large_and_small_batches_give_the_same_rounds(scenario):
    """A batch above ``LARGE`` entries and its members stepped in small batches agree bit for bit."""
    config = make_config(scenario)
    big = max(2 * LARGE // (config.num_users * config.num_servers), 2)
    seeds = [np.random.default_rng(s) for s in range(big)]
    core = EdgeTrainingCore(config, big)
    core.reset(np.arange(big), [np.random.default_rng(s) for s in range(big)])
    small = [EdgeTrainingCore(config, 1) for _ in range(2)]
    for i, c in enumerate(small):
        c.reset(np.zeros(1, dtype=np.int64), [seeds[i]])
    rng = np.random.default_rng(4)
    for _ in range(20):
        actions = rng.uniform(-1.0, 1.0, (big, core.action_width))
        obs, reward, _, info = core.step_batch(actions)
        for i, c in enumerate(small):
            o, r, _, inf = c.step_batch(actions[i:i + 1])
            np.testing.assert_array_equal(o[0], obs[i])
            np.testing.assert_array_equal(r[0], reward[i])
            np.testing.assert_array_equal(inf["latency_s"][0], info["latency_s"][i])
    np.testing.assert_array_equal(small[0].state.gain[0], core.state.gain[0])
    np.testing.assert_array_equal(small[1].state.user_pos_m[0], core.state.user_pos_m[1])


@pytest.mark.parametrize(("batch", "at_rest"), [(600, False), (600, True), (2, False)])
def test_gauss_markov_reflects_like_where(batch, at_rest):
    rng = np.random.default_rng(5)
    position = rng.uniform(0.0, 10.0, (batch, 12, 2))
    velocity = rng.normal(0.0, 3.0, (batch, 12, 2))
    if at_rest:
        velocity[0, 0] = 0.0  # a user at rest keeps no heading
    innovation = rng.normal(size=(batch, 12, 2))
    args = (1.5, 0.5, 0.8, 10.0, 10.0)
    new_position, new_velocity = channel.gauss_markov_step(position, velocity, innovation, *args)
    # the plain spelling of the same update
    speed = np.sqrt(velocity[..., :1] ** 2 + velocity[..., 1:] ** 2)
    heading = np.where(speed > 0, velocity / np.where(speed > 0, speed, 1.0), 0.0)
    v = 0.8 * velocity + (1.0 - 0.8) * 1.5 * heading + np.sqrt(1.0 - 0.8**2) * 0.5 * innovation
    p = position + v * 10.0
    below, above = p < 0.0, p > 10.0
    p = np.where(below, -p, p)
    p = np.clip(np.where(above, 20.0 - p, p), 0.0, 10.0)
    v = np.where(below | above, -v, v)
    assert (below | above).any()
    np.testing.assert_array_equal(new_position, p)
    np.testing.assert_array_equal(new_velocity, v)
