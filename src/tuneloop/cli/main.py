"""The `tuneloop` command: one sub-app per stage, each a thin call into the library."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from tuneloop.cli import bases, data, db, demo, doctor, task
from tuneloop.errors import TuneloopError

app = typer.Typer(
    name="tuneloop",
    help="Capture LLM traffic, fine-tune a small open model on it, evaluate, serve and monitor it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(task.app, name="task", help="Validate and show task specs.")
app.add_typer(data.app, name="data", help="Build datasets: synthetic demo data, imports, exports.")
app.add_typer(bases.app, name="bases", help="Base models: the bundled one, HF ids, local paths.")
app.add_typer(db.app, name="db", help="The store: migrations.")
app.command("doctor")(doctor.doctor)
app.command("demo")(demo.demo)

err_console = Console(stderr=True, soft_wrap=True)


def main() -> None:
    try:
        app()
    except TuneloopError as exc:
        err_console.print("[bold red]error:[/] ", end="")
        err_console.print(str(exc), markup=False, highlight=False)  # paths and keys may contain [brackets]
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
