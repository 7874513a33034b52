"""Rendering of ``EdgeTrainingEnv``: one matplotlib frame per call, drawn headless with Agg.

:func:`render_frame` draws three panels on a ``matplotlib.figure.Figure`` backed by a
``FigureCanvasAgg`` (never pyplot, so ``render_mode="rgb_array"`` works without a display):

* (a) topology: base stations (squares, coloured by background load) and users (dots) with
  their association lines;
* (b) split: per user, the layers trained on the device side (per chain node when K > 1) and on
  the server;
* (c) round metrics: energy and delay (top, twin axes) and reward (bottom) per round so far.

:func:`show` puts the latest frame in a pyplot window for ``render_mode="human"`` when an
interactive backend is available; on a headless (non-interactive) backend it does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from mec_gym.model import channel

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mec_gym.config import SystemConfig
    from mec_gym.envs.core import StepResult
    from mec_gym.model.dynamics import SystemState

FIGSIZE_IN = (12.0, 4.5)
DPI = 80
_LOAD_CMAP = "YlOrRd"
_SERVER_CMAP = "tab10"
_SERVER_COLOR = "#4c72b0"

# fixed panel rectangles (figure fractions: left, bottom, width, height); a fixed layout is
# several times faster than constrained layout and keeps frames the same size and aligned
_TOPOLOGY_RECT = (0.06, 0.13, 0.24, 0.64)
_COLORBAR_RECT = (0.305, 0.13, 0.01, 0.64)
_SPLIT_RECT = (0.40, 0.12, 0.19, 0.74)
_COST_RECT = (0.76, 0.56, 0.175, 0.30)
_REWARD_RECT = (0.76, 0.12, 0.175, 0.37)

_window: dict[str, Any] = {}


def render_frame(config: SystemConfig, state: SystemState, last: StepResult | None,
                 history: list[dict[str, float]], figure: Figure | None = None) -> tuple[np.ndarray, Figure]:
    """Draw the current round and return ``(rgb, figure)``.

    Args:
        config: the environment's ``SystemConfig``.
        state: the current ``SystemState`` with a batch axis of size 1.
        last: the last ``StepResult`` (batch axis of 1), or ``None`` before the first step.
        history: one dict per round so far with keys ``energy_j``, ``delay_s``, ``stability``, ``reward``.
        figure: a figure from a previous call to reuse (it is cleared), or ``None`` to create one.

    Returns:
        The frame as a ``uint8`` array of shape (H, W, 3) and the figure it was drawn on.
    """
    if figure is None:
        figure = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    else:
        figure.clear()
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)

    ax_topology = figure.add_axes(_TOPOLOGY_RECT)
    ax_split = figure.add_axes(_SPLIT_RECT)
    ax_cost = figure.add_axes(_COST_RECT)
    ax_reward = figure.add_axes(_REWARD_RECT, sharex=ax_cost)

    server = _association(state, last)
    _draw_topology(figure, ax_topology, config, state, last, server)
    _draw_split(ax_split, config, last)
    _draw_metrics(ax_cost, ax_reward, history)
    figure.suptitle(f"mec_gym: round {int(state.round[0])} / {config.rounds}  "
                    f"(N={config.num_users} users, M={config.num_servers} servers, K={config.devices_per_user}, "
                    f"{config.model}, objective={config.objective})", fontsize=10)

    canvas.draw()
    frame = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return frame, figure


def show(figure: Figure) -> None:
    """Display a frame drawn by :func:`render_frame` in a pyplot window (``render_mode="human"``).

    The window is created once and reused. With a non-interactive backend (Agg on a headless
    machine, or ``MPLBACKEND=Agg``) nothing is displayed and nothing fails.
    """
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    if not _interactive_backend():
        return
    import matplotlib.pyplot as plt

    canvas.draw()
    frame = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    window = _window.get("figure")
    if window is None or not plt.fignum_exists(window.number):
        window = plt.figure("mec_gym", figsize=figure.get_size_inches(), dpi=figure.dpi)
        axes = window.add_axes((0.0, 0.0, 1.0, 1.0))
        axes.set_axis_off()
        _window["figure"] = window
        _window["image"] = axes.imshow(frame)
    else:
        _window["image"].set_data(frame)
    plt.pause(0.001)


def close() -> None:
    """Close the pyplot window opened by :func:`show`, if any (safe to call repeatedly)."""
    window = _window.pop("figure", None)
    _window.pop("image", None)
    if window is not None:
        import matplotlib.pyplot as plt

        plt.close(window)


# ---------------------------------------------------------------------------- helpers
def _interactive_backend() -> bool:
    """Whether the active matplotlib backend can open windows (False for Agg and other file backends)."""
    backend = matplotlib.get_backend().lower()
    try:
        from matplotlib.backends import BackendFilter, backend_registry
    except ImportError:  # matplotlib < 3.9
        return backend not in {name.lower() for name in matplotlib.rcsetup.non_interactive_bk}
    return backend not in {name.lower() for name in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE)}


def _association(state: SystemState, last: StepResult | None) -> np.ndarray:
    """Each user's server: the last decision's, else the strongest-gain server, [N]."""
    if last is not None and last.decision.server is not None:
        return np.asarray(last.decision.server[0], dtype=np.int64)
    return np.argmax(state.gain[0], axis=-1)


def _draw_topology(figure: Figure, ax: Axes, config: SystemConfig, state: SystemState, last: StepResult | None,
                   server: np.ndarray) -> None:
    area = float(config.geometry.area_m)
    sites = channel.server_positions(config.num_servers, area)
    users = np.asarray(state.user_pos_m[0])
    load = np.asarray(state.load[0], dtype=np.float64)
    colors = matplotlib.colormaps[_SERVER_CMAP](np.arange(config.num_servers) % 10)

    links = np.stack([users, sites[server]], axis=1)  # [N, 2 ends, xy]
    ax.add_collection(LineCollection(links, colors=colors[server], alpha=0.45, linewidths=0.9, zorder=1))
    dropped = np.zeros(len(users), dtype=bool)
    if last is not None:
        dropped = np.asarray(last.metrics.dropped[0], dtype=bool)
    ax.scatter(users[:, 0], users[:, 1], s=22, c=colors[server], edgecolors=np.where(dropped, "red", "black"),
               linewidths=np.where(dropped, 1.5, 0.4), zorder=3)
    boxes = ax.scatter(sites[:, 0], sites[:, 1], s=170, marker="s", c=load, cmap=_LOAD_CMAP, vmin=0.0, vmax=1.0,
                       edgecolors=colors, linewidths=2.0, zorder=4)
    for m, (x, y) in enumerate(sites):
        ax.annotate(f"S{m}\nℓ={load[m]:.2f}", (x, y), xytext=(0, 9), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7, zorder=5)
    colorbar = figure.colorbar(boxes, cax=figure.add_axes(_COLORBAR_RECT))
    colorbar.set_label("server load ℓ", fontsize=8, labelpad=2)
    colorbar.ax.tick_params(labelsize=7)
    margin = 0.03 * area
    ax.set_xlim(-margin, area + margin)
    ax.set_ylim(-margin, area + margin)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    source = "decision" if last is not None else "strongest gain"
    note = f", {int(dropped.sum())} dropped" if last is not None else ""
    ax.set_title(f"(a) topology: association by {source}{note}", fontsize=9)
    ax.tick_params(labelsize=7)


def _draw_split(ax: Axes, config: SystemConfig, last: StepResult | None) -> None:
    n_users, k, layers = config.num_users, config.devices_per_user, config.num_layers
    rows = np.arange(n_users)
    if last is None:
        ax.barh(rows, np.full(n_users, layers), height=0.7, facecolor="none", edgecolor="lightgray")
        ax.text(0.5, 0.5, "no decision yet:\nstep the environment", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="gray")
    else:
        split = np.asarray(last.decision.split[0])
        node_colors = matplotlib.colormaps["Greens"](np.linspace(0.75, 0.4, k)) if k > 1 else ["#55a868"]
        left = np.zeros(n_users)
        for node in range(k):
            label = f"device node {node + 1}" if k > 1 else "device"
            ax.barh(rows, split[:, node + 1], left=left, height=0.7, color=node_colors[node], label=label)
            left = left + split[:, node + 1]
        ax.barh(rows, split[:, 0], left=left, height=0.7, color=_SERVER_COLOR, label="server")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False, borderaxespad=0.0)
    ax.set_xlim(0, layers)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(n_users - 0.5, -0.5)
    if n_users <= 20:
        ax.set_yticks(rows)
    ax.set_xlabel(f"layers (Υ = {layers})")
    ax.set_ylabel("user")
    ax.set_title("(b) model split: device side | server", fontsize=9)
    ax.tick_params(labelsize=7)


def _draw_metrics(ax_cost: Axes, ax_reward: Axes, history: list[dict[str, float]]) -> None:
    ax_cost.set_title("(c) round metrics", fontsize=9)
    ax_reward.set_xlabel("round")
    ax_cost.set_ylabel("energy (J)", color="tab:orange", fontsize=8, labelpad=1)
    ax_reward.set_ylabel("reward", fontsize=8, labelpad=1)
    for ax in (ax_cost, ax_reward):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    ax_cost.tick_params(axis="x", labelbottom=False)
    if not history:
        ax_cost.text(0.5, 0.5, "no rounds yet", transform=ax_cost.transAxes, ha="center", va="center",
                     fontsize=9, color="gray")
        ax_reward.set_xlim(0.5, 1.5)
        return
    rounds = np.arange(1, len(history) + 1)
    energy = np.array([h["energy_j"] for h in history], dtype=np.float64)
    delay = np.array([h["delay_s"] for h in history], dtype=np.float64)
    reward = np.array([h["reward"] for h in history], dtype=np.float64)
    marker = "o" if len(history) <= 32 else None
    ax_cost.plot(rounds, energy, color="tab:orange", marker=marker, ms=3, lw=1.2, label="energy")
    ax_delay = ax_cost.twinx()
    ax_delay.plot(rounds, delay, color="tab:purple", marker=marker, ms=3, lw=1.2, label="delay")
    ax_delay.set_ylabel("delay (s)", color="tab:purple", fontsize=8, labelpad=1)
    ax_delay.tick_params(labelsize=7)
    for ax, values in ((ax_cost, energy), (ax_delay, delay)):
        if np.all(values > 0) and values.max() > 100.0 * values.min():
            ax.set_yscale("log")
        else:
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    ax_reward.plot(rounds, reward, color="tab:green", marker=marker, ms=3, lw=1.2)
    ax_reward.set_xlim(0.5, len(history) + 0.5)
    ax_reward.xaxis.set_major_locator(MaxNLocator(integer=True))
