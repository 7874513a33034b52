"""Array helpers of the hot path (no formulas here), and what lets one formula serve two callers.

The formula functions of :mod:`mec_gym.model` are written once, on plain arithmetic and the helpers
below, so they run both on numpy arrays (the batched model the experts and tests call) and, compiled
by numba, on the scalars of one environment inside the fused round kernel
(:mod:`mec_gym.model.kernel`). ``jitable`` marks such a function: it stays an ordinary Python function
and becomes callable from compiled code. The helpers ``divide_where``, ``select``, ``as_float``,
``float_bits`` and ``bits_float`` have a numpy implementation (used from Python) and a scalar one (used by
numba).

The model's elementary functions are here too: ``ln``, ``exp`` (fdlibm's algorithms, < 1 ulp), ``log1p`` and
``power`` on them. They replace libm in the formulas so that the round kernel's per-link and per-user loops
vectorize (libm calls stay scalar) and every platform computes the same bits; Python calls them as numba
ufuncs of the same source, and without numba the source runs on numpy arrays (:data:`SOURCES`).
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


def jitable(function=None, *, inline: bool = False):
    """Mark a formula function as compilable by numba (returns ``function`` itself). ``@jitable(inline=True)``
    has numba inline it into its callers, for the functions the kernel calls inside loops that LLVM should
    vectorize (LLVM does not inline every call, and a loop with a call stays scalar)."""
    if function is None:
        return lambda f: jitable(f, inline=inline)
    if not HAVE_NUMBA:
        return function
    return _register_jitable(inline="always")(function) if inline else _register_jitable(function)


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


def float_bits(value: np.ndarray | float) -> np.ndarray:
    """The IEEE-754 bits of float64 ``value`` as int64 (a view from Python, a bitcast when compiled)."""
    return np.asarray(value, dtype=np.float64).view(np.int64)


def bits_float(bits: np.ndarray | int) -> np.ndarray:
    """The float64 whose IEEE-754 bits are the int64 ``bits`` (inverse of :func:`float_bits`)."""
    return np.asarray(bits, dtype=np.int64).view(np.float64)


def select(condition: np.ndarray, if_true: np.ndarray, if_false: np.ndarray) -> np.ndarray:
    """``np.where(condition, if_true, if_false)``; compiled (scalars): ``if_true if condition else if_false``."""
    return np.where(condition, if_true, if_false)


def as_float(value: np.ndarray | float) -> np.ndarray:
    """``value`` as float64 (an array from Python, a float when compiled)."""
    return np.asarray(value, dtype=np.float64)


# --------------------------------------------------------------------------- elementary functions
# ``ln`` and ``exp`` below are fdlibm's algorithms (Sun Microsystems 1993: e_log.c and e_exp.c, the code behind
# Java's StrictMath), written without branches on plain IEEE arithmetic and bit operations. Why not libm: the
# same source runs on numpy arrays and, compiled, inside the round kernel's per-link loop, where LLVM turns it
# into AVX2 code over four links at once (libm calls stay scalar and clobber every register); and every
# platform gets the same bits, where libm and numpy's SIMD loops differ in the last bit between machines.
# Error below 1 ulp (fdlibm's bound; tests/test_numeric.py checks <= 1 ulp against numpy on 10^6 points).
_SHIFTER = 6755399441055744.0  # 1.5·2^52: x + _SHIFTER rounds x to an integer held in the low mantissa bits
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")  # ln 2 split so that k·_LN2_HI is exact for |k| < 2^11
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_INV_LN2 = float.fromhex("0x1.71547652b82fep+0")
_LG1, _LG2, _LG3, _LG4, _LG5, _LG6, _LG7 = (float.fromhex(h) for h in (  # e_log.c Lg1..Lg7
    "0x1.5555555555593p-1", "0x1.999999997fa04p-2", "0x1.2492494229359p-2", "0x1.c71c51d8e78afp-3",
    "0x1.7466496cb03dep-3", "0x1.39a09d078c69fp-3", "0x1.2f112df3e5244p-3"))
_P1, _P2, _P3, _P4, _P5 = (float.fromhex(h) for h in (  # e_exp.c P1..P5
    "0x1.555555555553ep-3", "-0x1.6c16c16bebd93p-9", "0x1.1566aaf25de2cp-14", "-0x1.bbd41c5d26bf1p-20",
    "0x1.6376972bea4d0p-25"))
_DBL_MIN = float.fromhex("0x1p-1022")
_DBL_MAX = float.fromhex("0x1.fffffffffffffp+1023")
EXP_MIN, EXP_MAX = -708.0, 709.0
""":func:`exp` clamps its argument to [EXP_MIN, EXP_MAX], where the result stays a normal float."""


def ln(x: np.ndarray | float) -> np.ndarray:
    """Natural logarithm, fdlibm's e_log.c without branches (error < 1 ulp).

    Defined for positive normal ``x``; smaller (zero, subnormal, negative) values give ln of the smallest
    normal double (-708.4) and larger ones ln of the largest, so callers clip first where that matters.
    x = 2^k·(1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)); s = f/(2 + f); ln(1 + f) = 2·atanh(s) from a
    degree-14 polynomial in s (Lg1..Lg7); ln x = k·ln 2 + ln(1 + f), with ln 2 in two parts.
    """
    # (names are rebound once spent, so fewer array temporaries are alive at once)
    bits = float_bits(np.minimum(np.maximum(x, _DBL_MIN), _DBL_MAX))
    k = (bits >> 52) - 1023  # the exponent (the sign bit is 0)
    high = (bits >> 32) & 0x000FFFFF  # the mantissa's high 20 bits
    wide = ((high - 0x6147A) | (0x6B851 - high)) > 0  # fdlibm's two final formulas (both computed below)
    carry = (high + 0x95F64) & 0x100000  # set when the mantissa is at least sqrt(2): halve it, k += 1
    f = bits_float(((high | (carry ^ 0x3FF00000)) << 32) | (bits & 0xFFFFFFFF)) - 1.0
    k = bits_float(k + (carry >> 20) + float_bits(_SHIFTER)) - _SHIFTER  # now as a float64 (exact)
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    z = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))  # R(z)
    w = 0.5 * f * f  # hfsq
    return select(wide, k * _LN2_HI - ((w - (s * (w + z) + k * _LN2_LO)) - f),
                  k * _LN2_HI - ((s * (f - z) - k * _LN2_LO) - f))


def exp(x: np.ndarray | float) -> np.ndarray:
    """Exponential, fdlibm's e_exp.c without branches (error < 1 ulp); the argument is clamped to
    [EXP_MIN, EXP_MAX] first (the result stays a normal float).

    x = k·ln 2 + r with |r| <= ln 2 / 2 (k by round-to-nearest through _SHIFTER, ln 2 in two parts);
    e^r = 1 + 2r/(2 - c) with c = r - r²·P(r²) (P1..P5, a Remez fit); e^x = 2^k·e^r by adding k to the
    exponent bits.
    """
    x = np.minimum(np.maximum(x, EXP_MIN), EXP_MAX)
    shifted = x * _INV_LN2 + _SHIFTER
    k = float_bits(shifted) - float_bits(_SHIFTER)
    dk = shifted - _SHIFTER
    hi = x - dk * _LN2_HI
    lo = dk * _LN2_LO
    r = hi - lo
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    return bits_float(float_bits(y) + (k << 52))


def log1p(x: np.ndarray | float) -> np.ndarray:
    """ln(1 + x) for x >= 0, accurate near 0: ln(u)·x/(u - 1) with u = 1 + x rounded (Goldberg 1991,
    "What every computer scientist should know about floating-point arithmetic", Thm. 4), x itself where
    u rounds to 1. Error within 4 ulp (tested); built on :func:`ln`, so it vectorizes and gives the same bits
    everywhere."""
    u = 1.0 + x
    d = u - 1.0
    tiny = d == 0.0
    return select(tiny, x, ln(u) * (x / select(tiny, 1.0, d)))


def power(x: np.ndarray | float, y: float) -> np.ndarray:
    """x^y for x > 0 as exp(y·ln x) on :func:`ln` and :func:`exp`: within (1 + |y·ln x|) ulp, i.e. a few ulp
    for the moderate arguments of the model (libm's pow is exact to 1 ulp but cannot be vectorized)."""
    return exp(y * ln(x))


SOURCES = {"ln": ln, "exp": exp, "log1p": log1p, "power": power}
"""The elementary functions' sources, run by numpy on arrays (with numba, the module's names are compiled
ufuncs of these; tests/test_numeric.py checks both give the same bits)."""

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
    from numba.extending import intrinsic as _intrinsic

    pairwise_sum = _register_jitable(pairwise_sum)
    # The elementary functions from Python: a numba ufunc of the same source, compiled on first use (one call
    # per array instead of ~25 numpy passes; the solvers' costs.evaluate runs on small arrays). From numba
    # code: the source itself, inlined by numba (left to LLVM, a function that calls two of them grows past
    # its inlining threshold, and a loop that calls a function does not vectorize).
    def _elementary(source, signature: str):
        import functools
        import inspect

        import numba

        compiled = None

        @functools.wraps(source)
        def entry(*args):
            nonlocal compiled
            if compiled is None:
                try:
                    built = numba.vectorize([signature], cache=True)(source)
                except (RuntimeError, OSError):  # no writable cache location (read-only install): compile anyway
                    built = numba.vectorize([signature])(source)
                compiled = getattr(built, "ufunc", built)  # numpy's ufunc itself: numba's DUFunc wrapper costs 2 µs
            return compiled(*args)

        def typer(*args):
            return source

        typer.__signature__ = inspect.signature(source)  # numba matches the typer's signature to the source's
        _overload(entry, inline="always")(typer)
        return entry

    ln = _elementary(ln, "float64(float64)")
    exp = _elementary(exp, "float64(float64)")
    log1p = _elementary(log1p, "float64(float64)")
    power = _elementary(power, "float64(float64, float64)")

    @_intrinsic
    def _bitcast_float_int(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(_nb_types.int64))
        return _nb_types.int64(_nb_types.float64), codegen

    @_intrinsic
    def _bitcast_int_float(typingctx, bits):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(_nb_types.float64))
        return _nb_types.float64(_nb_types.int64), codegen

    @_overload(float_bits, jit_options={"inline": "always"})
    def _float_bits_scalar(value):
        if isinstance(value, _nb_types.Float):
            def impl(value):
                return _bitcast_float_int(float(value))
            return impl
        return None

    @_overload(bits_float, jit_options={"inline": "always"})
    def _bits_float_scalar(bits):
        if isinstance(bits, _nb_types.Integer):
            def impl(bits):
                return _bitcast_int_float(np.int64(bits))
            return impl
        return None

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
