"""Geometry, path loss, shadowing, fading, mobility and link rates (SPEC §3.3, §3.5).

Pure numpy, broadcasting over any leading batch axes. Distances in metres unless named
``_km``; gains are linear power ratios; powers in W; bandwidth in Hz; rates in bit/s.
"""

from __future__ import annotations

import numpy as np

from mec_gym.model.numeric import LARGE, divide_where


def pathloss_db(distance_m: np.ndarray, db_at_1km: float, exponent_db: float, min_distance_m: float) -> np.ndarray:
    """Log-distance path loss PL = a + b·log10(d_km) dB.

    3GPP TR 36.814 macro model 128.1 + 37.6·log10(d_km) as used by [LZ24] §5 for uplinks;
    148 + 40·log10(d_km) for D2D ([CP25] notes §6.3). Distances are clipped below at
    ``min_distance_m`` so the model stays in its range of validity.
    """
    d_km = np.maximum(distance_m, min_distance_m)
    d_km *= 1e-3  # in place: the hot path runs this on every user-server pair each round
    log = np.log10(d_km)
    log *= exponent_db
    log += db_at_1km
    return log


def channel_gain(pathloss: np.ndarray, shadowing_db: np.ndarray, fading_power: np.ndarray | float) -> np.ndarray:
    """Linear channel gain g = 10^{-(PL + X_σ)/10}·|h|² (path loss, log-normal shadowing, Rayleigh fading)."""
    exponent = np.add(pathloss, shadowing_db)
    exponent *= -np.log(10.0) / 10.0
    return np.exp(exponent) * fading_power


def noise_psd_w_per_hz(noise_psd_dbm_hz: float, noise_figure_db: float) -> float:
    """Noise power spectral density N0 (W/Hz) from dBm/Hz plus the receiver noise figure."""
    return 10.0 ** ((noise_psd_dbm_hz + noise_figure_db - 30.0) / 10.0)


def shannon_rate(bandwidth_hz: np.ndarray, gain: np.ndarray, power_w: np.ndarray, noise_psd: float) -> np.ndarray:
    """FDMA Shannon rate r = b·log2(1 + g·p/(N0·b)) in bit/s ([LZ24] §3, the unnumbered rate formula).

    Zero bandwidth gives rate 0. Increasing in both ``bandwidth_hz`` and ``power_w``.
    """
    b = np.asarray(bandwidth_hz, dtype=np.float64)
    signal = gain * power_w
    noise = noise_psd * b
    snr = divide_where(signal, noise, noise > 0)
    spectral = np.log1p(snr)  # log1p: log2(1 + snr) loses precision at low SNR
    spectral /= np.log(2.0)
    return b * spectral


def transmission(bits: np.ndarray, rate_bps: np.ndarray, power_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delay s/r (s) and energy p·s/r (J) of sending ``bits`` at ``rate_bps`` ([LZ24] eq. 3).

    Zero bits cost nothing even on a zero-rate link.
    """
    bits = np.asarray(bits, dtype=np.float64)
    delay = divide_where(bits, rate_bps, bits > 0)
    return delay, power_w * delay


def ar1(previous: np.ndarray, innovation: np.ndarray, correlation: float) -> np.ndarray:
    """First-order autoregressive update x' = ρ·x + sqrt(1-ρ²)·w (stationary if w has x's variance)."""
    updated = np.multiply(correlation, previous)
    updated += np.sqrt(1.0 - correlation**2) * innovation
    return updated


def rayleigh_power(fading_re: np.ndarray, fading_im: np.ndarray) -> np.ndarray:
    """|h|² of a complex Gaussian h with unit mean power (re and im each of variance 1/2)."""
    power = np.square(fading_re)
    power += np.square(fading_im)
    return power


def gauss_markov_step(position: np.ndarray, velocity: np.ndarray, innovation: np.ndarray, mean_speed: float,
                      speed_std: float, memory: float, dt: float, area: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Markov mobility (Liang & Haas 1999) in a square area with reflecting walls.

    v' = a·v + (1-a)·v̄ + sqrt(1-a²)·σ·w, where v̄ keeps the current heading at ``mean_speed``;
    x' = x + v'·dt, reflected at 0 and ``area``. Returns (position, velocity), metres and m/s.
    """
    speed = np.sqrt(velocity[..., :1] ** 2 + velocity[..., 1:] ** 2)
    moving = speed > 0
    if moving.all() and velocity.size >= LARGE:  # per component: long loops, no broadcasting over the last axis
        heading = np.empty(velocity.shape)
        for axis in range(velocity.shape[-1]):
            np.divide(velocity[..., axis], speed[..., 0], out=heading[..., axis])
    elif moving.all():
        heading = velocity / speed
    else:
        heading = np.where(moving, velocity / np.where(moving, speed, 1.0), 0.0)
    heading *= (1.0 - memory) * mean_speed
    new_velocity = np.multiply(memory, velocity, order="C")  # C order: reflected through flat views below
    new_velocity += heading
    new_velocity += np.sqrt(1.0 - memory**2) * speed_std * innovation
    new_position = new_velocity * dt
    new_position += position
    # reflect at the walls: positions folded back inside, velocity component flipped (few entries:
    # fixed through their flat indices)
    below = new_position < 0.0
    above = new_position > area
    hit = np.flatnonzero(below | above)
    if hit.size:
        flat_position, flat_velocity = new_position.reshape(-1), new_velocity.reshape(-1)
        folded = flat_position[hit]
        folded = np.where(below.reshape(-1)[hit], -folded, folded)
        flat_position[hit] = np.where(above.reshape(-1)[hit], 2.0 * area - folded, folded)
        flat_velocity[hit] = -flat_velocity[hit]
    np.clip(new_position, 0.0, area, out=new_position)
    return new_position, new_velocity


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
