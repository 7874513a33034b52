"""agents: policies (experts, heuristics, RL), the benchmark harness and the mec-gym command line."""
