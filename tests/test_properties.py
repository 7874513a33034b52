"""Property tests (hypothesis) of decoding, feasibility, cost sanity, monotonicity and encode/decode
round trips (SPEC §3.2, §3.7, §4.2, §7)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mec_gym import make_config
from mec_gym.config import CONTROL_FIELDS
from mec_gym.model import channel, costs, decision, dynamics

CONFIGS = {
    "default": make_config("default"),
    "collapipe": make_config("collapipe"),
    "qian2024": make_config("qian2024"),
    "all_controls": make_config("default", controls=CONTROL_FIELDS),
}
BATCH = 2
SETTINGS = settings(max_examples=50, deadline=None)

assert CONFIGS["collapipe"].devices_per_user == 4
assert CONFIGS["qian2024"].server.capacity == 5
assert set(CONFIGS["all_controls"].controls) == set(CONTROL_FIELDS) and len(CONTROL_FIELDS) == 7


def _state(config, seed: int) -> dynamics.SystemState:
    rng = np.random.default_rng(seed)
    return dynamics.sample_episode(config, rng.random((BATCH, dynamics.episode_draw_count(config))))


@st.composite
def scenario_state_action(draw, names=tuple(CONFIGS)):
    """(name, config, state, action): a random state and an action in [-1, 1], with extremes and ties."""
    name = draw(st.sampled_from(names))
    config = CONFIGS[name]
    state = _state(config, draw(st.integers(0, 2**31 - 1)))
    width = config.num_users * decision.action_dim_per_user(config)
    elements = st.one_of(st.floats(-1.0, 1.0, allow_nan=False, width=32), st.sampled_from([-1.0, 0.0, 1.0]))
    action = draw(hnp.arrays(np.float64, (BATCH, width), elements=elements))
    return name, config, state, action


def _share_sums(share: np.ndarray, server: np.ndarray, num_servers: int) -> np.ndarray:
    return np.stack([np.bincount(server[i], weights=share[i], minlength=num_servers) for i in range(len(share))])


@SETTINGS
@given(scenario_state_action())
def test_decoded_decisions_are_feasible(case):
    name, config, state, action = case
    d, repairs = decision.decode(config, state, action)
    b, n = state.data_queue.shape
    k, m = config.devices_per_user, config.num_servers
    radio = config.radio

    # split: integers, ≥ 0, Σ = Υ, α ≥ split_min_local, nodes within memory
    assert d.split.shape == (b, n, k + 1) and np.issubdtype(d.split.dtype, np.integer)
    assert np.all(d.split >= 0)
    assert np.all(d.split.sum(axis=-1) == config.num_layers)
    assert np.all(d.split[..., 1:].sum(axis=-1) >= config.split_min_local)
    assert np.all(d.split[..., 1:] <= state.max_layers)
    # association in range, capacity respected
    assert d.server.shape == (b, n) and np.all((d.server >= 0) & (d.server < m))
    if config.server.capacity:
        counts = np.stack([np.bincount(d.server[i], minlength=m) for i in range(b)])
        assert np.all(counts <= config.server.capacity)
    # shares ≥ 0 and Σ per server ≤ 1; compute > 0 exactly for users with server layers
    for field in ("bandwidth", "compute"):
        share = getattr(d, field)
        assert np.all(share >= 0)
        assert np.all(_share_sums(share, d.server, m) <= 1.0 + 1e-9)
    assert np.all(d.bandwidth > 0)
    assert np.all((d.compute > 0) == (d.split[..., 0] > 0))
    # powers, frequencies, micro-batches in range
    assert np.all(d.power >= radio.power_min_w - 1e-12) and np.all(d.power <= state.power_max_w + 1e-12)
    if k > 1:
        assert d.d2d_power.shape == (b, n, k)
        assert np.all(d.d2d_power >= radio.power_min_w - 1e-12)
        assert np.all(d.d2d_power <= radio.d2d_power_max_w + 1e-12)
    assert d.frequency.shape == (b, n, k)
    assert np.all(d.frequency >= config.device.frequency_min - 1e-12) and np.all(d.frequency <= 1.0 + 1e-12)
    assert np.all((d.microbatches >= 1) & (d.microbatches <= config.workload.max_microbatches))
    # uncontrolled fields follow their rules
    if "frequency" not in config.controls:
        assert np.all(d.frequency == 1.0)
    if "microbatches" not in config.controls:
        assert np.all(d.microbatches == config.workload.microbatches)
    if "power" not in config.controls:
        assert np.all(d.power == state.power_max_w)
    # repair counts are non-negative per batch member
    for count in repairs.values():
        assert count.shape == (b,) and np.all(count >= 0)
    # and the validator used for expert decisions accepts it
    decision.validate(config, state, d)


@SETTINGS
@given(scenario_state_action())
def test_costs_of_decoded_decisions_are_finite_and_nonnegative(case):
    _, config, state, action = case
    d, _ = decision.decode(config, state, action)
    metrics = costs.evaluate(config, state, d)
    for field in ("latency_s", "forward_s", "backward_s", "aggregation_s", "energy_device_j", "energy_server_j",
                  "energy_j_user", "node_energy_j", "stability", "memory_bytes", "energy_j", "delay_s",
                  "stability_mean"):
        value = getattr(metrics, field)
        assert np.all(np.isfinite(value)), field
        assert np.all(value >= 0), field
    active = metrics.sequences > 0
    assert np.all(metrics.latency_s[active] > 0)
    assert np.all(metrics.energy_device_j[active] > 0)
    np.testing.assert_allclose(metrics.energy_j, metrics.energy_j_user.sum(axis=-1), rtol=1e-12)
    np.testing.assert_allclose(metrics.energy_device_j, metrics.node_energy_j.sum(axis=-1), rtol=1e-12)
    np.testing.assert_allclose(metrics.latency_s, metrics.forward_s + metrics.backward_s + metrics.aggregation_s,
                               rtol=1e-12)
    assert np.all(metrics.memory_bytes <= state.device_memory_bytes * (1 + 1e-12))


@SETTINGS
@given(bandwidth=st.floats(1e3, 1e8), extra=st.floats(0.0, 1e8), gain=st.floats(1e-16, 1e-6),
       power=st.floats(1e-3, 5.0), more_power=st.floats(0.0, 5.0))
def test_shannon_rate_monotone(bandwidth, extra, gain, power, more_power):
    noise = channel.noise_psd_w_per_hz(-174.0, 9.0)
    base = channel.shannon_rate(np.array(bandwidth), gain, power, noise)
    wider = channel.shannon_rate(np.array(bandwidth + extra), gain, power, noise)
    louder = channel.shannon_rate(np.array(bandwidth), gain, power + more_power, noise)
    assert base > 0
    assert wider >= base * (1 - 1e-12)
    assert louder >= base * (1 - 1e-12)


def _upload_parts(metrics, b, n):
    return metrics.uplink_rate_bps[b, n], metrics.forward_s[b, n], metrics.aggregation_s[b, n], metrics.latency_s[b, n]


def _assert_not_slower(before, after):
    rate0, fwd0, agg0, lat0 = before
    rate1, fwd1, agg1, lat1 = after
    assert rate1 >= rate0 * (1 - 1e-12)
    assert fwd1 <= fwd0 * (1 + 1e-12)
    assert agg1 <= agg0 * (1 + 1e-12)
    assert lat1 <= lat0 * (1 + 1e-12)


@SETTINGS
@given(case=scenario_state_action(), user=st.integers(0, 10**6), fraction=st.floats(0.0, 1.0))
def test_more_bandwidth_never_slows_the_upload(case, user, fraction):
    """Give user n a larger share of its server's band, taken proportionally from the others on that
    server (Σ stays ≤ 1): its uplink rate never falls, its forward pass, aggregation upload and round
    latency never grow."""
    _, config, state, action = case
    d, _ = decision.decode(config, state, action)
    n = user % config.num_users
    before = costs.evaluate(config, state, d)
    more = d.copy()
    for b in range(BATCH):
        mates = d.server[b] == d.server[b, n]
        mates[n] = False
        old = d.bandwidth[b, n]
        new = old + fraction * (1.0 - old) * (0.999 if mates.any() else 1.0)  # others keep a share > 0
        rest = d.bandwidth[b, mates].sum()
        if rest > 1.0 - new:  # take the extra from the other users of the server, proportionally
            more.bandwidth[b, mates] = d.bandwidth[b, mates] * (1.0 - new) / rest
        more.bandwidth[b, n] = new
        assert _share_sums(more.bandwidth[b:b + 1], more.server[b:b + 1], config.num_servers).max() <= 1 + 1e-9
    after = costs.evaluate(config, state, more)
    for b in range(BATCH):
        _assert_not_slower(_upload_parts(before, b, n), _upload_parts(after, b, n))


@SETTINGS
@given(case=scenario_state_action(), user=st.integers(0, 10**6), fraction=st.floats(0.0, 1.0))
def test_more_power_never_slows_the_upload(case, user, fraction):
    _, config, state, action = case
    d, _ = decision.decode(config, state, action)
    n = user % config.num_users
    before = costs.evaluate(config, state, d)
    more = d.copy()
    more.power[:, n] = d.power[:, n] + fraction * (state.power_max_w[:, n] - d.power[:, n])
    after = costs.evaluate(config, state, more)
    for b in range(BATCH):
        _assert_not_slower(_upload_parts(before, b, n), _upload_parts(after, b, n))


@SETTINGS
@given(scenario_state_action())
def test_encode_decode_round_trip(case):
    name, config, state, action = case
    d, _ = decision.decode(config, state, action)
    encoded = decision.encode(config, state, d)
    assert encoded.dtype == np.float32 and encoded.shape == action.shape
    assert np.all((encoded >= -1) & (encoded <= 1))
    again, repairs = decision.decode(config, state, encoded)
    for field in ("split", "server", "microbatches"):
        np.testing.assert_array_equal(getattr(again, field), getattr(d, field), err_msg=field)
    for count in repairs.values():
        assert np.all(count == 0)
    # continuous fields: the float32 action resolves a level to ~6e-8, so compare to 1e-6 of each range
    radio, u_min = config.radio, config.device.frequency_min
    ranges = {
        "power": state.power_max_w - radio.power_min_w,
        "d2d_power": radio.d2d_power_max_w - radio.power_min_w,
        "bandwidth": 1.0,
        "compute": 1.0,
        "frequency": 1.0 - u_min,
    }
    for field, span in ranges.items():
        x, y = getattr(d, field), getattr(again, field)
        assert x.shape == y.shape, field
        if x.size == 0:
            continue
        assert np.all(np.abs(x - y) <= 1e-6 * np.broadcast_to(span, x.shape)), (field, np.max(np.abs(x - y)))
        if field in ("bandwidth", "compute"):  # shares also to 1e-6 relative
            np.testing.assert_allclose(y, x, rtol=1e-6, atol=0, err_msg=field)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_of_rule_decision_round_trips(name):
    """The reference decision (every field by its rule) is reachable through the action space."""
    config = CONFIGS[name]
    state = _state(config, 11)
    rules = decision.complete(config, state, decision.Decision())
    again, _ = decision.decode(config, state, decision.encode(config, state, rules))
    np.testing.assert_array_equal(again.split, rules.split)
    np.testing.assert_array_equal(again.server, rules.server)
    np.testing.assert_allclose(again.bandwidth, rules.bandwidth, rtol=1e-6)
    np.testing.assert_allclose(again.power, rules.power, rtol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rule_decision_is_feasible(name):
    """The rules of SPEC §3.2 (the reference policy: nearest server, α = split_min_local, p_max, equal
    shares) give a feasible decision in every state, server capacity included."""
    config = CONFIGS[name]
    rng = np.random.default_rng(21)
    state = dynamics.sample_episode(config, rng.random((64, dynamics.episode_draw_count(config))))
    rules = decision.complete(config, state, decision.Decision())
    decision.validate(config, state, rules)
    if config.server.capacity:
        counts = np.stack([np.bincount(s, minlength=config.num_servers) for s in rules.server])
        assert np.all(counts <= config.server.capacity)
    else:  # without a capacity the rule is the strongest average channel
        strength = state.gain / (state.fading[..., 0] ** 2 + state.fading[..., 1] ** 2)
        np.testing.assert_array_equal(rules.server, np.argmax(strength, axis=-1))
