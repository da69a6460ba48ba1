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
    """Success rate with its Wilson 95 % interval per evaluation: against the learner step when every
    record has one (``fleetloop eval``, else one row per policy), and beside it against the loop's
    wall-clock minute when every record has one (the evaluator of `fleetloop up`); nothing for no
    records."""
    if not records:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    rates = [r["success_rate"] for r in records]
    errors = [[rate - r["ci95"][0] for rate, r in zip(rates, records)],
              [r["ci95"][1] - rate for rate, r in zip(rates, records)]]
    timed = all(r.get("minute") is not None for r in records)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(10 if timed else 6, 3.5), constrained_layout=True,
                             squeeze=False)
    ax = axes[0][0]
    if all(r["step"] is not None for r in records):
        ax.errorbar([r["step"] for r in records], rates, yerr=errors, marker="o", capsize=3, color="tab:green")
        ax.set(xlabel="learner step", ylabel="success rate", ylim=(-0.05, 1.05))
    else:
        names = [f"version {r['version']}" if r.get("version") is not None else Path(r["policy"]).name
                 for r in records]
        ax.errorbar(rates, range(len(records)), xerr=errors, fmt="o", capsize=3, color="tab:green")
        ax.set(xlabel="success rate", xlim=(-0.05, 1.05), yticks=range(len(records)), yticklabels=names)
    episodes = sorted({r["episodes"] for r in records})
    ax.set_title(f"success on fixed seeds ({'/'.join(map(str, episodes))} episodes, Wilson 95 %)")
    if timed:
        by_time = axes[0][1]
        by_time.errorbar([r["minute"] for r in records], rates, yerr=errors, marker="o", capsize=3,
                         color="tab:blue")
        for record, rate in zip(records, rates):
            if record.get("version") is not None:
                by_time.annotate(f"v{record['version']}", (record["minute"], rate), textcoords="offset points",
                                 xytext=(3, 4), fontsize=7)
        by_time.set(title="success against wall-clock (version published)", xlabel="minute of the loop",
                    ylabel="success rate", ylim=(-0.05, 1.05))
    for row in axes:
        for each in row:
            each.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
