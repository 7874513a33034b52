"""Hand-computed checks of the system model against the papers' formulas (SPEC §3.3, [LZ24] §2).

Every expected value is computed here, independently, from the formula it checks; the model's
functions are only called to produce the value under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mec_gym import catalog, make_config
from mec_gym.config import WorkloadConfig
from mec_gym.model import channel, compute, costs, decision, dynamics, llm, pipeline

# ----------------------------------------------------------------------------- radio


@pytest.mark.parametrize(
    ("bandwidth", "gain", "power", "noise", "expected"),
    [
        (1.0e6, 3.0e-14, 1.0, 1.0e-20, 2.0e6),  # SNR 3 -> log2(4) = 2 bit/s/Hz
        (2.0e6, 2.0e-14, 1.0, 1.0e-20, 2.0e6),  # SNR 1 -> 1 bit/s/Hz
        (5.0e6, 1.0e-10, 0.2, 3.0e-20, 5.0e6 * math.log2(1.0 + 1.0e-10 * 0.2 / (3.0e-20 * 5.0e6))),
        (2.0e7 / 7, 4.2e-12, 1.5, 4.0e-20, 2.0e7 / 7 * math.log2(1.0 + 4.2e-12 * 1.5 / (4.0e-20 * 2.0e7 / 7))),
    ],
)
def test_shannon_rate_matches_formula(bandwidth, gain, power, noise, expected):
    rate = channel.shannon_rate(np.array(bandwidth), np.array(gain), np.array(power), noise)
    assert float(rate) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("snr", [1e-4, 1e-8, 1e-12])
def test_shannon_rate_low_snr_keeps_full_precision(snr):
    # deep fades: b·log2(1 + x) = b·(x − x²/2 + x³/3 − x⁴/4)/ln 2 to double precision for small x
    bandwidth, noise = 1.0e6, 1.0e-20
    rate = float(channel.shannon_rate(np.array(bandwidth), snr * noise * bandwidth, 1.0, noise))
    expected = bandwidth * (snr - snr**2 / 2 + snr**3 / 3 - snr**4 / 4) / math.log(2.0)
    assert rate == pytest.approx(expected, rel=1e-13)


def test_shannon_rate_zero_bandwidth_is_zero():
    rate = channel.shannon_rate(np.array([0.0, 1.0e6]), np.array([1e-10, 1e-10]), np.array([0.2, 0.2]), 1e-20)
    assert rate[0] == 0.0
    assert rate[1] > 0.0


def test_noise_psd_from_dbm_per_hz_and_noise_figure():
    # -174 dBm/Hz = 10^-17.4 mW/Hz = 10^-20.4 W/Hz; a 9 dB noise figure multiplies by 10^0.9
    expected = 1e-3 * 10.0 ** (-17.4) * 10.0**0.9
    assert channel.noise_psd_w_per_hz(-174.0, 9.0) == pytest.approx(expected, rel=1e-12)
    assert channel.noise_psd_w_per_hz(-174.0, 9.0) == pytest.approx(10 ** ((-174 + 9 - 30) / 10), rel=1e-12)
    assert channel.noise_psd_w_per_hz(-134.0, 0.0) == pytest.approx(1e-3 * 10.0 ** (-13.4), rel=1e-12)


def test_transmission_delay_and_energy():
    bits, rate, power = 8.0e6, 2.0e6, 0.2
    delay, energy = channel.transmission(np.array(bits), np.array(rate), np.array(power))
    assert float(delay) == pytest.approx(4.0)
    assert float(energy) == pytest.approx(0.8)  # [LZ24] eq. (3): p·s/r
    delay, energy = channel.transmission(np.array(0.0), np.array(0.0), np.array(power))
    assert float(delay) == 0.0 and float(energy) == 0.0


def test_pathloss_3gpp_macro():
    # 128.1 + 37.6·log10(d_km): 100 m -> 128.1 - 37.6 = 90.5 dB; 500 m -> 116.78 dB
    pl = channel.pathloss_db(np.array([100.0, 500.0, 1000.0]), 128.1, 37.6, 10.0)
    assert pl[0] == pytest.approx(90.5, abs=1e-9)
    assert pl[1] == pytest.approx(128.1 + 37.6 * math.log10(0.5), abs=1e-9)
    assert pl[1] == pytest.approx(116.8, abs=0.05)
    assert pl[2] == pytest.approx(128.1, abs=1e-9)
    # below the minimum distance the model is clipped
    clipped = channel.pathloss_db(np.array([1.0, 10.0]), 128.1, 37.6, 10.0)
    assert clipped[0] == clipped[1] == pytest.approx(128.1 - 2 * 37.6)
    # D2D model of [CP25]: 148 + 40 log10(d_km); 50 m -> 148 - 40·1.30103
    d2d = channel.pathloss_db(np.array(50.0), 148.0, 40.0, 10.0)
    assert float(d2d) == pytest.approx(148.0 + 40.0 * math.log10(0.05))


def test_channel_gain_linear():
    gain = channel.channel_gain(np.array(90.0), np.array(10.0), np.array(0.5))
    assert float(gain) == pytest.approx(1e-10 * 0.5)


# ----------------------------------------------------------------------------- compute ([LZ24] eq. 1-2, 5-6)

PSI = 72.0 * 512 * 700 * 1024**2 + 12.0 * 512 * 700**2 * 1024  # ψ(700) with B = 512, h = 1024


def test_lz24_user_compute_eq1_eq2():
    f_max, f, cores, flops_per_cycle, kappa = 1.0e9, 0.8e9, 5, 1, 5.0e-27
    delay, energy = compute.compute_delay_energy(
        np.array(PSI), rate_max_flops=np.array(f_max * cores * flops_per_cycle), level=np.array(f / f_max),
        power_max_w=np.array(kappa * f_max**3))
    assert float(delay) == pytest.approx(PSI / (f * cores * flops_per_cycle), rel=1e-12)  # eq. (1)
    assert float(energy) == pytest.approx(kappa * f**2 * PSI / (cores * flops_per_cycle), rel=1e-12)  # eq. (2)
    # energy = power × time (E = κ f³ T)
    assert float(energy) == pytest.approx(kappa * f**3 * float(delay), rel=1e-12)


def test_lz24_server_compute_eq5_eq6():
    f_max, cores, flops_per_cycle, kappa, phi = 2.5e9, 3000, 2, 250.0 / 27e27, 0.3
    f_nm = phi * f_max
    delay, energy = compute.compute_delay_energy(
        np.array(PSI), rate_max_flops=np.array(f_max * cores * flops_per_cycle), level=np.array(phi),
        power_max_w=np.array(kappa * f_max**3))
    assert float(delay) == pytest.approx(PSI / (f_nm * cores * flops_per_cycle), rel=1e-12)  # eq. (5)
    assert float(energy) == pytest.approx(kappa * f_nm**2 * PSI / (cores * flops_per_cycle), rel=1e-12)  # eq. (6)


def test_time_shared_compute():
    # time share s at full clock: time w/(s·R), energy P·w/R whatever the share
    work, rate, power, share = 3.0e12, 2.0e13, 70.0, 0.25
    delay, energy = compute.compute_delay_energy(np.array(work), np.array(rate), np.array(1.0), np.array(power),
                                                 np.array(share))
    assert float(delay) == pytest.approx(work / (share * rate))
    assert float(energy) == pytest.approx(power * work / rate)
    delay, energy = compute.compute_delay_energy(np.array(0.0), np.array(rate), np.array(1.0), np.array(power))
    assert float(delay) == 0.0 and float(energy) == 0.0


def test_gpu_utilization_curve():
    peak = 989e12
    w_sat = 1.5e-3 * peak
    u = compute.gpu_utilization(np.array([w_sat * 0.1, w_sat, 10 * w_sat]), peak, 0.53, 1.5e-3, 0.93)
    assert u[0] == pytest.approx(0.53 * 0.1**0.93)
    assert u[1] == pytest.approx(0.53)
    assert u[2] == pytest.approx(0.53)
    flat = compute.gpu_utilization(np.array([1.0, 1e15]), peak, 0.4, 0.0, 0.93)
    assert np.all(flat == 0.4)


# ----------------------------------------------------------------------------- FLOPs and parameters


def test_lz24_psi_values():
    b, h = 512, 1024
    for d, rough in ((512, 2.1e13), (1024, 4.6e13)):
        expected = 72 * b * d * h**2 + 12 * b * d**2 * h
        value = float(llm.lz24_layer_flops(np.array(d), b, h))
        assert value == pytest.approx(expected, rel=1e-15)
        assert value == pytest.approx(rough, rel=0.03)
    # Megatron count: 3 × (24·B·s·h² + 4·B·s²·h)
    assert float(llm.lz24_layer_flops(np.array(777), 512, 1024)) == pytest.approx(
        3 * (24 * 512 * 777 * 1024**2 + 4 * 512 * 777**2 * 1024))


def test_lz24_flops_model_forward_plus_backward_is_psi():
    config = make_config("liu2024")
    spec, wl = config.llm, config.workload
    assert wl.flops_model == "lz24" and spec.hidden == 1024 and wl.batch_max == 512
    d = np.array([512.0, 700.0, 1024.0])
    per_seq = llm.forward_flops_per_sequence(spec, wl, d) + llm.backward_flops_per_sequence(spec, wl, d)
    expected = 72 * 512 * d * 1024**2 + 12 * 512 * d**2 * 1024
    np.testing.assert_allclose(per_seq * 512, expected, rtol=1e-12)
    # backward = 2 × forward in the Megatron split
    np.testing.assert_allclose(llm.backward_flops_per_sequence(spec, wl, d),
                               2 * llm.forward_flops_per_sequence(spec, wl, d), rtol=1e-12)


# shared/calibration/*.csv: (shape, mode, batch, seq, frozen_params, model_flops); model_flops counts
# forward = tokens·2·P + 4·batch·seq²·h (halved when causal), backward 2× forward (full) or 1× (LoRA)
CALIBRATION_ROWS = [
    ("llama-3.2-1b", "full", 8, 512, 60817408, 1.52e12),
    ("llama-3.2-1b", "lora", 8, 512, 60817408, 1.014e12),
    ("llama-7b", "full", 8, 512, 202375168, 5.025e12),
    ("llama-7b", "lora", 8, 512, 202375168, 3.35e12),
    ("llama-7b", "full", 64, 1024, 202375168, 8.123e13),
    ("llama-7b", "lora", 64, 1024, 202375168, 5.415e13),
    ("bert-base", "full", 32, 128, 7077888, 1.788e11),
    ("bert-base", "lora", 32, 128, 7077888, 1.192e11),
    ("qwen2.5-0.5b", "full", 8, 512, 14909440, 3.777e11),
    ("qwen2.5-0.5b", "lora", 8, 512, 14909440, 2.518e11),
    ("llama-3.2-1b", "full", 1, 512, 60817408, 1.901e11),  # cpu-2core-layers.csv
    ("bert-base", "full", 4, 128, 7077888, 2.235e10),
]


@pytest.mark.parametrize(("model", "mode", "batch", "seq", "frozen", "model_flops"), CALIBRATION_ROWS)
def test_flops_match_calibration(model, mode, batch, seq, frozen, model_flops):
    spec = catalog.llm(model)
    assert llm.frozen_params_per_layer(spec) == frozen
    passes = 3 if mode == "full" else 2
    workload = WorkloadConfig(peft=mode, lora_rank=16)
    forward = float(llm.forward_flops_per_sequence(spec, workload, np.array(float(seq))))
    assert forward == pytest.approx(model_flops / batch / passes, rel=0.01)


def test_frozen_params_by_hand():
    # Llama-3.2-1B: h = 2048, kv = 8 heads × 64 = 512, gated FFN 8192
    assert llm.frozen_params_per_layer(catalog.llm("llama-3.2-1b")) == 2 * 2048**2 + 2 * 2048 * 512 + 3 * 2048 * 8192
    # BERT-base: h = 768, MHA, standard FFN 3072
    assert llm.frozen_params_per_layer(catalog.llm("bert-base")) == 4 * 768**2 + 2 * 768 * 3072
    assert llm.frozen_params_per_layer(catalog.llm("llama-3.2-1b")) == 60817408
    assert llm.frozen_params_per_layer(catalog.llm("bert-base")) == 7077888


def test_transformer_forward_backward_by_hand():
    spec = catalog.llm("llama-3.2-1b")
    wl = WorkloadConfig(peft="lora", lora_rank=16)
    ell, h, p = 512.0, 2048, 60817408
    p_lora = 16 * (2048 + 2048) + 16 * (2048 + 512)  # adapters on q (h×h) and v (h×kv)
    assert llm.trainable_params_per_layer(spec, wl) == p_lora == 106496
    forward = ell * 2 * p + 4 * ell**2 * h * 0.5 + 2 * ell * p_lora
    assert float(llm.forward_flops_per_sequence(spec, wl, np.array(ell))) == pytest.approx(forward, rel=1e-12)
    backward = forward + 4 * ell * p_lora
    assert float(llm.backward_flops_per_sequence(spec, wl, np.array(ell))) == pytest.approx(backward, rel=1e-12)
    full = WorkloadConfig(peft="full")
    fwd_full = ell * 2 * p + 4 * ell**2 * h * 0.5
    assert float(llm.forward_flops_per_sequence(spec, full, np.array(ell))) == pytest.approx(fwd_full, rel=1e-12)
    assert float(llm.backward_flops_per_sequence(spec, full, np.array(ell))) == pytest.approx(2 * fwd_full, rel=1e-12)
    # BERT is bidirectional: no causal halving
    bert = catalog.llm("bert-base")
    fwd_bert = 128.0 * 2 * 7077888 + 4 * 128.0**2 * 768
    assert float(llm.forward_flops_per_sequence(bert, full, np.array(128.0))) == pytest.approx(fwd_bert, rel=1e-12)


def test_payloads_by_hand():
    spec = catalog.llm("llama-3.2-1b")
    wl = WorkloadConfig()
    assert float(llm.activation_bits_per_sequence(spec, wl, np.array(512.0))) == 512 * 2048 * 16
    assert float(llm.token_bits_per_sequence(wl, np.array(512.0))) == 512 * 32
    assert llm.adapter_upload_bits_per_layer(spec, wl) == 106496 * 16


def test_layer_memory_lora_by_hand():
    spec = catalog.llm("llama-3.2-1b")
    wl = WorkloadConfig(peft="lora", lora_rank=16)
    p_frozen = 60817408
    p_lora = 16 * (2048 + 2048) + 16 * (2048 + 512)
    for sequences, ell in ((8, 512), (3, 256), (0, 512)):
        expected = 2 * p_frozen + 16 * p_lora + 34 * ell * 2048 * sequences
        value = float(llm.layer_memory_bytes(spec, wl, np.array(float(sequences)), np.array(float(ell))))
        assert value == pytest.approx(expected, rel=1e-12)
    # full fine-tuning: the trainable copy (16 B/param) replaces the fp16 frozen weights
    full = WorkloadConfig(peft="full")
    value = float(llm.layer_memory_bytes(spec, full, np.array(8.0), np.array(512.0)))
    assert value == pytest.approx(16 * p_frozen + 34 * 512 * 2048 * 8, rel=1e-12)


def test_max_layers_per_node_by_hand():
    config = make_config("default")
    per_layer = 2 * 60817408 + 16 * 106496 + 34 * 512 * 2048 * 8  # full batch of 8 × 512 tokens
    memory = np.array([[[6.0e9], [12.0e9]]])
    layers = dynamics.max_layers_per_node(config, memory, np.array([[512.0, 512.0]]))
    assert layers[0, 0, 0] == math.floor(6.0e9 / per_layer)
    assert layers[0, 1, 0] == math.floor(12.0e9 / per_layer)


# ----------------------------------------------------------------------------- stability ([LZ24] Theorem 1)


def test_stability_bound():
    config = make_config("default")  # Υ = 16, L = 1
    upsilon = config.num_layers
    alpha = np.array([1, 4, 8, 15, 16, 4])
    k = np.array([8.0, 8.0, 3.0, 8.0, 8.0, 0.0])
    expected = [2.0 / (8 * (1 - 1 / 16)), 2.0 / (8 * (1 - 4 / 16)), 2.0 / (3 * (1 - 8 / 16)),
                2.0 / (8 * (1 - 15 / 16)), 2.0 / (8 * (1 / (2 * upsilon))), 0.0]
    np.testing.assert_allclose(costs.stability_bound(config, alpha, k), expected, rtol=1e-12)
    heavy = make_config("default", **{"workload.lipschitz": 3.0})
    np.testing.assert_allclose(costs.stability_bound(heavy, alpha, k), 9.0 * np.array(expected), rtol=1e-12)


# ----------------------------------------------------------------------------- pipeline makespan


def simulate_pipeline(tau: np.ndarray, q: int) -> float:
    """Event-driven linear pipeline: each stage takes micro-batches in order, one at a time; a micro-batch
    enters stage j+1 once it has left stage j and stage j+1 is free."""
    stage_free = np.zeros(len(tau))
    finish = 0.0
    for _ in range(q):
        ready = 0.0  # the micro-batch is available at time 0 at the first stage
        for j, t in enumerate(tau):
            start = max(ready, stage_free[j])
            ready = start + t
            stage_free[j] = ready
        finish = ready
    return finish


def test_makespan_matches_event_simulation():
    rng = np.random.default_rng(1234)
    cases = 0
    for stages in (1, 2, 3, 5, 8):
        for q in (1, 2, 3, 4, 7, 16):
            for _ in range(7):
                tau = rng.exponential(1.0, size=stages) * rng.choice([1e-3, 1.0, 50.0])
                tau[rng.random(stages) < 0.2] = 0.0  # skipped stages
                expected = simulate_pipeline(tau, q)
                value = float(pipeline.makespan(tau[:, None], np.array([q]))[0])  # stage-major
                assert value == pytest.approx(expected, rel=1e-12, abs=1e-15), (tau, q)
                cases += 1
    assert cases >= 200


def test_makespan_batched_and_stage_times():
    tau = np.array([[1.0, 2.0, 3.0], [4.0, 0.5, 0.5]])
    q = np.array([2, 3])
    np.testing.assert_allclose(pipeline.makespan(tau.T, q), [6.0 + 3.0, 5.0 + 2 * 4.0])  # stages first
    totals = np.array([[4.0, 0.0, 2.0]]).T
    np.testing.assert_allclose(pipeline.stage_times(totals, np.array([4]), 0.01), [[1.01], [0.0], [0.51]])


# ----------------------------------------------------------------------------- one round end to end


def _state(config, seed: int, batch: int = 1) -> dynamics.SystemState:
    rng = np.random.default_rng(seed)
    return dynamics.sample_episode(config, rng.random((batch, dynamics.episode_draw_count(config))))


def _server_rate(peak: float, kernel_flops: float, srv) -> float:
    """Effective server FLOP/s: utilization·peak·min(1, w/(t_sat·peak))^γ."""
    ratio = min(1.0, kernel_flops / (srv.saturation_seconds * peak)) if srv.saturation_seconds > 0 else 1.0
    return srv.utilization * ratio**srv.utilization_exponent * peak


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_k1_q1_by_hand(seed):
    """K = 1, Q = 1, no overhead, no downlink: the sequential [LZ24]/[QZ24] round plus upload delays."""
    config = make_config("default", **{"workload.overhead_s": 0.0, "radio.downlink": False,
                                       "workload.microbatches": 1})
    state = _state(config, seed)
    n_users, upsilon = config.num_users, config.num_layers
    rng = np.random.default_rng(100 + seed)
    alpha = np.minimum(rng.integers(1, upsilon + 1, size=n_users), state.max_layers[0, :, 0])
    alpha[0] = min(3, int(state.max_layers[0, 0, 0]))
    split = np.stack([upsilon - alpha, alpha], axis=-1)[None]
    frequency = rng.uniform(0.3, 1.0, size=(1, n_users, 1))
    d = decision.complete(config, state, decision.Decision(split=split, frequency=frequency))
    metrics = costs.evaluate(config, state, d)

    h, r = 2048, 16
    p_frozen = 2 * h * h + 2 * h * 512 + 3 * h * 8192
    p_lora = r * (h + h) + r * (h + 512)
    noise = 10 ** ((-174 + 9 - 30) / 10)
    srv = config.server
    for n in range(n_users):
        b = min(float(state.data_queue[0, n]), 8.0)
        ell = float(state.seq_len[0, n])
        a = int(alpha[n])
        c_f = ell * 2 * p_frozen + 4 * ell**2 * h / 2 + 2 * ell * p_lora
        c_b = c_f + 4 * ell * p_lora
        # device: DVFS level u, time w/(u·R), energy P_max·u²·w/R
        u = float(frequency[0, n, 0])
        rate_dev = float(state.device_rate_flops[0, n, 0])
        power_dev = float(state.device_power_w[0, n, 0])
        local_fwd = a * b * c_f / (u * rate_dev)
        local_bwd = a * b * c_b / (u * rate_dev)
        # uplink: Shannon rate on the user's share of its server's band
        m = int(d.server[0, n])
        bandwidth = float(d.bandwidth[0, n]) * srv.bandwidth_hz
        p = float(d.power[0, n])
        g = float(state.gain[0, n, m])
        rate_up = bandwidth * math.log2(1 + g * p / (noise * bandwidth))
        upload = b * ell * h * 16 / rate_up if a < upsilon else 0.0
        # server: share φ of (1 - load) of its size-dependent effective rate
        peak = float(state.server_peak_flops[0, m])
        srv_rate = _server_rate(peak, b * (c_f + c_b), srv)
        available = float(d.compute[0, n]) * (1 - float(state.load[0, m]))
        server_fwd = (upsilon - a) * b * c_f / (available * srv_rate) if a < upsilon else 0.0
        server_bwd = (upsilon - a) * b * c_b / (available * srv_rate) if a < upsilon else 0.0
        aggregation = a * p_lora * 16 / rate_up
        expected = local_fwd + upload + server_fwd + server_bwd + local_bwd + aggregation
        assert metrics.latency_s[0, n] == pytest.approx(expected, rel=1e-9)
        assert metrics.aggregation_s[0, n] == pytest.approx(aggregation, rel=1e-9)
        assert metrics.uplink_rate_bps[0, n] == pytest.approx(rate_up, rel=1e-12)
        # energies: device compute at u, radio p·s/r; server time-shared at full clock: P·w/rate
        e_device = power_dev * u**2 * a * b * (c_f + c_b) / rate_dev + p * (upload + aggregation)
        e_server = float(state.server_power_w[0, m]) * (upsilon - a) * b * (c_f + c_b) / srv_rate
        assert metrics.energy_device_j[0, n] == pytest.approx(e_device, rel=1e-9)
        assert metrics.energy_server_j[0, n] == pytest.approx(e_server, rel=1e-9)
        assert metrics.energy_j_user[0, n] == pytest.approx(e_device + e_server, rel=1e-9)
        fraction = 1 / (2 * upsilon) if a == upsilon else 1 - a / upsilon
        assert metrics.stability[0, n] == pytest.approx(2.0 / (b * fraction), rel=1e-12)
    assert metrics.delay_s[0] == pytest.approx(metrics.latency_s[0].mean())
    assert metrics.energy_j[0] == pytest.approx(metrics.energy_j_user[0].sum())


def test_round_k1_pipelined_with_downlink_by_hand():
    """K = 1, Q = 4, t0 = 10 ms, downlink on: T = T_fwd + T_bwd + T_agg with the pipeline makespan."""
    config = make_config("default", **{"workload.overhead_s": 0.01, "workload.microbatches": 4})
    state = _state(config, 7)
    upsilon = config.num_layers
    alpha = np.minimum(2, state.max_layers[0, :, 0])
    split = np.stack([upsilon - alpha, alpha], axis=-1)[None]
    d = decision.complete(config, state, decision.Decision(split=split))
    metrics = costs.evaluate(config, state, d)

    h, r, q, t0 = 2048, 16, 4, 0.01
    p_frozen = 2 * h * h + 2 * h * 512 + 3 * h * 8192
    p_lora = r * (h + h) + r * (h + 512)
    noise = 10 ** ((-174 + 9 - 30) / 10)
    srv = config.server

    def phase(totals):
        tau = [t / q + t0 for t in totals if t > 0]
        return sum(tau) + (q - 1) * max(tau)

    for n in range(config.num_users):
        b = min(float(state.data_queue[0, n]), 8.0)
        ell = float(state.seq_len[0, n])
        a = int(alpha[n])
        c_f = ell * 2 * p_frozen + 4 * ell**2 * h / 2 + 2 * ell * p_lora
        c_b = c_f + 4 * ell * p_lora
        rate_dev = float(state.device_rate_flops[0, n, 0])
        m = int(d.server[0, n])
        bandwidth = float(d.bandwidth[0, n]) * srv.bandwidth_hz
        g = float(state.gain[0, n, m])
        rate_up = bandwidth * math.log2(1 + g * float(d.power[0, n]) / (noise * bandwidth))
        rate_down = bandwidth * math.log2(1 + g * srv.downlink_power_w / (noise * bandwidth))
        peak = float(state.server_peak_flops[0, m])
        srv_rate = _server_rate(peak, b / q * (c_f + c_b), srv)
        available = float(d.compute[0, n]) * (1 - float(state.load[0, m]))
        forward = phase([a * b * c_f / rate_dev, b * ell * h * 16 / rate_up,
                         (upsilon - a) * b * c_f / (available * srv_rate)])
        backward = phase([a * b * c_b / rate_dev, b * ell * h * 16 / rate_down,
                          (upsilon - a) * b * c_b / (available * srv_rate)])
        aggregation = a * p_lora * 16 / rate_up
        assert metrics.forward_s[0, n] == pytest.approx(forward, rel=1e-9)
        assert metrics.backward_s[0, n] == pytest.approx(backward, rel=1e-9)
        assert metrics.latency_s[0, n] == pytest.approx(forward + backward + aggregation, rel=1e-9)
        down_energy = srv.downlink_power_w * b * ell * h * 16 / rate_down
        e_server = float(state.server_power_w[0, m]) * (upsilon - a) * b * (c_f + c_b) / srv_rate + down_energy
        assert metrics.energy_server_j[0, n] == pytest.approx(e_server, rel=1e-9)


def test_round_liu2024_matches_lz24_equations():
    """The [LZ24] preset: per user α·T^cmp + (Υ−α)·T^cmp_{n,m} (eq. 1, 5) plus upload delays;
    energies α·E^cmp + E^com (eq. 2, 3) and (Υ−α)·E^cmp_{n,m} (eq. 6); stability 2L²/(k(1−α/Υ))."""
    config = make_config("liu2024")
    state = _state(config, 3)
    rng = np.random.default_rng(5)
    action = rng.uniform(-1, 1, size=(1, config.num_users * decision.action_dim_per_user(config)))
    d, _ = decision.decode(config, state, action)
    d.split[0, :3] = [[0, 32], [31, 1], [16, 16]]  # include α = Υ and α = 1
    d = decision.complete(config, state, decision.Decision(
        split=d.split, server=d.server, power=d.power, bandwidth=d.bandwidth, frequency=d.frequency))
    metrics = costs.evaluate(config, state, d)

    upsilon, batch, h = 32, 512, 1024
    kappa_1, kappa_2 = config.device.kappa, config.server.kappa
    sigma2 = 1e-3 * 10 ** (-134 / 10)  # −134 dBm per Hz
    p_lora = 16 * (1024 + 1024) + 16 * (1024 + 1024)
    total_delay = 0.0
    for n in range(config.num_users):
        a = int(d.split[0, n, 1:].sum())
        dn = float(state.seq_len[0, n])
        psi = 72 * batch * dn * h**2 + 12 * batch * dn**2 * h
        # user: clock f = u·f_max with f_max from P_max = κ₁ f_max³; C·D = R/f_max
        f_max = (float(state.device_power_w[0, n, 0]) / kappa_1) ** (1 / 3)
        cd = float(state.device_rate_flops[0, n, 0]) / f_max
        f = float(d.frequency[0, n, 0]) * f_max
        t_user = psi / (f * cd)
        e_user = kappa_1 * f**2 * psi / cd
        # server: f_{n,m} = φ·f_m^max
        m = int(d.server[0, n])
        fm_max = (float(state.server_power_w[0, m]) / kappa_2) ** (1 / 3)
        cd_m = float(state.server_peak_flops[0, m]) / fm_max
        f_nm = float(d.compute[0, n]) * fm_max
        t_srv = psi / (f_nm * cd_m) if a < upsilon else 0.0
        e_srv = kappa_2 * f_nm**2 * psi / cd_m if a < upsilon else 0.0
        # uplink of s(d) = B·d·h·16 bits
        b_nm = float(d.bandwidth[0, n]) * 20e6
        p = float(d.power[0, n])
        r = b_nm * math.log2(1 + float(state.gain[0, n, m]) * p / (sigma2 * b_nm))
        s = batch * dn * h * 16 if a < upsilon else 0.0
        aggregation = a * p_lora * 16 / r
        latency = a * t_user + (upsilon - a) * t_srv + s / r + aggregation
        assert metrics.latency_s[0, n] == pytest.approx(latency, rel=1e-9)
        assert metrics.energy_device_j[0, n] == pytest.approx(a * e_user + p * s / r + p * aggregation, rel=1e-9)
        assert metrics.energy_server_j[0, n] == pytest.approx((upsilon - a) * e_srv, rel=1e-9)
        fraction = 1 / (2 * upsilon) if a == upsilon else 1 - a / upsilon
        assert metrics.stability[0, n] == pytest.approx(2.0 / (512 * fraction), rel=1e-12)
        total_delay += latency
    assert metrics.delay_s[0] == pytest.approx(total_delay / config.num_users, rel=1e-9)


def test_local_iterations_repeat_the_pipeline_but_not_the_aggregation_upload():
    """[CP25] T = I·T_pipe + T_up: I iterations scale pipeline time and energy, not the aggregation upload."""
    decision_model = decision
    base = make_config("collapipe", **{"workload.energy_budget_j": 0.0})
    configs = {i: base.override({"workload.local_iterations": i}) for i in (1, 3)}
    rng = np.random.default_rng(5)
    uniforms = rng.random((4, dynamics.episode_draw_count(base)))
    out = {}
    for i, config in configs.items():
        state = dynamics.sample_episode(config, uniforms)
        out[i] = costs.evaluate(config, state, decision_model.complete(config, state, decision_model.Decision()))
    one, three = out[1], out[3]
    np.testing.assert_allclose(three.forward_s, 3 * one.forward_s, rtol=1e-12)
    np.testing.assert_allclose(three.backward_s, 3 * one.backward_s, rtol=1e-12)
    np.testing.assert_allclose(three.aggregation_s, one.aggregation_s, rtol=1e-12)
    per_iteration = one.energy_server_j
    np.testing.assert_allclose(three.energy_server_j, 3 * per_iteration, rtol=1e-12)
    assert np.all(three.energy_device_j > one.energy_device_j)
    assert np.all(three.energy_device_j < 3 * one.energy_device_j)  # the upload is paid once
