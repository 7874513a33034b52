"""The ``mec-gym`` command line (SPEC §1.4): scenarios, simulate, demo, inspect, bench, bench speed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from agents.cli_util import parse_sets

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mec_gym: collaborative LLM training at the mobile edge.")
bench_app = typer.Typer(no_args_is_help=False, help="Benchmarks: policies on identical evaluation seeds; env speed.")
inspect_app = typer.Typer(no_args_is_help=True, help="Inspect the system model.")
app.add_typer(bench_app, name="bench")
app.add_typer(inspect_app, name="inspect")
reproduce_app = typer.Typer(no_args_is_help=True, help="Reproduce the papers' experiments.")
app.add_typer(reproduce_app, name="reproduce")
train_app = typer.Typer(no_args_is_help=True, help="Train RL agents (stable-baselines3 PPO/SAC; RLlib PPO).")
app.add_typer(train_app, name="train")
console = Console()

POLICIES = ("reference", "random")


def _make_env(scenario: str, sets: list[str] | None, rounds: int | None = None):
    import gymnasium as gym

    import mec_gym

    overrides = parse_sets(sets)
    if rounds is not None:
        overrides["rounds"] = rounds
    ids = {v: k for k, v in mec_gym.ENV_IDS.items()}
    if scenario not in ids:
        raise typer.BadParameter(f"unknown scenario {scenario!r}; valid names: {sorted(ids)}")
    try:
        return gym.make(ids[scenario], **overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def run_episode(env, policy: str, seed: int) -> list[dict[str, float]]:
    """One episode with the ``reference`` rule (all fields at their rules) or uniform ``random`` actions."""
    import mec_gym

    if policy not in POLICIES:
        raise typer.BadParameter(f"unknown policy {policy!r}; valid names: {list(POLICIES)}")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    rows, done = [], False
    while not done:
        start = time.perf_counter()
        if policy == "reference":
            _, reward, terminated, truncated, info = env.unwrapped.step_decision(mec_gym.Decision())
        else:
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rows.append({"reward": reward, "energy_j": info["energy_j"], "delay_s": info["delay_s"],
                     "stability": info["stability"], "scr": info["scr"], "drops": int(info["drops"]),
                     "step_ms": 1e3 * (time.perf_counter() - start)})
        done = terminated or truncated
    return rows


@app.command()
def scenarios() -> None:
    """List the scenario presets and their environment ids."""
    import mec_gym

    table = Table(title="mec_gym scenarios")
    for col in ("env id", "scenario", "users", "servers", "K", "model", "objective", "controls"):
        table.add_column(col)
    for env_id, name in mec_gym.ENV_IDS.items():
        c = mec_gym.make_config(name)
        table.add_row(env_id, name, str(c.num_users), str(c.num_servers), str(c.devices_per_user), c.model,
                      c.objective, ",".join(c.controls))
    console.print(table)


@app.command()
def simulate(
    scenario: Annotated[str, typer.Option(help="scenario preset")] = "default",
    policy: Annotated[str, typer.Option(help="reference or random")] = "reference",
    seed: Annotated[int, typer.Option(help="episode seed")] = 0,
    rounds: Annotated[int | None, typer.Option(help="rounds (default: the scenario's)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override key=value (repeatable)")] = None,
) -> None:
    """Run one episode and print per-round metrics."""
    env = _make_env(scenario, set_, rounds)
    rows = run_episode(env, policy, seed)
    table = Table(title=f"{scenario}: {policy} policy, seed {seed}")
    for col in ("round", "reward", "energy J", "delay s", "stability", "SCR", "drops"):
        table.add_column(col, justify="right")
    for i, r in enumerate(rows):
        table.add_row(str(i), f"{r['reward']:.3f}", f"{r['energy_j']:.1f}", f"{r['delay_s']:.2f}",
                      f"{r['stability']:.4f}", f"{r['scr']:.3f}", str(r["drops"]))
    console.print(table)


@app.command()
def demo(
    scenario: Annotated[str, typer.Option(help="scenario preset")] = "default",
    seeds: Annotated[int, typer.Option(help="evaluation episodes per policy")] = 3,
    rounds: Annotated[int | None, typer.Option(help="rounds per episode")] = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="override key=value (repeatable)")] = None,
) -> None:
    """The main job until the benchmark lands: reference vs random policy on identical seeds,
    a table of mean episode metrics and a plot of per-round metrics under OUT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = _make_env(scenario, set_, rounds)
    results = {p: [run_episode(env, p, 1000 + s) for s in range(seeds)] for p in POLICIES}
    table = Table(title=f"{scenario}: {seeds} episodes per policy (seeds 1000..{999 + seeds})")
    for col in ("policy", "return", "energy J/round", "delay s/round", "stability", "drops/round", "ms/step"):
        table.add_column(col, justify="right")
    summary = {}
    for policy, episodes in results.items():
        returns = [sum(r["reward"] for r in ep) for ep in episodes]
        flat = [r for ep in episodes for r in ep]
        summary[policy] = {
            "return_mean": float(np.mean(returns)),
            "energy_j_mean": float(np.mean([r["energy_j"] for r in flat])),
            "delay_s_mean": float(np.mean([r["delay_s"] for r in flat])),
            "stability_mean": float(np.mean([r["stability"] for r in flat])),
            "drops_mean": float(np.mean([r["drops"] for r in flat])),
            "step_ms_median": float(np.median([r["step_ms"] for r in flat])),
        }
        s = summary[policy]
        table.add_row(policy, f"{s['return_mean']:.2f}", f"{s['energy_j_mean']:.1f}", f"{s['delay_s_mean']:.2f}",
                      f"{s['stability_mean']:.4f}", f"{s['drops_mean']:.2f}", f"{s['step_ms_median']:.3f}")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for policy, episodes in results.items():
        for ax, key in zip(axes, ("energy_j", "delay_s", "reward"), strict=True):
            ax.plot([r[key] for r in episodes[0]], label=policy)
            ax.set_title(key)
            ax.set_xlabel("round")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=100)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")
    console.print(f"wrote {out / 'demo.png'} and {out / 'summary.json'}")


