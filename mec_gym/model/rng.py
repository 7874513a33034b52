"""Per-environment random streams for the round innovations, compiled so the round kernel draws them inline.

Each environment's round stream is a xoshiro256** generator (Blackman & Vigna 2021: 256-bit state,
period 2^256 − 1, passes BigCrush) whose state is four 64-bit words from a ``numpy.random.SeedSequence``
spawned from the environment's ``np_random`` (:func:`seed_state`). From it:

- uniforms on [0, 1): the top 53 bits of a draw times 2^-53 (:func:`uniform`);
- standard normals: Marsaglia & Tsang's ziggurat with 256 layers (J. Stat. Softw. 5(8), 2000), the
  algorithm and layout numpy uses for ``Generator.standard_normal`` (:func:`normal`).

A round consumes ``n_normals`` normals then ``n_uniforms`` uniforms (``dynamics.innovation_sizes``), whether
the compiled kernel draws them one by one or :func:`draw_round` fills arrays for the numpy model, so both
see the same numbers. The states live in a ``[B, 4]`` uint64 array, one row per environment, so a batch
draws exactly what its members would draw alone.
"""

from __future__ import annotations

import numpy as np

from mec_gym.model.numeric import HAVE_NUMBA, compile_cached, jitable

_U = np.uint64


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marsaglia & Tsang's ``zigset`` for 256 layers with 52-bit magnitudes: (k, w, f) tables.

    Layer edges x_255 = r = 3.6541528853610088 > … > x_1, each layer of area v = 4.92867323399e-3;
    a draw with magnitude j < k[i] in layer i is accepted at once as j·w[i]; f[i] = exp(−x_i²/2).
    """
    dn = 3.6541528853610088
    tn = dn
    vn = 4.92867323399e-3
    m1 = 2.0**52
    k = np.zeros(256, dtype=np.int64)
    w = np.zeros(256)
    f = np.zeros(256)
    q = vn / np.exp(-0.5 * dn * dn)
    k[0] = np.int64((dn / q) * m1)
    k[1] = 0
    w[0] = q / m1
    w[255] = dn / m1
    f[0] = 1.0
    f[255] = np.exp(-0.5 * dn * dn)
    for i in range(254, 0, -1):
        dn = np.sqrt(-2.0 * np.log(vn / dn + np.exp(-0.5 * dn * dn)))
        k[i + 1] = np.int64((dn / tn) * m1)
        tn = dn
        f[i] = np.exp(-0.5 * dn * dn)
        w[i] = dn / m1
    return k, w, f


ZIGGURAT_K, ZIGGURAT_W, ZIGGURAT_F = _ziggurat_tables()
ZIGGURAT_R = 3.6541528853610088
"""Start of the ziggurat's tail (the base layer's edge)."""


def seed_state(seed_sequence: np.random.SeedSequence) -> np.ndarray:
    """A xoshiro256** state (four uint64 words, never all zero) from ``seed_sequence``."""
    state = seed_sequence.generate_state(4, np.uint64)
    if not state.any():  # the one invalid state (probability 2^-256)
        state[0] = 1
    return state


@jitable
def _rotl(x, k):
    return (x << _U(k)) | (x >> _U(64 - k))


@jitable
def next_u64(state: tuple) -> tuple:
    """(next 64-bit output, next state) of xoshiro256**; ``state`` is a tuple of four uint64 words (passed by
    value: compiled code keeps it in registers)."""
    s0, s1, s2, s3 = state
    result = _rotl(s1 * _U(5), 7) * _U(9)
    t = s1 << _U(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return result, (s0, s1, s2, s3)


@jitable
def uniform(state: tuple) -> tuple:
    """(a uniform draw on [0, 1) with 53 random bits, next state)."""
    r, state = next_u64(state)
    return float(r >> _U(11)) * (1.0 / 9007199254740992.0), state


@jitable
def normal(state: tuple) -> tuple:
    """(a standard normal draw, next state) by the 256-layer ziggurat.

    A draw picks a layer (bits 0-7), a sign (bit 8) and a 52-bit magnitude (bits 9-60); inside the layer's
    core rectangle (~99 % of draws) it is accepted at once, else :func:`_normal_rejected` decides and draws
    again.
    """
    r, state = next_u64(state)
    layer = np.int64(r & _U(0xFF))
    magnitude = np.int64((r >> _U(9)) & _U(0x000FFFFFFFFFFFFF))
    x = float(magnitude) * ZIGGURAT_W[layer]
    if (r & _U(0x100)) != _U(0):
        x = -x
    if magnitude < ZIGGURAT_K[layer]:
        return x, state
    return _normal_rejected(state, layer, x)


def _normal_rejected(state: tuple, layer: int, x: float) -> tuple:
    """The ziggurat's slow path for a draw ``x`` outside its layer's core: the tail beyond ZIGGURAT_R (base
    layer, Marsaglia 1964) or the wedge under the density; a rejected draw starts over."""
    while True:
        if layer == 0:
            while True:
                u, state = uniform(state)
                xx = -np.log1p(-u) / ZIGGURAT_R
                u, state = uniform(state)
                yy = -np.log1p(-u)
                if yy + yy > xx * xx:
                    return (-(ZIGGURAT_R + xx) if x < 0 else ZIGGURAT_R + xx), state
        u, state = uniform(state)
        if (ZIGGURAT_F[layer - 1] - ZIGGURAT_F[layer]) * u + ZIGGURAT_F[layer] < np.exp(-0.5 * x * x):
            return x, state
        r, state = next_u64(state)
        layer = np.int64(r & _U(0xFF))
        magnitude = np.int64((r >> _U(9)) & _U(0x000FFFFFFFFFFFFF))
        x = float(magnitude) * ZIGGURAT_W[layer]
        if (r & _U(0x100)) != _U(0):
            x = -x
        if magnitude < ZIGGURAT_K[layer]:
            return x, state


if HAVE_NUMBA:  # the slow path stays out of line, so the common path compiles tight
    import numba as _numba

    _normal_rejected = _numba.njit(inline="never", error_model="numpy")(_normal_rejected)


@jitable
def load_state(states: np.ndarray, row: int) -> tuple:
    """Environment ``row``'s stream state from the [B, 4] uint64 array."""
    return states[row, 0], states[row, 1], states[row, 2], states[row, 3]


