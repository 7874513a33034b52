"""The README's Python examples run as written (the RLlib recipe is covered by tests/test_rllib.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", [i for i, block in enumerate(BLOCKS) if "ray" not in block])
def test_readme_example_runs(index: int) -> None:
    import torch

    torch.set_num_threads(1)  # the suite runs two workers on two cores (see agents.rl.DEFAULT_THREADS)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme_example"})
