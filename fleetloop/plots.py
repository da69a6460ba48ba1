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
