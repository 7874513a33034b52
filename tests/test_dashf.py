"""DASHF ([QZ24], SPEC §6.4): its formulas against the model, its relaxation, its guarantees
(non-decreasing λ, feasible decisions, solver-failure fallbacks) and its quality against the baselines
and the exhaustive association bound."""

from __future__ import annotations

import dataclasses

import cvxpy as cp
import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mec_gym
from agents.experts import dashf
from agents.experts.dashf import (
    AssociationSDP,
    DashfPolicy,
    DashfSettings,
    DashfSolver,
    ExactScore,
    compute_shares,
    gaussian_candidates,
    hungarian_association,
    local_frequency,
    pair_terms,
    user_terms,
)
from agents.experts.dashf_baselines import (
    BASELINES,
    DashfGreedyAssociation,
    DashfOffloadingOnly,
    DashfRandomAssociation,
    DashfResourcesOnly,
    exhaustive_association,
    feasible_associations,
)
from agents.heuristics import EqualSharePolicy
from mec_gym import make_config
from mec_gym.model import channel, costs, dynamics
from mec_gym.model.decision import Decision, complete, validate
from mec_gym.model.dynamics import server_totals

FAST = DashfSettings(samples=16)
TIE = 1e-6  # SCRs this close (relative) are equal: the solvers stop at ~1e-8, the FP/Dinkelbach loops at 1e-7/1e-4


def one_state(config, seed: int) -> dynamics.SystemState:
    uniforms = np.random.default_rng(seed).random((1, dynamics.episode_draw_count(config)))
    return dynamics.sample_episode(config, uniforms)


def scr_of(config, state, decision: Decision) -> float:
    return float(ExactScore(config, state).totals(complete(config, state, decision))[2][0])


def assert_feasible(config, state, decision: Decision) -> None:
    """The env accepts it, and the constraints DASHF is responsible for hold explicitly."""
    validate(config, state, decision)
    d = complete(config, state, decision)
    m = config.num_servers
    assert d.server.shape == (1, config.num_users) and np.all((d.server >= 0) & (d.server < m))
    if config.server.capacity:
        assert np.all(server_totals(np.ones(d.server.shape), d.server, m) <= config.server.capacity)
    for share in (d.bandwidth, d.compute):
        assert np.all(share >= 0) and np.all(server_totals(share, d.server, m) <= 1 + 1e-9)
    assert np.all(d.bandwidth > 0) and np.all(d.compute[d.split[..., 0] > 0] > 0)
    assert np.all((d.power >= config.radio.power_min_w - 1e-12) & (d.power <= state.power_max_w + 1e-12))
    assert np.all((d.frequency >= config.device.frequency_min - 1e-12) & (d.frequency <= 1 + 1e-12))


def random_decisions(config, state, count: int, rng: np.random.Generator) -> tuple[Decision, dict]:
    n, m, layers = config.num_users, config.num_servers, config.num_layers
    delta = rng.integers(0, layers - config.split_min_local + 1, size=(count, n))
    delta[:, 0] = 0  # local-only user (no activations, no server)
    delta[:, 1] = layers - config.split_min_local
    server = rng.integers(0, m, size=(count, n))
    raw = dict(server=server, delta=delta, compute_share=rng.uniform(0.05, 1.0, (count, n)),
               bandwidth=rng.uniform(0.05, 1.0, (count, n)),
               power=rng.uniform(config.radio.power_min_w, 1.0, (count, n)) * state.power_max_w,
               frequency=rng.uniform(config.device.frequency_min, 1.0, (count, n)))
    decision = Decision(split=np.stack([delta, layers - delta], axis=-1), server=server, power=raw["power"],
                        bandwidth=raw["bandwidth"], compute=raw["compute_share"], frequency=raw["frequency"][..., None])
    return decision, raw