@inspect_app.command("split")
def inspect_split(
    scenario: Annotated[str, typer.Option(help="scenario preset")] = "default",
    samples: Annotated[int, typer.Option(help="random states")] = 16,
    seed: Annotated[int, typer.Option(help="state seed")] = 0,
) -> None:
    """Best per-user split (α) in lightly loaded vs congested states, other fields at their rules (SPEC §5.1)."""
    import mec_gym
    from mec_gym.model.reference import split_regimes

    config = mec_gym.make_config(scenario)
    regimes = split_regimes(config, samples, seed)
    low, top = config.split_min_local, config.num_layers
    table = Table(title=f"{scenario}: best α per user over {samples} states × {config.num_users} users")
    for col in ("server load", f"edge-heavy (α={low})", f"interior ({low}<α<{top})", f"local-only (α={top})",
                "mean α"):
        table.add_column(col, justify="right")
    for name, best in regimes.items():
        table.add_row(name, f"{(best == low).mean():.0%}", f"{((best > low) & (best < top)).mean():.0%}",
                      f"{(best == top).mean():.0%}", f"{best.mean():.2f}")
    console.print(table)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    scenario: Annotated[str, typer.Option(help="scenario preset or 'tiny' (the oracle's instance)")] = "default",
    policies: Annotated[str | None, typer.Option(
        help="comma-separated policy names (default: the heuristics, plus the oracle on tiny instances)")] = None,
    seeds: Annotated[int | None, typer.Option(help="evaluation seeds 10000, 10001, ... (default 10; quick 3)")] = None,
    episodes: Annotated[int | None, typer.Option(help="episodes per seed (default 1)")] = None,
    rounds: Annotated[int | None, typer.Option(help="rounds per episode (default: the scenario's; quick 16)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a scenario parameter, key=value "
                                                                 "(repeatable)")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/bench/SCENARIO)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a few short episodes and 4 oracle states")] = False,
    oracle_states: Annotated[int | None, typer.Option(
        help="tiny states for the optimality gaps to the oracle (default 16; quick 4; 0 = off)")] = None,
    workers: Annotated[int, typer.Option(help="local processes running the (policy, seed, episode) jobs")] = 1,
    ray: Annotated[bool, typer.Option("--ray", help="run the jobs as Ray tasks on a local Ray (rllib extra)")] = False,
    ray_address: Annotated[str | None, typer.Option(help="run the jobs on the Ray cluster at this address "
                                                         "(ray://HOST:10001, auto); implies --ray")] = None,
) -> None:
    """Compare policies on identical evaluation seeds (SPEC §6.8); writes OUT/results.csv and results.md.

    Every policy runs the same episodes (seeds 10000 + i, disjoint from training seeds); the
    table gives mean ± 95 % CI of return, energy, delay, stability, SCR, drops and budget
    violation, decision time per round (median, p95) and the optimality gap to the exhaustive
    oracle on tiny instances. ``--workers N`` / ``--ray`` (``--ray-address ADDRESS``) run the jobs in parallel with the
    same results; a failed job is retried once and then reported (exit code 1); Ctrl-C writes the
    episodes finished so far. Subcommand: ``mec-gym bench speed``.
    """
    if ctx.invoked_subcommand is not None:
        return
    from agents import benchmark

    folder = out if out is not None else Path("runs/bench") / scenario
    try:
        overrides = parse_sets(set_)
        names = None if policies is None else policies.split(",")
        result = benchmark.run_benchmark(scenario, names, seeds=seeds, episodes=episodes, rounds=rounds,
                                         overrides=overrides, quick=quick, oracle_states=oracle_states,
                                         progress=True, workers=workers,
                                         ray_address=ray_address or ("local" if ray else None),
                                         log=lambda message: console.print(f"[yellow]{message}[/yellow]"))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    except benchmark.BenchmarkInterrupted as interrupt:
        benchmark.write_results(interrupt.result, folder)
        console.print(f"[red]interrupted[/red]: wrote the {len(interrupt.result.episode_results)} finished "
                      f"episodes to {folder}")
        raise typer.Exit(130) from None
    written = benchmark.write_results(result, folder)
    _print_results(result)
    console.print(f"{result.wall_s:.1f} s; wrote {', '.join(str(p) for p in written[:2])} (+ episodes, plots, meta)")
    for failure in result.failures:
        console.print(f"[red]failed job[/red] {failure['policy']} seed {failure['seed']} episode {failure['episode']}"
                      f" (after one retry): {failure['error']}")
    if result.failures:
        raise typer.Exit(1)


