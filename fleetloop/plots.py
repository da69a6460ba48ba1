"""PNG plots of a run's learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curves(rounds: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss and success rate per round, side by side; nothing is written for no rounds."""
    if not rounds:
        return None
    x = [r["round"] for r in rounds]
    fig, (ax_loss, ax_success) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    ax_loss.plot(x, [r["loss"] for r in rounds], marker="o")
    ax_loss.set(title="learner loss (mean over round)", xlabel="round", ylabel="flow-matching loss")
    ax_success.plot(x, [r["success_rate"] for r in rounds], marker="o", color="tab:green")
    ax_success.set(title="policy success rate", xlabel="round", ylabel="success rate", ylim=(-0.05, 1.05))
    for ax in (ax_loss, ax_success):
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_evaluations(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Success rate with its Wilson 95 % interval per evaluation (``fleetloop eval``): against the
    learner step when every record has one, else one row per policy; nothing for no records."""
    if not records:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    rates = [r["success_rate"] for r in records]
    errors = [[rate - r["ci95"][0] for rate, r in zip(rates, records)],
              [r["ci95"][1] - rate for rate, r in zip(rates, records)]]
    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    if all(r["step"] is not None for r in records):
        ax.errorbar([r["step"] for r in records], rates, yerr=errors, marker="o", capsize=3, color="tab:green")
        ax.set(xlabel="learner step", ylabel="success rate", ylim=(-0.05, 1.05))
    else:
        names = [Path(r["policy"]).name for r in records]
        ax.errorbar(rates, range(len(records)), xerr=errors, fmt="o", capsize=3, color="tab:green")
        ax.set(xlabel="success rate", xlim=(-0.05, 1.05), yticks=range(len(records)), yticklabels=names)
    episodes = sorted({r["episodes"] for r in records})
    ax.set_title(f"success on fixed seeds ({'/'.join(map(str, episodes))} episodes, Wilson 95 %)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
