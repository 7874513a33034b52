"""Geometry, path loss, shadowing, fading, mobility and link rates (SPEC §3.3, §3.5).

Pure numpy, broadcasting over any leading batch axes. Distances in metres unless named
``_km``; gains are linear power ratios; powers in W; bandwidth in Hz; rates in bit/s.
"""

from __future__ import annotations

import numpy as np

from mec_gym.model.numeric import LN2, LN10, as_float, divide_where, exp, jitable, ln, log1p, select


@jitable
def pathloss_db(distance_m: np.ndarray, db_at_1km: float, exponent_db: float, min_distance_m: float) -> np.ndarray:
    """Log-distance path loss PL = a + b·log10(d_km) dB.

    3GPP TR 36.814 macro model 128.1 + 37.6·log10(d_km) as used by [LZ24] §5 for uplinks;
    148 + 40·log10(d_km) for D2D ([CP25] notes §6.3). Distances are clipped below at
    ``min_distance_m`` so the model stays in its range of validity.
    """
    # log10(x) = ln(x)/ln(10), with the model's own ln (numeric.ln: same bits everywhere, vectorizes)
    return db_at_1km + exponent_db * (ln(np.maximum(distance_m, min_distance_m) * 1e-3) / LN10)


@jitable
def distance_m(dx_m: np.ndarray, dy_m: np.ndarray) -> np.ndarray:
    """Euclidean distance sqrt(dx² + dy²), metres."""
    return np.sqrt(dx_m * dx_m + dy_m * dy_m)


@jitable
def channel_gain(pathloss: np.ndarray, shadowing_db: np.ndarray, fading_power: np.ndarray | float) -> np.ndarray:
    """Linear channel gain g = 10^{-(PL + X_σ)/10}·|h|² (path loss, log-normal shadowing, Rayleigh fading)."""
    return exp((pathloss + shadowing_db) * (-LN10 / 10.0)) * fading_power


def noise_psd_w_per_hz(noise_psd_dbm_hz: float, noise_figure_db: float) -> float:
    """Noise power spectral density N0 (W/Hz) from dBm/Hz plus the receiver noise figure."""
    return 10.0 ** ((noise_psd_dbm_hz + noise_figure_db - 30.0) / 10.0)


@jitable
def shannon_rate(bandwidth_hz: np.ndarray, gain: np.ndarray, power_w: np.ndarray, noise_psd: float) -> np.ndarray:
    """FDMA Shannon rate r = b·log2(1 + g·p/(N0·b)) in bit/s ([LZ24] §3, the unnumbered rate formula).

    Zero bandwidth gives rate 0. Increasing in both ``bandwidth_hz`` and ``power_w``.
    """
    b = as_float(bandwidth_hz)
    noise = noise_psd * b
    snr = divide_where(gain * power_w, noise, noise > 0)
    return b * (log1p(snr) / LN2)  # log1p: log2(1 + snr) loses precision at low SNR (numeric.log1p)


@jitable
def transmission(bits: np.ndarray, rate_bps: np.ndarray, power_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delay s/r (s) and energy p·s/r (J) of sending ``bits`` at ``rate_bps`` ([LZ24] eq. 3).

    Zero bits cost nothing even on a zero-rate link.
    """
    bits = as_float(bits)
    delay = divide_where(bits, rate_bps, bits > 0)
    return delay, power_w * delay


@jitable
def ar1(previous: np.ndarray, innovation: np.ndarray, correlation: float) -> np.ndarray:
    """First-order autoregressive update x' = ρ·x + sqrt(1-ρ²)·w (stationary if w has x's variance)."""
    return correlation * previous + np.sqrt(1.0 - correlation**2) * innovation


@jitable
def rayleigh_power(fading_re: np.ndarray, fading_im: np.ndarray) -> np.ndarray:
    """|h|² of a complex Gaussian h with unit mean power (re and im each of variance 1/2)."""
    return fading_re * fading_re + fading_im * fading_im


@jitable
def gauss_markov_velocity(velocity: np.ndarray, heading: np.ndarray, innovation: np.ndarray, mean_speed: float,
                          speed_std: float, memory: float) -> np.ndarray:
    """One velocity component of Gauss-Markov mobility (Liang & Haas 1999), m/s:
    v' = a·v + (1-a)·v̄ + sqrt(1-a²)·σ·w, with v̄ = ``mean_speed``·``heading`` (the unit heading's component)."""
    return (memory * velocity + heading * ((1.0 - memory) * mean_speed)
            + np.sqrt(1.0 - memory**2) * speed_std * innovation)


@jitable
def reflect(position: np.ndarray, velocity: np.ndarray, area: float) -> tuple[np.ndarray, np.ndarray]:
    """One coordinate reflected at the walls 0 and ``area`` (metres): folded back inside, its velocity
    component flipped; returns (position, velocity)."""
    below = position < 0.0
    above = position > area
    folded = select(below, -position, position)
    inside = select(above, 2.0 * area - folded, folded)
    return np.minimum(np.maximum(inside, 0.0), area), select(below | above, -velocity, velocity)


def gauss_markov_step(position: np.ndarray, velocity: np.ndarray, innovation: np.ndarray, mean_speed: float,
                      speed_std: float, memory: float, dt: float, area: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Markov mobility (Liang & Haas 1999) in a square area with reflecting walls.

    v' = a·v + (1-a)·v̄ + sqrt(1-a²)·σ·w (:func:`gauss_markov_velocity`), where v̄ keeps the current
    heading at ``mean_speed``; x' = x + v'·dt, reflected at 0 and ``area`` (:func:`reflect`).
    Returns (position, velocity), metres and m/s, last axis (x, y).
    """
    speed = np.sqrt(velocity[..., :1] ** 2 + velocity[..., 1:] ** 2)
    moving = speed > 0
    heading = divide_where(velocity, speed, np.broadcast_to(moving, velocity.shape))
    new_velocity = gauss_markov_velocity(velocity, heading, innovation, mean_speed, speed_std, memory)
    return reflect(new_velocity * dt + position, new_velocity, area)


def server_positions(num_servers: int, area_m: float) -> np.ndarray:
    """Fixed base-station sites: the centres of a near-square grid of ``num_servers`` cells (M×2, metres)."""
    cols = int(np.ceil(np.sqrt(num_servers)))
    rows = int(np.ceil(num_servers / cols))
    sites = []
    for i in range(num_servers):
        r, c = divmod(i, cols)
        # the last row may be partial: centre its sites horizontally
        in_row = min(cols, num_servers - r * cols)
        sites.append(((c + 0.5) * area_m / in_row, (r + 0.5) * area_m / rows))
    return np.asarray(sites, dtype=np.float64)
