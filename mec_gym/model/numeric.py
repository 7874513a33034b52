"""Array helpers of the hot path (no formulas here): same values as the plain numpy spelling, faster on
large batches."""

from __future__ import annotations

import numpy as np

_SMALL = 256  # below this many entries numpy's call overhead dominates: keep the one-call spelling
LARGE = 2048
"""Arrays with at least this many entries take the paths with more numpy calls and fewer passes."""


def divide_where(numerator: np.ndarray, denominator: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` where ``where`` holds, else 0, as a new float64 array.

    Equals ``np.divide(numerator, denominator, out=np.zeros(shape), where=where)``; on large arrays it
    divides everywhere (masked-out quotients may be inf or NaN, without warnings) and zeroes the
    masked-out entries, which beats numpy's masked loop.
    """
    if np.size(where) < _SMALL:
        return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape),
                         where=where)
    if where.all():
        return np.true_divide(numerator, denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quotient = np.true_divide(numerator, denominator, dtype=np.float64)
    np.copyto(quotient, 0.0, where=~where)
    return quotient
