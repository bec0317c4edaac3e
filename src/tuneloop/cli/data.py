"""CLI: data (datasets: synthetic demo data, imports, exports)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console

from tuneloop.data.jsonl import write_rows
from tuneloop.demo.generators import SYNTHESIZERS, synthesize_with_progress
from tuneloop.task import load_task
from tuneloop.terminal import plain

app = typer.Typer(no_args_is_help=True)


@app.command("synth")
def synth(
    output: Path = typer.Option(..., "-o", "--output", help="JSONL file to write (replaced atomically)."),
    task: str = typer.Option(
        "liability-extraction", "--task", help=f"Task name or path with a generator: {', '.join(SYNTHESIZERS)}."
    ),
    count: int = typer.Option(1000, "-n", "--count", min=1, help="Number of documents."),
    seed: int = typer.Option(0, "--seed", help="Same seed and count give a byte-identical file."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=0.95, help="Share of the test split."),
) -> None:
    """Generate synthetic documents with gold answers for a packaged task (OpenAI chat JSONL plus id and metadata)."""
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


# --- datasets in the store (see tuneloop.data.datasets) ------------------------------------------

FILTER_HELP = "tag.KEY=VALUE, tag.LABEL, model=NAME, status=ok|error, upstream=NAME, task=NAME; repeatable."


@app.command("import")
def import_command(
    path: Path = typer.Argument(..., help="OpenAI chat JSONL: messages ending in the assistant's answer."),
    name: str = typer.Option(..., "--name", help="Dataset to add to (created if new)."),
    task: str | None = typer.Option(None, "--task", help="Task: answers are parsed and checked against it."),
    provenance: str = typer.Option("upload", "--provenance", help="upload, or human for verified labels."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of inputs in the test split."),
) -> None:
    """Add a JSONL file's rows to a dataset (deduplicated; a row's metadata.split is kept)."""
    from tuneloop.data.datasets import import_jsonl

    result = import_jsonl(path, name, task=task, provenance=provenance, test_fraction=test_fraction)
    _print_added(name, result)


@app.command("from-logs")
def from_logs(
    name: str = typer.Option(..., "--name", help="Dataset to add to (created if new)."),
    filters: list[str] | None = typer.Option(None, "--filter", "-f", help=FILTER_HELP),
    model: str | None = typer.Option(None, "--model", help="Requested or resolved model (trailing * for a prefix)."),
    since: str | None = typer.Option(None, "--since", help="ISO date/time, or 30m / 24h / 7d ago."),
    until: str | None = typer.Option(None, "--until", help="ISO date/time, or 30m / 24h / 7d ago."),
    task: str | None = typer.Option(None, "--task", help="Task (default: the filter's tag.task)."),
    sample: float = typer.Option(1.0, "--sample", help="Keep this share of inputs (deterministic by input)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of inputs in the test split."),
) -> None:
    """Build (or extend) a dataset from successful logged calls."""
    from tuneloop.data.datasets import dataset_from_logs
    from tuneloop.store.logs import build_filter

    log_filter = build_filter(filters, model=model, since=since, until=until)
    result = dataset_from_logs(name, log_filter, task=task, sample=sample, seed=seed, test_fraction=test_fraction)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(
        f"{result.matched} logged calls matched; {result.sampled_out} sampled out, {result.unusable} without an answer"
    )
    _print_added(name, result)


@app.command("export")
def export(
    name: str = typer.Argument(..., help="Dataset name."),
    split: str | None = typer.Option(None, "--split", help="train or test (default: both)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="JSONL file (written atomically); default stdout."),
    everything: bool = typer.Option(
        False, "--all", help="Every entry, including superseded and failing ones (default: what trains)."
    ),
) -> None:
    """Write a dataset as JSONL: per input the most trusted answer that passes the checks."""
    import json
    import sys

    from tuneloop.data.datasets import export_rows

    rows = export_rows(name, split, everything=everything)
    if output is None:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    write_rows(output, rows)
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"wrote {len(rows)} rows to {output}")


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Dataset name."),
    failing: int = typer.Option(20, "--failing", min=0, help="List up to N entries kept out of training."),
) -> None:
    """Counts by split and provenance, what trains, and the entries kept out of training."""
    from rich.table import Table

    from tuneloop.data.datasets import summarize_dataset

    summary = summarize_dataset(name)
    console = Console(highlight=False, soft_wrap=True)
    console.print(plain(f"{summary.name} · task {summary.task or '(none)'} · created {summary.created_at}", "bold"))
    if summary.description:
        console.print(plain(summary.description))
    console.print(f"{summary.entries} entries over {summary.inputs} distinct inputs")
    table = Table()
    table.add_column("split")
    for provenance in ("log", "upload", "teacher", "human"):
        table.add_column(provenance, justify="right")
    table.add_column("trains / evaluates", justify="right")
    for split in ("train", "test"):
        counts = [str(summary.by_split_provenance.get((split, p), 0)) for p in ("log", "upload", "teacher", "human")]
        table.add_row(split, *counts, str(summary.resolved_by_split.get(split, 0)))
    console.print(table)
    sources = ", ".join(f"{source} {count}" for source, count in summary.sources.most_common())
    console.print(plain("answers from: " + sources))
    console.print(f"{len(summary.failing)} entries kept out of training (invalid or failing checks)")
    for entry_id, provenance, failures in summary.failing[:failing]:  # failures quote the answers: plain text
        console.print(plain(f"  entry {entry_id} ({provenance}): {'; '.join(failures)}"))


@app.command("relabel")
def relabel_command(
    name: str = typer.Argument(..., help="Dataset name."),
    teacher: str = typer.Option(..., "--teacher", help="upstream/model or http://host:port/v1#model."),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="Requests in flight."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Relabel at most N inputs."),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="Retries of 429/5xx/timeouts, with backoff."),
) -> None:
    """Ask a teacher model for every input (human-verified ones excepted); cached, resumable."""
    from tuneloop.data.relabel import relabel

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    result = relabel(name, teacher, concurrency=concurrency, limit=limit, max_retries=max_retries, console=console)
    console.print(
        f"{result.inputs} inputs: {result.skipped_human} human-verified (left alone), {result.already_done} already "
        f"relabelled, {result.cached} from cache, {result.asked} asked"
    )
    console.print(
        f"kept {result.kept} teacher answers; {result.agreed} agreed with the existing answer; "
        f"{len(result.failing)} failed checks (kept out of training); {len(result.errors)} errors; "
        f"cost ${result.cost_usd:.4f}"
    )
    for entry_id, failures in result.failing[:20]:
        console.print(plain(f"  failed checks: entry {entry_id}: {'; '.join(failures)}"))
    for digest, error in result.errors[:10]:  # the teacher's error text: plain
        console.print(plain(f"  error: input {digest[:12]}: {error}"))
    if result.interrupted:
        console.print("[yellow]interrupted[/]: run the same command again to resume (answers so far are cached)")
        raise typer.Exit(130)
    if result.errors:
        console.print("some inputs failed: run the same command again to retry them")
        raise typer.Exit(1)


@app.command("pairs")
def pairs_command(
    task: str = typer.Option(..., "--task", help="Task name or path of its YAML spec."),
    source: str | None = typer.Option(
        None, "--source", help="corrections, checks, teacher (comma-separated; default: all of them)."
    ),
    output: Path | None = typer.Option(
        None, "--out", "-o", help="Write the pairs as TRL preference JSONL (prompt, chosen, rejected)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Keep at most N pairs (precedence, then newest)."),
    examples: int = typer.Option(3, "--examples", min=0, help="Show this many pairs."),
) -> None:
    """Preference pairs from the store: review corrections, failed-check answers against verified labels,
    teacher answers that differ from logged ones (what `tuneloop train --method dpo` trains on)."""
    from rich.table import Table

    from tuneloop.data.pairs import build_pairs, no_pairs_message, write_pairs

    pair_set = build_pairs(task, source, limit=limit)
    console = Console(highlight=False, soft_wrap=True)
    table = Table(title=f"preference pairs of {pair_set.task}")
    for column in ("source", "found", "same answer", "input taken", "over --limit", "kept"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name in pair_set.sources:
        count = pair_set.counts[name]
        table.add_row(
            name, str(count.found), str(count.identical), str(count.duplicate), str(count.limited), str(count.kept)
        )
    console.print(table)
    if not pair_set.pairs:
        message = no_pairs_message(pair_set.task, pair_set.sources, pair_set.counts)
        for line in message.splitlines():  # a task name a user chose: plain
            console.print(plain(line, "yellow"))
        raise typer.Exit(1)
    console.print(f"{len(pair_set.pairs)} pairs, sha256:{pair_set.sha256[:16]}")
    if examples:
        shown = Table(title="examples", show_lines=True)
        for column in ("source", "input", "chosen", "rejected"):
            shown.add_column(column, overflow="fold")
        for pair in pair_set.pairs[:examples]:  # answers and documents quote others' text: plain
            user = next((m.get("content") for m in reversed(pair.prompt) if m.get("role") == "user"), "") or ""
            excerpt = " ".join(str(user).split())
            shown.add_row(
                plain(pair.source),
                plain(excerpt[:160] + ("…" if len(excerpt) > 160 else "")),
                plain(pair.chosen),
                plain(pair.rejected),
            )
        console.print(shown)
    if output is not None:
        written = write_pairs(output, pair_set.pairs)
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            plain(f"wrote {written} pairs to {output} (TRL preference format: prompt, chosen, rejected)")
        )


def _print_added(name: str, result) -> None:
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    splits = ", ".join(f"{split} {count}" for split, count in sorted(result.by_split.items())) or "none"
    console.print(
        f"dataset {name}: added {result.added} entries ({splits}); {result.duplicates} duplicates skipped; "
        f"{result.failing} unfit for training (see `tuneloop data show {name}`)"
    )
