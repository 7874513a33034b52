"""Compute delay and energy with DVFS, and size-dependent GPU utilization (SPEC §3.3).

Units: FLOPs, FLOP/s, seconds, joules, watts.
"""

from __future__ import annotations

import numpy as np

from mec_gym.model.numeric import divide_where


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
    work = np.asarray(work_flops, dtype=np.float64)
    speed = _times(_times(share, level), rate_max_flops)
    delay = divide_where(work, speed, work > 0)
    energy = _times(power_max_w, level**2) * work / rate_max_flops
    return delay, energy


def _times(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """a·b, skipping the exact multiplication by a Python scalar 1 (a full pass over a batch array)."""
    if isinstance(a, (int, float)) and a == 1.0:
        return b
    if isinstance(b, (int, float)) and b == 1.0:
        return a
    return a * b


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
        return np.full(np.shape(work_per_kernel_flops), utilization)
    ratio = np.minimum(1.0, np.asarray(work_per_kernel_flops) / (saturation_seconds * peak_flops))
    return utilization * np.maximum(ratio, 1e-6) ** exponent
