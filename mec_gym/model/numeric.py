"""Array helpers of the hot path (no formulas here), and what lets one formula serve two callers.

The formula functions of :mod:`mec_gym.model` are written once, on plain arithmetic and the helpers
below, so they run both on numpy arrays (the batched model the experts and tests call) and, compiled
by numba, on the scalars of one environment inside the fused round kernel
(:mod:`mec_gym.model.kernel`). ``jitable`` marks such a function: it stays an ordinary Python function
and becomes callable from compiled code. The helpers ``divide_where``, ``select`` and ``as_float``
have a numpy implementation (used from Python) and a scalar one (used by numba).
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a dependency; without it the environments fall back to the numpy backend
    from numba import types as _nb_types
    from numba.extending import overload as _overload
    from numba.extending import register_jitable as _register_jitable

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba cannot be installed
    HAVE_NUMBA = False

LN10 = math.log(10.0)
"""ln 10 as one double, shared by Python and compiled code (a folded ``np.log(10.0)`` may differ in the last bit)."""
LN2 = math.log(2.0)
"""ln 2, as :data:`LN10`."""

_SMALL = 256  # below this many entries numpy's call overhead dominates: keep the one-call spelling
LARGE = 2048
"""Arrays with at least this many entries take the paths with more numpy calls and fewer passes."""


def compile_cached(function, **options):
    """``numba.njit(function, cache=True, **options)``, with the on-disk cache tied to the model's sources.

    numba checks only the stamp of the file that defines ``function``; the formula functions it compiles
    in live in other files of :mod:`mec_gym.model`. So a digest of those sources (and of numba's version) is
    kept next to the cache, and a cache built from other sources is flushed before use.
    """
    import hashlib
    from pathlib import Path

    import numba

    dispatcher = numba.njit(cache=True, **options)(function)
    here = Path(__file__).resolve().parent
    sources = sorted(here.glob("*.py"))
    digest = hashlib.sha256(numba.__version__.encode())
    for path in sources:
        digest.update(path.read_bytes())
    stamp = Path(dispatcher._cache.cache_path) / f"{function.__module__}.{function.__name__}.sources"
    try:
        if not stamp.exists() or stamp.read_text() != digest.hexdigest():
            dispatcher._cache.flush()
            stamp.write_text(digest.hexdigest())
    except OSError:  # a read-only cache location: compile without the disk cache
        dispatcher = numba.njit(**options)(function)
    return dispatcher


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


PAIRWISE_MAX = 128
"""The longest range :func:`pairwise_sum` adds (numpy splits longer ones in halves first)."""


def pairwise_sum(values: np.ndarray, start: int, count: int) -> float:
    """Σ ``values[start:start + count]`` (1-D float64, ``count`` <= PAIRWISE_MAX) in numpy's pairwise order,
    so a compiled sum over a short axis equals ``ndarray.sum(axis=-1)`` bit for bit: left to right below 8
    entries, else eight interleaved partial sums combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)),
    then the leftover entries."""
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