def _print_results(result) -> None:
    """The console summary (means; return ± 95 % CI). The full table with every CI is results.md."""
    table = Table(title=f"{result.scenario}: {len(result.seeds)} seeds × {result.episodes} episode(s) × "
                        f"{result.rounds} rounds")
    for col in ("policy", "return ± CI", "energy J", "delay s", "stability", "drops", "ms/round", "gap %"):
        table.add_column(col, justify="right")

    def number(value: float, digits: int) -> str:
        return "—" if np.isnan(value) else f"{value:.{digits}f}"

    for row in result.rows():
        half = row["return_ci95"]
        table.add_row(row["policy"], number(row["return_mean"], 2) + ("" if np.isnan(half) else f" ± {half:.2f}"),
                      number(row["energy_j_mean"], 1), number(row["delay_s_mean"], 2),
                      number(row["stability_mean"], 3), number(row["drops_mean"], 2),
                      number(row["decision_ms_median"], 2), number(row["oracle_gap_pct_mean"], 2))
    console.print(table)


@bench_app.command("speed")
def bench_speed(
    scenario: Annotated[str, typer.Option(help="scenario preset, or 'all'")] = "default",
    num_envs: Annotated[str, typer.Option(help="comma-separated batch sizes of the native env")] =
        "1,16,256,1024,4096,16384",
    sync_envs: Annotated[str, typer.Option(help="comma-separated sizes for SyncVectorEnv (slow)")] = "16",
    workers: Annotated[str, typer.Option(help="comma-separated thread counts of the native env")] = "1,2",
    seconds: Annotated[float, typer.Option(help="minimum seconds per measurement")] = 2.0,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/speed"),
    backend: Annotated[str | None, typer.Option(
        help="auto, kernel or numpy: what steps Box actions (default: the MEC_GYM_BACKEND variable, else auto)")]
        = None,
) -> None:
    """Env-steps/s with random actions: single env, SyncVectorEnv, native batched env; peak bytes per env."""
    import mec_gym
    from agents import speed

    def ints(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError as error:
            raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from error

    names = list(mec_gym.ENV_IDS.values()) if scenario == "all" else [scenario]
    try:
        rows = speed.run(names, ints(num_envs), ints(sync_envs), ints(workers), seconds,
                         progress=lambda label: console.log(label), backend=backend)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    table = Table(title="environment speed (random actions)")
    for col in ("scenario", "kind", "backend", "num_envs", "threads", "env-steps/s", "peak bytes/env"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.scenario, r.kind, r.backend, str(r.num_envs), str(r.workers), f"{r.steps_per_s:,.0f}",
                      "—" if np.isnan(r.peak_bytes_per_env) else f"{r.peak_bytes_per_env:,.0f}")
    console.print(table)
    paths = speed.write(rows, out)
    console.print(f"wrote {paths[0]} and {paths[1]}")


@reproduce_app.command("collapipe")
def reproduce_collapipe(
    quick: Annotated[bool, typer.Option("--quick", help="2 seeds × 6 rounds (as MEC_GYM_QUICK=1)")] = False,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/reproduce/collapipe"),
) -> None:
    """[CP25] DSSRA vs PipeLine, VanillaFL, TITANIC: latency, efficiency, memory, energy vs budget; V trade-off."""
    from agents import reproduce_collapipe as experiment

    results = experiment.run(quick, out, log=console.print)
    console.print_json(data=results["headline"])


@reproduce_app.command("liu2024")
def reproduce_liu2024(
    quick: Annotated[bool, typer.Option("--quick", help="4 users, 2 servers, 1-2 seeds (as MEC_GYM_QUICK=1)")] = False,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/reproduce/liu2024"),
) -> None:
    """[LZ24] stable_fp vs its baselines: Figs. 2-5 (collaborative vs edge/local-only, weight sweeps, CCCP
    convergence, users), the table vs greedy and random over seeds, the gap to the oracle on tiny instances."""
    from agents import reproduce_liu2024 as experiment

    results = experiment.run(quick, out, log=console.print)
    console.print(results["table"]["markdown"])
    console.print_json(data={"gap": results["gap"], "verdict": results["verdict"], "runtime_s": results["runtime_s"],
                             "files": results["files"]})


@reproduce_app.command("qian2024")
def reproduce_qian2024(
    quick: Annotated[bool, typer.Option("--quick", help="4 users, 3 seeds, 2 points per sweep (as MEC_GYM_QUICK=1)")]
    = False,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/reproduce/qian2024"),
) -> None:
    """[QZ24] DASHF vs its baselines and the exhaustive association bound: SCR per Dinkelbach iteration, vs
    p_max, bandwidth, server compute, number of users."""
    from agents import reproduce_qian2024 as experiment

    results = experiment.run(quick, out, log=console.print)
    console.print(results["gap_table"])
    console.print_json(data={"dashf": results["gap"]["dashf"], "verdict": results["verdict"],
                             "runtime_s": results["runtime_s"], "files": results["files"]})


@train_app.command("rllib-ppo")
def train_rllib_ppo(
    scenario: Annotated[str, typer.Option(help="scenario preset")] = "default",
    multi_agent: Annotated[bool, typer.Option("--multi-agent/--single-agent",
                                              help="one agent per user (PettingZoo env, shared module)")] = False,
    reward_mode: Annotated[str, typer.Option(help="multi-agent reward: team or user")] = "team",
    iterations: Annotated[int, typer.Option(help="PPO training iterations")] = 10,
    train_batch_size: Annotated[int, typer.Option(help="env steps per iteration")] = 4000,
    minibatch_size: Annotated[int, typer.Option(help="SGD minibatch size")] = 256,
    num_epochs: Annotated[int, typer.Option(help="SGD epochs per iteration")] = 4,
    env_runners: Annotated[int, typer.Option(help="remote sampling workers (0: sample in the driver)")] = 0,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (ray://HOST:10001); default: local Ray")]
    = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all)")] = None,
    seed: Annotated[int, typer.Option(help="training seed (< 10000, the evaluation seeds)")] = 0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override key=value (repeatable)")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/rllib/SCENARIO)")] = None,
) -> None:
    """RLlib PPO on the single env (registered id) or the multi-agent env; needs the rllib extra (README)."""
    from agents import rllib

    try:
        rllib.require_rllib()
    except ImportError as error:
        raise typer.BadParameter(str(error)) from error
    folder = out if out is not None else Path("runs/rllib") / (scenario + ("-multi" if multi_agent else ""))
    overrides = parse_sets(set_)
    try:
        summary = rllib.train_ppo(scenario, iterations, multi_agent, address=address, num_cpus=num_cpus, out=folder,
                                  log=console.print, reward_mode=reward_mode, overrides=overrides,
                                  train_batch_size=train_batch_size, minibatch_size=minibatch_size,
                                  num_epochs=num_epochs, num_env_runners=env_runners, seed=seed)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    console.print(f"{summary['wall_s']:.1f} s; checkpoint {summary['checkpoint']}; summary {folder / 'summary.json'}")


from agents import cli_rl  # noqa: E402  (train ppo|sac, evaluate; imports torch only when run)

cli_rl.register(app, train_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
