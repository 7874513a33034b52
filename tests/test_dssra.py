"""DSSRA ([CP25], SPEC §6.5) and the TITANIC-like baseline: the chain model equals the env's, the
segment DP equals enumeration, the Lambert-W power equals a numeric minimizer, the bandwidth
bisection is min-max, the Lyapunov queues keep the energy at the budget where the latency-only
variant does not, and DSSRA beats the [CP25] baselines on latency."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import optimize

import mec_gym
from agents import reproduce_collapipe
from agents.experts import dssra
from agents.experts.dssra import DSSRA, DSSRALatencyOnly, chain_cost, chain_tables, partition_dp, row_inputs
from agents.experts.titanic import TitanicPolicy, select_devices
from agents.heuristics import HEURISTICS
from mec_gym.model import costs, dynamics, pipeline
from mec_gym.model import decision as decision_model
from mec_gym.model.decision import Decision

COLLAPIPE = mec_gym.make_config("collapipe")
# small chains: K = 3 (encoder on the chain), the server as a 4th position, and a 2-node chain
# whose server is out of the chain unless it holds layers (raw tokens may go up)
SMALL_CHAINS = {
    "K3": mec_gym.make_config("collapipe", devices_per_user=3),
    "K3+server": mec_gym.make_config("collapipe", devices_per_user=3, split_min_local=4),
    "K2-no-head": mec_gym.make_config("collapipe", devices_per_user=2, split_min_local=0, head_on_server=False),
}


def states(config, count: int, seed: int) -> dynamics.SystemState:
    rng = np.random.default_rng(seed)
    return dynamics.sample_episode(config, rng.random((count, dynamics.episode_draw_count(config))))


def random_decision(config, state, rng) -> Decision:
    """A complete, memory-feasible decision with random split, Q, powers, association."""
    b, n = state.data_queue.shape
    k, layers = config.devices_per_user, config.num_layers
    split = np.zeros((b, n, k + 1), dtype=np.int64)
    for i, u in itertools.product(range(b), range(n)):
        while True:
            server_layers = rng.integers(0, layers - config.split_min_local + 1)
            nodes = rng.multinomial(layers - server_layers, rng.dirichlet(np.ones(k)))
            if (nodes <= state.max_layers[i, u]).all():
                break
        split[i, u] = np.r_[server_layers, nodes]
    return decision_model.complete(config, state, Decision(
        split=split, server=rng.integers(0, config.num_servers, (b, n)),
        microbatches=rng.integers(1, config.workload.max_microbatches + 1, (b, n)),
        power=rng.uniform(config.radio.power_min_w, 0.2, (b, n)),
        d2d_power=rng.uniform(config.radio.power_min_w, config.radio.d2d_power_max_w, (b, n, k))))


def tables_for(config, state, decision):
    """The chain tables of a complete decision (server work of the other users from its split)."""
    work = decision.split[..., 0] * state.batch(config) * (state.forward_flops + state.backward_flops)
    per_server = dynamics.server_totals(work, decision.server, config.num_servers)
    others = per_server[np.arange(work.shape[0])[:, None], decision.server] - work
    rows = row_inputs(config, state, 1)
    tables = chain_tables(config, rows, decision.server.reshape(-1), decision.power.reshape(-1),
                          decision.d2d_power.reshape(-1, config.devices_per_user), decision.bandwidth.reshape(-1),
                          np.maximum(others, 0.0).reshape(-1), np.arange(1, config.workload.max_microbatches + 1))
    return rows, tables


@pytest.mark.parametrize("name", ["collapipe", *SMALL_CHAINS])
def test_chain_cost_equals_env(name):
    """DSSRA's stage tables + pipeline.makespan give the env's latency and device energy."""
    config = COLLAPIPE if name == "collapipe" else SMALL_CHAINS[name]
    state = states(config, 4, 1)
    rng = np.random.default_rng(2)
    decision = random_decision(config, state, rng)
    _, tables = tables_for(config, state, decision)
    cost = chain_cost(config, tables, decision.split.reshape(-1, config.devices_per_user + 1),
                      decision.microbatches.reshape(-1) - 1)
    metrics = costs.evaluate(config, state, decision)
    np.testing.assert_allclose(cost.latency_s, metrics.latency_s.reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(cost.energy_j, metrics.energy_device_j.reshape(-1), rtol=1e-12)


def test_makespan_is_the_envs_function(monkeypatch):
    """The makespan DSSRA optimizes is mec_gym.model.pipeline's (the same object, not a copy)."""
    assert dssra.pipeline is pipeline
    calls = []
    original = pipeline.makespan

    def counting(stage_s, microbatches):
        calls.append(stage_s.shape)
        return original(stage_s, microbatches)

    monkeypatch.setattr(pipeline, "makespan", counting)
    policy = DSSRA()
    policy.bind(COLLAPIPE)
    policy.decide(states(COLLAPIPE, 1, 3))
    assert calls, "DSSRA did not call mec_gym.model.pipeline.makespan"


