"""Observation features: a flat float32 vector with a named layout, or the same fields as a Dict (SPEC §4.2).

Every feature is scaled to [-1, 1] or [0, 1] and clipped to its bounds:

=====================  ========  ========================================================
name                   shape     feature
=====================  ========  ========================================================
channel_gain_db        N×M       (10·log10 g + 100)/50, clipped to [-1, 1] (−150…−50 dB)
data_queue             N         X/(X + b_max)
energy_queue           N         Z/(Z + Ē) (0 without a budget)
server_load            M         background load ℓ
users_per_server       M         users associated last round / N
server_work            M         w/(w + w_ref), last round's server FLOPs, w_ref = Υ·b_max·work·N/M
server_capability      M         peak FLOP/s / the scenario's largest
device_capability      N×K       effective FLOP/s / the scenario's largest
device_memory          N×K       layers that fit at a full batch / Υ, clipped to [0, 1]
power_max              N         p_max / the scenario's largest
sequence_length        N         ℓ / the scenario's longest
d2d_gain_db            N×P       as channel_gain_db, for the P = K(K−1)/2 D2D pairs (K > 1 only)
service_q0, service_q1 N×M       per-pair service scores (SCR objective only)
round                  1         t / T
=====================  ========  ========================================================
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from mec_gym import catalog
from mec_gym.config import SystemConfig
from mec_gym.model import llm
from mec_gym.model.dynamics import SystemState
from mec_gym.model.features import gain_feature, saturating
from mec_gym.model.numeric import LARGE


class ObservationBuilder:
    """Builds observations for a batch of states; ``layout`` maps names to (slice, shape, low, high)."""

    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        n, m, k = config.num_users, config.num_servers, config.devices_per_user
        fields: list[tuple[str, tuple[int, ...], float, float]] = [
            ("channel_gain_db", (n, m), -1.0, 1.0),
            ("data_queue", (n,), 0.0, 1.0),
            ("energy_queue", (n,), 0.0, 1.0),
            ("server_load", (m,), 0.0, 1.0),
            ("users_per_server", (m,), 0.0, 1.0),
            ("server_work", (m,), 0.0, 1.0),
            ("server_capability", (m,), 0.0, 1.0),
            ("device_capability", (n, k), 0.0, 1.0),
            ("device_memory", (n, k), 0.0, 1.0),
            ("power_max", (n,), 0.0, 1.0),
            ("sequence_length", (n,), 0.0, 1.0),
        ]
        if k > 1:
            fields.append(("d2d_gain_db", (n, k * (k - 1) // 2), -1.0, 1.0))
        if config.objective == "scr":
            fields += [("service_q0", (n, m), 0.0, 1.0), ("service_q1", (n, m), 0.0, 1.0)]
        fields.append(("round", (1,), 0.0, 1.0))
        self.layout: dict[str, tuple[slice, tuple[int, ...], float, float]] = {}
        start = 0
        for name, shape, low, high in fields:
            size = int(np.prod(shape))
            self.layout[name] = (slice(start, start + size), shape, low, high)
            start += size
        self.size = start
        low = np.empty(start, dtype=np.float32)
        high = np.empty(start, dtype=np.float32)
        for sl, _, lo, hi in self.layout.values():
            low[sl], high[sl] = lo, hi
        self.low, self.high = low, high
        # runs of adjacent fields with the same bounds: clipped in one call each, with scalar bounds
        self._runs: list[tuple[slice, float, float]] = []
        for sl, _, lo, hi in self.layout.values():
            if self._runs and self._runs[-1][1:] == (lo, hi):
                self._runs[-1] = (slice(self._runs[-1][0].start, sl.stop), lo, hi)
            else:
                self._runs.append((sl, lo, hi))
        self._scales(config)

    def _scales(self, config: SystemConfig) -> None:
        wl, dev, srv = config.workload, config.device, config.server
        mid_len = np.asarray(float(sum(wl.seq_len)) / 2.0)
        work = float(llm.forward_flops_per_sequence(config.llm, wl, mid_len)
                     + llm.backward_flops_per_sequence(config.llm, wl, mid_len))
        self.work_ref = config.num_layers * wl.batch_max * work * config.num_users / config.num_servers
        if dev.clock_hz is not None:
            self.device_ref = dev.utilization * dev.clock_hz[1] * dev.cores[1] * dev.flops_per_cycle[1]
        else:
            self.device_ref = dev.utilization * dev.peak_flops[1]
        if srv.clock_hz is not None:
            self.server_ref = srv.clock_hz[1] * srv.cores[1] * srv.flops_per_cycle[1]
        else:
            self.server_ref = max(catalog.server_gpu(p).peak_flops for p in srv.profiles)
        self.power_ref = config.radio.power_max_w[1]
        self.seq_ref = float(wl.seq_len[1])
        self.budget = wl.energy_budget_j

    def space(self, mode: str = "flat") -> spaces.Space:
        if mode == "dict":
            return spaces.Dict({
                name: spaces.Box(lo, hi, shape, dtype=np.float32) for name, (_, shape, lo, hi) in self.layout.items()
            })
        return spaces.Box(self.low, self.high, dtype=np.float32)

    def flat(self, state: SystemState) -> np.ndarray:
        """Observations [B, size], float32: each field clipped to its bounds and written once into its slice
        (large batches clip each float64 field before the cast, small ones the float32 runs of fields with
        the same bounds after it: the same numbers)."""
        config = self.config
        b = state.round.shape[0]
        wl = config.workload
        obs = np.empty((b, self.size), dtype=np.float32)

        bound_each = obs.size >= LARGE  # large batches: bound each field in float64, in place, on its way in

        def put(name: str, value: np.ndarray, owned: bool = True) -> None:
            sl, _, low, high = self.layout[name]
            if bound_each:  # same numbers as clipping after the cast: exact bounds, monotone rounding
                value = np.maximum(value, low, out=value if owned else None)
                np.minimum(value, high, out=value)
            obs[:, sl] = value.reshape(b, -1)

        put("channel_gain_db", gain_feature(state.gain))
        put("data_queue", saturating(state.data_queue, wl.batch_max))
        put("energy_queue", saturating(state.energy_queue, self.budget) if self.budget > 0
            else np.zeros_like(state.energy_queue))
        put("server_load", state.load, owned=False)
        put("users_per_server", state.users_per_server / config.num_users)
        put("server_work", saturating(state.server_work_flops, self.work_ref))
        put("server_capability", state.server_peak_flops / self.server_ref)
        put("device_capability", state.device_rate_flops / self.device_ref)
        put("device_memory", state.max_layers / config.num_layers)
        put("power_max", state.power_max_w / self.power_ref)
        put("sequence_length", state.seq_len / self.seq_ref)
        if config.devices_per_user > 1:
            i, j = np.triu_indices(config.devices_per_user, 1)
            put("d2d_gain_db", gain_feature(state.d2d_gain[:, :, i, j]))
        if config.objective == "scr":
            put("service_q0", state.service_q0, owned=False)
            put("service_q1", state.service_q1, owned=False)
        put("round", state.round / config.rounds)
        if not bound_each:
            for sl, low, high in self._runs:  # = np.clip(obs, self.low, self.high), without per-column bounds
                run = obs[:, sl]
                np.maximum(run, low, out=run)
                np.minimum(run, high, out=run)
        return obs

    def to_dict(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Split flat observations ([B, size] or [size]) into the named fields."""
        lead = flat.shape[:-1]
        return {name: flat[..., sl].reshape(*lead, *shape) for name, (sl, shape, _, _) in self.layout.items()}
