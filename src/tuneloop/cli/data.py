"""CLI: data (datasets: synthetic demo data, imports, exports)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console

from tuneloop.data.jsonl import write_rows
from tuneloop.data.synth import synthesize_with_progress
from tuneloop.task import load_task

app = typer.Typer(no_args_is_help=True)


@app.command("synth")
def synth(
    output: Path = typer.Option(..., "-o", "--output", help="JSONL file to write (replaced atomically)."),
    task: str = typer.Option("liability-extraction", "--task", help="Task name or path; only liability-extraction."),
    count: int = typer.Option(1000, "-n", "--count", min=1, help="Number of documents."),
    seed: int = typer.Option(0, "--seed", help="Same seed and count give a byte-identical file."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=0.95, help="Share of the test split."),
) -> None:
    """Generate synthetic servicer documents with gold answers (OpenAI chat JSONL plus id and metadata)."""
    spec = load_task(task)
    console = Console(stderr=True)
    rows = synthesize_with_progress(spec, count, seed, test_fraction, console)
    write_rows(output, rows)
    splits = Counter(row["metadata"]["split"] for row in rows)
    styles = len({row["metadata"]["style"] for row in rows})
    console.print(
        f"wrote {len(rows)} rows to {output} (train {splits['train']}, test {splits['test']}, {styles} styles)",
        highlight=False,
    )