def _brute_force(config, tables, max_layers, latency_weight, energy_weight):
    """min over every contiguous partition (and Q) of w_T·T + w_E·E by enumeration."""
    k, layers = config.devices_per_user, config.num_layers
    server_position = config.split_min_local < layers
    r = latency_weight.size
    best = np.full(r, np.inf)
    for parts in itertools.product(range(layers + 1), repeat=k + int(server_position)):
        if sum(parts) != layers or sum(parts[:k]) < config.split_min_local:
            continue
        split = np.zeros((r, k + 1), dtype=np.int64)
        split[:, 1:] = parts[:k]
        split[:, 0] = parts[k] if server_position else 0
        fits = (split[:, 1:] <= max_layers).all(axis=-1)
        for q in range(tables.micro_values.size):
            cost = chain_cost(config, tables, split, np.full(r, q))
            best = np.minimum(best, np.where(fits, latency_weight * cost.latency_s + energy_weight * cost.energy_j,
                                             np.inf))
    return best


@pytest.mark.parametrize("name", list(SMALL_CHAINS))
def test_partition_dp_equals_brute_force(name):
    """Block 1's DP (bottleneck enumerated exactly) finds the enumeration's optimum, and its own
    predicted cost is the partition's true cost."""
    config = SMALL_CHAINS[name].override({"workload.max_microbatches": 6})
    state = states(config, 2, 4)
    rng = np.random.default_rng(5)
    decision = random_decision(config, state, rng)
    rows, tables = tables_for(config, state, decision)
    r = rows.sequences.size
    for latency_weight, energy_weight in ((1.0, 1e-6), (1.0, 0.05), (0.02, 1.0), (1e-6, 1.0)):
        wt, we = np.full(r, latency_weight), np.full(r, energy_weight)
        part = partition_dp(config, tables, rows.max_layers, wt, we)
        cost = chain_cost(config, tables, part.split, part.micro_index)
        found = wt * cost.latency_s + we * cost.energy_j
        np.testing.assert_allclose(found, _brute_force(config, tables, rows.max_layers, wt, we), rtol=1e-12)
        np.testing.assert_allclose(part.cost, found, rtol=1e-10)
        assert (part.split[:, 1:] <= rows.max_layers).all()
        assert (part.split.sum(axis=-1) == config.num_layers).all()


def test_partition_dp_respects_memory_on_collapipe():
    config = COLLAPIPE
    state = states(config, 8, 6)
    decision = decision_model.complete(config, state, Decision())
    rows, tables = tables_for(config, state, decision)
    cap = np.minimum(rows.max_layers, 5)
    part = partition_dp(config, tables, cap, np.ones(rows.sequences.size), np.full(rows.sequences.size, 0.1))
    assert (part.split[:, 1:] <= cap).all() and (part.split[:, 0] == 0).all()
    assert (part.split.sum(axis=-1) == config.num_layers).all()


