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
def _ziggurat_candidate(state: tuple) -> tuple:
    """One ziggurat draw: (x, whether it lies in its layer's core rectangle, layer, next state). A draw picks a
    layer (bits 0-7), a sign (bit 8) and a 52-bit magnitude (bits 9-60)."""
    r, state = next_u64(state)
    layer = np.int64(r & _U(0xFF))
    magnitude = np.int64((r >> _U(9)) & _U(0x000FFFFFFFFFFFFF))
    # the sign as a factor ±1 (exact), not a branch: a random sign would mispredict every other draw
    sign = 1.0 - 2.0 * float((r >> _U(8)) & _U(1))
    x = float(magnitude) * ZIGGURAT_W[layer] * sign
    return x, magnitude < ZIGGURAT_K[layer], layer, state


@jitable
def normal(state: tuple) -> tuple:
    """(a standard normal draw, next state) by the 256-layer ziggurat: a candidate in its layer's core
    (~99 % of draws) is accepted at once, else :func:`_normal_rejected` decides and draws again."""
    x, core, layer, state = _ziggurat_candidate(state)
    if core:
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
        x, core, layer, state = _ziggurat_candidate(state)
        if core:
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


# --------------------------------------------------------------------------- seeding at reset
# numpy's SeedSequence (O'Neill's seed_seq_fe, numpy/random/bit_generator.pyx) and PCG64 (XSL-RR 128/64),
# compiled and batched over the environments a reset touches. They reproduce, bit for bit, what
# ``np_random.spawn(2)`` would give (checked against numpy in tests/test_rng.py), at a fraction of the cost
# of building two SeedSequence and one Generator objects per environment.
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R, _MASK32 = 0xCA01F9DD, 0x4973F715, 0xFFFFFFFF
POOL_SIZE = 4
_PCG_MULT_HI, _PCG_MULT_LO = 2549297995355413924, 4865540595714422341


@jitable
def _hashmix(value, hash_const):
    value = (value ^ hash_const) & _U(_MASK32)
    hash_const = (hash_const * _U(_MULT_A)) & _U(_MASK32)
    value = (value * hash_const) & _U(_MASK32)
    return value ^ (value >> _U(16)), hash_const


@jitable
def _mix(x, y):
    result = (_U(_MIX_MULT_L) * x - _U(_MIX_MULT_R) * y) & _U(_MASK32)
    return result ^ (result >> _U(16))


@jitable
def seed_pool(entropy: np.ndarray, length: int, pool: np.ndarray) -> None:
    """SeedSequence.mix_entropy: the 4-word pool (uint32 values in uint64) from ``entropy[:length]``."""
    hash_const = _U(_INIT_A)
    for i in range(POOL_SIZE):
        word = entropy[i] if i < length else _U(0)
        pool[i], hash_const = _hashmix(word, hash_const)
    for i_src in range(POOL_SIZE):
        for i_dst in range(POOL_SIZE):
            if i_src != i_dst:
                mixed, hash_const = _hashmix(pool[i_src], hash_const)
                pool[i_dst] = _mix(pool[i_dst], mixed)
    for i_src in range(POOL_SIZE, length):
        for i_dst in range(POOL_SIZE):
            mixed, hash_const = _hashmix(entropy[i_src], hash_const)
            pool[i_dst] = _mix(pool[i_dst], mixed)


