"""The per-round ``Decision``: validation, rules for uncontrolled fields, feasibility repair,
and the exact ``encode``/``decode`` between decisions and the flat Box action (SPEC §3.2, §3.7, §4.2).

Action layout, per user, in this order and only for controlled fields (``config.controls``):

==============  ==========  ==========================================================
field           dims        decoding of a ∈ [-1, 1]
==============  ==========  ==========================================================
split           K + 1       weights x = (a+1)/2 over nodes 1..K then the server → layer
                            counts by largest remainder (equal split if all weights are 0)
server          M           association scores → argmax (first index on ties)
power           1 (+K)      uplink level, then each node's D2D level when K > 1:
                            p = p_min + (a+1)/2·(p_max − p_min)
bandwidth       1           weight x = f + (1−f)(a+1)/2 (f = radio.share_floor), β = x / Σ x per server
compute         1           as bandwidth, over the server's users that have server-side layers
frequency       K           DVFS level u = u_min + (a+1)/2·(1 − u_min)
microbatches    1           Q = 1 + floor((a+1)/2·Q_max), capped at Q_max
==============  ==========  ==========================================================

Decoding then repairs, counting each change in ``repairs``: too few local layers
(α < split_min_local) are taken from the server; layers beyond a node's memory move along the
chain toward the server; users beyond a server's capacity move to their next-preferred server (users keep
their first choice in index order until a server is full, then the rest try their second
choice, and so on). ``encode`` is the exact inverse on decisions the decoder produces:
integer fields round-trip exactly, continuous ones to float32 precision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mec_gym.config import CONTROL_FIELDS, SystemConfig
from mec_gym.model.dynamics import SystemState, flat_server_index, server_totals
from mec_gym.model.numeric import LARGE, divide_where, jitable


@dataclass
class Decision:
    """Structured per-round decision for a batch (leading axis B) or one system (no batch axis).

    Fields (N users, M servers, K chain nodes):
        split: int [.., N, K+1], layers δ per user: column 0 on the server (δ_{n,0}),
            columns 1..K on chain nodes 1..K; each row sums to Υ.
        server: int [.., N], associated server m(n).
        power: float [.., N], uplink transmit power p_n (W).
        d2d_power: float [.., N, K], each node's D2D transmit power (W); empty when K = 1.
        bandwidth: float [.., N], share β_n of its server's band; Σ per server ≤ 1.
        compute: float [.., N], share φ_n of its server's available compute; Σ per server ≤ 1.
        frequency: float [.., N, K], DVFS level f/f_max of each node in [u_min, 1].
        microbatches: int [.., N], pipeline micro-batches Q_n in [1, Q_max].

    A field left ``None`` is filled by its rule (SPEC §3.2) by :func:`complete`.
    """

    split: np.ndarray | None = None
    server: np.ndarray | None = None
    power: np.ndarray | None = None
    d2d_power: np.ndarray | None = None
    bandwidth: np.ndarray | None = None
    compute: np.ndarray | None = None
    frequency: np.ndarray | None = None
    microbatches: np.ndarray | None = None

    def copy(self) -> Decision:
        return Decision(**{f.name: None if getattr(self, f.name) is None else np.array(getattr(self, f.name))
                           for f in dataclasses.fields(self)})

    def select(self, index: int) -> Decision:
        """Decision of batch member ``index`` (batch axis dropped)."""
        return Decision(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                           for f in dataclasses.fields(self)})

    @property
    def local_layers(self) -> np.ndarray:
        """α_n: layers trained on the user side (all chain nodes)."""
        return self.split[..., 1:].sum(axis=-1)


def field_dims(config: SystemConfig) -> dict[str, int]:
    """Action dims per user of each controlled field, in layout order."""
    k, m = config.devices_per_user, config.num_servers
    dims = {"split": k + 1, "server": m, "power": 1 + (k if k > 1 else 0), "bandwidth": 1, "compute": 1,
            "frequency": k, "microbatches": 1}
    return {name: dims[name] for name in CONTROL_FIELDS if name in config.controls}


def action_dim_per_user(config: SystemConfig) -> int:
    return sum(field_dims(config).values())


def _level(a: np.ndarray) -> np.ndarray:
    return to_level(np.asarray(a, dtype=np.float64))


@jitable
def to_level(action: np.ndarray) -> np.ndarray:
    """x = (a + 1)/2 ∈ [0, 1] of an action entry a ∈ [-1, 1]."""
    return (action + 1.0) / 2.0


@jitable
def from_level(level: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """low + x·(high − low): a power (W), DVFS level or share weight from its level x ∈ [0, 1]."""
    return low + level * (high - low)


@jitable
def microbatches_from_level(level: np.ndarray, max_microbatches: int) -> np.ndarray:
    """Q = min(1 + floor(x·Q_max), Q_max) micro-batches from its level x ∈ [0, 1] (float)."""
    return np.minimum(1 + np.floor(level * max_microbatches), max_microbatches)


def _unlevel(x: np.ndarray) -> np.ndarray:
    return 2.0 * x - 1.0


def _per_server_sum(values: np.ndarray, server: np.ndarray, flat_server: np.ndarray, num_servers: int) -> np.ndarray:
    """Σ of ``values`` [B,N] over each user's server, returned per user [B,N]; ``flat_server`` is
    :func:`~mec_gym.model.dynamics.flat_server_index` of the association ``server``."""
    totals = server_totals(values, server, num_servers, flat_server)
    return totals.ravel().take(flat_server).reshape(server.shape)


def _shares_from_weights(weights: np.ndarray, server: np.ndarray, num_servers: int,
                         eligible: np.ndarray) -> np.ndarray:
    """Normalize per server; a server whose eligible weights sum to 0 splits equally among them."""
    flat = flat_server_index(server, num_servers)
    w = weights if eligible.all() else np.where(eligible, weights, 0.0)
    total = _per_server_sum(w, server, flat, num_servers)
    positive = total > 0
    if positive.all():  # every user's server has weight: no equal splits needed
        return np.divide(w, total)
    if not (eligible & ~positive).any():  # weightless servers have no eligible users: their shares are 0
        return divide_where(w, total, positive)
    count = _per_server_sum(eligible, server, flat, num_servers)
    equal = np.where(eligible, 1.0 / np.maximum(count, 1.0), 0.0)
    return np.divide(w, total, out=equal, where=total > 0)


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts ∝ ``weights`` (last axis) summing to ``total``: floors, then the leftover units
    to the largest fractional parts (lowest index first on ties). All-zero weights split equally."""
    w = np.ascontiguousarray(np.moveaxis(np.asarray(weights, dtype=np.float64), -1, 0))  # entries first
    parts = w.shape[0]
    s = w.sum(axis=0)
    if not (s > 0).all():
        w = np.where(s > 0, w, 1.0)
        s = np.where(s > 0, s, parts)
    exact = np.multiply(total, w)
    exact /= s
    counts = exact + 1e-9
    np.floor(counts, out=counts)
    np.minimum(counts, total, out=counts)
    remainder = np.subtract(exact, counts, out=exact)
    leftover = total - counts.sum(axis=0)
    # rank of each entry by remainder, descending, ties to the lower index
    rank = np.zeros(w.shape)
    for j in range(parts):
        ahead = remainder[j] > remainder
        ahead[j + 1:] |= remainder[j] == remainder[j + 1:]
        rank += ahead
    counts += rank < leftover
    return np.moveaxis(counts, 0, -1).astype(np.int64)


