"""The compiled round kernel against the numpy model (mec_gym.model.kernel): same decisions, costs,
rewards, states and observations, whole episodes, every option it supports; and backend selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mec_gym.envs.core import EdgeTrainingCore
from mec_gym.envs.edge_training import EdgeTrainingEnv
from mec_gym.envs.vector import EdgeTrainingVectorEnv
from mec_gym.model import kernel
from mec_gym.model.numeric import PAIRWISE_MAX, pairwise_sum
from mec_gym.scenarios import make_config

VARIANTS = {
    "default": ("default", {}),
    "liu2024": ("liu2024", {}),
    "qian2024-capacity-scr": ("qian2024", {}),
    "default-scr-capacity": ("default", {"objective": "scr", "server.capacity": 5}),
    "default-rules": ("default", {"controls": ("power",)}),  # split, server, shares by their rules
    "default-all-fields": ("default", {"controls": ("split", "server", "power", "bandwidth", "compute",
                                                    "frequency", "microbatches")}),
    "default-deadline-budget": ("default", {"workload.deadline_s": 8.0, "workload.energy_budget_j": 30.0,
                                            "delay_aggregate": "max"}),
    "default-frequency-model": ("default", {"server.energy_model": "frequency", "radio.downlink": False,
                                            "delay_aggregate": "sum", "radio.fading": False}),
    "default-iterations": ("default", {"workload.local_iterations": 2, "workload.stability_samples": 16,
                                       "split_min_local": 3, "head_on_server": True}),
    "default-no-arrivals": ("default", {"workload.arrival_rate": 0.0, "server.saturation_seconds": 0.0,
                                        "server_energy_weight": 0.0}),
}


def _compare(name: str, a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
    if a.dtype.kind in "fc":
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0.0, err_msg=name)  # bit-identical on the dev machine
    else:
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kernel_equals_numpy_model(variant: str) -> None:
    """Two cores on the same seeds and actions, one per backend, through an episode end and a reset."""
    scenario, overrides = VARIANTS[variant]
    config = make_config(scenario, rounds=24, **overrides)
    batch = 9
    fast, slow = EdgeTrainingCore(config, batch, "kernel"), EdgeTrainingCore(config, batch, "numpy")
    assert (fast.backend, slow.backend) == ("kernel", "numpy")
    rng = np.random.default_rng(3)
    generators = [[np.random.default_rng(100 + i) for i in range(batch)] for _ in range(2)]
    for core, gens in zip((fast, slow), generators, strict=True):
        core.reset(np.arange(batch), gens)
    for t in range(40):
        if t == 24:  # new episodes for some environments (the generators continue their spawn counts)
            for core, gens in zip((fast, slow), generators, strict=True):
                core.reset(np.array([1, 4, 8]), [gens[1], gens[4], gens[8]])
        actions = rng.uniform(-1.3, 1.3, (batch, fast.action_width)).astype(np.float32)
        out_fast, out_slow = fast.step_batch(actions), slow.step_batch(actions)
        for label, x, y in zip(("obs", "reward", "truncated"), out_fast[:3], out_slow[:3], strict=True):
            _compare(f"{variant} t={t} {label}", x, y)
        info_fast, info_slow = out_fast[3], out_slow[3]
        assert list(info_fast) == list(info_slow)
        for key in info_slow:
            if key == "repairs":
                for k in info_slow[key]:
                    _compare(f"{variant} t={t} repairs.{k}", info_fast[key][k], info_slow[key][k])
            else:
                _compare(f"{variant} t={t} info.{key}", info_fast[key], info_slow[key])
        for field in dataclasses.fields(fast.state):
            _compare(f"{variant} t={t} state.{field.name}", getattr(fast.state, field.name),
                     getattr(slow.state, field.name))
        np.testing.assert_array_equal(fast.randomness.states, slow.randomness.states)


def test_kernel_repairs_and_drops_are_exercised() -> None:
    """The equality test above is not vacuous: its variants repair decisions and drop updates."""
    config = make_config("default", rounds=24, **{"workload.deadline_s": 8.0, "server.capacity": 5})
    core = EdgeTrainingCore(config, 32, "kernel")
    core.reset(np.arange(32), [np.random.default_rng(i) for i in range(32)])
    totals = {"capacity": 0, "drops": 0}
    for _ in range(8):
        _, _, _, info = core.step_batch(np.random.default_rng(0).uniform(-1, 1, (32, core.action_width)))
        totals["capacity"] += int(info["repairs"]["capacity"].sum())
        totals["drops"] += int(info["drops"].sum())
    assert totals["capacity"] > 0 and totals["drops"] > 0


def test_vector_env_backends_agree() -> None:
    kw = dict(num_envs=5, scenario="default", max_episode_steps=20)
    envs = [EdgeTrainingVectorEnv(backend=b, **kw) for b in ("kernel", "numpy")]
    assert [e.backend for e in envs] == ["kernel", "numpy"]
    outs = [e.reset(seed=7)[0] for e in envs]
    _compare("reset obs", *outs)
    rng = np.random.default_rng(1)
    for t in range(45):
        actions = rng.uniform(-1, 1, envs[0].action_space.shape).astype(np.float32)
        a, b = (e.step(actions) for e in envs)
        for i, label in enumerate(("obs", "reward", "terminated", "truncated")):
            _compare(f"t={t} {label}", a[i], b[i])
        assert set(a[4]) == set(b[4])
    for e in envs:
        e.close()


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("default")
    assert kernel.enabled(config) and kernel.enabled(config, "kernel") and not kernel.enabled(config, "numpy")
    assert not kernel.enabled(make_config("collapipe"))  # D2D chains: the numpy model
    with pytest.raises(ValueError, match="backend: the kernel cannot run this config"):
        kernel.enabled(make_config("collapipe"), "kernel")
    with pytest.raises(ValueError, match="backend: must be 'auto', 'kernel' or 'numpy'"):
        EdgeTrainingEnv(backend="gpu")
    monkeypatch.setenv("MEC_GYM_BACKEND", "numpy")
    assert EdgeTrainingEnv().backend == "numpy"
    assert EdgeTrainingEnv(backend="kernel").backend == "kernel"  # the argument wins over the variable
    monkeypatch.setenv("MEC_GYM_BACKEND", "fast")
    with pytest.raises(ValueError, match="MEC_GYM_BACKEND"):
        EdgeTrainingVectorEnv(num_envs=2)
    monkeypatch.delenv("MEC_GYM_BACKEND")
    assert EdgeTrainingEnv(render_mode="rgb_array").backend == "numpy"  # rendering needs the full metrics
    with pytest.raises(ValueError, match="backend: 'kernel' cannot render"):
        EdgeTrainingEnv(render_mode="rgb_array", backend="kernel")


def test_single_env_backends_agree() -> None:
    envs = [EdgeTrainingEnv(backend=b) for b in ("kernel", "numpy")]
    obs = [e.reset(seed=5)[0] for e in envs]
    _compare("reset", *obs)
    rng = np.random.default_rng(0)
    for t in range(20):
        action = rng.uniform(-1, 1, envs[0].action_space.shape).astype(np.float32)
        (o1, r1, _, tr1, i1), (o2, r2, _, tr2, i2) = (e.step(action) for e in envs)
        _compare(f"t={t} obs", o1, o2)
        assert r1 == pytest.approx(r2, rel=1e-12, abs=0) and tr1 == tr2
        assert set(i1) == set(i2) and i1["repairs"] == i2["repairs"]
        for key in i1:
            if key != "repairs":
                _compare(f"t={t} {key}", np.asarray(i1[key]), np.asarray(i2[key]))
                assert type(i1[key]) is type(i2[key]), key


@pytest.mark.parametrize("count", list(range(0, PAIRWISE_MAX + 1, 1)))
def test_pairwise_sum_equals_numpy_sum(count: int) -> None:
    rng = np.random.default_rng(count)
    values = rng.standard_normal(count + 5) * 10.0 ** rng.uniform(-8, 8, count + 5)
    assert pairwise_sum(values, 3, count) == values[3:3 + count].sum()  # bit for bit


def test_kernel_rejects_bad_actions_like_numpy() -> None:
    env = EdgeTrainingVectorEnv(num_envs=3)
    env.reset(seed=0)
    bad = np.zeros(env.action_space.shape, dtype=np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="action: contains NaN or infinite values"):
        env.step(bad)
    with pytest.raises(ValueError, match="actions: expected shape"):
        env.step(np.zeros((3, 2)))
    env.close()


@pytest.mark.parametrize("backend", ["kernel", "numpy"])
def test_split_repair_keeps_every_layer_when_memory_is_short(backend: str) -> None:
    """A node whose memory holds fewer than split_min_local layers: the repair places what fits and leaves
    the rest on the server, so the layers still sum to Υ (both backends)."""
    config = make_config("default", split_min_local=3)
    core = EdgeTrainingCore(config, 2, backend)
    core.reset(np.arange(2), [np.random.default_rng(i) for i in range(2)])
    core.state.max_layers[:, 0, 0] = 1  # user 0's phone holds one layer
    action = np.full((2, core.action_width), -1.0)  # split weights 0: equal split, then repaired
    _, _, _, info = core.step_batch(action)
    assert np.all(info["local_layers"][:, 0] == 1)
    assert np.all(info["repairs"]["split_min_local"] >= 1)
    from mec_gym.model import decision

    core2 = EdgeTrainingCore(config, 2, "numpy")
    core2.reset(np.arange(2), [np.random.default_rng(i) for i in range(2)])
    core2.state.max_layers[:, 0, 0] = 1
    d, _ = decision.decode(config, core2.state, action)
    assert np.all(d.split.sum(axis=-1) == config.num_layers)
    assert np.all(d.split[:, 0, 1] == 1)
