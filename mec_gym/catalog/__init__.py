"""Catalog of LLM architectures and hardware profiles, loaded from the YAML files beside this module.

Every entry carries a ``source`` string naming where its numbers come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class LLMSpec:
    """Transformer architecture of one catalog LLM (per-layer shapes)."""

    name: str
    source: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    mlp: str
    causal: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of the K and V projections (GQA-aware): kv_heads * head_dim."""
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class HardwareProfile:
    """A compute device: dense fp16 peak FLOP/s, power at full speed (W), memory (GB)."""

    name: str
    source: str
    peak_flops: float
    power_w: float
    memory_gb: float


def _load(file: str) -> dict:
    with open(_HERE / file, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@cache
def llms() -> dict[str, LLMSpec]:
    """All LLM architectures by name."""
    return {name: LLMSpec(name=name, **entry) for name, entry in _load("llms.yaml").items()}


@cache
def server_gpus() -> dict[str, HardwareProfile]:
    """All edge-server GPU profiles by name."""
    return {
        name: HardwareProfile(name=name, **{k: float(v) if k != "source" else v for k, v in e.items()})
        for name, e in _load("servers.yaml").items()
    }


@cache
def devices() -> dict[str, HardwareProfile]:
    """All on-device accelerator profiles by name."""
    return {
        name: HardwareProfile(name=name, **{k: float(v) if k != "source" else v for k, v in e.items()})
        for name, e in _load("devices.yaml").items()
    }


def llm(name: str) -> LLMSpec:
    """Look up an LLM by name; unknown names raise ``ValueError`` listing the valid ones."""
    table = llms()
    if name not in table:
        raise ValueError(f"model: unknown LLM {name!r}; valid names: {sorted(table)}")
    return table[name]


def server_gpu(name: str) -> HardwareProfile:
    """Look up a server GPU profile by name; unknown names raise ``ValueError``."""
    table = server_gpus()
    if name not in table:
        raise ValueError(f"server.profiles: unknown server GPU {name!r}; valid names: {sorted(table)}")
    return table[name]
