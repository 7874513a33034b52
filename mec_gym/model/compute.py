"""Compute delay and energy with DVFS, and size-dependent GPU utilization (SPEC §3.3).

Units: FLOPs, FLOP/s, seconds, joules, watts.
"""

from __future__ import annotations

import numpy as np

from mec_gym.model.numeric import as_float, divide_where, jitable, power


@jitable
def compute_delay_energy(work_flops: np.ndarray, rate_max_flops: np.ndarray, level: np.ndarray,
                         power_max_w: np.ndarray, share: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Delay and energy of ``work_flops`` on a processor at DVFS ``level`` u ∈ (0, 1], of which this
    job gets a time ``share`` s ∈ (0, 1].

    The processor computes at u·R^max and draws P = κ(u·f_max)³ = P^max·u³ while it runs this
    job, so time = w/(s·u·R^max) and energy = P·(w/(u·R^max)) = P^max·u²·w/R^max.
    With s = 1 this is [LZ24] eq. (1)-(2) for a user (T = ψ/(f·C·D), E = κ₁f²ψ/(C·D)) and,
    with u = φ·(1−ℓ), eq. (5)-(6) for a server share f_{n,m} = φ·f_m^max. A time-shared
    server at full clock is u = 1, s = φ·(1−ℓ). Zero work costs nothing.
    """
    work = as_float(work_flops)
    delay = divide_where(work, share * level * rate_max_flops, work > 0)
    energy = power_max_w * level**2 * work / rate_max_flops
    return delay, energy


@jitable(inline=True)
def gpu_utilization(work_per_kernel_flops: np.ndarray, peak_flops: np.ndarray, utilization: float,
                    saturation_seconds: float, exponent: float) -> np.ndarray:
    """Fraction of peak a GPU reaches on a layer whose forward+backward per micro-batch is ``w`` FLOPs.

    u(w) = u_peak·min(1, w/w_sat)^γ with w_sat = ``saturation_seconds``·peak: small layers are
    overhead-bound. Fitted to shared/calibration/h100-layers.csv (LoRA rows: BERT-base 1.2e11
    FLOPs → 6 %, Qwen-0.5B 2.5e11 → 11 %, 1B 1.0e12 → 42 %, 7B ≥ 3.4e12 → 52 %) with
    u_peak = 0.53, w_sat = 1.5e12 (1.5 ms at 989 TFLOP/s), γ = 0.93; scaling w_sat with the
    peak assumes a smaller GPU saturates on proportionally less work (our choice).
    ``saturation_seconds = 0`` gives the constant utilization ``u_peak``.
    """
    if saturation_seconds <= 0:
        return utilization + 0.0 * work_per_kernel_flops  # the constant, in the shape of the work
    ratio = np.minimum(1.0, work_per_kernel_flops / (saturation_seconds * peak_flops))
    return utilization * power(np.maximum(ratio, 1e-6), exponent)  # numeric.power: vectorizes