@jitable
def store_state(states: np.ndarray, row: int, state: tuple) -> None:
    states[row, 0], states[row, 1], states[row, 2], states[row, 3] = state


@jitable
def draw_round(states: np.ndarray, normals: np.ndarray, uniforms: np.ndarray) -> None:
    """One round's innovations for every environment: row b of ``normals`` [B, n] then of ``uniforms`` [B, u]
    from the stream ``states[b]``, in that order (as the round kernel draws them)."""
    for b in range(states.shape[0]):
        state = load_state(states, b)
        for i in range(normals.shape[1]):
            normals[b, i], state = normal(state)
        for i in range(uniforms.shape[1]):
            uniforms[b, i], state = uniform(state)
        store_state(states, b, state)


_draw_round = None


def draw_round_arrays(states: np.ndarray, n_normals: int, n_uniforms: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`draw_round` into new arrays ([B, n_normals], [B, n_uniforms]), compiled when numba is present."""
    global _draw_round
    if _draw_round is None:
        if HAVE_NUMBA:
            _draw_round = compile_cached(draw_round, nogil=True, error_model="numpy")
        else:  # pragma: no cover - pure Python, slow
            _draw_round = draw_round
    normals = np.empty((states.shape[0], n_normals))
    uniforms = np.empty((states.shape[0], n_uniforms))
    _draw_round(states, normals, uniforms)
    return normals, uniforms
