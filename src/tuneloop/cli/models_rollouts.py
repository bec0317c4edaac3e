"""CLI: models canary / shadow / rollouts — try a candidate on part of an alias's live traffic.

Registered onto the ``models`` sub-app by ``cli/main.py``; the work is in tuneloop.registry.rollouts, the
gateway applies it (tuneloop.capture.rollouts) and the watcher guards it (tuneloop.monitor.watch).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.cli.models_alias import actor_name
from tuneloop.terminal import plain

console = Console(highlight=False, soft_wrap=True)


def _task_of(model: str) -> str:
    return model.partition("@")[0]


def canary_command(
    version: str = typer.Argument(..., help="The candidate (task@N), or with --stop the task (or task@N)."),
    alias: str = typer.Option("prod", "--alias", help="The alias whose traffic to split."),
    percent: float = typer.Option(5.0, "--percent", help="Share of the alias's calls the candidate answers (0-100]."),
    sticky_tag: str | None = typer.Option(
        None, "--sticky-tag", help="Keep each caller on one arm by this tag's value (e.g. user, customer)."
    ),
    max_error_increase: float = typer.Option(0.02, "--max-error-increase", help="Guard: error-rate margin (0.02)."),
    max_check_failure_increase: float = typer.Option(
        0.05, "--max-check-failure-increase", help="Guard: check-failure-rate margin (0.05 = 5 points)."
    ),
    max_p95_increase: float = typer.Option(0.5, "--max-p95-increase", help="Guard: p95 latency margin (0.5 = +50%)."),
    min_calls: int = typer.Option(50, "--min-calls", help="Guard: calls each arm needs in the window before a test."),
    window: str = typer.Option("15m", "--window", help="Guard: the window of calls it tests (e.g. 15m, 1h)."),
    alpha: float = typer.Option(0.01, "--alpha", help="Guard: significance level shared by its tests."),
    stop: bool = typer.Option(False, "--stop", help="End the running canary without moving the alias."),
    actor: str | None = typer.Option(None, "--actor", help="Who (default: the login name)."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the alias history."),
) -> None:
    """Send PERCENT % of task@ALIAS's live calls (through the gateway) to a candidate, guarded."""
    from tuneloop.durations import parse_duration
    from tuneloop.registry.rollouts import Guard, start_canary, stop_rollout

    if stop:
        _show(stop_rollout(_task_of(version), alias, "canary", actor=actor_name(actor), reason=reason), "stopped")
        return
    window_s = parse_duration(window, "--window")
    guard = Guard(
        max_error_increase=max_error_increase,
        max_check_failure_increase=max_check_failure_increase,
        max_p95_increase=max_p95_increase,
        min_calls=min_calls,
        window_s=window_s,
        alpha=alpha,
    )
    rollout = start_canary(
        version, alias, percent, sticky_tag=sticky_tag, guard=guard, actor=actor_name(actor), reason=reason
    )
    _show(rollout, "started")
    console.print(
        "the gateway applies it within a second; `tuneloop models promote "
        f"{rollout.candidate} --alias {alias}` ends it by moving the alias, `--stop` without"
    )


def shadow_command(
    version: str = typer.Argument(..., help="The candidate (task@N), or with --stop the task (or task@N)."),
    alias: str = typer.Option("prod", "--alias", help="The alias whose traffic to mirror."),
    percent: float = typer.Option(10.0, "--percent", help="Share of the alias's calls mirrored to the candidate."),
    stop: bool = typer.Option(False, "--stop", help="End the running shadow."),
    actor: str | None = typer.Option(None, "--actor", help="Who (default: the login name)."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the alias history."),
) -> None:
    """Mirror PERCENT % of task@ALIAS's live calls to a candidate; its answers are logged and compared, never sent."""
    from tuneloop.registry.rollouts import start_shadow, stop_rollout

    if stop:
        _show(stop_rollout(_task_of(version), alias, "shadow", actor=actor_name(actor), reason=reason), "stopped")
        return
    _show(start_shadow(version, alias, percent, actor=actor_name(actor), reason=reason), "started")


def rollouts_command(
    task: str = typer.Argument(..., help="The task."),
    alias: str | None = typer.Option(None, "--alias", help="Only this alias."),
) -> None:
    """Canaries and shadows of the task's aliases, newest first, with their latest figures."""
    from tuneloop.registry.rollouts import list_rollouts, summarize_figures

    rollouts = list_rollouts(_task_of(task), alias)
    if not rollouts:
        console.print(f"no canary or shadow of {task} yet")
        return
    table = Table(title=f"Rollouts of {_task_of(task)}", title_justify="left")
    for column in ("id", "kind", "alias", "candidate", "vs", "%", "state", "since", "figures", "why it ended"):
        table.add_column(column, overflow="fold")
    for rollout in rollouts:
        table.add_row(
            str(rollout.id),
            rollout.kind,
            rollout.alias,
            rollout.candidate,
            rollout.production or "-",
            f"{rollout.percent:g}",
            rollout.state,
            f"{rollout.started_at:%Y-%m-%d %H:%M}",
            plain(summarize_figures(rollout.figures)),
            plain(rollout.end_reason or ""),
        )
    console.print(table)


def _show(rollout: Any, verb: str) -> None:
    console.print(f"{rollout.describe()} {verb} (rollout {rollout.id}; production {rollout.production or '-'})")


def register(app: typer.Typer) -> None:
    """Add canary, shadow and rollouts to the ``models`` sub-app."""
    app.command("canary")(canary_command)
    app.command("shadow")(shadow_command)
    app.command("rollouts")(rollouts_command)