@jitable
def pool_state_u64(pool: np.ndarray, out: np.ndarray) -> None:
    """SeedSequence.generate_state(len(out), np.uint64) from a mixed pool."""
    hash_const = _U(_INIT_B)
    for i in range(2 * out.shape[0]):
        value = (pool[i % POOL_SIZE] ^ hash_const) & _U(_MASK32)
        hash_const = (hash_const * _U(_MULT_B)) & _U(_MASK32)
        value = (value * hash_const) & _U(_MASK32)
        value ^= value >> _U(16)
        if i % 2 == 0:
            out[i // 2] = value
        else:
            out[i // 2] |= value << _U(32)


@jitable
def _mulhi64(x, y):
    x0, x1 = x & _U(_MASK32), x >> _U(32)
    y0, y1 = y & _U(_MASK32), y >> _U(32)
    p00, p01, p10, p11 = x0 * y0, x0 * y1, x1 * y0, x1 * y1
    middle = (p00 >> _U(32)) + (p01 & _U(_MASK32)) + (p10 & _U(_MASK32))
    return p11 + (p01 >> _U(32)) + (p10 >> _U(32)) + (middle >> _U(32))


@jitable
def _pcg_step(hi, lo, inc_hi, inc_lo):
    """state · multiplier + increment (mod 2^128), on (high, low) 64-bit halves."""
    m_hi, m_lo = _U(_PCG_MULT_HI), _U(_PCG_MULT_LO)
    new_hi = _mulhi64(lo, m_lo) + lo * m_hi + hi * m_lo
    new_lo = lo * m_lo
    out_lo = new_lo + inc_lo
    carry = _U(1) if out_lo < new_lo else _U(0)
    return new_hi + inc_hi + carry, out_lo


@jitable
def pcg64_uniforms(seed: np.ndarray, out: np.ndarray) -> None:
    """``Generator(PCG64(seed_sequence)).random(len(out))`` given ``seed`` = seed_sequence.generate_state(4, u64)."""
    inc_hi = (seed[2] << _U(1)) | (seed[3] >> _U(63))
    inc_lo = (seed[3] << _U(1)) | _U(1)
    hi, lo = _pcg_step(_U(0), _U(0), inc_hi, inc_lo)
    lo2 = lo + seed[1]
    hi = hi + seed[0] + (_U(1) if lo2 < lo else _U(0))
    hi, lo = _pcg_step(hi, lo2, inc_hi, inc_lo)
    for i in range(out.shape[0]):
        hi, lo = _pcg_step(hi, lo, inc_hi, inc_lo)
        value = hi ^ lo
        rot = hi >> _U(58)
        value = (value >> rot) | (value << ((_U(64) - rot) & _U(63)))
        out[i] = float(value >> _U(11)) * (1.0 / 9007199254740992.0)


@jitable
def spawned_streams(prefix: np.ndarray, lengths: np.ndarray, children: np.ndarray, uniforms: np.ndarray,
                    round_states: np.ndarray) -> None:
    """For each row b: the children ``children[b]`` and ``children[b] + 1`` of a SeedSequence whose assembled
    entropy (run entropy padded to the pool size, then its spawn key, as uint32 words) is
    ``prefix[b, :lengths[b]]``; fills ``uniforms[b]`` from a PCG64 on the first child and ``round_states[b]``
    with a xoshiro256** state from the second."""
    entropy = np.empty(prefix.shape[1] + 1, np.uint64)
    pool = np.empty(POOL_SIZE, np.uint64)
    seed = np.empty(4, np.uint64)
    for b in range(prefix.shape[0]):
        n = lengths[b]
        for i in range(n):
            entropy[i] = prefix[b, i]
        for child in range(2):
            entropy[n] = _U(children[b] + child)
            seed_pool(entropy, n + 1, pool)
            pool_state_u64(pool, seed)
            if child == 0:
                pcg64_uniforms(seed, uniforms[b])
            else:
                if seed[0] == 0 and seed[1] == 0 and seed[2] == 0 and seed[3] == 0:
                    seed[0] = 1
                for i in range(4):
                    round_states[b, i] = seed[i]


def _uint32_words(value: int) -> list[int]:
    """numpy's ``_int_to_uint32_array``: a non-negative int as little-endian 32-bit words ([0] for 0)."""
    words = [value & _MASK32] if value == 0 else []
    while value > 0:
        words.append(value & _MASK32)
        value >>= 32
    return words


def entropy_prefix(seed_sequence: np.random.SeedSequence) -> list[int] | None:
    """The assembled entropy words a child of ``seed_sequence`` starts with (before its own spawn-key
    word), or None when the fast path does not apply (non-integer entropy, another pool size)."""
    entropy, key = seed_sequence.entropy, seed_sequence.spawn_key
    if seed_sequence.pool_size != POOL_SIZE or not isinstance(entropy, (int, np.integer)) or \
            not all(isinstance(k, (int, np.integer)) and k >= 0 for k in key):
        return None
    run = _uint32_words(int(entropy))
    run += [0] * (POOL_SIZE - len(run))  # a spawned child always has a spawn key: numpy pads the run entropy
    for k in key:
        run += _uint32_words(int(k))
    return run


_spawned = None


def spawn_streams(prefixes: list[list[int]], children: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`spawned_streams` for a list of entropy prefixes; returns (uniforms [B, count], states [B, 4])."""
    global _spawned
    if _spawned is None:
        _spawned = compile_cached(spawned_streams, nogil=True) if HAVE_NUMBA else spawned_streams
    width = max(len(p) for p in prefixes)
    prefix = np.zeros((len(prefixes), width), dtype=np.uint64)
    lengths = np.empty(len(prefixes), dtype=np.int64)
    for row, words in enumerate(prefixes):
        prefix[row, :len(words)] = words
        lengths[row] = len(words)
    uniforms = np.empty((len(prefixes), count))
    states = np.empty((len(prefixes), 4), dtype=np.uint64)
    _spawned(prefix, lengths, np.asarray(children, dtype=np.int64), uniforms, states)
    return uniforms, states