def test_lambert_power_equals_numeric_minimizer():
    """Block 2's closed form minimizes (A + C·p)/log2(1 + γp) on [p_min, p_max] (bounded Brent)."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        gamma = 10 ** rng.uniform(-1, 6)
        a, c = 10 ** rng.uniform(-3, 3), 10 ** rng.uniform(-3, 3)
        low, high = 0.01, 10 ** rng.uniform(-1.5, 0.5)
        closed = float(dssra.lambert_power(np.array(gamma), np.array(a), np.array(c), np.array(low),
                                           np.array(high)))
        numeric = optimize.minimize_scalar(lambda p, g=gamma, a=a, c=c: dssra.link_term(p, g, a, c),
                                           bounds=(low, high), method="bounded", options={"xatol": 1e-12})
        value = dssra.link_term(closed, gamma, a, c)
        assert value <= numeric.fun * (1 + 1e-9)
        assert closed == pytest.approx(numeric.x, rel=1e-3, abs=1e-6)
    # no energy price: full power; no latency weight: the lowest power
    assert dssra.lambert_power(np.array(5.0), np.array(1.0), np.array(0.0), np.array(0.01), np.array(0.2)) == 0.2
    assert dssra.lambert_power(np.array(5.0), np.array(0.0), np.array(1.0), np.array(0.01), np.array(0.2)) == 0.01


def test_share_bandwidth_min_max_on_known_curves():
    """Block 3 (bisection on the deadline) on T_n(β) = a_n/β + c_n: the analytic min-max point."""
    config = COLLAPIPE.override({"num_servers": 1})
    shares = np.geomspace(1e-3, 1.0, 64)
    a = np.array([[3.0, 1.0, 2.0, 0.5]])
    c = np.array([[1.0, 4.0, 0.0, 2.0]])
    latency = a[..., None] / shares + c[..., None]
    server = np.zeros((1, 4), dtype=np.int64)
    beta = dssra.share_bandwidth(config, shares, latency, np.zeros_like(latency), server, np.ones((1, 4), bool),
                                 np.ones((1, 4)), np.zeros((1, 4)))
    tau = optimize.brentq(lambda t: (a / (t - c)).sum() - 1.0, c.max() + 1e-9, 1e6)
    assert beta.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(a / beta + c, tau, rtol=2e-3)


def test_block3_shares_a_base_station_no_worse_than_equal_shares():
    """With two base stations for four clusters, DSSRA's shares sum to 1 per server and its round
    latency is no worse than with the same decision at equal shares."""
    config = COLLAPIPE.override({"num_servers": 2})
    state = states(config, 3, 8)
    policy = DSSRALatencyOnly()
    policy.bind(config)
    decision = policy.decide(state)
    full = decision_model.complete(config, state, decision)
    sums = dynamics.server_totals(full.bandwidth, full.server, config.num_servers)
    assert (sums <= 1 + 1e-9).all()
    equal = decision_model.complete(config, state, Decision(
        split=full.split, server=full.server, power=full.power, d2d_power=full.d2d_power,
        microbatches=full.microbatches))
    assert (costs.evaluate(config, state, full).delay_s
            <= costs.evaluate(config, state, equal).delay_s * (1 + 1e-9)).all()


def test_decisions_feasible_and_within_controls():
    """DSSRA's decisions validate on every preset (controls respected: other fields left to rules)."""
    for name in ("collapipe", "default", "qian2024"):
        config = mec_gym.make_config(name)
        state = states(config, 2, 9)
        policy = DSSRA()
        policy.bind(config)
        decision = policy.decide(state)
        decision_model.validate(config, state, decision)
        for field in ("compute", "frequency"):
            if field not in config.controls:
                assert getattr(decision, field) is None
        assert policy.stats["decisions"] == 1 and policy.stats["fallbacks"] == 0


def test_latency_only_ignores_the_queues():
    state = states(COLLAPIPE, 2, 10)
    loaded = state.copy()
    loaded.energy_queue[:] = 500.0
    policy = DSSRALatencyOnly()
    policy.bind(COLLAPIPE)
    first, second = policy.decide(state), policy.decide(loaded)
    np.testing.assert_array_equal(first.split, second.split)
    np.testing.assert_allclose(first.power, second.power)
    # a finite V with a long queue trades latency for energy
    energy_aware = DSSRA(V=10.0)
    energy_aware.bind(COLLAPIPE)
    calm = costs.evaluate(COLLAPIPE, state, decision_model.complete(COLLAPIPE, state, energy_aware.decide(state)))
    pressed = costs.evaluate(COLLAPIPE, state, decision_model.complete(COLLAPIPE, state, energy_aware.decide(loaded)))
    assert (pressed.energy_device_j.sum(axis=-1) < calm.energy_device_j.sum(axis=-1)).all()