def nearest_server(config: SystemConfig, state: SystemState) -> np.ndarray:
    """Reference association: the server with the strongest average channel (path loss + shadowing),
    i.e. the nearest one when shadowing is off. With a server capacity, users beyond it move to their
    next-strongest server in index order (the same repair as decoding), so the rule stays feasible."""
    strength = state.gain / np.maximum(_fading_power(state), 1e-30)
    if not config.server.capacity:
        return np.argmax(strength, axis=-1)
    return _assign_with_capacity(config, strength, {"capacity": np.zeros(strength.shape[0], dtype=np.int64)})


def _fading_power(state: SystemState) -> np.ndarray:
    return state.fading[..., 0] ** 2 + state.fading[..., 1] ** 2


def compute_rule(config: SystemConfig, state: SystemState, split: np.ndarray, server: np.ndarray) -> np.ndarray:
    """Uncontrolled compute shares: φ ∝ each user's server-side work (equal finish times, SPEC §3.2)."""
    from mec_gym.model.costs import per_sequence_work

    work = split[..., 0] * state.batch(config) * per_sequence_work(config, state)
    return _shares_from_weights(work, server, config.num_servers, work > 0)


def complete(config: SystemConfig, state: SystemState, decision: Decision) -> Decision:
    """Fill every ``None`` field by its rule (SPEC §3.2): split α = split_min_local (on node 1, or on the
    chain's nodes in order when one node's memory cannot hold them), nearest
    server, p = p_max, equal bandwidth shares, compute ∝ server work, frequency 1, fixed Q."""
    b, n = state.data_queue.shape
    k, layers = config.devices_per_user, config.num_layers
    d = dataclasses.replace(decision)
    if d.split is None:
        device = place_local_layers(np.full((b, n), config.split_min_local), state.max_layers)
        d.split = np.concatenate([(layers - device.sum(axis=-1))[..., None], device], axis=-1)
    if d.server is None:
        d.server = nearest_server(config, state)
    if d.power is None:
        d.power = state.power_max_w.copy()
    if d.d2d_power is None:
        d.d2d_power = np.full((b, n, k if k > 1 else 0), config.radio.d2d_power_max_w)
    if d.bandwidth is None:
        d.bandwidth = _shares_from_weights(np.ones((b, n)), d.server, config.num_servers, np.ones((b, n), dtype=bool))
    if d.compute is None:
        d.compute = compute_rule(config, state, d.split, d.server)
    if d.frequency is None:
        d.frequency = np.ones((b, n, k))
    if d.microbatches is None:
        d.microbatches = np.full((b, n), config.workload.microbatches, dtype=np.int64)
    return d


