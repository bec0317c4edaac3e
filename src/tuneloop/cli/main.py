"""The `tuneloop` command: one sub-app per stage, each a thin call into the library."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from tuneloop.cli import (
    bases,
    data,
    db,
    demo,
    doctor,
    keys,
    logs,
    models,
    models_alias,
    models_rollouts,
    monitor,
    review,
    task,
)
from tuneloop.cli import eval as eval_cli
from tuneloop.cli import gateway as gateway_cli
from tuneloop.cli import serve as serve_cli
from tuneloop.cli import train as train_cli
from tuneloop.cli import ui as ui_cli
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
app.add_typer(eval_cli.app, name="eval", help="Benchmark models on a task: field error, latency, cost, verdict.")
app.add_typer(logs.app, name="logs", help="Calls captured by the gateway and the SDK: list, show, export.")
app.add_typer(keys.app, name="keys", help="API keys for the gateway: create, list, revoke.")
app.add_typer(review.app, name="review", help="The review queue: list, show (and lock), approve, correct, reject.")
app.add_typer(monitor.app, name="monitor", help="Drift between time windows; shadow replays to a candidate.")
models_alias.register(models.app)
models_rollouts.register(models.app)
app.add_typer(models.app, name="models", help="Registered fine-tunes (task@N): list, show, promote, rollback.")
# What follows `--` goes to `accelerate launch`; an unknown option before it is a typo, refused like anywhere else.
app.command("train", context_settings={"allow_extra_args": True})(train_cli.train)
app.command("gateway")(gateway_cli.gateway)
app.command("serve")(serve_cli.serve)
app.command("ui")(ui_cli.ui)
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
