"""CLI: demo."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path | None = typer.Option(None, "--out", help="Folder for the demo's files (default $TUNELOOP_HOME/demo)."),
    documents: int = typer.Option(600, "--documents", "-n", help="Synthetic documents to generate."),
    eval_documents: int = typer.Option(20, "--eval", help="Test documents to run each model on."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data."),
    task: str = typer.Option(
        "liability-extraction", "--task", help="The synthetic task: liability-extraction or receipt-extraction."
    ),
    model: list[str] = typer.Option([], "--model", help="Also evaluate this model (e.g. openai/gpt-4o-mini)."),
    fine_tune: bool = typer.Option(True, "--fine-tune/--no-fine-tune", help="Fine-tune, compare, promote, serve."),
    full: bool = typer.Option(
        False, "--full", help="Fine-tune a whole epoch (~30 min on 2 cores) instead of the default few minutes."
    ),
    time_budget: str | None = typer.Option(
        None, "--time-budget", help="The fine-tune's time budget (default 6m; e.g. 90s, 10m, 1h)."
    ),
) -> None:
    """Run the whole loop on the bundled model and the synthetic task."""
    from tuneloop.demo.run import run_demo

    run_demo(
        out_dir=out,
        n_documents=documents,
        n_eval=eval_documents,
        seed=seed,
        extra_models=model,
        fine_tune=fine_tune,
        task_name=task,
        full=full,
        time_budget=time_budget,
    )
