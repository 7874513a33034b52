"""``mec-gym train ppo|sac`` and ``mec-gym evaluate MODEL`` (SPEC §6.7); registered by :mod:`agents.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from agents.cli_util import parse_sets

console = Console()


def _train(algo: str, env: str, timesteps: int | None, out: Path | None, seed: int, n_envs: int | None,
           hyperparams: list[str] | None, set_: list[str] | None, eval_freq: int, eval_episodes: int,
           checkpoint_freq: int, resume: bool, bc_expert: str | None, bc_episodes: int, bc_epochs: int,
           threads: int | None, max_minutes: float | None, progress: bool) -> None:
    from agents import rl

    try:
        result = rl.train(algo, env, timesteps=timesteps, out=out, seed=seed, n_envs=n_envs, hyperparams=hyperparams,
                          env_kwargs=parse_sets(set_), eval_freq=eval_freq, eval_episodes=eval_episodes,
                          checkpoint_freq=checkpoint_freq, resume=resume, bc_expert=bc_expert,
                          bc_episodes=bc_episodes, bc_epochs=bc_epochs, threads=threads, progress_bar=progress,
                          max_minutes=max_minutes)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    if result.bc_history:
        console.print(f"behaviour cloning from {bc_expert}: action MSE {result.bc_history['policy'][0]:.4f} → "
                      f"{result.bc_history['policy'][-1]:.4f}")
    console.print(f"{algo} on {result.env_id}: {result.num_timesteps:,} env-steps, learning {result.learn_s:.0f} s "
                  f"({result.steps_per_s:,.0f} env-steps/s); wrote {result.model_path}"
                  + (f" and {result.best_model_path}" if result.best_model_path else "")
                  + f" (+ VecNormalize statistics, checkpoints, logs under {result.out})")


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add ``train ppo``, ``train sac`` to ``train_app`` and ``evaluate`` to ``app``."""

    def make(algo: str):
        def command(
            env: Annotated[str, typer.Option(help="env id or scenario name")] = "mec_gym/EdgeTraining-v0",
            timesteps: Annotated[int | None, typer.Option(help="total env-steps (default: the yml's n_timesteps)")]
            = None,
            out: Annotated[Path | None, typer.Option(help="output folder (default runs/train/ALGO_SCENARIO)")] = None,
            seed: Annotated[int, typer.Option(help="first training seed (sub-env i: seed + i; < 5000)")] = 0,
            n_envs: Annotated[int | None, typer.Option(help="batched envs (default: the yml's n_envs)")] = None,
            hyperparams: Annotated[list[str] | None, typer.Option(
                "--hyperparams", help="override a yml entry, key=value (repeatable)")] = None,
            set_: Annotated[list[str] | None, typer.Option("--set", help="override a scenario parameter, key=value "
                                                                         "(repeatable)")] = None,
            eval_freq: Annotated[int, typer.Option(help="env-steps between held-out evaluations (0: off)")] = 20_000,
            eval_episodes: Annotated[int, typer.Option(help="held-out episodes (seeds 5000 + i)")] = 8,
            checkpoint_freq: Annotated[int, typer.Option(help="env-steps between checkpoints (0: off)")] = 100_000,
            resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint in OUT")]
            = False,
            bc_expert: Annotated[str | None, typer.Option(
                help="behaviour-cloning warm start from this registered policy (e.g. greedy, dssra)")] = None,
            bc_episodes: Annotated[int, typer.Option(help="expert episodes for behaviour cloning")] = 32,
            bc_epochs: Annotated[int, typer.Option(help="behaviour-cloning epochs")] = 50,
            threads: Annotated[int | None, typer.Option(help="torch threads (default 1, measured on 2 cores)")]
            = None,
            max_minutes: Annotated[float | None, typer.Option(help="stop learning after this many minutes")] = None,
            progress: Annotated[bool, typer.Option(help="progress bar")] = True,
        ) -> None:
            _train(algo, env, timesteps, out, seed, n_envs, hyperparams, set_, eval_freq, eval_episodes,
                   checkpoint_freq, resume, bc_expert, bc_episodes, bc_epochs, threads, max_minutes, progress)

        command.__doc__ = (f"Train {algo.upper()} (stable-baselines3) on the batched env; hyperparameters from "
                           f"agents/hyperparams/{algo}.yml (rl-zoo3 format).\n\nWrites OUT/model.zip with "
                           f"OUT/model_vecnormalize.pkl, OUT/best_model.zip (held-out seeds 5000+i), checkpoints "
                           f"and TensorBoard logs (OUT/logs). Model files are pickles: loading one runs code.")
        return command

    for algo in ("ppo", "sac"):
        train_app.command(algo)(make(algo))

    @app.command("evaluate")
    def evaluate(
        model: Annotated[Path, typer.Argument(help="saved model (.zip; its _vecnormalize.pkl is used if present)")],
        scenario: Annotated[str | None, typer.Option(help="scenario (default: the one it was trained on)")] = None,
        against: Annotated[str, typer.Option(help="comma-separated policies on the same seeds")] = "",
        algo: Annotated[str | None, typer.Option(help="ppo or sac (default: detected)")] = None,
        seeds: Annotated[int | None, typer.Option(help="evaluation seeds 10000 + i (default 10; quick 3)")] = None,
        rounds: Annotated[int | None, typer.Option(help="rounds per episode (default: the scenario's)")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="3 seeds × 16 rounds")] = False,
        out: Annotated[Path | None, typer.Option(help="output folder (default runs/evaluate/MODEL)")] = None,
    ) -> None:
        """Evaluate a saved PPO/SAC model through the benchmark harness (identical seeds 10000 + i).

        Loading a model unpickles it, which runs code: only evaluate files you trust.
        """
        from agents import benchmark, rl
        from agents.cli import _print_results

        try:
            result = rl.evaluate(model, scenario=scenario, against=[p for p in against.split(",") if p.strip()],
                                 algo=algo, seeds=seeds, rounds=rounds, quick=quick, progress=True)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
        folder = out if out is not None else Path("runs/evaluate") / model.stem
        written = benchmark.write_results(result, folder)
        _print_results(result)
        console.print(f"{result.wall_s:.1f} s; wrote {', '.join(str(p) for p in written[:2])}")
