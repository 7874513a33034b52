"""Typed, validated, frozen configuration of the edge-training system (SPEC §3, §5).

``SystemConfig`` is the root; its parts group the physics. Defaults are the ``default``
scenario (SPEC §5.1); ``mec_gym.scenarios`` holds the paper presets. Every invalid value
raises ``ValueError`` naming the field (dotted path) and the allowed range.

Overrides use dotted names (``weights.energy``, ``radio.noise_figure_db``) through
:meth:`SystemConfig.override`; the common short names of SPEC §4.1 (``num_users``,
``num_servers``, ``devices_per_user``, ``model``, ``rounds``, ``weights.*``, ``objective``,
``controls``) are top-level fields.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mec_gym import catalog

CONTROL_FIELDS = ("split", "server", "power", "bandwidth", "compute", "frequency", "microbatches")
"""Decision fields an agent may control (SPEC §3.2), in action-layout order."""

DEFAULT_CONTROLS = ("split", "server", "power", "bandwidth", "compute")


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {message}")


def _check_range(value: tuple, name: str, low: float = 0.0, strict: bool = True) -> None:
    _check(isinstance(value, tuple) and len(value) == 2, name, f"expected a (low, high) pair, got {value!r}")
    lo, hi = value
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
    _check(ok, name, f"bounds must be finite numbers, got {value!r}")
    relation = ">" if strict else ">="
    _check((lo > low) if strict else (lo >= low), name, f"lower bound must be {relation} {low}, got {lo}")
    _check(hi >= lo, name, f"upper bound must be >= lower bound, got {value!r}")


def _positive(value: float, name: str) -> None:
    _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name,
           f"must be a finite number > 0, got {value!r}")


def _unit_interval(value: float, name: str, closed_low: bool = True, closed_high: bool = True) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if closed_low else value > 0) and (value <= 1 if closed_high else value < 1)
    lo, hi = ("[" if closed_low else "("), ("]" if closed_high else ")")
    _check(ok, name, f"must lie in {lo}0, 1{hi}, got {value!r}")


def _check_clock_model(spec: DeviceSpec | ServerSpec, prefix: str) -> None:
    """The [LZ24] clock model is all-or-nothing: clock range, cores, FLOPs per cycle and κ."""
    clock_fields = (spec.clock_hz, spec.cores, spec.flops_per_cycle, spec.kappa)
    if any(v is not None for v in clock_fields):
        _check(all(v is not None for v in clock_fields), f"{prefix}.clock_hz",
               "the clock model needs clock_hz, cores, flops_per_cycle and kappa together")
        _check_range(spec.clock_hz, f"{prefix}.clock_hz")
        _check_range(spec.cores, f"{prefix}.cores")
        _check_range(spec.flops_per_cycle, f"{prefix}.flops_per_cycle")
        _positive(spec.kappa, f"{prefix}.kappa")


@dataclass(frozen=True)
class DeviceSpec:
    """On-device hardware of every chain node, drawn per node and per episode.

    Two parameterizations (SPEC §3.3): the *FLOPS model* draws ``peak_flops`` (FLOP/s) and
    ``power_w`` (W at full speed) uniformly; the *clock model* of [LZ24] (used when
    ``clock_hz`` is set) draws clock (Hz), ``cores`` and ``flops_per_cycle`` and sets
    peak = clock·cores·flops_per_cycle, power at full speed = ``kappa``·clock³ ([LZ24] eq. 2).
    The effective rate is ``utilization``·peak (constant: on-device rates barely depend on
    layer size, shared/calibration/cpu-2core-layers.csv).
    """

    peak_flops: tuple[float, float] = (1.0e12, 4.0e12)
    power_w: tuple[float, float] = (4.0, 8.0)
    utilization: float = 0.3
    memory_gb: tuple[float, float] = (6.0, 12.0)
    memory_choices_gb: tuple[float, ...] = ()
    frequency_min: float = 0.3
    clock_hz: tuple[float, float] | None = None
    cores: tuple[int, int] | None = None
    flops_per_cycle: tuple[int, int] | None = None
    kappa: float | None = None

    def validate(self, prefix: str = "device") -> None:
        _check_range(self.peak_flops, f"{prefix}.peak_flops")
        _check_range(self.power_w, f"{prefix}.power_w")
        _unit_interval(self.utilization, f"{prefix}.utilization", closed_low=False)
        _check_range(self.memory_gb, f"{prefix}.memory_gb")
        for value in self.memory_choices_gb:
            _positive(value, f"{prefix}.memory_choices_gb")
        _unit_interval(self.frequency_min, f"{prefix}.frequency_min", closed_low=False)
        _check_clock_model(self, prefix)


@dataclass(frozen=True)
class ServerSpec:
    """Edge servers: GPUs, bandwidth, background load, capacity (SPEC §3.1, §3.6).

    Each server draws one GPU from ``profiles`` (catalog names) per episode, or, with
    ``clock_hz`` set, the [LZ24] clock model (``cores``, ``flops_per_cycle``, ``kappa``).
    ``energy_model``: ``"time_share"`` (our choice: the GPU runs at full clock and is
    time-shared, so a user's work costs P^max·w/R whatever its share) or ``"frequency"``
    ([LZ24] eq. 6: the share is a clock f_{n,m} = φ·f^max, energy κ·f_{n,m}²·w/(C·D)).
    The effective rate of a server running a layer whose forward+backward work per
    micro-batch is ``w`` FLOPs is ``utilization``·peak·min(1, w/w_sat)^``utilization_exponent``
    with ``w_sat = saturation_seconds``·peak: small kernels are overhead-bound
    (calibrated on shared/calibration/h100-layers.csv: 6 % of peak for BERT-base, 42-53 % for
    1B/7B layers; ``saturation_seconds = 0`` gives a constant utilization).
    """

    profiles: tuple[str, ...] = ("t4", "l4", "a10")
    utilization: float = 0.4
    saturation_seconds: float = 1.5e-3
    utilization_exponent: float = 0.93
    bandwidth_hz: float = 20.0e6
    load_levels: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    load_stay_probability: float = 0.7
    capacity: int = 0
    downlink_power_w: float = 1.0
    energy_model: str = "time_share"
    clock_hz: tuple[float, float] | None = None
    cores: tuple[int, int] | None = None
    flops_per_cycle: tuple[int, int] | None = None
    kappa: float | None = None

    def validate(self, prefix: str = "server") -> None:
        _check(len(self.profiles) > 0 or self.clock_hz is not None, f"{prefix}.profiles",
               "give at least one GPU profile or the clock model")
        for name in self.profiles:
            catalog.server_gpu(name)
        _unit_interval(self.utilization, f"{prefix}.utilization", closed_low=False)
        _check(self.saturation_seconds >= 0 and math.isfinite(self.saturation_seconds),
               f"{prefix}.saturation_seconds", f"must be >= 0, got {self.saturation_seconds!r}")
        _positive(self.utilization_exponent, f"{prefix}.utilization_exponent")
        _positive(self.bandwidth_hz, f"{prefix}.bandwidth_hz")
        _check(len(self.load_levels) > 0, f"{prefix}.load_levels", "give at least one load level")
        for level in self.load_levels:
            _unit_interval(level, f"{prefix}.load_levels", closed_high=False)
        _unit_interval(self.load_stay_probability, f"{prefix}.load_stay_probability")
        _check(isinstance(self.capacity, int) and self.capacity >= 0, f"{prefix}.capacity",
               f"must be an integer >= 0 (0 = unlimited), got {self.capacity!r}")
        _check(self.downlink_power_w >= 0, f"{prefix}.downlink_power_w", "must be >= 0")
        _check(self.energy_model in ("time_share", "frequency"), f"{prefix}.energy_model",
               f"must be 'time_share' or 'frequency', got {self.energy_model!r}")
        _check_clock_model(self, prefix)


@dataclass(frozen=True)
class RadioConfig:
    """Radio links (SPEC §3.3, §3.5): noise, powers, path loss, shadowing, fading, D2D."""

    noise_psd_dbm_hz: float = -174.0
    noise_figure_db: float = 9.0
    power_max_w: tuple[float, float] = (0.2, 0.2)
    power_min_w: float = 0.01
    pathloss_db_at_1km: float = 128.1
    pathloss_exponent_db: float = 37.6
    d2d_pathloss_db_at_1km: float = 148.0
    d2d_pathloss_exponent_db: float = 40.0
    shadowing_db: float = 8.0
    shadowing_correlation: float = 0.9
    fading: bool = True
    fading_correlation: float = 0.5
    d2d_bandwidth_hz: float = 10.0e6
    d2d_power_max_w: float = 0.2
    downlink: bool = True
    min_distance_m: float = 10.0
    share_floor: float = 0.02

    def validate(self, prefix: str = "radio") -> None:
        _check(math.isfinite(self.noise_psd_dbm_hz), f"{prefix}.noise_psd_dbm_hz", "must be finite")
        _check(math.isfinite(self.noise_figure_db) and self.noise_figure_db >= 0,
               f"{prefix}.noise_figure_db", "must be >= 0 dB")
        _check_range(self.power_max_w, f"{prefix}.power_max_w")
        _positive(self.power_min_w, f"{prefix}.power_min_w")
        _check(self.power_min_w <= self.power_max_w[0], f"{prefix}.power_min_w",
               f"must not exceed the smallest power_max_w {self.power_max_w[0]}")
        _check(self.shadowing_db >= 0, f"{prefix}.shadowing_db", "must be >= 0")
        _unit_interval(self.shadowing_correlation, f"{prefix}.shadowing_correlation")
        _unit_interval(self.fading_correlation, f"{prefix}.fading_correlation")
        _positive(self.d2d_bandwidth_hz, f"{prefix}.d2d_bandwidth_hz")
        _positive(self.d2d_power_max_w, f"{prefix}.d2d_power_max_w")
        _check(self.d2d_power_max_w >= self.power_min_w, f"{prefix}.d2d_power_max_w", "must be >= power_min_w")
        _positive(self.min_distance_m, f"{prefix}.min_distance_m")
        _unit_interval(self.share_floor, f"{prefix}.share_floor", closed_low=False, closed_high=False)


@dataclass(frozen=True)
class GeometryConfig:
    """Area, server placement and Gauss-Markov mobility (SPEC §3.5)."""

    area_m: float = 1000.0
    cluster_radius_m: float = 50.0
    server_distance_m: tuple[float, float] | None = None
    speed_mps: float = 1.5
    speed_std_mps: float = 0.5
    mobility_memory: float = 0.8
    round_duration_s: float = 10.0

    def validate(self, prefix: str = "geometry") -> None:
        _positive(self.area_m, f"{prefix}.area_m")
        _positive(self.cluster_radius_m, f"{prefix}.cluster_radius_m")
        if self.server_distance_m is not None:
            _check_range(self.server_distance_m, f"{prefix}.server_distance_m")
        _check(self.speed_mps >= 0, f"{prefix}.speed_mps", "must be >= 0")
        _check(self.speed_std_mps >= 0, f"{prefix}.speed_std_mps", "must be >= 0")
        _unit_interval(self.mobility_memory, f"{prefix}.mobility_memory")
        _positive(self.round_duration_s, f"{prefix}.round_duration_s")


@dataclass(frozen=True)
class WorkloadConfig:
    """Training workload per round (SPEC §3.3, §3.6).

    ``flops_model``: ``"transformer"`` (SPEC §3.3 count from the catalog shapes) or
    ``"lz24"`` ([LZ24] ψ(d) = 72·B·d·h² + 12·B·d²·h per layer and batch).
    ``arrival_rate`` = 0 means constant full batches (paper presets).
    ``local_iterations``: training iterations per round before the aggregation upload ([CP25]'s I);
    a round trains local_iterations × b sequences.
    """

    seq_len: tuple[int, int] = (512, 512)
    batch_max: int = 8
    arrival_rate: float = 6.0
    initial_queue: tuple[int, int] = (4, 24)
    deadline_s: float = 0.0
    flops_model: str = "transformer"
    peft: str = "lora"
    lora_rank: int = 16
    activation_bits: int = 16
    token_bits: int = 32
    activation_bytes_per_element: float = 34.0
    microbatches: int = 4
    max_microbatches: int = 8
    overhead_s: float = 0.01
    lipschitz: float = 1.0
    stability_samples: int = 0
    energy_budget_j: float = 0.0
    local_iterations: int = 1

    def validate(self, prefix: str = "workload") -> None:
        _check_range(self.seq_len, f"{prefix}.seq_len")
        _check(isinstance(self.batch_max, int) and self.batch_max >= 1, f"{prefix}.batch_max",
               f"must be an integer >= 1, got {self.batch_max!r}")
        _check(math.isfinite(self.arrival_rate) and self.arrival_rate >= 0, f"{prefix}.arrival_rate",
               "must be >= 0 (0 = constant full batches)")
        _check_range(self.initial_queue, f"{prefix}.initial_queue", strict=False)
        _check(math.isfinite(self.deadline_s) and self.deadline_s >= 0, f"{prefix}.deadline_s",
               "must be >= 0 (0 = no deadline)")
        _check(self.flops_model in ("transformer", "lz24"), f"{prefix}.flops_model",
               f"must be 'transformer' or 'lz24', got {self.flops_model!r}")
        _check(self.peft in ("lora", "full"), f"{prefix}.peft", f"must be 'lora' or 'full', got {self.peft!r}")
        _check(isinstance(self.lora_rank, int) and self.lora_rank >= 1, f"{prefix}.lora_rank", "must be >= 1")
        _positive(self.activation_bits, f"{prefix}.activation_bits")
        _positive(self.token_bits, f"{prefix}.token_bits")
        _check(self.activation_bytes_per_element >= 0, f"{prefix}.activation_bytes_per_element", "must be >= 0")
        _check(isinstance(self.max_microbatches, int) and self.max_microbatches >= 1,
               f"{prefix}.max_microbatches", "must be an integer >= 1")
        _check(isinstance(self.microbatches, int) and 1 <= self.microbatches <= self.max_microbatches,
               f"{prefix}.microbatches", f"must be an integer in [1, max_microbatches={self.max_microbatches}]")
        _check(math.isfinite(self.overhead_s) and self.overhead_s >= 0, f"{prefix}.overhead_s", "must be >= 0")
        _positive(self.lipschitz, f"{prefix}.lipschitz")
        _check(isinstance(self.local_iterations, int) and self.local_iterations >= 1, f"{prefix}.local_iterations",
               f"must be an integer >= 1, got {self.local_iterations!r}")
        _check(isinstance(self.stability_samples, int) and self.stability_samples >= 0,
               f"{prefix}.stability_samples", "must be an integer >= 0 (0 = the round's batch)")
        _check(math.isfinite(self.energy_budget_j) and self.energy_budget_j >= 0, f"{prefix}.energy_budget_j",
               "must be >= 0 (0 = no long-term budget)")


@dataclass(frozen=True)
class Weights:
    """Objective weights (SPEC §3.4). ``budget`` and ``drop`` weight the penalties of §3.6."""

    energy: float = 0.5
    delay: float = 1.0
    stability: float = 0.25
    budget: float = 1.0
    drop: float = 1.0

    def validate(self, prefix: str = "weights") -> None:
        for name in ("energy", "delay", "stability", "budget", "drop"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                   f"{prefix}.{name}", f"must be a finite number >= 0, got {value!r}")
        _check(self.energy + self.delay + self.stability > 0, f"{prefix}",
               "energy, delay and stability weights are all zero; set at least one > 0")


@dataclass(frozen=True)
class ServiceQuality:
    """Per-pair service scores of [QZ24]'s SCR: U = q0 + q1·ρ, q0 ~ U[q0], q1 ~ U[q1] (our choice)."""

    q0: tuple[float, float] = (0.5, 1.0)
    q1: tuple[float, float] = (0.0, 0.5)

    def validate(self, prefix: str = "service") -> None:
        _check_range(self.q0, f"{prefix}.q0", strict=False)
        _check_range(self.q1, f"{prefix}.q1", strict=False)


@dataclass(frozen=True)
class SystemConfig:
    """The whole system: entities, decision controls, objective and physics.

    Args:
        num_users: N, users (jobs / clusters).
        num_servers: M, edge servers.
        devices_per_user: K, on-device chain nodes per user ([CP25] clusters when K > 1).
        model: catalog LLM name (``mec_gym.catalog.llms()``).
        rounds: T, training rounds per episode.
        controls: the decision fields the agent controls (subset of ``CONTROL_FIELDS``);
            the others follow the documented rules (SPEC §3.2).
        objective: ``"weighted"`` ([LZ24]) or ``"scr"`` ([QZ24]).
        weights: objective weights.
        split_min_local: minimum layers on the user side (α ≥ this; 0 allows raw-token upload).
        delay_aggregate: ``"mean"``, ``"max"`` or ``"sum"`` of per-user round latencies.
        server_energy_weight: 0 or 1, whether server energy counts in E.
        head_on_server: the task head sits on the server, so activations always go up ([CP25]).
        reference_samples / reference_seed: states sampled (deterministically) to compute the
            reference-policy normalizers E_ref, D_ref, S_ref, T_ref (SPEC §3.4).
    """

    num_users: int = 12
    num_servers: int = 3
    devices_per_user: int = 1
    model: str = "llama-3.2-1b"
    rounds: int = 64
    controls: tuple[str, ...] = DEFAULT_CONTROLS
    objective: str = "weighted"
    weights: Weights = field(default_factory=Weights)
    split_min_local: int = 1
    delay_aggregate: str = "mean"
    server_energy_weight: float = 1.0
    head_on_server: bool = False
    device: DeviceSpec = field(default_factory=DeviceSpec)
    server: ServerSpec = field(default_factory=ServerSpec)
    radio: RadioConfig = field(default_factory=RadioConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    service: ServiceQuality = field(default_factory=ServiceQuality)
    reference_samples: int = 32
    reference_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.controls, (list, str)):
            controls = (self.controls,) if isinstance(self.controls, str) else tuple(self.controls)
            object.__setattr__(self, "controls", controls)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and its allowed range."""
        for name in ("num_users", "num_servers", "devices_per_user", "rounds", "reference_samples"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                   f"must be an integer >= 1, got {value!r}")
        spec = catalog.llm(self.model)
        unknown = [c for c in self.controls if c not in CONTROL_FIELDS]
        _check(not unknown, "controls", f"unknown fields {unknown}; valid fields: {list(CONTROL_FIELDS)}")
        _check(len(set(self.controls)) == len(self.controls), "controls", "fields repeat")
        _check(len(self.controls) > 0, "controls", "control at least one field")
        _check(self.objective in ("weighted", "scr"), "objective",
               f"must be 'weighted' or 'scr', got {self.objective!r}")
        _check(self.delay_aggregate in ("mean", "max", "sum"), "delay_aggregate",
               f"must be 'mean', 'max' or 'sum', got {self.delay_aggregate!r}")
        _check(self.server_energy_weight in (0, 1, 0.0, 1.0), "server_energy_weight", "must be 0 or 1")
        _check(isinstance(self.split_min_local, int) and 0 <= self.split_min_local <= spec.layers,
               "split_min_local", f"must be an integer in [0, {spec.layers}] (the model's layers)")
        _check(isinstance(self.reference_seed, int), "reference_seed", "must be an integer")
        self.weights.validate("weights")
        self.device.validate("device")
        self.server.validate("server")
        self.radio.validate("radio")
        self.geometry.validate("geometry")
        self.workload.validate("workload")
        self.service.validate("service")
        from mec_gym.model import llm as llm_model  # the model imports this module

        per_layer = llm_model.layer_memory_bytes(spec, self.workload, self.workload.batch_max, self.workload.seq_len[1])
        smallest = min(self.device.memory_choices_gb) if self.device.memory_choices_gb else self.device.memory_gb[0]
        per_node = math.floor(smallest * 1e9 / per_layer)
        _check(per_node * self.devices_per_user >= self.split_min_local, "device.memory_gb",
               f"{self.devices_per_user} device(s) of the smallest memory ({smallest} GB) hold {per_node} layer(s) "
               f"each of {per_layer / 1e9:.2f} GB at a full batch, fewer than split_min_local = "
               f"{self.split_min_local}; raise the memory or lower workload.batch_max")
        if self.server.capacity:
            _check(self.server.capacity * self.num_servers >= self.num_users, "server.capacity",
                   f"{self.num_servers} servers x capacity {self.server.capacity} cannot hold "
                   f"{self.num_users} users; raise it or set 0 (unlimited)")

    @property
    def llm(self) -> catalog.LLMSpec:
        return catalog.llm(self.model)

    @property
    def num_layers(self) -> int:
        """Υ, transformer layers of the model."""
        return self.llm.layers

    def override(self, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> SystemConfig:
        """Return a copy with fields replaced by dotted name (``{"weights.energy": 2}``).

        Unknown names raise ``ValueError`` listing the valid ones; values are validated.
        """
        updates = dict(overrides or {}, **kwargs)
        config: SystemConfig = self
        for name, value in updates.items():
            config = _replace_path(config, name.split("."), value, name)
        config.validate()
        return config


def field_names(config: Any = None, prefix: str = "") -> list[str]:
    """All dotted field names of a config tree (what ``override`` and ``--set`` accept)."""
    config = SystemConfig() if config is None else config
    names = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            names.extend(field_names(value, f"{prefix}{f.name}."))
        else:
            names.append(f"{prefix}{f.name}")
    return names


def _coerce(current: Any, value: Any, name: str) -> Any:
    """Convert override values (e.g. CLI strings, lists) to the current field's type."""
    if isinstance(value, str) and not isinstance(current, str):
        import yaml

        value = yaml.safe_load(value)
    if isinstance(current, tuple) and isinstance(value, (list, str)):
        value = tuple(value) if isinstance(value, list) else (value,)
    if isinstance(current, bool):
        _check(isinstance(value, bool), name, f"expected true/false, got {value!r}")
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def _replace_path(node: Any, path: list[str], value: Any, full: str) -> Any:
    names = {f.name for f in dataclasses.fields(node)}
    if path[0] not in names:
        raise ValueError(f"unknown parameter {full!r}; valid names: {field_names(SystemConfig())}")
    current = getattr(node, path[0])
    if len(path) == 1:
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            for key, sub in value.items():
                current = _replace_path(current, [key], sub, f"{full}.{key}")
            new = current
        else:
            new = _coerce(current, value, full)
    else:
        _check(dataclasses.is_dataclass(current), full, f"{path[0]!r} has no sub-fields")
        new = _replace_path(current, path[1:], value, full)
    return _replace_raw(node, path[0], new)


def _replace_raw(node: Any, name: str, value: Any) -> Any:
    """dataclasses.replace without running SystemConfig validation mid-way (validated at the end)."""
    clone = object.__new__(type(node))
    for f in dataclasses.fields(node):
        object.__setattr__(clone, f.name, getattr(node, f.name))
    object.__setattr__(clone, name, value)
    return clone
