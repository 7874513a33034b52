"""The model's elementary functions (mec_gym.model.numeric: fdlibm's ln and exp, log1p, power): accuracy against
numpy/libm, their documented domains, and the same bits from their numpy source, their compiled ufuncs (what
Python code calls) and the scalar code the round kernel inlines."""

from __future__ import annotations

import numpy as np
import pytest

from mec_gym.model import numeric

numba = pytest.importorskip("numba")

RNG = np.random.default_rng(20261207)


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between float64 arrays of one sign."""
    return np.abs(np.asarray(a, np.float64).view(np.int64) - np.asarray(b, np.float64).view(np.int64))


LN_POINTS = np.concatenate([
    np.exp(RNG.uniform(-700.0, 700.0, 200_000)),  # every binade
    RNG.uniform(0.5, 2.0, 200_000),  # around 1, where the two formulas switch
    [1.0, 2.0, 0.5, np.sqrt(2.0), np.sqrt(0.5), 1e-30, 1e300, np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0),
     2.2250738585072014e-308, 1.7976931348623157e308],
])
EXP_POINTS = np.concatenate([RNG.uniform(-708.0, 709.0, 200_000), RNG.uniform(-1.0, 1.0, 200_000),
                             [0.0, -0.0, 1.0, -1.0, 1e-10, -1e-300, np.log(2.0), -np.log(2.0) / 2]])


def test_ln_within_one_ulp_of_libm():
    assert ulps(numeric.ln(LN_POINTS), np.log(LN_POINTS)).max() <= 1
    assert numeric.ln(1.0) == 0.0


def test_exp_within_one_ulp_of_libm():
    assert ulps(numeric.exp(EXP_POINTS), np.exp(EXP_POINTS)).max() <= 1
    assert numeric.exp(0.0) == 1.0


def test_ln_and_exp_clamp_outside_their_domain():
    tiny = np.log(2.2250738585072014e-308)
    assert numeric.ln(0.0) == pytest.approx(tiny) and numeric.ln(-3.0) == pytest.approx(tiny)
    assert numeric.ln(5e-324) == pytest.approx(tiny)
    assert numeric.exp(-1000.0) == pytest.approx(np.exp(numeric.EXP_MIN), rel=1e-15)
    assert numeric.exp(1000.0) == pytest.approx(np.exp(numeric.EXP_MAX), rel=1e-15)
    assert np.isfinite(numeric.exp(np.array([-1e300, 1e300]))).all()


def test_log1p_within_four_ulp_and_exact_near_zero():
    x = np.concatenate([np.exp(RNG.uniform(-740.0, 700.0, 200_000)), RNG.uniform(0.0, 1e-8, 50_000),
                        RNG.uniform(0.0, 10.0, 200_000)])
    assert ulps(numeric.log1p(x), np.log1p(x)).max() <= 4
    assert numeric.log1p(0.0) == 0.0
    assert numeric.log1p(1e-300) == 1e-300  # 1 + x rounds to 1: log1p(x) = x


@pytest.mark.parametrize("exponent", [0.93, 0.5, 2.0])
def test_power_within_its_bound(exponent):
    x = np.exp(RNG.uniform(np.log(1e-6), np.log(1e3), 200_000))
    bound = 1.0 + np.abs(exponent * np.log(x))
    assert (ulps(numeric.power(x, exponent), np.power(x, exponent)) <= bound + 1).all()


def test_float_bits_round_trip():
    x = np.array([0.0, -0.0, 1.0, -2.5, np.inf, 5e-324])
    assert np.array_equal(numeric.float_bits(x), x.view(np.int64))
    assert np.array_equal(numeric.bits_float(numeric.float_bits(x)), x)


@pytest.fixture(scope="module")
def compiled():
    """The functions compiled by numba, applied element by element (scalars, as in the round kernel)."""

    def loop(function):
        @numba.njit(error_model="numpy")
        def apply(values, out):
            for i in range(values.shape[0]):
                out[i] = function(values[i])
        return apply

    @numba.njit(error_model="numpy")
    def power_093(x):
        return numeric.power(x, 0.93)

    @numba.njit(error_model="numpy")
    def round_trip(values, out):
        for i in range(values.shape[0]):
            out[i] = numeric.bits_float(numeric.float_bits(values[i]) + 1)

    return {"ln": loop(numeric.ln), "exp": loop(numeric.exp), "log1p": loop(numeric.log1p),
            "power": loop(power_093), "bits": round_trip}


@pytest.mark.parametrize("name, points", [("ln", LN_POINTS), ("exp", EXP_POINTS), ("log1p", LN_POINTS[:1000]),
                                          ("power", LN_POINTS[:1000])])
def test_compiled_equals_numpy_bit_for_bit(compiled, name, points):
    out = np.empty_like(points)
    compiled[name](points, out)
    source = numeric.SOURCES[name]  # the arithmetic run by numpy on the whole array
    expected = source(points, 0.93) if name == "power" else source(points)
    assert np.array_equal(out, expected)
    entry = numeric.power(points, 0.93) if name == "power" else getattr(numeric, name)(points)  # the ufunc
    assert np.array_equal(entry, expected)


def test_compiled_bitcasts(compiled):
    x = np.array([1.0, 2.0, 1e-300])
    out = np.empty_like(x)
    compiled["bits"](x, out)
    assert np.array_equal(out, np.nextafter(x, np.inf))
