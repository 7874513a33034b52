"""Chain pipeline with micro-batches ([CP25], SPEC §3.3). Times in seconds."""

from __future__ import annotations

import numpy as np


def stage_times(total_s: np.ndarray, microbatches: np.ndarray, overhead_s: float) -> np.ndarray:
    """Per-micro-batch time of each stage: its round total / Q plus a fixed per-message overhead t₀.

    ``total_s`` has the stages on its *first* axis (stage-major: reductions over a few stages
    stay elementwise and fast); ``microbatches`` broadcasts against the remaining axes.
    Stages with no work (skipped nodes, absent links) take no time and no overhead.
    """
    q = np.asarray(microbatches, dtype=np.float64)
    return np.where(total_s > 0, total_s / q + overhead_s, 0.0)


def makespan(stage_s: np.ndarray, microbatches: np.ndarray) -> np.ndarray:
    """Makespan of a linear pipeline: T = Σ_j τ_j + (Q − 1)·max_j τ_j (SPEC §3.3, [CP25] notes §3.6).

    Exact when each stage handles micro-batches in order, one at a time, and passes each on
    as soon as it is done (checked against an event-driven simulation in the tests).
    ``stage_s`` holds the per-micro-batch stage times on its first axis (stage-major).
    """
    q = np.asarray(microbatches, dtype=np.float64)
    return stage_s.sum(axis=0) + (q - 1.0) * stage_s.max(axis=0)