def _run(env, policy, seed):
    env.reset(seed=seed)
    policy.reset(env, seed)
    energy, delay, queue, memory = [], [], [], []
    truncated = False
    while not truncated:
        decision = policy.decide(env.unwrapped.system_state).select(0)
        _, _, _, truncated, info = env.unwrapped.step_decision(decision)
        energy.append(info["energy_device_j"])
        delay.append(info["delay_s"])
        queue.append(info["energy_queue"])
        memory.append(info["peak_memory_bytes"])
    return np.array(energy), np.array(delay), np.array(queue), np.array(memory)


def test_energy_budget_met_by_dssra_violated_by_latency_only():
    """Budget 40 J per cluster and round on the first seed where it is feasible for every cluster
    and binds for one (``binding_seed``: minimum energy averaging below 90 % of it over the first
    rounds, some cluster's latency-optimal energy above 130 %): DSSRA's time-average energy falls to within 5 % of the
    budget with bounded queues (Z_T/T small); the latency-only variant stays above it and its
    queues grow linearly. (The margin is the O(V) backlog: a cluster's minimum energy moves with
    its channel and may touch the budget in some rounds.)"""
    settings = reproduce_collapipe.Settings(budget_j=40.0, seed_base=0)
    budget, rounds = settings.budget_j, 64
    seed = reproduce_collapipe.binding_seed(settings)
    env = mec_gym.EdgeTrainingEnv(scenario="collapipe", rounds=rounds, **{"workload.energy_budget_j": budget})
    energy, _, queue, _ = _run(env, DSSRA(V=100.0), seed=seed)
    average = np.cumsum(energy, axis=0) / np.arange(1, rounds + 1)[:, None]
    worst = average.max(axis=1)
    assert worst[-1] <= budget * 1.05
    assert worst[-1] < worst[7]  # above the budget while the queues build up, then approaching it
    assert queue[-1].max() <= 0.05 * budget * rounds  # Z_T/T → 0: mean-rate stable
    energy, _, queue, _ = _run(env, DSSRALatencyOnly(), seed=seed)
    average = energy.mean(axis=0)
    assert average.max() >= budget * 1.2  # clearly above the budget on average, not just at the start
    assert queue[-1].max() >= 0.2 * budget * rounds


def test_latency_beats_pipeline_and_vanillafl_on_ten_seeds():
    """On 10 seeds of collapipe (its own budget), DSSRA's mean round latency is below PipeLine's
    (uniform_pipeline) and VanillaFL's; TITANIC is measured too."""
    env = mec_gym.EdgeTrainingEnv(scenario="collapipe", rounds=6)
    for seed in range(10):
        mine = _run(env, DSSRA(), seed)[1].mean()
        for name in ("uniform_pipeline", "vanilla_fl"):
            assert mine < _run(env, HEURISTICS[name](), seed)[1].mean(), (seed, name)
        assert mine < _run(env, TitanicPolicy(), seed)[1].mean() * 1.0001, seed


def test_memory_share_cap_halves_peak_memory_against_vanillafl():
    """With no device allowed more than 5/12 of the encoder ([CP25]'s premise), DSSRA's peak
    device memory is below half of VanillaFL's; without the cap DSSRA may hold the whole encoder
    on its most efficient device (D2D hops cost more than the compute they would parallelize)."""
    env = mec_gym.EdgeTrainingEnv(scenario="collapipe", rounds=3)
    capped = _run(env, DSSRA(max_layers_share=5 / 12), seed=3)[3].max()
    vanilla = _run(env, HEURISTICS["vanilla_fl"](), seed=3)[3].max()
    assert capped < 0.5 * vanilla
    with pytest.raises(ValueError, match="max_layers_share"):
        DSSRA(max_layers_share=1 / 12).bind(COLLAPIPE)


