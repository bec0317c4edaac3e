"""CLI: doctor."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.doctor import diagnose

_STYLE = {"ok": "green", "warn": "yellow", "missing": "red"}


def doctor() -> None:
    """Print what is configured and installed, and what is missing with the fix."""
    findings = diagnose()
    table = Table("area", "status", "detail", "fix", title="tuneloop doctor")
    for f in findings:
        table.add_row(f.area, f"[{_STYLE[f.status]}]{f.status}[/]", escape(f.detail), escape(f.fix))
    Console().print(table)
    if any(f.status == "missing" for f in findings):
        raise typer.Exit(1)
