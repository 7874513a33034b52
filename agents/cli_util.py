"""Helpers shared by the ``mec-gym`` command groups (:mod:`agents.cli`, :mod:`agents.cli_rl`)."""

from __future__ import annotations

import typer


def parse_sets(values: list[str] | None) -> dict[str, str]:
    """``--set key=value`` options as a dict of scenario overrides (values are validated by the config)."""
    overrides = {}
    for item in values or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides
