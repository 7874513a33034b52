"""The batched environment core shared by the single and the vector environments (SPEC §3, §4).

``EdgeTrainingCore`` holds a batch of B system states, their random streams, the reference
normalizers and the observation builder; ``EdgeTrainingEnv`` is its B = 1 view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mec_gym.config import SystemConfig
from mec_gym.envs.observation import ObservationBuilder
from mec_gym.model import costs, decision, dynamics, kernel, reference, rng


@dataclass
class StepResult:
    """Per-environment outputs of one batched round."""

    reward: np.ndarray  # [B]
    truncated: np.ndarray  # [B] bool
    metrics: costs.RoundMetrics
    terms: dict[str, np.ndarray]
    repairs: dict[str, np.ndarray]
    decision: decision.Decision


class EdgeTrainingCore:
    """B independent systems stepped together with one vectorized model call per round."""

    def __init__(self, config: SystemConfig, num_envs: int, backend: str | None = None) -> None:
        self.config = config
        self.num_envs = num_envs
        self.scales = reference.reference_scales(config)
        self.observer = ObservationBuilder(config)
        self.randomness = dynamics.RoundRandomness(config, num_envs)
        self._spawned: list[list | None] = [None] * num_envs  # per environment: [generator, entropy prefix, children]
        self.state: dynamics.SystemState | None = None
        self.action_width = config.num_users * decision.action_dim_per_user(config)
        self.kernel_params = kernel.params(config, self.observer) if kernel.enabled(config, backend) else None
        if self.kernel_params is not None:
            self._kernel = kernel.compiled()
            self._static_obs = np.zeros((num_envs, self.observer.size), dtype=np.float32)
            self._sites = np.ascontiguousarray(dynamics.server_sites(config.num_servers, config.geometry.area_m))
            self._load_levels = np.asarray(config.server.load_levels, dtype=np.float64)
            rate = config.workload.arrival_rate
            self._poisson_cdf = dynamics.poisson_cdf(rate) if rate > 0 else np.zeros(1)
            self._poisson_cells = dynamics.poisson_cells(rate) if rate > 0 else (np.zeros(1, np.int64),
                                                                                 np.zeros(1, np.bool_))
            self._scratch = kernel.scratch(config)

    @property
    def backend(self) -> str:
        """``"kernel"`` when Box actions step through the compiled round kernel, else ``"numpy"``."""
        return "numpy" if self.kernel_params is None else "kernel"

    def reset(self, indices: np.ndarray, generators: list[np.random.Generator]) -> None:
        """Start new episodes for ``indices``, each from its environment's ``np_random``.

        Each generator spawns two seed sequences (as ``np_random.spawn(2)`` would): an episode generator
        (PCG64; the initial state) and a round stream (innovations, :mod:`mec_gym.model.rng`), so an
        environment's trajectory depends only on its own generator. The spawning is done by compiled code
        that reproduces numpy's SeedSequence and PCG64 bit for bit; the core counts the children it takes
        from each generator (numpy's own ``n_children_spawned`` is not advanced).
        """
        indices = np.asarray(indices)
        count = dynamics.episode_draw_count(self.config)
        uniforms = np.empty((len(indices), count))
        fast_rows, prefixes, children = [], [], []
        for row, (index, g) in enumerate(zip(indices, generators, strict=True)):
            record = self._spawned[index]
            if record is None or record[0] is not g:  # a generator not seen here before: start from its count
                seed_seq = getattr(g.bit_generator, "seed_seq", None)
                prefix = rng.entropy_prefix(seed_seq) if isinstance(g.bit_generator, np.random.PCG64) and \
                    isinstance(seed_seq, np.random.SeedSequence) else None
                record = [g, prefix, seed_seq.n_children_spawned if prefix is not None else 0]
                self._spawned[index] = record
            if record[1] is not None:
                fast_rows.append(row)
                prefixes.append(record[1])
                children.append(record[2])
                record[2] += 2
            else:  # other bit generators or entropy: numpy's own spawn
                episode, rounds = g.spawn(2)
                uniforms[row] = episode.random(count)
                self.randomness.start(int(index), rounds.bit_generator.seed_seq)
        if fast_rows:
            fast_uniforms, states = rng.spawn_streams(prefixes, np.asarray(children), count)
            uniforms[fast_rows] = fast_uniforms
            self.randomness.states[indices[fast_rows]] = states
        fresh = dynamics.sample_episode(self.config, uniforms)
        everyone = len(indices) == self.num_envs and bool((np.diff(indices) > 0).all())  # 0..B-1 in order
        if self.state is None or everyone:
            assert everyone, "the first reset must cover every environment"
            self.state = fresh
        else:
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[indices] = True
            order = np.argsort(indices)  # boolean assignment fills rows in ascending index order
            self.state.assign(mask, fresh.select(order) if len(order) > 1 else fresh)
        if self.kernel_params is not None:  # the kernel copies the episode-constant features from here
            self._static_obs[indices] = self.observer.flat(fresh)

    def check_action(self, action: np.ndarray) -> np.ndarray:
        """Validate a batch of flat actions [B, N·d_u] (shape and finiteness, raises ValueError) and return
        them clipped to [-1, 1] as a new float64 array."""
        clipped = self.validate_action(action).astype(np.float64)
        return np.clip(clipped, -1.0, 1.0, out=clipped)

    def step_action(self, action: np.ndarray) -> StepResult:
        """Decode a batch of Box actions (with repairs) and advance one round."""
        d, repairs = decision.decode(self.config, self.state, self.check_action(action))
        return self._advance(d, repairs)

    def step_decision(self, d: decision.Decision) -> StepResult:
        """Validate a batch of structured decisions (raises ValueError), fill rules, advance one round."""
        decision.validate(self.config, self.state, d)
        complete = decision.complete(self.config, self.state, d)
        zeros = np.zeros(self.num_envs, dtype=np.int64)
        return self._advance(complete, {"split_min_local": zeros, "memory": zeros.copy(), "capacity": zeros.copy()})

    def _advance(self, d: decision.Decision, repairs: dict[str, np.ndarray]) -> StepResult:
        config, state = self.config, self.state
        metrics = costs.evaluate(config, state, d)
        terms = costs.reward_terms(config, metrics, self.scales)
        normals, uniforms = self.randomness.draw()
        trained = np.where(metrics.dropped, 0.0, metrics.sequences * config.workload.local_iterations)
        dynamics.transition(config, state, normals, uniforms, trained, metrics.energy_device_j, d.server,
                            metrics.server_work_flops)
        truncated = state.round >= config.rounds
        return StepResult(reward=terms["reward"], truncated=truncated, metrics=metrics, terms=terms,
                          repairs=repairs, decision=d)

    def observe(self) -> np.ndarray:
        return self.observer.flat(self.state)

    def step_batch(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step with Box actions and return (observations, rewards, model-truncations, info arrays)."""
        if self.kernel_params is not None:
            return self._step_kernel(actions)
        result = self.step_action(actions)
        return self.observe(), result.reward, result.truncated, info_arrays(result, self.state)

    def _step_kernel(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """:meth:`step_batch` through the compiled round kernel (:mod:`mec_gym.model.kernel`)."""
        out = kernel.outputs(self.config, self.num_envs, self.observer.size)
        self.run_kernel(self.validate_action(actions), out)
        return out[0], out[1][0], self.state.round >= self.config.rounds, kernel.info(out)

    def run_kernel(self, action: np.ndarray, out: tuple, lo: int = 0, hi: int | None = None,
                   scratch: tuple | None = None) -> None:
        """Advance environments ``lo..hi-1`` (default: all) one round with the kernel, writing into ``out``
        (:func:`kernel.outputs` or :func:`kernel.rows` of a larger batch, indexed like this core's environments);
        ``action`` [B, N·d_u] must be validated (it is clipped here). Calls that run at the same time on disjoint
        ranges need their own ``scratch`` (:func:`kernel.scratch`; default: the core's own)."""
        if action.dtype not in (np.float32, np.float64) or not action.flags.c_contiguous:
            action = np.ascontiguousarray(action, dtype=np.float64)
        state = self.state
        self._kernel(lo, self.num_envs if hi is None else hi, action, self.kernel_params, state.round,
                     state.device_rate_flops,
                     state.device_power_w, state.server_peak_flops, state.server_power_w, state.power_max_w,
                     state.seq_len, state.forward_flops, state.backward_flops, state.service_q0, state.service_q1,
                     state.max_layers, state.user_pos_m, state.user_vel_mps, state.shadowing_db, state.fading,
                     state.gain, state.data_queue, state.energy_queue, state.load_index, state.load,
                     state.users_per_server, state.server_work_flops, self.randomness.states,
                     self._poisson_cdf, self._load_levels, self._sites, self._static_obs, *out,
                     *(self._scratch if scratch is None else scratch),
                     _flat(state.shadowing_db), _flat(state.fading), _flat(state.gain), *self._poisson_cells)

    def validate_action(self, action: np.ndarray) -> np.ndarray:
        """Check a batch of flat actions [B, N·d_u] for shape and finiteness (raises ValueError); returns
        it as an array of that shape (unclipped)."""
        arr = np.asarray(action)
        expected = (self.num_envs, self.action_width)
        if arr.shape != expected:
            if arr.size == self.num_envs * self.action_width and arr.ndim == 1 and self.num_envs == 1:
                arr = arr.reshape(expected)
            else:
                raise ValueError(f"action: expected shape {expected[1:] if self.num_envs == 1 else expected} "
                                 f"(num_users × {self.action_width // self.config.num_users} dims per user), "
                                 f"got {arr.shape}")
        if arr.size <= 4096:  # small: one elementwise check (cheaper than entering errstate)
            finite = bool(np.isfinite(arr).all())
        else:  # one sum is finite when every entry is (a sum that overflows is checked entrywise)
            with np.errstate(over="ignore"):
                finite = bool(np.isfinite(arr.sum())) or bool(np.all(np.isfinite(arr)))
        if not finite:
            raise ValueError("action: contains NaN or infinite values; actions must be finite and lie in [-1, 1]")
        return arr


def _flat(array: np.ndarray) -> np.ndarray:
    """[B, …] ``array`` as a [B, rest] view (raises rather than copy: the kernel writes through it)."""
    view = array.view()
    view.shape = (array.shape[0], -1)
    return view


def info_arrays(result: StepResult, state: dynamics.SystemState) -> dict:
    """Per-round raw and normalized metrics as plain numpy arrays with a leading batch axis (SPEC §4.2)."""
    m, t = result.metrics, result.terms
    return {
        "energy_j": m.energy_j,
        "delay_s": m.delay_s,
        "stability": m.stability_mean,
        "scr": t["scr"],
        "energy_norm": t["energy_norm"],
        "delay_norm": t["delay_norm"],
        "stability_norm": t["stability_norm"],
        "budget_violation": t["budget_violation"],
        "drop_rate": t["drop_rate"],
        "drops": m.dropped.sum(axis=-1),
        "latency_s": m.latency_s,
        "energy_j_user": m.energy_j_user,
        "energy_device_j": m.energy_device_j,
        "energy_server_j": m.energy_server_j,
        "local_layers": result.decision.split[..., 1:].sum(axis=-1),
        "server": result.decision.server,
        "sequences": m.sequences,
        "peak_memory_bytes": m.memory_bytes.max(axis=(-1, -2)),
        "data_queue": state.data_queue.copy(),
        "energy_queue": state.energy_queue.copy(),
        "repairs": result.repairs,
    }