def test_dssra_does_not_halve_memory_on_collapipe_and_why():
    """The measured truth on collapipe (issue #7's memory must-show fails for DSSRA as specified):
    DSSRA keeps the encoder on one device in most cluster-rounds, so no round halves VanillaFL's
    memory — and that is the optimum of the per-round problem it solves, not a solver artefact:
    in every round of these seeds the memory-halving decision (DSSRA with ≤ 5/12 of the layers per
    device, same state and queues) has a higher drift-plus-penalty (over 10 seeds × 16 rounds: 159
    of 160 rounds; the exception is a block-coordinate local optimum). The reasons, measured: one D2D hop of an
    iteration's activations and gradients takes longer than the whole encoder's compute on the
    cluster's fastest device, and for the clusters that do not set the round latency (the max over
    clusters) spreading only costs energy."""
    settings = reproduce_collapipe.Settings(sweep_seeds=2, rounds=3)
    diagnosis = reproduce_collapipe.partition_diagnosis(settings)
    summary = diagnosis["summary"]
    assert summary["one_device_share"] >= 0.75 and summary["halving_share"] == 0.0
    objective, halved = np.array(diagnosis["objective"]), np.array(diagnosis["halved_objective"])
    assert (objective <= halved * (1 + 1e-9)).all()
    assert summary["hop_over_compute"] > 1.0
    assert summary["slack_energy_cost_of_halving"] > 0.0 and summary["bottleneck_latency_cost_of_halving"] >= 0.0


def test_dssra_pipelines_when_compute_bound():
    """The partition follows the compute/communication ratio, not a fixed rule: with devices 20×
    slower (utilization 0.05) and a 4× wider D2D band, and no energy pressure (V → ∞), pipelining
    pays and DSSRA spreads the encoder over most of the chain, cutting the peak device memory
    below VanillaFL's."""
    overrides = {"device.utilization": 0.05, "radio.d2d_bandwidth_hz": 40e6}
    env = mec_gym.EdgeTrainingEnv(scenario="collapipe", rounds=2, **overrides)
    env.reset(seed=0)
    config = env.unwrapped.config
    state = env.unwrapped.system_state
    policy = DSSRALatencyOnly()
    policy.reset(env, 0)
    split = decision_model.complete(config, state, policy.decide(state)).split[0, :, 1:]
    baseline = HEURISTICS["vanilla_fl"]()
    baseline.bind(config)
    vanilla = decision_model.complete(config, state, baseline.decide(state)).split[0, :, 1:]
    assert (split > 0).sum(axis=-1).mean() >= 2.5
    assert split.max() < vanilla.max()


def test_titanic_selection_is_the_integer_programs_optimum():
    rng = np.random.default_rng(11)
    for _ in range(30):
        rate = rng.uniform(0.5, 5.0, 5)
        capacity = rng.choice([4, 9, 18], 5)
        budget = int(rng.integers(1, 5))
        chosen = select_devices(rate, capacity, 12, budget)
        feasible = [x for x in itertools.product([0, 1], repeat=5)
                    if sum(x) <= budget and np.dot(x, np.minimum(capacity, 12)) >= 12]
        if feasible:
            best = max(np.dot(x, rate) for x in feasible)
            assert np.dot(chosen, rate) == pytest.approx(best)
            assert chosen.sum() <= budget and np.dot(chosen, np.minimum(capacity, 12)) >= 12
        else:
            assert chosen.all()


def test_titanic_partition_is_static_and_feasible():
    env = mec_gym.EdgeTrainingEnv(scenario="collapipe", rounds=4)
    env.reset(seed=5)
    policy = TitanicPolicy()
    policy.reset(env, 5)
    splits = []
    for _ in range(4):
        state = env.unwrapped.system_state
        decision = policy.decide(state)
        decision_model.validate(COLLAPIPE, state, decision)
        splits.append(decision.split)
        env.unwrapped.step_decision(decision.select(0))
    assert all(np.array_equal(splits[0], s) for s in splits)
    assert ((splits[0][0, :, 1:] > 0).sum(axis=-1) <= math.ceil(COLLAPIPE.devices_per_user / 2)).all()


def test_share_bandwidth_kkt_on_known_curves():
    """Block 3 (KKT, weighted sum) on T_n(β) = a_n/β: the optimum is β_n ∝ √a_n."""
    config = COLLAPIPE.override({"num_servers": 1, "delay_aggregate": "sum"})
    shares = np.geomspace(1e-3, 1.0, 40)
    a = np.array([[3.0, 1.0, 2.0, 0.5]])
    latency = a[..., None] / shares
    beta = dssra.share_bandwidth(config, shares, latency, np.zeros_like(latency), np.zeros((1, 4), dtype=np.int64),
                                 np.ones((1, 4), bool), np.ones((1, 4)), np.zeros((1, 4)))
    assert beta.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(beta, np.sqrt(a) / np.sqrt(a).sum(), rtol=0.02)
