"""The loss curve of a run, as a PNG beside the adapter: training loss per logging step, validation loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_loss_curve(history: list[dict[str, Any]], path: Path, *, title: str = "") -> Path | None:
    """Write the curve to ``path``; None when the history has no loss to draw."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in any thread or process
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    try:
        if train:
            axes.plot(*zip(*train, strict=True), label="training loss", color="#1f77b4", linewidth=1.5)
        if evals:
            axes.plot(*zip(*evals, strict=True), label="validation loss", color="#d62728", marker="o", linewidth=1.5)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("loss (assistant tokens, nats/token)")
        positive = [value for _, value in train + evals if value > 0]
        if positive and max(positive) / min(positive) > 20:
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
        axes.legend()
        if title:
            axes.set_title(title, fontsize=10)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
