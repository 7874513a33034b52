"""[LZ24]'s solver ``stable_fp`` (SPEC §6.3): its cost terms against the env's model, the quadratic
transform (tight, an upper bound, monotone), stationarity at convergence, the optimality gap to the
exhaustive oracle, feasibility, the policy interface, fallbacks, and the paper's baselines."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import mec_gym
from agents.base import Policy
from agents.experts import lz24_baselines, lz24_terms, oracle
from agents.experts.stable_fp import (
    Allocation,
    StableFP,
    Trace,
    kkt_residual,
    surrogate_value,
)
from agents.heuristics import GreedyPolicy, RandomPolicy
from mec_gym import make_config
from mec_gym.model import costs, dynamics, reference
from mec_gym.model import decision as decision_model

TINY = {"num_users": 3, "num_servers": 2, "model": "tiny-6l"}


def draw_states(config, count: int, seed: int) -> list[dynamics.SystemState]:
    rng = np.random.default_rng(seed)
    states = dynamics.sample_episode(config, rng.random((count, dynamics.episode_draw_count(config))))
    return [states.select(i) for i in range(count)]


def env_cost(config, state, decision) -> float:
    """−reward of a (batch-of-one) decision, exactly as the env computes it."""
    full = decision_model.complete(config, state, decision)
    return float(-costs.reward_terms(config, costs.evaluate(config, state, full),
                                     reference.reference_scales(config))["reward"][0])


def random_allocation(rng, policy, config, terms, server, alpha) -> Allocation:
    n = len(server)
    x = Allocation(alpha=np.asarray(alpha, dtype=np.float64), frequency=rng.uniform(0.15, 1.0, n),
                   power=rng.uniform(0.02, 1.0, n), bandwidth=rng.uniform(0.01, 1.0, n),
                   compute=rng.uniform(0.01, 1.0, n))
    return policy._share_rules(config, terms, server, x)


# ----------------------------------------------------------------------------- cost terms = the model


@pytest.mark.parametrize("overrides", [
    {},
    TINY,
    {"num_users": 12, "num_servers": 4, "server.energy_model": "time_share", "delay_aggregate": "sum",
     "workload.overhead_s": 0.3, "split_min_local": 0, "weights.energy": 3.0},
])
def test_user_costs_split_the_env_cost_by_user_for_fractional_and_boundary_alpha(overrides):
    # H of [LZ24] P3 is the env's own cost: per user it sums to reward_terms' cost, a batch of candidates
    # scores each row as alone, and a subset of users (``take``) keeps each user's cost
    config = make_config("liu2024", **overrides)
    layers, n, m = config.num_layers, config.num_users, config.num_servers
    rng = np.random.default_rng(1)
    for state in draw_states(config, 3, seed=2):
        terms = lz24_terms.user_terms(config, state)
        server = rng.integers(0, m, n)
        alpha = rng.uniform(0, layers, n)
        alpha[:3] = [0.0, float(layers), 1.0]  # raw-token upload, local-only, the [LZ24] minimum
        rows = []
        for values in (alpha, np.round(alpha)):
            u, p = rng.uniform(0.1, 1, n), rng.uniform(0.01, 2, n)
            bw, phi = rng.uniform(0.01, 0.5, n), rng.uniform(0.01, 0.5, n)
            decision = lz24_terms.to_decision(config, terms, server, values, u, p, bw, phi)
            mine = lz24_terms.user_costs(terms, server, values, u, p, bw, phi)
            rows.append((mine, (server, values, u, p, bw, phi)))
            total = costs.reward_terms(config, costs.evaluate(config, state, decision),
                                       reference.reference_scales(config))["cost"][0]
            assert np.all(mine > 0)
            assert mine.sum() == pytest.approx(total, rel=1e-12)
            assert lz24_terms.model_cost(config, state, decision)[0] == pytest.approx(total, rel=1e-12)
            subset = np.array([n - 1, 1, 0])
            part = lz24_terms.user_costs(terms.take(subset), *(v[subset] for v in rows[-1][1]))
            np.testing.assert_allclose(part, mine[subset], rtol=1e-12)
        batched = lz24_terms.user_costs(terms, *(np.stack([a, b]) for a, b in zip(rows[0][1], rows[1][1],
                                                                                    strict=True)))
        np.testing.assert_allclose(batched, np.stack([rows[0][0], rows[1][0]]), rtol=1e-12)


def test_local_iterations_and_other_unsupported_fields_are_named():
    reasons = lz24_terms.unsupported_reasons(make_config("liu2024", **{"workload.local_iterations": 2}))
    assert len(reasons) == 1 and "local_iterations" in reasons[0]
    assert lz24_terms.unsupported_reasons(make_config("liu2024")) == []


def test_unsupported_scenarios_raise_naming_the_reason():
    with pytest.raises(ValueError, match="objective"):
        StableFP(make_config("qian2024"))
    with pytest.raises(ValueError, match="devices_per_user"):
        StableFP(make_config("collapipe"))
    with pytest.raises(ValueError, match="microbatches"):
        StableFP(make_config("default"))
    with pytest.raises(ValueError, match="alpha"):
        StableFP(alpha="half")
    with pytest.raises(ValueError, match="inner_tol"):
        StableFP(inner_tol=0.0)


# ----------------------------------------------------------------------------- the quadratic transform


@pytest.mark.parametrize("relaxed", [True, False])
def test_surrogate_is_tight_at_its_anchor_and_an_upper_bound_elsewhere(relaxed):
    # [LZ24] eq. (16): K(x; z(x)) = H(x), and x·y ≤ x²z + y²/(4z) makes K ≥ H everywhere. K is the cvxpy
    # objective itself, H the env's cost; zero constraint violation at the model's rate checks the
    # cvxpy rate expression against channel.shannon_rate.
    config = make_config("liu2024", num_users=8, num_servers=3)
    policy = StableFP(config)
    rng = np.random.default_rng(3)
    layers = config.num_layers
    for state in draw_states(config, 2, seed=4):
        terms = lz24_terms.user_terms(config, state)
        server = rng.integers(0, 3, 8)
        alpha = rng.uniform(1, layers - 1, 8) if relaxed else np.array([1, 5, layers, layers, 3, 1, 31, 2.0])
        anchor = random_allocation(rng, policy, config, terms, server, alpha)
        value, violation = surrogate_value(terms, server, anchor, anchor, relaxed)
        assert value == pytest.approx(policy.relaxed_cost(terms, server, anchor).sum(), rel=1e-10)
        assert violation < 1e-9
        for _ in range(50):
            point_alpha = rng.uniform(1, layers - 1, 8) if relaxed else alpha
            point = random_allocation(rng, policy, config, terms, server, point_alpha)
            value, _ = surrogate_value(terms, server, anchor, point, relaxed)
            assert value >= policy.relaxed_cost(terms, server, point).sum() * (1 - 1e-10)


@pytest.mark.parametrize("overrides", [TINY, {"num_users": 10, "num_servers": 3},
                                       dict(TINY, **{"device.cores": (2000, 6000)})])
def test_surrogate_never_increases_across_inner_iterations(overrides):
    # K_i ≥ H_i ≥ K_{i+1} ([LZ24] §4.1): up to the conic solver's accuracy (~1e-8 relative)
    config = make_config("liu2024", **overrides)
    policy = StableFP(config, inner_tol=1e-9, inner_max_iter=40)
    for state in draw_states(config, 2, seed=5):
        _, trace = policy.solve(state)
        assert trace.fallbacks == 0
        assert sum(trace.inner_iterations) >= 2
        for surrogate, relaxed in zip(trace.surrogate, trace.relaxed_objective, strict=True):
            if not surrogate:  # a loop whose start was already stationary to solver accuracy
                continue
            k, h = np.asarray(surrogate), np.asarray(relaxed)
            assert np.all(np.diff(k) <= 1e-6 * abs(k[0])), k
            assert np.all(np.diff(h) <= 1e-9 * abs(h[0])), h
            assert np.all(k >= h * (1 - 1e-6))  # the surrogate bounds the cost it majorizes


@pytest.mark.parametrize(("overrides", "full_shares"), [
    (TINY, True), (dict(TINY, **{"device.cores": (2000, 6000)}), True),
    ({"num_users": 6, "num_servers": 3, "weights.energy": 5.0}, False),
])
def test_relaxed_problem_reaches_a_kkt_point(overrides, full_shares):
    # [LZ24] Proposition 1: the FP limit point is a stationary point of P3 (given the association)
    config = make_config("liu2024", **overrides)
    policy = StableFP(config, inner_tol=1e-11, inner_max_iter=150, share_floor=0.0, full_shares=full_shares)
    rng = np.random.default_rng(0)
    for state in draw_states(config, 2, seed=6):
        terms = lz24_terms.user_terms(config, state)
        server = policy._initial_association(config, state, rng)
        start = policy._initial_allocation(config, terms, server, rng)
        x = policy.fp(config, terms, server, start, True, Trace())
        bounds = policy.bounds(config, terms, server, x, True)
        residual = kkt_residual(terms, server, x, bounds, full_shares)
        assert residual["stationarity"] < 1e-4, residual
        assert residual["complementarity"] < 1e-6, residual
        # the measure is not trivially small: the start (p_max, u = 1, equal shares) is far from stationary
        assert kkt_residual(terms, server, start, bounds, full_shares)["stationarity"] > 1e-3


# ----------------------------------------------------------------------------- optimality and feasibility


@pytest.mark.parametrize("chunk", range(3))
def test_gap_to_the_exhaustive_oracle_on_tiny_instances(chunk):
    # 12 tiny instances here (2 users: the oracle takes seconds each); the notebook reports 50 with 3 users
    config = make_config("liu2024", num_users=2, num_servers=2, model="tiny-6l")
    policy = StableFP(config)
    gaps = []
    for state in oracle.iterate_states(config, 4, seed=20 + chunk):
        best = oracle.solve(config, state)
        decision, trace = policy.solve(state)
        decision_model.validate(config, state, decision)
        assert trace.cost == pytest.approx(env_cost(config, state, decision), rel=1e-12)
        assert trace.cost >= best.bound - 1e-6 * abs(best.bound)  # nothing beats the certified bound
        gaps.append((trace.cost - best.cost) / best.cost)
    assert np.median(gaps) <= 0.03
    assert max(gaps) <= 0.05


def test_decisions_are_feasible_and_beat_greedy_and_random_on_liu2024():
    config = make_config("liu2024", num_users=16, num_servers=4)
    policy = StableFP(config)
    greedy, random_policy = GreedyPolicy(), RandomPolicy()
    greedy.bind(config)
    random_policy.bind(config, seed=0)
    for state in draw_states(config, 10, seed=7):
        decision = policy.decide(state)
        decision_model.validate(config, state, decision)
        assert decision.split.shape == (1, 16, 2) and decision.microbatches is None  # not controlled in liu2024
        cost = env_cost(config, state, decision)
        assert cost == pytest.approx(policy.last_trace["cost"], rel=1e-12)
        assert cost < env_cost(config, state, greedy.decide(state))
        assert cost < env_cost(config, state, random_policy.decide(state))


def test_policy_interface_in_the_env():
    env = gym.make("mec_gym/EdgeTraining-Liu2024-v0", num_users=6, num_servers=2, rounds=2)
    policy = StableFP()
    assert isinstance(policy, Policy) and policy.name == "stable_fp"
    obs, info = env.reset(seed=3)
    policy.reset(env, seed=3)
    action = policy.act(obs, info)
    assert env.action_space.contains(action)
    trace = policy.last_trace
    assert {"objective", "surrogate", "iterations", "solve_time_s", "fallbacks"} <= set(trace)
    assert trace["iterations"] >= 1 and trace["solve_time_s"] > 0 and trace["fallbacks"] == 0
    decision = policy.decide(env.unwrapped.system_state)
    reward_decision = env.unwrapped.step_decision(decision)[1]
    env.reset(seed=3)
    reward_action = env.step(action)[1]  # the Box action decodes to the same decision (float32 aside)
    assert reward_action == pytest.approx(reward_decision, rel=1e-5)
    assert policy.stats["decisions"] == 2 and policy.stats["fallbacks"] == 0
    env.close()


def test_decide_keeps_the_batch_axis_and_is_deterministic():
    config = make_config("liu2024", **TINY)
    states = dynamics.SystemState.concatenate(draw_states(config, 2, seed=8))
    first = StableFP(config, seed=1).decide(states)
    second = StableFP(config, seed=1).decide(states)
    assert first.server.shape == (2, 3)
    decision_model.validate(config, states, first)
    for name in ("split", "server", "power", "bandwidth", "compute", "frequency"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_solver_failures_fall_back_to_a_feasible_counted_decision():
    import cvxpy as cp

    config = make_config("liu2024", num_users=6, num_servers=2)
    state = draw_states(config, 1, seed=9)[0]
    failing = StableFP(config, solvers=((cp.CLARABEL, {"max_iter": 1}),))  # never converges: status not optimal
    decision, trace = failing.solve(state)
    assert trace.fallbacks >= 1
    decision_model.validate(config, state, decision)
    greedy = GreedyPolicy()
    greedy.bind(config)
    # the fallback is the start (greedy association, α minimal, p_max, equal shares): never worse than it
    assert trace.cost <= env_cost(config, state, greedy.decide(state)) + 1e-12


# ----------------------------------------------------------------------------- association step


def test_association_step_moves_to_a_feasible_association_with_the_lp_cost():
    # "one more slot" pair shares make every binary LP point a feasible decision whose cost is the LP's
    config = make_config("liu2024", num_users=12, num_servers=4)
    policy = StableFP(config, association="random")
    rng = np.random.default_rng(0)
    state = draw_states(config, 1, seed=10)[0]
    terms = lz24_terms.user_terms(config, state)
    server = policy._initial_association(config, state, rng)
    start = policy._initial_allocation(config, terms, server, rng)
    x = policy.allocate(config, terms, server, start, Trace(), rng)
    trace = Trace()
    moved = policy.associate(config, terms, server, x, trace, rng)
    assert moved is not None  # a random association is far from any CCCP fixed point
    choice, allocation = moved
    pair_cost, _, _ = policy.pair_costs(terms, server, x)
    decision = lz24_terms.to_decision(config, terms, choice, allocation.alpha, allocation.frequency,
                                      allocation.power, allocation.bandwidth, allocation.compute)
    decision_model.validate(config, state, decision)
    assert pair_cost[np.arange(12), choice].sum() == pytest.approx(env_cost(config, state, decision), rel=1e-10)
    assert pair_cost[np.arange(12), choice].sum() < pair_cost[np.arange(12), server].sum()
    assert all(1 <= its <= policy.cccp_max_iter for its in trace.cccp_iterations[0])
    objective = np.asarray(trace.cccp_objective[0])
    assert np.all(np.diff(objective) <= 1e-9 * abs(objective[0]))  # CCCP descends on P6


def test_full_solver_improves_on_its_greedy_start_and_on_random_association():
    config = make_config("liu2024", num_users=12, num_servers=4)
    for state in draw_states(config, 3, seed=11):
        costs_by = {name: lz24_baselines.make(name, config).solve(state)[1].cost
                    for name in ("stable_fp", "lz24_greedy", "lz24_random")}
        assert costs_by["stable_fp"] <= costs_by["lz24_greedy"] * (1 + 1e-7)  # its start: never worse
        assert costs_by["stable_fp"] < costs_by["lz24_random"]


# ----------------------------------------------------------------------------- baselines


def test_water_fill_and_golden_section_match_closed_forms():
    weights = np.array([1.0, 4.0, 9.0, 2.0, 8.0])
    server = np.array([0, 0, 0, 1, 1])
    shares = lz24_baselines.water_fill(lambda x: weights / x, server, 2, np.ones(5, dtype=bool))
    expected = np.sqrt(weights) / np.bincount(server, weights=np.sqrt(weights))[server]  # argmin Σ c/x, Σx = 1
    np.testing.assert_allclose(shares, expected, rtol=1e-6)
    minimum = lz24_baselines.golden_section(lambda x: (x - np.array([0.3, 2.0, -1.0])) ** 2, np.zeros(3), np.ones(3))
    np.testing.assert_allclose(minimum, [0.3, 1.0, 0.0], atol=1e-9)


def test_baselines_are_feasible_and_ordered_as_the_paper_expects():
    config = make_config("liu2024", num_users=8, num_servers=3)
    state = draw_states(config, 1, seed=12)[0]
    result = {}
    for name in lz24_baselines.LZ24_POLICIES:
        policy = lz24_baselines.make(name, config)
        assert policy.name == name
        decision, trace = policy.solve(state)
        decision_model.validate(config, state, decision)
        result[name] = (trace.cost, decision.split[0, :, 1])
    proposed = result["stable_fp"][0]
    assert result["lz24_ao"][0] == pytest.approx(proposed, rel=1e-3)  # both reach a stationary point
    for worse in ("lz24_alpha_only", "lz24_resources_only", "lz24_random", "lz24_local_only"):
        assert proposed < result[worse][0], worse
    assert np.all(result["lz24_local_only"][1] == config.num_layers)
    assert np.all(result["lz24_edge_only"][1] == config.split_min_local)
    with pytest.raises(ValueError, match="unknown"):
        lz24_baselines.make("lz24_magic", config)


def test_alternating_optimization_never_increases_the_cost():
    config = make_config("liu2024", num_users=6, num_servers=2)
    state = draw_states(config, 1, seed=13)[0]
    _, trace = lz24_baselines.make("lz24_ao", config).solve(state)
    for history in trace.relaxed_objective:
        assert np.all(np.diff(history) <= 1e-12 * abs(history[0]))


def test_env_ids_and_registry_names_are_stable():
    assert "mec_gym/EdgeTraining-Liu2024-v0" in mec_gym.ENV_IDS
    assert set(lz24_baselines.LZ24_POLICIES) >= {"stable_fp", "lz24_ao", "lz24_alpha_only", "lz24_resources_only",
                                                  "lz24_greedy", "lz24_random", "lz24_edge_only", "lz24_local_only"}


def test_benchmark_runs_stable_fp_and_rejects_scenarios_it_cannot_model():
    from agents import benchmark

    assert benchmark.make_policy("stable_fp").name == "stable_fp"
    assert benchmark.make_policy("lz24_greedy").name == "lz24_greedy"
    with pytest.raises(ValueError, match="cannot run on scenario 'collapipe'.*devices_per_user"):
        benchmark.run_benchmark("collapipe", policies=["stable_fp"], seeds=1, rounds=1, oracle_states=0)
    result = benchmark.run_benchmark("liu2024", policies=["stable_fp", "greedy"], seeds=1, rounds=1, oracle_states=0,
                                     overrides={"num_users": 4, "num_servers": 2})
    returns = {r.policy: r.metrics["return"] for r in result.episode_results}
    assert returns["stable_fp"] > returns["greedy"]