@pytest.mark.parametrize("overrides", [
    {},
    {"radio.downlink": True, "server.energy_model": "time_share", "split_min_local": 0,
     "server.load_levels": (0.3, 0.6), "weights.energy": 2.0, "workload.local_iterations": 3},
])
def test_pair_terms_reproduce_the_model_user_by_user(overrides) -> None:
    """The coefficient form every surrogate is built from equals costs.evaluate (the cvxpy forms' source)."""
    config = make_config("qian2024", **overrides)
    state = one_state(config, 3)
    decision, raw = random_decisions(config, state, 6, np.random.default_rng(0))
    tiled = dashf.tile_state(state, 6)
    metrics = costs.evaluate(config, tiled, complete(config, tiled, decision))
    terms = pair_terms(config, state)
    ours = user_terms(terms, raw["server"], raw["delta"], raw["compute_share"], raw["bandwidth"], raw["power"],
                      raw["frequency"])
    np.testing.assert_allclose(ours["latency_s"], metrics.latency_s, rtol=1e-10)
    np.testing.assert_allclose(ours["energy_j"], metrics.energy_j_user, rtol=1e-10)
    np.testing.assert_allclose(ours["stability"], metrics.stability, rtol=1e-12)
    np.testing.assert_allclose(ours["service"], metrics.service, rtol=1e-12)
    # the per-user gains sum to the Dinkelbach objective N − λD of the env's SCR
    score = ExactScore(config, state)
    num, den, _ = score.totals(decision)
    lam = 0.3
    np.testing.assert_allclose(score.user_gains(decision, terms, lam).sum(axis=1), num - lam * den, rtol=1e-10)
    np.testing.assert_allclose(num / den, costs.reward_terms(config, metrics, score.scales)["scr"], rtol=1e-12)


def test_rate_in_dcp_form_is_the_shannon_rate() -> None:
    """Block B's rate constraint (−rel_entr(βW, βW + g·p/N0)/ln 2, centered at any SNR c̄) is the model's rate."""
    config = make_config("qian2024")
    terms = pair_terms(config, one_state(config, 1))
    rng = np.random.default_rng(2)
    share, power = rng.uniform(0.01, 1.0, 10), rng.uniform(0.01, 2.0, 10)
    gain = terms.gain[:, 0]
    band = np.full(10, terms.bandwidth_mhz)
    signal = gain * power / terms.noise_w_per_mhz
    model = channel.shannon_rate(share * config.server.bandwidth_hz, gain, power,
                                 channel.noise_psd_w_per_hz(config.radio.noise_psd_dbm_hz, 0.0)) / 1e6
    for center_share, center_power in ((share, power), (np.full(10, 0.3), np.full(10, 1.0))):
        log_center, over_center = dashf.rate_center(band, center_share, gain * center_power / terms.noise_w_per_mhz)
        dcp = dashf.centered_rate_mbps(cp.Constant(share), band, log_center, over_center,
                                       cp.Constant(signal * over_center / band))
        assert dcp.is_concave()
        np.testing.assert_allclose(dcp.value, model, rtol=1e-10)


def test_closed_forms_minimize_their_costs() -> None:
    """DVFS u* and the KKT compute shares are the minimizers of the model's per-layer costs."""
    config = make_config("qian2024")
    state = one_state(config, 4)
    terms = pair_terms(config, state)
    grid = np.linspace(config.device.frequency_min, 1.0, 2001)[:, None]
    cost = terms.kappa_delay * terms.local_delay_s / grid + terms.kappa_energy * terms.local_energy_j * grid**2
    best = local_frequency(terms)
    assert np.all(terms.kappa_delay * terms.local_delay_s / best + terms.kappa_energy * terms.local_energy_j * best**2
                  <= cost.min(axis=0) + 1e-12)
    server = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1, 0])
    users = np.arange(10)
    for exponent, scale in ((2, 1.0), (2, 300.0), (0, 1.0)):  # interior optimum, binding Σ φ = 1, time-share
        terms.energy_exponent = exponent
        delta = np.full(10, 31)
        b = delta * terms.kappa_delay * terms.server_delay_s[users, server]
        c = scale * delta * terms.kappa_energy * terms.server_energy_j[users, server] * (exponent == 2)
        terms.server_energy_j = terms.server_energy_j * scale
        phi = compute_shares(terms, server, delta, 2)
        terms.server_energy_j = terms.server_energy_j / scale
        var = cp.Variable(10, pos=True)
        onehot = (server[None, :] == np.arange(2)[:, None]).astype(float)
        problem = cp.Problem(cp.Minimize(b @ cp.inv_pos(var) + c @ cp.square(var)), [onehot @ var <= 1])
        problem.solve(solver="CLARABEL")
        ours = float(b @ (1 / phi) + c @ phi**2)
        assert np.all(onehot @ phi <= 1 + 1e-12)
        assert ours <= problem.value * (1 + 1e-6)


