"""Array helpers of the hot path (no formulas here), and what lets one formula serve two callers.

The formula functions of :mod:`mec_gym.model` are written once, on plain arithmetic and the helpers
below, so they run both on numpy arrays (the batched model the experts and tests call) and, compiled
by numba, on the scalars of one environment inside the fused round kernel
(:mod:`mec_gym.model.kernel`). ``jitable`` marks such a function: it stays an ordinary Python function
and becomes callable from compiled code. The helpers ``divide_where``, ``select`` and ``as_float``
have a numpy implementation (used from Python) and a scalar one (used by numba).
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency; without it the environments fall back to the numpy backend
    from numba import types as _nb_types
    from numba.extending import overload as _overload
    from numba.extending import register_jitable as _register_jitable

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba cannot be installed
    HAVE_NUMBA = False

_SMALL = 256  # below this many entries numpy's call overhead dominates: keep the one-call spelling
LARGE = 2048
"""Arrays with at least this many entries take the paths with more numpy calls and fewer passes."""


def jitable(function):
    """Mark a formula function as compilable by numba (returns ``function`` itself)."""
    return _register_jitable(function) if HAVE_NUMBA else function


def divide_where(numerator: np.ndarray, denominator: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` where ``where`` holds, else 0, as a new float64 array.

    Equals ``np.divide(numerator, denominator, out=np.zeros(shape), where=where)``; on large arrays it
    divides everywhere (masked-out quotients may be inf or NaN, without warnings) and zeroes the
    masked-out entries, which beats numpy's masked loop. Compiled (scalars): ``n / d if where else 0``.
    """
    if np.size(where) < _SMALL:
        return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator, where).shape),
                         where=where)
    if where.all():
        return np.true_divide(numerator, denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quotient = np.true_divide(numerator, denominator, dtype=np.float64)
    np.copyto(quotient, 0.0, where=~where)
    return quotient


def select(condition: np.ndarray, if_true: np.ndarray, if_false: np.ndarray) -> np.ndarray:
    """``np.where(condition, if_true, if_false)``; compiled (scalars): ``if_true if condition else if_false``."""
    return np.where(condition, if_true, if_false)


def as_float(value: np.ndarray | float) -> np.ndarray:
    """``value`` as float64 (an array from Python, a float when compiled)."""
    return np.asarray(value, dtype=np.float64)


def pairwise_sum(values: np.ndarray, start: int, count: int) -> float:
    """Σ ``values[start:start + count]`` (1-D float64) in numpy's pairwise order, so a compiled sum over a
    short axis equals ``ndarray.sum(axis=-1)`` bit for bit: blocks of up to 128 entries are summed by
    :func:`_pairwise_block`; a longer range is split in halves (a multiple of 8 first) and the halves' sums
    added, as numpy's recursive ``pairwise_sum`` does (here with an explicit stack)."""
    if count <= 128:
        return _pairwise_block(values, start, count)
    # post-order walk of the halving tree: (start, count, state); state 0 = unvisited, 1 = left done
    starts = np.empty(64, np.int64)
    counts = np.empty(64, np.int64)
    states = np.zeros(64, np.int64)
    partial = np.empty(64)
    starts[0], counts[0], states[0] = start, count, 0
    depth = 0
    result = 0.0
    while depth >= 0:
        s0, c0 = starts[depth], counts[depth]
        half = c0 // 2
        half -= half % 8
        if c0 <= 128:
            result = _pairwise_block(values, s0, c0)
            depth -= 1
        elif states[depth] == 0:
            states[depth] = 1
            depth += 1
            starts[depth], counts[depth], states[depth] = s0, half, 0
            continue
        elif states[depth] == 1:
            partial[depth] = result
            states[depth] = 2
            depth += 1
            starts[depth], counts[depth], states[depth] = s0 + half, c0 - half, 0
            continue
        else:
            result = partial[depth] + result
            depth -= 1
        # a finished child hands ``result`` to its parent, whose state says which half it was
    return result


def _pairwise_block(values: np.ndarray, start: int, count: int) -> float:
    """numpy's pairwise sum of at most 128 entries: left to right below 8, else eight interleaved partial
    sums combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the leftover entries."""
    if count < 8:
        total = -0.0  # numpy starts from -0.0, so a sum of -0.0 stays -0.0
        for i in range(count):
            total += values[start + i]
        return total
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    i = 8
    stop = count - count % 8
    while i < stop:
        r0 += values[start + i]
        r1 += values[start + i + 1]
        r2 += values[start + i + 2]
        r3 += values[start + i + 3]
        r4 += values[start + i + 4]
        r5 += values[start + i + 5]
        r6 += values[start + i + 6]
        r7 += values[start + i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < count:
        total += values[start + i]
        i += 1
    return total


if HAVE_NUMBA:
    _pairwise_block = _register_jitable(_pairwise_block)
    pairwise_sum = _register_jitable(pairwise_sum)

    @_overload(divide_where, jit_options={"inline": "always"})
    def _divide_where_scalar(numerator, denominator, where):
        if isinstance(where, (_nb_types.Boolean, _nb_types.Number)):
            def impl(numerator, denominator, where):
                return numerator / denominator if where else 0.0
            return impl
        return None

    @_overload(select, jit_options={"inline": "always"})
    def _select_scalar(condition, if_true, if_false):
        if isinstance(condition, (_nb_types.Boolean, _nb_types.Number)):
            def impl(condition, if_true, if_false):
                return if_true if condition else if_false
            return impl
        return None

    @_overload(as_float, jit_options={"inline": "always"})
    def _as_float_scalar(value):
        if isinstance(value, _nb_types.Number):
            def impl(value):
                return float(value)
            return impl
        return None
