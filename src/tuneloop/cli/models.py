"""CLI: models — the registered fine-tunes (``task@N``)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.errors import TuneloopError

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("list")
def list_command(task: str | None = typer.Option(None, "--task", help="Only this task's versions.")) -> None:
    """Every registered version: id, content hash, base, data, losses."""
    from tuneloop.registry.versions import list_versions

    versions = list_versions(task)
    if not versions:
        console.print("no versions registered yet; train one with `tuneloop train --task T --data FILE.jsonl`")
        return
    table = Table(title="Model versions", title_justify="left")
    for column in ("id", "hash", "base", "created", "train loss", "val loss", "data"):
        table.add_column(column, overflow="fold")
    for info in versions:
        table.add_row(
            info.id,
            info.content_hash[:12],
            info.base_id,
            info.created_at.strftime("%Y-%m-%d %H:%M") if info.created_at else "",
            _loss(info.metrics.get("train_loss")),
            _loss(info.metrics.get("eval_loss")),
            info.dataset_ref or "",
        )
    console.print(table)


@app.command("show")
def show_command(model: str = typer.Argument(..., help="task@N, task@sha256:<hex> or task@alias.")) -> None:
    """One version: base, hash, data, config, metrics, loss curve, and whether its files still match."""
    from tuneloop.registry.versions import (
        aliases_of,
        resolve_version,
        verify_version,
        version_base_commit,
        version_base_license,
    )
    from tuneloop.terminal import plain

    info = resolve_version(model, verify=False)
    try:
        verify_version(info, check_base=False)
        verified = "[green]yes[/] (files match the content hash)"
    except TuneloopError as exc:
        verified = f"[red]no[/]: {exc.message}"
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    train_config = info.config.get("train", {})
    data = info.config.get("data", {})
    table.add_row("id", info.id)
    table.add_row("content hash", f"sha256:{info.content_hash}")
    table.add_row("verified", verified)
    aliases = aliases_of(info)
    if aliases:
        table.add_row("aliases", ", ".join(f"{info.task}@{alias}" for alias in aliases))
    table.add_row("base", plain(info.base_id))
    table.add_row("base weights", f"sha256:{info.base_weights_hash}" if info.base_weights_hash else "-")
    table.add_row("base license", plain(version_base_license(info).describe()))
    if info.base_id.startswith("hf:"):
        commit = version_base_commit(info)
        table.add_row("base commit", commit or "- (not recorded: registered before tuneloop recorded commits)")
    table.add_row("created", info.created_at.isoformat(timespec="seconds") if info.created_at else "-")
    table.add_row("data", info.dataset_ref or "-")
    if info.config.get("method"):  # dpo: a version trained further from a parent (SFT versions record none)
        parent = (info.config.get("parent") or {}).get("id", "-")
        table.add_row("method", plain(f"{info.config['method']}, from {parent}"))
    if data:
        table.add_row(
            "examples",
            f"{data.get('train_examples')} train ({data.get('train_tokens', 0):,} tokens), "
            f"{data.get('validation_examples')} validation",
        )
    # The trainer's settings: a version trained further from a parent records its method's section instead.
    for section in [key for key in ("dpo", "grpo") if key in train_config] or ["sft"]:
        table.add_row(f"{section} config", json.dumps(train_config.get(section, {}), sort_keys=True))
    lora = dict(train_config.get("lora", {}))
    if train_config.get("loraplus_lr_ratio") is not None:  # LoRA+ (a top-level key of the config file)
        lora["loraplus_lr_ratio"] = train_config["loraplus_lr_ratio"]
    table.add_row("lora config", json.dumps(lora, sort_keys=True))
    if train_config:
        from tuneloop.train.config import precision

        table.add_row("base precision", precision(train_config))
    table.add_row("system prompt", plain(_system_prompt(info.system_prompt, info.distilled_from)))
    if info.distilled_from is not None:
        table.add_row("distilled from", plain(_preview(info.distilled_from)))
    table.add_row("decoding", json.dumps(info.decoding, sort_keys=True))
    metrics = {k: v for k, v in info.metrics.items() if k != "loss_curve"}
    table.add_row("metrics", json.dumps(metrics, sort_keys=True))
    table.add_row("adapter", str(info.adapter_path))
    if info.merged_path:
        table.add_row("merged weights", str(info.merged_path))
    table.add_row("loss curve", str(info.loss_curve_path) if info.loss_curve_path else "-")
    if (reward_curve := info.artifact_path / "reward_curve.png").is_file():  # grpo: the mean reward per step
        table.add_row("reward curve", str(reward_curve))
    if info.config.get("run_dir"):
        table.add_row("run folder", info.config["run_dir"])
    console.print(table)


def _system_prompt(system: str, distilled_from: str | None) -> str:
    """The prompt a version was trained with, and what serving does with it."""
    if distilled_from is None:
        return f"{_preview(system)} (the task's instructions)"
    trained = f"{system!r}" if system else "none"
    return (
        f"{trained}: trained in place of the task's instructions below (prompt distillation); "
        "requests sending those instructions are served with it"
    )


def _preview(text: str, limit: int = 160) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def _loss(value: float | None) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"