def _dense_relaxation(sdp: AssociationSDP) -> float:
    """The same SDR with one dense (K+1)² PSD variable: Grone's theorem says the optimum is the same."""
    n, m = sdp.n, sdp.m
    size = sdp.size
    w_bar = cp.Variable((size + 1, size + 1), PSD=True)
    last = size
    pu = np.repeat(np.arange(n), m)
    x, rho, o = w_bar[sdp.ix, last], w_bar[sdp.irho, last], w_bar[sdp.io, last]
    phi, t = w_bar[sdp.iphi, last], w_bar[sdp.it, last]
    y, z = w_bar[sdp.ix, sdp.irho[pu]], w_bar[sdp.ix, sdp.io[pu]]
    rho_phi, phi_t, t_sq = w_bar[sdp.irho[pu], sdp.iphi], w_bar[sdp.it, sdp.iphi], w_bar[sdp.it, sdp.it]
    phi_sq, rho_sq = w_bar[sdp.iphi, sdp.iphi], w_bar[sdp.irho, sdp.irho]
    lo, hi = sdp.rho_low.value[pu], sdp.rho_high.value[pu]
    user_sum, server_sum = np.kron(np.eye(n), np.ones((1, m))), np.kron(np.ones((1, n)), np.eye(m))
    cons = [w_bar[last, last] == 1, w_bar[sdp.ix, sdp.ix] == x, w_bar[sdp.io, sdp.io] == o,
            w_bar[sdp.irho, sdp.io] == rho, w_bar[sdp.ix, sdp.iphi] == phi, w_bar[sdp.ix, sdp.it] == t,
            user_sum @ x == 1, server_sum @ x <= sdp.capacity,
            rho >= sdp.rho_low.value, rho <= cp.multiply(sdp.rho_high.value, o),
            y >= cp.multiply(lo, x), y <= cp.multiply(hi, z),
            y >= rho[pu] - cp.multiply(hi, 1 - x), y <= rho[pu] - cp.multiply(lo, 1 - x), user_sum @ y == rho,
            z >= 0, z <= x, z <= o[pu], z >= x + o[pu] - 1, user_sum @ z == o,
            phi >= sdp.PHI_MIN * z, phi <= z, server_sum @ phi <= 1, t >= 0,
            t <= cp.multiply(sdp.t_max.value, x), phi_t >= cp.multiply(sdp.beta.value, y), t >= phi_t,
            t_sq <= cp.multiply(sdp.t_max.value, t), phi_sq <= phi, rho_phi <= cp.multiply(hi, phi),
            rho_phi >= cp.multiply(lo, phi), rho_phi <= y]
    cons += [w_bar[sdp.ix[u * m + a], sdp.ix[u * m + b]] == 0 for u in range(n) for a in range(m) for b in range(m)
             if a != b]
    for slope, curvature in sdp.cuts:
        cons.append(t >= cp.multiply(slope.value, y) - cp.multiply(curvature.value, rho_phi))
    objective = (sdp.x_gain.value @ x + sdp.y_gain.value @ y - sdp.z_cost.value @ z + sdp.rho_gain.value @ rho
                 - cp.sum(t) - sdp.phi_square.value @ phi_sq
                 - sdp.TRACE_WEIGHT * (cp.sum(rho_sq) + cp.sum(phi_sq) + cp.sum(t_sq)))
    problem = cp.Problem(cp.Maximize(objective), cons)
    problem.solve(solver="CLARABEL")
    return float(problem.value)


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_chordal_relaxation_equals_the_dense_sdr_and_completes_to_psd() -> None:
    config = make_config("qian2024", num_users=3, **{"server.capacity": 2})
    state = one_state(config, 5)
    solver = DashfSolver(config, FAST)
    terms = pair_terms(config, state)
    point = solver._enforce(state, solver._initial(state, None))
    sdp = AssociationSDP(3, 2, 2, FAST.tangent_shares)
    sdp.set(**solver._qcqp_data(terms, point, lam=0.2))
    lifted, status = sdp.solve(("CLARABEL",))
    assert status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and lifted is not None
    assert sdp.problem.value == pytest.approx(_dense_relaxation(sdp), rel=1e-5, abs=1e-7)
    assert np.linalg.eigvalsh(lifted).min() >= -1e-7  # the max-determinant completion is PSD
    np.testing.assert_allclose(lifted[sdp.ix, -1], sdp.x.value, atol=1e-12)
    np.testing.assert_allclose(lifted[sdp.it, sdp.iphi], sdp.phi_t.value, atol=1e-7)  # up to the PSD clip


