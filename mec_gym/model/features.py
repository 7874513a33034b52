"""Observation features of the model's quantities (SPEC §4.2): the scalings the observation builder
and the round kernel share. Dimensionless; plain arithmetic, so numpy and numba run the same source."""

from __future__ import annotations

import numpy as np

from mec_gym.model.numeric import LN10, jitable, ln


@jitable
def gain_feature(gain: np.ndarray) -> np.ndarray:
    """(10·log10 g + 100)/50 of a linear gain g, unclipped (``flat`` clips every field to its bounds)."""
    return ln(np.maximum(gain, 1e-30)) * (0.2 / LN10) + 2.0  # 0.2·log10 g, via numeric.ln


@jitable
def saturating(value: np.ndarray, reference: float) -> np.ndarray:
    """x/(x + x_ref) ∈ [0, 1) of a non-negative quantity (queues, server work)."""
    return value / (value + reference)