def decode(config: SystemConfig, state: SystemState, action: np.ndarray) -> tuple[Decision, dict[str, np.ndarray]]:
    """Map a batch of flat actions [B, N·d_u] to feasible decisions; returns (decision, repairs [B] counts)."""
    b, n = state.data_queue.shape
    k, m, layers = config.devices_per_user, config.num_servers, config.num_layers
    dims = field_dims(config)
    a = np.asarray(action, dtype=np.float64).reshape(b, n, -1)
    levels = _level(a)  # (a + 1)/2 of every entry in one pass; the server scores use a itself
    parts, level, start = {}, {}, 0
    for name, width in dims.items():
        parts[name] = a[..., start:start + width]
        level[name] = levels[..., start:start + width]
        start += width
    repairs = {name: np.zeros(b, dtype=np.int64) for name in ("split_min_local", "memory", "capacity")}
    radio = config.radio
    d = Decision()

    if "server" in parts:
        d.server = _assign_with_capacity(config, parts["server"], repairs, finite=True)
    if "split" in parts:
        counts = largest_remainder(level["split"], layers)  # nodes 1..K, then the server
        d.split = np.concatenate([counts[..., -1:], counts[..., :-1]], axis=-1)
        d.split = _repair_split(config, state, d.split, repairs)
    if "power" in parts:
        power = level["power"]
        d.power = from_level(power[..., 0], radio.power_min_w, state.power_max_w)
        if k > 1:
            d.d2d_power = from_level(power[..., 1:], radio.power_min_w, radio.d2d_power_max_w)
    if "frequency" in parts:
        u_min = config.device.frequency_min
        d.frequency = from_level(level["frequency"], u_min, 1.0)
    if "microbatches" in parts:
        q_max = config.workload.max_microbatches
        d.microbatches = microbatches_from_level(level["microbatches"][..., 0], q_max).astype(np.int64)
    if d.server is None:
        d.server = nearest_server(config, state)
    if d.split is None:
        d.split = complete(config, state, Decision(server=d.server, compute=np.zeros((b, n)))).split
    floor = radio.share_floor
    if "bandwidth" in parts:
        weights = from_level(level["bandwidth"][..., 0], floor, 1.0)
        d.bandwidth = _shares_from_weights(weights, d.server, m, np.ones((b, n), dtype=bool))
    if "compute" in parts:
        weights = from_level(level["compute"][..., 0], floor, 1.0)
        d.compute = _shares_from_weights(weights, d.server, m, d.split[..., 0] > 0)
    return complete(config, state, d), repairs