def test_rank_one_recovery_of_a_rank_one_matrix_returns_its_vector() -> None:
    w = np.array([1.0, 0.0, 0.7, 0.2, 3.0])
    lifted = np.outer(np.append(w, 1.0), np.append(w, 1.0))
    w_star, eig, draws, ratio = gaussian_candidates(lifted, 5, np.random.default_rng(0))
    np.testing.assert_allclose(w_star, w)
    np.testing.assert_allclose(eig, w, atol=1e-8)
    np.testing.assert_allclose(draws, np.tile(w, (5, 1)), atol=1e-6)
    assert ratio == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 7), st.integers(1, 3), st.integers(0, 10_000))
def test_hungarian_gives_each_user_one_server_within_capacity(n: int, m: int, seed: int) -> None:
    capacity = -(-n // m)
    scores = np.random.default_rng(seed).normal(size=(n, m))
    server = hungarian_association(scores, capacity)
    assert server.shape == (n,) and np.all((server >= 0) & (server < m))
    assert np.all(np.bincount(server, minlength=m) <= capacity)
    # optimal among all capacity-feasible associations
    config = make_config("qian2024", num_users=n, num_servers=m, **{"server.capacity": capacity})
    patterns = feasible_associations(config)
    assert scores[np.arange(n), server].sum() >= (scores[np.arange(n), patterns]).sum(axis=1).max() - 1e-12


def test_lambda_never_decreases_and_every_decision_is_feasible() -> None:
    config = make_config("qian2024")
    for seed in (0, 7):
        state = one_state(config, seed)
        result = DashfSolver(config, FAST).solve(state)
        trace = result.trace
        assert np.all(np.diff(trace.lambdas) >= 0.0)
        assert trace.lambdas[-1] > trace.lambdas[0]  # strictly better than the equal-share start
        assert trace.scr == pytest.approx(trace.lambdas[-1], rel=1e-12)
        assert trace.block_a_solves >= 1 and trace.sdp_fallbacks == 0
        assert len(trace.rank_one_ratio) == trace.block_a_solves
        assert_feasible(config, state, result.decision)


def test_sdp_failure_falls_back_to_a_feasible_association(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inject SolverError into every SDP solve: Block A falls back to the Hungarian step on the per-pair
    Dinkelbach gains, counts the fallbacks, and DASHF still improves monotonically and stays feasible."""
    real_solve = cp.Problem.solve

    def failing(problem, *args, **kwargs):
        if any(isinstance(c, cp.constraints.PSD) for c in problem.constraints):
            raise cp.error.SolverError("injected SDP failure")
        return real_solve(problem, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", failing)
    config = make_config("qian2024")
    state = one_state(config, 0)
    result = DashfSolver(config, FAST).solve(state)
    trace = result.trace
    assert trace.sdp_fallbacks == trace.block_a_solves >= 1
    assert trace.rank_one_ratio == [] and trace.candidate_wins.get("randomization", 0) == 0
    assert np.all(np.diff(trace.lambdas) >= 0.0) and trace.lambdas[-1] > trace.lambdas[0]
    assert_feasible(config, state, result.decision)


def test_every_solver_failing_still_returns_a_feasible_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(problem, *args, **kwargs):
        raise cp.error.SolverError("injected failure")

    monkeypatch.setattr(cp.Problem, "solve", failing)
    config = make_config("qian2024", num_users=4)
    state = one_state(config, 1)
    result = DashfSolver(config, FAST).solve(state)
    assert result.trace.sdp_fallbacks >= 1 and result.trace.radio_fallbacks >= 1
    assert np.all(np.diff(result.trace.lambdas) >= 0.0)
    assert_feasible(config, state, result.decision)


def test_dashf_beats_the_baselines_and_meets_the_exhaustive_bound() -> None:
    """Small instance (N = 6, M = 2, K_m = 3: 20 associations) so the exhaustive search is cheap."""
    config = make_config("qian2024", num_users=6, **{"server.capacity": 3})
    for seed in (0,):
        state = one_state(config, seed)
        ours = DashfPolicy(FAST)
        ours.bind(config, seed=seed)
        decision = ours.decide(state)
        value = scr_of(config, state, decision)
        bound = exhaustive_association(config, state, FAST).values.max()
        assert value >= 0.97 * bound
        for cls in (DashfRandomAssociation, DashfGreedyAssociation, DashfOffloadingOnly, DashfResourcesOnly,
                    EqualSharePolicy):
            baseline = cls()
            baseline.bind(config, seed=seed)
            other = baseline.decide(state)
            assert_feasible(config, state, other)
            assert value >= scr_of(config, state, other) * (1 - TIE), cls.name


def test_dashf_finds_the_best_association_when_some_users_train_locally() -> None:
    """A 6-layer model makes local-only users (no activation upload) optimal for some users: the QCQP's
    offload indicator and per-pair shares must still lead DASHF to the exhaustive search's association."""
    config = make_config("qian2024", num_users=3, model="tiny-6l", **{"server.capacity": 2})
    local_only = 0
    for seed in range(6):
        state = one_state(config, seed)
        result = DashfSolver(config, FAST).solve(state)
        local_only += int(np.sum(result.decision.split[0, :, 0] == 0))
        assert result.trace.scr >= exhaustive_association(config, state, FAST).values.max() * (1 - TIE), seed
    assert local_only > 0  # the regime is exercised


def test_dashf_beats_the_cheap_baselines_on_qian2024() -> None:
    config = make_config("qian2024")
    state = one_state(config, 11)
    ours = DashfPolicy(FAST)
    ours.bind(config, seed=11)
    value = scr_of(config, state, ours.decide(state))
    for cls in (DashfRandomAssociation, DashfGreedyAssociation, DashfResourcesOnly, EqualSharePolicy):
        baseline = cls(FAST) if cls is not EqualSharePolicy else cls()
        baseline.bind(config, seed=11)
        assert value >= scr_of(config, state, baseline.decide(state)) * (1 - TIE), cls.name
    assert ours.stats["decisions"] == 1 and ours.stats["solve_time_s"] > 0


def test_weighted_objective_runs_a_single_pass_and_lowers_the_cost() -> None:
    config = make_config("liu2024", num_users=5, num_servers=2)
    state = one_state(config, 2)
    result = DashfSolver(config, FAST).solve(state)
    assert result.trace.dinkelbach_iterations == 1
    start = EqualSharePolicy()
    start.bind(config)
    assert result.trace.reward >= scr_of(config, state, start.decide(state))  # reward = −cost here
    assert result.trace.reward == pytest.approx(scr_of(config, state, result.decision), rel=1e-12)
    assert_feasible(config, state, result.decision)


def test_uncontrolled_fields_follow_their_rules_and_chains_are_refused() -> None:
    config = make_config("default", num_users=4, num_servers=2)  # controls: no frequency; Q = 4 micro-batches
    state = one_state(config, 0)
    policy = DashfPolicy(FAST)
    policy.bind(config, seed=0)
    decision = policy.decide(state)
    assert decision.frequency is None and decision.microbatches is None
    validate(config, state, decision)
    with pytest.raises(ValueError, match="devices_per_user"):
        DashfPolicy().bind(make_config("collapipe"))


def test_policy_steps_the_environment_with_its_reported_scr() -> None:
    env = gym.make("mec_gym/EdgeTraining-Qian2024-v0", num_users=4, rounds=2)
    policy = DashfPolicy(FAST)
    obs, _ = env.reset(seed=3)
    policy.reset(env, seed=3)
    decision = policy.decide(env.unwrapped.system_state)
    _, reward, _, _, info = env.unwrapped.step_decision(decision)
    assert info["scr"] == pytest.approx(policy.last_traces[0].scr, rel=1e-12)
    assert reward == pytest.approx(policy.last_traces[0].reward, rel=1e-12)
    action = policy.act(obs)
    assert env.action_space.contains(action)
    assert mec_gym.ENV_IDS["mec_gym/EdgeTraining-Qian2024-v0"] == "qian2024"


def test_baseline_registry_names_are_unique_and_policies() -> None:
    assert set(BASELINES) == {"dashf_random_assoc", "dashf_greedy_assoc", "dashf_offloading_only",
                              "dashf_resources_only", "dashf_plain_ao", "dashf_exhaustive"}
    assert all(cls.name == name for name, cls in BASELINES.items())
    config = make_config("qian2024")
    assert len(feasible_associations(config)) == 252  # C(10, 5) of the 2^10 patterns fit capacity 5


def test_benchmark_runs_dashf_and_refuses_scenarios_it_cannot_model() -> None:
    from agents import benchmark

    assert isinstance(benchmark.make_policy("dashf"), DashfPolicy)
    assert set(BASELINES) <= set(benchmark.policy_names())
    with pytest.raises(ValueError, match="policy 'dashf' cannot run on scenario 'collapipe'.*devices_per_user"):
        benchmark.run_benchmark("collapipe", ["equal_share", "dashf"], seeds=1, rounds=1, oracle_states=0)
    with pytest.raises(ValueError, match="controls: DASHF does not choose micro-batch"):
        benchmark.run_benchmark("qian2024", ["dashf"], seeds=1, rounds=1, oracle_states=0,
                                overrides={"controls": ("split", "server", "microbatches")})
    result = benchmark.run_benchmark("qian2024", ["dashf", "equal_share"], seeds=1, rounds=1, oracle_states=0,
                                     overrides={"num_users": 4, "server.capacity": 2})
    rows = {row["policy"]: row for row in result.rows()}
    assert rows["dashf"]["scr_mean"] > rows["equal_share"]["scr_mean"]


def test_cli_has_the_reproduction_command() -> None:
    from typer.testing import CliRunner

    from agents.cli import app

    result = CliRunner().invoke(app, ["reproduce", "qian2024", "--help"])
    assert result.exit_code == 0 and "--quick" in result.output


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_clarabel_failure_on_the_sdp_is_answered_by_scs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clarabel is named first for the SDR, SCS second: when Clarabel fails on an SDP, SCS answers it and the
    relaxation still drives Block A (no fallback to per-pair gains)."""
    real_solve = cp.Problem.solve

    def clarabel_fails(problem, *args, **kwargs):
        if kwargs.get("solver") == "CLARABEL" and any(isinstance(c, cp.constraints.PSD) for c in problem.constraints):
            raise cp.error.SolverError("injected Clarabel failure")
        return real_solve(problem, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", clarabel_fails)
    assert DashfSettings().sdp_solvers == ("CLARABEL", "SCS")
    config = make_config("qian2024", num_users=4, **{"server.capacity": 2})
    state = one_state(config, 2)
    result = DashfSolver(config, FAST).solve(state)
    trace = result.trace
    assert trace.sdp_solvers.get("SCS", 0) == trace.block_a_solves >= 1 and "CLARABEL" not in trace.sdp_solvers
    assert trace.sdp_fallbacks == 0 and len(trace.rank_one_ratio) == trace.block_a_solves
    assert np.all(np.diff(trace.lambdas) >= 0.0)
    assert_feasible(config, state, result.decision)


def test_sdp_data_is_scaled_to_order_one() -> None:
    """The SDP sees coefficients in O(1) units (largest magnitude 1) whatever the raw SI magnitudes."""
    config = make_config("qian2024")
    state = one_state(config, 6)
    solver = DashfSolver(config, FAST)
    terms = pair_terms(config, state)
    point = solver._enforce(state, solver._initial(state, None))
    sdp = AssociationSDP(10, 2, 5, FAST.tangent_shares)
    sdp.set(**solver._qcqp_data(terms, point, lam=0.5))
    data = [sdp.x_gain, sdp.y_gain, sdp.z_cost, sdp.rho_gain, sdp.beta, sdp.phi_square]
    assert max(np.abs(p.value).max() for p in data) == pytest.approx(1.0)
    assert np.all(sdp.rho_high.value <= 1.0) and np.all(sdp.rho_low.value >= 0.0)


def test_block_b_reaches_a_stationary_point_of_the_radio_cost() -> None:
    """Zhao's transform iterated to its fixed point: no feasible move of one user's power by ±10 %, or of 10 %
    of the smaller share between two users of one server, lowers Block B's exact radio cost by more than
    round-off — while the same moves do lower it at the start (equal shares, p_max), so the check bites."""
    config = make_config("qian2024")
    state = one_state(config, 9)
    solver = DashfSolver(config, dataclasses.replace(FAST, max_dinkelbach=1, max_ao=1))
    terms = pair_terms(config, state)
    start = solver._enforce(state, solver._initial(state, None))
    start.delta = np.full(10, config.num_layers - 1)  # every user offloads: activations to upload
    lam = 0.5

    def best_move(point) -> float:
        """The largest relative decrease of the radio cost over the moves (≥ 0 at a local minimum)."""
        cost = solver._radio_cost(terms, point, point.bandwidth, point.power, lam)[0]
        changes = []
        for user in range(10):
            for factor in (0.9, 1.1):
                power = point.power.copy()
                power[user] = np.clip(power[user] * factor, terms.power_low[user], terms.power_high[user])
                changes.append(solver._radio_cost(terms, point, point.bandwidth, power, lam)[0] / cost - 1)
        for a in range(10):
            for b in np.flatnonzero((point.server == point.server[a]) & (np.arange(10) != a)):
                share = point.bandwidth.copy()
                move = 0.1 * min(share[a], share[b])
                share[a] += move
                share[b] -= move
                changes.append(solver._radio_cost(terms, point, share, point.power, lam)[0] / cost - 1)
        return -min(changes)

    trace = dashf.DashfTrace()
    point = solver._block_b(state, terms, start, lam, trace)
    assert trace.fp_iterations[0] >= 2 and trace.radio_fallbacks == 0
    assert solver._radio_cost(terms, point, point.bandwidth, point.power, lam)[0] < \
        solver._radio_cost(terms, start, start.bandwidth, start.power, lam)[0]
    assert best_move(start) > 1e-5
    assert best_move(point) <= 1e-8


@settings(max_examples=8, deadline=None)
@given(users=st.integers(2, 5), servers=st.integers(1, 3), slack=st.integers(0, 1), downlink=st.booleans(),
       time_share=st.booleans(), min_local=st.integers(0, 1), seed=st.integers(0, 1000))
def test_dashf_is_feasible_and_monotone_on_random_small_systems(users, servers, slack, downlink, time_share,
                                                                 min_local, seed) -> None:
    """Whatever the sizes, capacity, downlink, server energy model and split floor: one server per user within
    capacity, shares and powers within bounds, λ non-decreasing and never below the start."""
    config = make_config("qian2024", num_users=users, num_servers=servers, split_min_local=min_local,
                         **{"server.capacity": -(-users // servers) + slack, "radio.downlink": downlink,
                            "server.energy_model": "time_share" if time_share else "frequency"})
    state = one_state(config, seed)
    result = DashfSolver(config, dataclasses.replace(FAST, samples=8, seed=seed)).solve(state)
    assert np.all(np.diff(result.trace.lambdas) >= 0.0)
    assert result.trace.scr >= result.trace.lambdas[0]
    assert result.trace.sdp_fallbacks == 0 and result.trace.radio_fallbacks == 0
    assert_feasible(config, state, result.decision)
