"""Curves of a run, as PNGs beside the adapter: the loss curve (SFT), the reward curve (GRPO), the preference
curves (DPO)."""

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


def plot_reward_curve(history: list[dict[str, Any]], path: Path, *, title: str = "") -> Path | None:
    """GRPO's curve (``grpo.py``), as a PNG at ``path``: the mean reward per logged step with a band of one
    standard deviation of the step's completions, the field agreement, and the share of invalid answers on a
    second axis. None when the history has no reward to draw."""
    points = [h for h in history if "reward" in h and "step" in h and h["reward"] is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in points]
    mean = [h["reward"] for h in points]
    spread = [h.get("reward_std") or 0.0 for h in points]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    try:
        axes.plot(
            steps, mean, label="mean reward", color="#2ca02c", linewidth=1.5, marker="." if len(steps) < 30 else None
        )
        axes.fill_between(
            steps,
            [m - s for m, s in zip(mean, spread, strict=True)],
            [m + s for m, s in zip(mean, spread, strict=True)],
            color="#2ca02c",
            alpha=0.15,
            label="± 1 sd of the step's completions",
        )
        agreement = [
            (h["step"], h["task/field_agreement"]) for h in points if h.get("task/field_agreement") is not None
        ]
        if agreement:
            axes.plot(*zip(*agreement, strict=True), label="field agreement", color="#1f77b4", linewidth=1.0)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("reward (-1 invalid, 1 every field right)")
        axes.set_ylim(-1.05, 1.05)
        axes.grid(alpha=0.3)
        invalid = [(h["step"], h["task/invalid_share"]) for h in points if h.get("task/invalid_share") is not None]
        handles, labels = axes.get_legend_handles_labels()
        if invalid:
            share = axes.twinx()
            (line,) = share.plot(*zip(*invalid, strict=True), color="#d62728", linewidth=1.0, linestyle="--")
            share.set_ylabel("invalid answers (share)")
            share.set_ylim(-0.025, 1.025)
            handles, labels = [*handles, line], [*labels, "invalid answers"]
        axes.legend(handles, labels, loc="lower right", fontsize=8)
        if title:
            axes.set_title(title, fontsize=10)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def plot_preference_curves(history: list[dict[str, Any]], path: Path, *, title: str = "") -> Path | None:
    """A DPO run's curves as a PNG: the loss (ln 2 at the start, where the policy is its reference), and the
    reward margin and preference accuracy (the share of pairs where the policy prefers the chosen answer more
    than the reference did). None when the history has no loss to draw."""
    train = [h for h in history if "loss" in h and "step" in h]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in train]
    evals = [h for h in history if "eval_loss" in h and "step" in h]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    try:
        left.plot(steps, [h["loss"] for h in train], label="training loss", color="#1f77b4", linewidth=1.5)
        if evals:
            left.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o", color="#d62728",
                      label="held-back pairs")  # fmt: skip
        left.axhline(0.6931, color="grey", linewidth=0.8, linestyle=":", label="ln 2 (the parent)")
        left.set_xlabel("optimizer step")
        left.set_ylabel("DPO loss")
        left.grid(alpha=0.3)
        left.legend()
        margins = [(h["step"], h["rewards/margins"]) for h in train if "rewards/margins" in h]
        accuracies = [(h["step"], h["rewards/accuracies"]) for h in train if "rewards/accuracies" in h]
        if margins:
            right.plot(*zip(*margins, strict=True), label="reward margin", color="#2ca02c", linewidth=1.5)
        right.set_xlabel("optimizer step")
        right.set_ylabel("reward margin (beta x log-ratio)")
        right.grid(alpha=0.3)
        if accuracies:
            share = right.twinx()
            share.plot(*zip(*accuracies, strict=True), label="preference accuracy", color="#ff7f0e", linewidth=1.2)
            share.set_ylim(-0.02, 1.02)
            share.set_ylabel("preference accuracy")
            lines = right.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
            right.legend(lines, [line.get_label() for line in lines], loc="lower right")
        if title:
            figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
