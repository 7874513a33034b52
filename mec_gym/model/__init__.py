"""The batched system model: numpy, no gymnasium import (SPEC §3). ``kernel`` compiles the same formula
functions (numba) into the fused per-environment round; ``rng`` holds the per-environment random streams."""

from mec_gym.model.costs import RoundMetrics, Scales, evaluate, reward_terms
from mec_gym.model.decision import Decision, complete, decode, encode, validate
from mec_gym.model.dynamics import SystemState

__all__ = ["Decision", "RoundMetrics", "Scales", "SystemState", "complete", "decode", "encode", "evaluate",
           "reward_terms", "validate"]
