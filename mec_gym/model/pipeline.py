"""Chain pipeline with micro-batches ([CP25], SPEC §3.3). Times in seconds."""

from __future__ import annotations

import numpy as np

from mec_gym.model.numeric import jitable, select


def stage_times(total_s: np.ndarray, microbatches: np.ndarray, overhead_s: float) -> np.ndarray:
    """Per-micro-batch time of each stage: its round total / Q plus a fixed per-message overhead t₀.

    ``total_s`` has the stages on its *first* axis (stage-major: reductions over a few stages
    stay elementwise and fast), or is a list of per-stage arrays (then so is the result; their totals must
    be >= 0 or inf, never NaN); ``microbatches`` broadcasts against the remaining axes.
    Stages with no work (skipped nodes, absent links) take no time and no overhead.
    """
    q = np.asarray(microbatches, dtype=np.float64)
    if not isinstance(total_s, (list, tuple)):
        return stage_time(total_s, q, overhead_s)
    return [stage_time(stage, q, overhead_s) for stage in total_s]


@jitable
def stage_time(total_s: np.ndarray, microbatches: np.ndarray, overhead_s: float) -> np.ndarray:
    """Per-micro-batch time of one stage, s: total/Q + t₀ when the stage has work, else 0."""
    return select(total_s > 0, total_s / microbatches + overhead_s, 0.0)


@jitable
def pipeline_makespan(stage_sum_s: np.ndarray, stage_max_s: np.ndarray, microbatches: np.ndarray) -> np.ndarray:
    """T = Σ_j τ_j + (Q − 1)·max_j τ_j from the sum and the maximum of the per-micro-batch stage times (s)."""
    return stage_sum_s + (microbatches - 1.0) * stage_max_s


def makespan(stage_s: np.ndarray, microbatches: np.ndarray) -> np.ndarray:
    """Makespan of a linear pipeline: T = Σ_j τ_j + (Q − 1)·max_j τ_j (SPEC §3.3, [CP25] notes §3.6).

    Exact when each stage handles micro-batches in order, one at a time, and passes each on
    as soon as it is done (checked against an event-driven simulation in the tests).
    ``stage_s`` holds the per-micro-batch stage times on its first axis (stage-major), or is a list of
    per-stage arrays (summed in list order, without building the stacked array).
    """
    q = np.asarray(microbatches, dtype=np.float64)
    if not isinstance(stage_s, (list, tuple)):
        return pipeline_makespan(stage_s.sum(axis=0), stage_s.max(axis=0), q)
    total = np.array(stage_s[0], dtype=np.float64)
    longest = total.copy()
    for stage in stage_s[1:]:  # in stage order (numpy's sum over fewer than 8 stages adds in this order too)
        total += stage
        np.maximum(longest, stage, out=longest)
    return pipeline_makespan(total, longest, q)