def first_argmax(scores: np.ndarray) -> np.ndarray:
    """``np.argmax(scores, axis=-1)`` for finite scores (first index on ties), one comparison per
    entry of the short last axis instead of numpy's per-row reduction."""
    best = scores[..., 0]
    choice = np.zeros(best.shape, dtype=np.int64)
    for j in range(1, scores.shape[-1]):
        better = scores[..., j] > best
        choice[better] = j
        best = np.maximum(best, scores[..., j])
    return choice


def _assign_with_capacity(config: SystemConfig, scores: np.ndarray, repairs: dict[str, np.ndarray],
                          finite: bool = False) -> np.ndarray:
    """Association from scores [B,N,M] with the capacity repair; ``finite`` promises finite scores."""
    choice = first_argmax(scores) if finite and scores.size >= LARGE else np.argmax(scores, axis=-1)
    capacity = config.server.capacity
    if not capacity:
        return choice
    b, n, m = scores.shape
    preference = np.argsort(-scores, axis=-1, kind="stable")  # [B,N,M]
    assigned = np.full((b, n), -1, dtype=np.int64)
    load = np.zeros((b, m), dtype=np.int64)
    for rank in range(m):  # M preference rounds; vectorized over batch and users
        want = np.where(assigned < 0, preference[..., rank], -1)
        onehot = want[..., None] == np.arange(m)  # [B,N,M]
        position = np.cumsum(onehot, axis=1) + load[:, None, :]  # 1-based slot if accepted
        accepted = onehot & (position <= capacity)
        take = accepted.any(axis=-1)
        assigned = np.where(take, want, assigned)
        load = load + accepted.sum(axis=1)
    repairs["capacity"] += (assigned != choice).sum(axis=-1)
    return assigned


