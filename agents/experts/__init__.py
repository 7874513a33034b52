"""Optimization experts: the papers' solvers and the exhaustive oracle (SPEC §6.3-6.6)."""
