"""Rendering: rgb_array frames for every environment id, human mode on a headless backend, close()."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import mec_gym
from mec_gym import Decision, render

IDS = list(mec_gym.ENV_IDS)


def _assert_frame(frame: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
    assert isinstance(frame, np.ndarray)
    assert frame.dtype == np.uint8
    assert frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[0] > 100 and frame.shape[1] > 100
    if shape is not None:
        assert frame.shape == shape
    assert frame.min() < frame.max(), "frame is blank"


@pytest.mark.parametrize("env_id", IDS)
def test_rgb_array_frames_before_and_after_steps(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=3)
    env.action_space.seed(3)
    before = env.render()
    _assert_frame(before)
    frames = [before]
    for _ in range(3):
        env.step(env.action_space.sample())
        frame = env.render()
        _assert_frame(frame, before.shape)
        frames.append(frame)
    for t in range(1, len(frames)):
        assert not np.array_equal(frames[t - 1], frames[t]), f"the frame did not change at step {t}"
    env.close()


def test_frame_after_reference_decision_and_reset() -> None:
    env = gym.make("mec_gym/EdgeTraining-v0", render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    env.unwrapped.step_decision(Decision())
    _assert_frame(env.render(), first.shape)
    env.reset(seed=0)
    assert np.array_equal(env.render(), first), "a reset with the same seed should redraw the same frame"
    env.close()


def test_collapipe_draws_every_chain_node() -> None:
    env = gym.make("mec_gym/EdgeTraining-CollaPipe-v0", render_mode="rgb_array")
    assert env.unwrapped.config.devices_per_user == 4
    env.reset(seed=1)
    env.step(env.action_space.sample())
    _assert_frame(env.render())
    figure = env.unwrapped._figure
    labels = [text.get_text() for ax in figure.axes if ax.get_legend() for text in ax.get_legend().get_texts()]
    assert labels == ["device node 1", "device node 2", "device node 3", "device node 4", "server"]
    env.close()


def test_render_frame_reuses_the_figure() -> None:
    env = gym.make("mec_gym/EdgeTraining-v0", render_mode="rgb_array")
    env.reset(seed=0)
    env.render()
    figure = env.unwrapped._figure
    n_axes = len(figure.axes)
    env.step(env.action_space.sample())
    env.render()
    assert env.unwrapped._figure is figure
    assert len(figure.axes) >= n_axes  # the twin energy/delay axis appears once there is history
    env.step(env.action_space.sample())
    env.render()
    assert len(figure.axes) == n_axes + 1
    env.close()


def test_human_mode_runs_headless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")
    assert not render._interactive_backend()
    env = gym.make("mec_gym/EdgeTraining-v0", render_mode="human")
    env.reset(seed=0)
    assert env.render() is None
    env.step(env.action_space.sample())
    assert env.render() is None
    assert render._window == {}, "no window on a non-interactive backend"
    env.close()
    assert matplotlib.get_backend().lower() == "agg"


def test_show_reuses_one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")
    monkeypatch.setattr(render, "_interactive_backend", lambda: True)
    env = gym.make("mec_gym/EdgeTraining-v0", render_mode="human")
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*")
        env.render()
        window = render._window["figure"]
        env.step(env.action_space.sample())
        env.render()
    assert render._window["figure"] is window
    shown = np.asarray(render._window["image"].get_array())
    assert shown.shape[2] == 3 and shown.dtype == np.uint8
    render.close()
    render.close()
    assert render._window == {}
    assert not plt.fignum_exists(window.number)
    env.close()


@pytest.mark.parametrize("render_mode", ["rgb_array", "human", None])
def test_close_is_idempotent(render_mode: str | None) -> None:
    env = gym.make("mec_gym/EdgeTraining-v0", render_mode=render_mode)
    env.reset(seed=0)
    if render_mode is not None:
        env.render()
    env.close()
    env.close()
    assert env.unwrapped._figure is None


def test_render_without_mode_warns_and_returns_none() -> None:
    env = gym.make("mec_gym/EdgeTraining-v0")
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None
    env.close()


@pytest.mark.filterwarnings("ignore:.*not in the possible render_modes")
def test_invalid_render_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="render_mode"):
        gym.make("mec_gym/EdgeTraining-v0", render_mode="ansi")