def place_local_layers(count: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Put ``count`` [B,N] layers on the chain nodes in order, each up to its ``capacity`` [B,N,K]."""
    placed = np.zeros(capacity.shape, dtype=np.int64)
    remaining = np.asarray(count, dtype=np.int64).copy()
    for node in range(capacity.shape[-1]):
        take = np.minimum(remaining, capacity[..., node])
        placed[..., node] = take
        remaining = remaining - take
    return placed


def _repair_split(config: SystemConfig, state: SystemState, split: np.ndarray,
                  repairs: dict[str, np.ndarray]) -> np.ndarray:
    """Memory first: layers beyond a node's memory move along the chain toward the server (to the
    next node with room, the rest to the server); then too few local layers are taken from the
    server and placed on the nodes in order, within their memory."""
    device = split[..., 1:].copy()
    carry = np.zeros(device.shape[:-1], dtype=np.int64)
    changed = np.zeros(device.shape[:-1], dtype=bool)
    local = np.zeros(device.shape[:-1], dtype=np.int64)
    for node in range(device.shape[-1]):  # K columns: elementwise, no reductions over the short axis
        total = device[..., node] + carry
        keep = np.minimum(total, state.max_layers[..., node])
        carry = total - keep
        changed |= keep != device[..., node]
        device[..., node] = keep
        local += keep
    repairs["memory"] += changed.sum(axis=-1)
    server = split[..., 0] + carry
    deficit = np.minimum(np.maximum(config.split_min_local - local, 0), server)
    short = deficit > 0
    if short.any():
        repairs["split_min_local"] += short.sum(axis=-1)
        placed = place_local_layers(deficit, state.max_layers - device)
        device = device + placed
        server = server - placed.sum(axis=-1)  # what the nodes cannot hold stays on the server: Σ = Υ
    return np.concatenate([server[..., None], device], axis=-1)


def encode(config: SystemConfig, state: SystemState, decision: Decision) -> np.ndarray:
    """Flat float32 actions [B, N·d_u] that :func:`decode` maps back to ``decision`` (SPEC §4.2)."""
    d = complete(config, state, decision)
    b, n = state.data_queue.shape
    k, m = config.devices_per_user, config.num_servers
    radio = config.radio
    blocks = []
    onehot = d.server[..., None] == np.arange(m)
    for name in field_dims(config):
        if name == "split":
            ordered = np.concatenate([d.split[..., 1:], d.split[..., :1]], axis=-1).astype(np.float64)
            blocks.append(_unlevel(ordered / ordered.max(axis=-1, keepdims=True)))
        elif name == "server":
            blocks.append(np.where(onehot, 1.0, -1.0))
        elif name == "power":
            level = (d.power - radio.power_min_w) / (state.power_max_w - radio.power_min_w)
            cols = [level[..., None]]
            if k > 1:
                cols.append((d.d2d_power - radio.power_min_w) / (radio.d2d_power_max_w - radio.power_min_w))
            blocks.append(_unlevel(np.concatenate(cols, axis=-1)))
        elif name in ("bandwidth", "compute"):
            share = getattr(d, name)
            peak = np.max(np.where(onehot, share[..., None], 0.0), axis=1)  # [B,M]
            peak_user = np.einsum("bm,bnm->bn", peak, onehot)
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.where(peak_user > 0, share / peak_user, 0.0)
            level = (x - radio.share_floor) / (1.0 - radio.share_floor)
            blocks.append(_unlevel(level)[..., None])
        elif name == "frequency":
            u_min = config.device.frequency_min
            blocks.append(_unlevel((d.frequency - u_min) / (1.0 - u_min)))
        elif name == "microbatches":
            q_max = config.workload.max_microbatches
            blocks.append(_unlevel((d.microbatches - 0.5) / q_max)[..., None])
    action = np.concatenate(blocks, axis=-1).reshape(b, -1)
    return np.clip(action, -1.0, 1.0).astype(np.float32)


_BATCHED_NDIM = {"split": 3, "server": 2, "power": 2, "d2d_power": 3, "bandwidth": 2, "compute": 2,
                 "frequency": 3, "microbatches": 2}


def with_batch_axis(decision: Decision) -> tuple[Decision, bool]:
    """Add a batch axis to an unbatched decision (e.g. ``server`` of shape [N]); returns (decision, added)."""
    given = [f.name for f in dataclasses.fields(decision) if getattr(decision, f.name) is not None]
    if not given or np.ndim(getattr(decision, given[0])) == _BATCHED_NDIM[given[0]]:
        return decision, False
    return Decision(**{name: None if getattr(decision, name) is None else np.asarray(getattr(decision, name))[None]
                       for name in _BATCHED_NDIM}), True


def validate(config: SystemConfig, state: SystemState, decision: Decision, atol: float = 1e-9) -> None:
    """Raise ``ValueError`` naming the field and the first offending user if ``decision`` is infeasible.

    Checks shapes, finiteness, integrality, Σ layers = Υ, α ≥ split_min_local, server range and
    capacity, power range, shares ≥ 0 with Σ per server ≤ 1 (and > 0 where needed), frequency
    range, micro-batch range, node memory, and that uncontrolled fields follow their rules.
    """
    b, n = state.data_queue.shape
    k, m, layers = config.devices_per_user, config.num_servers, config.num_layers
    expected = {"split": (b, n, k + 1), "server": (b, n), "power": (b, n), "d2d_power": (b, n, k if k > 1 else 0),
                "bandwidth": (b, n), "compute": (b, n), "frequency": (b, n, k), "microbatches": (b, n)}
    for name, shape in expected.items():
        value = getattr(decision, name)
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.shape != shape:
            raise ValueError(f"decision.{name}: expected shape {shape[1:]} per system (batch {b}), got {arr.shape}")
        if not np.all(np.isfinite(arr.astype(np.float64))):
            _fail(name, ~np.isfinite(arr.astype(np.float64)), "is NaN or infinite")
    for name in ("split", "server", "microbatches"):
        value = getattr(decision, name)
        if value is not None and np.any(np.asarray(value) != np.round(np.asarray(value))):
            _fail(name, np.asarray(value) != np.round(np.asarray(value)), "must be integer-valued")

    if decision.server is not None:
        given = np.asarray(decision.server)
        if np.any((given < 0) | (given >= m)):
            _fail("server", (given < 0) | (given >= m), f"must be in [0, {m - 1}]")
    d = complete(config, state, decision)
    split = np.asarray(d.split)
    if np.any(split < 0):
        _fail("split", split < 0, "layer counts must be >= 0")
    total = split.sum(axis=-1)
    if np.any(total != layers):
        _fail("split", total != layers, f"layers must sum to Υ = {layers}")
    alpha = split[..., 1:].sum(axis=-1)
    if np.any(alpha < config.split_min_local):
        _fail("split", alpha < config.split_min_local,
              f"needs at least split_min_local = {config.split_min_local} layers on the user side")
    if np.any(split[..., 1:] > state.max_layers):
        _fail("split", split[..., 1:] > state.max_layers, "more layers than the node's memory holds at a full batch")
    server = np.asarray(d.server)
    onehot = server[..., None] == np.arange(m)
    if config.server.capacity:
        over = onehot.sum(axis=1) > config.server.capacity
        if np.any(over):
            raise ValueError(f"decision.server: server(s) {np.argwhere(over)[:, 1].tolist()} exceed capacity "
                             f"{config.server.capacity} users")
    radio = config.radio
    p = np.asarray(d.power)
    bad = (p < radio.power_min_w - atol) | (p > state.power_max_w + atol)
    if np.any(bad):
        _fail("power", bad, f"must lie in [power_min_w = {radio.power_min_w}, the user's power_max_w]")
    if k > 1:
        dp = np.asarray(d.d2d_power)
        bad = (dp < radio.power_min_w - atol) | (dp > radio.d2d_power_max_w + atol)
        if np.any(bad):
            _fail("d2d_power", bad, f"must lie in [{radio.power_min_w}, {radio.d2d_power_max_w}] W")
    active = state.batch(config) > 0  # users with nothing to train send and compute nothing
    for name, needed in (("bandwidth", active), ("compute", active & (split[..., 0] > 0))):
        share = np.asarray(getattr(d, name), dtype=np.float64)
        if np.any(share < 0):
            _fail(name, share < 0, "shares must be >= 0")
        sums = server_totals(share, server, m)
        if np.any(sums > 1 + atol):
            raise ValueError(f"decision.{name}: shares of server(s) {np.argwhere(sums > 1 + atol)[:, 1].tolist()} "
                             f"sum above 1 ({sums.max():.6g}); normalize per server")
        if np.any(needed & (share <= 0)):
            _fail(name, needed & (share <= 0), "must be > 0 for a user that needs it")
    u = np.asarray(d.frequency)
    bad = (u < config.device.frequency_min - atol) | (u > 1 + atol)
    if np.any(bad):
        _fail("frequency", bad, f"must lie in [frequency_min = {config.device.frequency_min}, 1]")
    q = np.asarray(d.microbatches)
    bad = (q < 1) | (q > config.workload.max_microbatches)
    if np.any(bad):
        _fail("microbatches", bad, f"must lie in [1, max_microbatches = {config.workload.max_microbatches}]")
    rules = complete(config, state, Decision(split=d.split, server=d.server))
    for name in ("split", "server", "power", "bandwidth", "compute", "frequency", "microbatches"):
        if name in config.controls or getattr(decision, name) is None:
            continue
        if not np.allclose(np.asarray(getattr(decision, name), dtype=np.float64),
                           np.asarray(getattr(rules, name), dtype=np.float64), atol=1e-6):
            raise ValueError(f"decision.{name}: this scenario does not control {name!r} (controls = "
                             f"{list(config.controls)}); leave it None to use its rule")


def _fail(name: str, mask: np.ndarray, message: str) -> None:
    where = np.argwhere(mask)[0]
    env, user = int(where[0]), int(where[1]) if len(where) > 1 else -1
    raise ValueError(f"decision.{name}: user {user} (batch index {env}) {message}")

