"""Named scenario presets (SPEC §5), as data with their sources, and the scenario registry.

``make_config(name, **overrides)`` returns a validated ``SystemConfig``; overrides use the
dotted names of :func:`mec_gym.config.field_names` (``num_users=20``, ``**{"weights.energy": 2}``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mec_gym.config import (
    DeviceSpec,
    GeometryConfig,
    RadioConfig,
    ServerSpec,
    SystemConfig,
    Weights,
    WorkloadConfig,
)


def default() -> SystemConfig:
    """Realistic on-device LoRA fine-tuning (SPEC §5.1, our choice).

    12 users, 3 servers in 1 km²; Llama-3.2-1B (16 layers, h = 2048, FFN 8192, GQA 32/8) with
    LoRA r = 16, 512-token sequences, up to 8 per round, Poisson arrivals (6/round), a 60 s
    round deadline; phones of 1-4 TFLOPS peak fp16 at 30 % utilization, 4-8 W, 6-12 GB;
    T4/L4/A10 servers at 40 % (size-dependent) utilization with Markov load 0.3-0.9; 20 MHz per
    server, −174 dBm/Hz + 9 dB noise, p_max 0.2 W; 4 micro-batches; 64 rounds; weighted
    objective w_d = 1, w_e = 0.5, w_s = 0.25, server energy counted.
    """
    return SystemConfig(workload=WorkloadConfig(deadline_s=60.0))


def liu2024() -> SystemConfig:
    """[LZ24] §5 simulation (notes: shared/papers/LZ24-liu-zhao-2024.md §5).

    Paper values: 50 users, 10 servers, LLaMA-7B with Υ = 32 and h = 1024, batch 512,
    d_n ~ U{512..1024}, ψ(d) = 72Bdh² + 12Bd²h; user GPU f ~ U[0.5, 1] GHz, 4-6 cores,
    1 FLOP/cycle; server f ~ U[1, 3] GHz, 2560-5120 cores, 1-2 FLOPs/cycle; 20 MHz per
    server; p_max ~ U[1, 2] W; σ² = −134 dBm used per Hz (σ²·b in the rate); path loss
    128.1 + 37.6 log10(d_km), no fading; server energy counted; all weights 1.
    Ours (not in the paper): κ from 5 W at 1 GHz (phone) and 250 W at 3 GHz (server);
    upload payload = cut activations with its delay counted; L = 1, k_n = B; static users in
    1 km²; no shadowing, no background load, no downlink; 16 rounds of the static problem.
    """
    return SystemConfig(
        num_users=50,
        num_servers=10,
        model="llama-7b-lz24",
        rounds=16,
        controls=("split", "server", "power", "bandwidth", "compute", "frequency"),
        weights=Weights(energy=1.0, delay=1.0, stability=1.0),
        delay_aggregate="mean",
        device=DeviceSpec(clock_hz=(0.5e9, 1.0e9), cores=(4, 6), flops_per_cycle=(1, 1), kappa=5.0 / 1e27,
                          utilization=1.0, memory_gb=(1e6, 1e6), frequency_min=0.1),
        server=ServerSpec(profiles=(), clock_hz=(1.0e9, 3.0e9), cores=(2560, 5120), flops_per_cycle=(1, 2),
                          kappa=250.0 / 27e27, utilization=1.0, saturation_seconds=0.0, load_levels=(0.0,),
                          energy_model="frequency"),
        radio=RadioConfig(noise_psd_dbm_hz=-134.0, noise_figure_db=0.0, power_max_w=(1.0, 2.0), power_min_w=0.01,
                          shadowing_db=0.0, fading=False, downlink=False),
        geometry=GeometryConfig(speed_mps=0.0, speed_std_mps=0.0),
        workload=WorkloadConfig(seq_len=(512, 1024), batch_max=512, arrival_rate=0.0, flops_model="lz24",
                                microbatches=1, max_microbatches=1, overhead_s=0.0, stability_samples=512),
    )


def qian2024() -> SystemConfig:
    """[QZ24] simulation (notes: shared/papers/QZ24-dashf.md §5): 10 users, 2 servers, SCR objective.

    Hardware and channel as ``liu2024``; server capacity ⌈N/M⌉ = 5 users (our choice: makes the
    Hungarian step meaningful); offloading ratio ρ_n = δ_{n,0}/Υ; service scores q0 ~ U[0.5, 1],
    q1 ~ U[0, 0.5] (our choice).
    """
    base = liu2024()
    return base.override({"num_users": 10, "num_servers": 2, "objective": "scr", "server.capacity": 5})


def collapipe() -> SystemConfig:
    """[CP25] simulation (notes: shared/papers/CP25-collapipe.md §6.3).

    4 clusters of K = 4 devices (node 1 = control unit with the data), devices within 50 m of
    their control unit, clusters 100-500 m from their base station (4 BSs); BERT-base (12
    layers, h = 768, FFN 3072), 128 tokens, batch 32 per round, full fine-tuning of the encoder
    segments, which stay on the cluster's devices (split_min_local = Υ = 12: the split
    partitions the encoder over the chain), task head on the server; devices 0.5-5 TFLOPS effective, 5-15 W, 2/4/8 GB;
    D2D 10 MHz per cluster, uplink 20 MHz; 1-16 micro-batches; long-term per-cluster energy
    budget; objective: round latency (max over clusters, w_e = w_s = 0) with the budget
    penalty. Ours: edge GPUs L4/A10/V100 with size-dependent utilization, no background load,
    I = 5 local iterations per round before the control unit uploads the encoder (the top of the
    notes' 1-5 range: the 1.4 Gbit full-model upload otherwise dwarfs the pipeline), budget 40 J
    per cluster and round (≈ 59 % of the reference policy's mean device energy, 68 J, in
    [CP25]'s suggested 50-80 % range), t₀ = 5 ms per message.
    """
    return SystemConfig(
        num_users=4,
        num_servers=4,
        devices_per_user=4,
        model="bert-base",
        rounds=64,
        controls=("split", "server", "power", "bandwidth", "microbatches"),
        weights=Weights(energy=0.0, delay=1.0, stability=0.0, budget=1.0, drop=1.0),
        delay_aggregate="max",
        head_on_server=True,
        split_min_local=12,
        device=DeviceSpec(peak_flops=(0.5e12, 5.0e12), utilization=1.0, power_w=(5.0, 15.0),
                          memory_gb=(2.0, 8.0), memory_choices_gb=(2.0, 4.0, 8.0)),
        server=ServerSpec(profiles=("l4", "a10", "v100"), load_levels=(0.0,)),
        radio=RadioConfig(d2d_bandwidth_hz=10.0e6, d2d_power_max_w=0.2),
        geometry=GeometryConfig(area_m=1000.0, cluster_radius_m=50.0, server_distance_m=(100.0, 500.0)),
        workload=WorkloadConfig(seq_len=(128, 128), batch_max=32, arrival_rate=0.0, peft="full",
                                microbatches=4, max_microbatches=16, overhead_s=0.005, energy_budget_j=40.0,
                                local_iterations=5),
    )


SCENARIOS: dict[str, Callable[[], SystemConfig]] = {
    "default": default,
    "liu2024": liu2024,
    "qian2024": qian2024,
    "collapipe": collapipe,
}


def make_config(name: str = "default", config: SystemConfig | None = None, **overrides: Any) -> SystemConfig:
    """The preset ``name`` (or ``config``) with dotted-name ``overrides`` applied and validated."""
    if config is None:
        if name not in SCENARIOS:
            raise ValueError(f"scenario: unknown scenario {name!r}; valid names: {sorted(SCENARIOS)}")
        config = SCENARIOS[name]()
    elif not isinstance(config, SystemConfig):
        raise ValueError(f"config: expected a mec_gym.config.SystemConfig, got {type(config).__name__}")
    return config.override(overrides) if overrides else config
