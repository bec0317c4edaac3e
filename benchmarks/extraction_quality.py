"""Field error with and without values held to their input (extractive fields, decoding-time formats).

    HF_HUB_OFFLINE=1 TUNELOOP_HOME=... .venv/bin/python benchmarks/extraction_quality.py --task TASK \
        --data test.jsonl --model TASK@N [--model TASK@M ...] [--limit 60] [--json out.json]

Each version is evaluated twice on the same examples with the eval stage (llama.cpp, greedy, the task's
decoding defaults): decoded under the request's own constraints (`extract` fields held to values of the
example's input, formats enforced: what `tuneloop serve` does), and under the task's plain output schema
(`tuneloop eval run --plain-schema`). Printed side by side per model: field error with its 95 % interval,
per-field error, values *invented* (wrong and absent from the input), hallucinations (a value where the
gold is null) and invalid outputs. Also printed: the share of gold values the constraint leaves reachable
on this data (``extraction.gold_coverage``), the ceiling it puts on a perfect model.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console
from rich.table import Table

from tuneloop.evals.examples import load_examples
from tuneloop.evals.results import EvalReport
from tuneloop.evals.runner import EvalOptions, run_eval
from tuneloop.extraction import decoding_schema, gold_coverage, source_text
from tuneloop.task import Task, load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", required=True, help="JSONL with verified answers (the test split)")
    parser.add_argument("--model", action="append", required=True, help="a version (TASK@N); repeat for more")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    console = Console()
    task = load_task(args.task)
    examples = load_examples(task, args.data, limit=args.limit)
    coverage = gold_coverage(task, [(source_text(example.prompt), example.gold) for example in examples])
    figures: dict[str, object] = {
        "task": task.name,
        "examples": len(examples),
        "gold_reachable": {name: {"reachable": hit, "of": total} for name, (hit, total) in coverage.items()},
        "models": [],
    }
    figures["grammar_ms"] = grammar_timings(task, [source_text(example.prompt) for example in examples])
    table = Table(title=f"{task.name}: {len(examples)} test examples", title_justify="left")
    headings = ("model", "decoding", "field error (95% CI)", "per field", "invented", "halluc.", "invalid", "p50 ms")
    for heading in headings:
        table.add_column(heading, justify="left" if heading in ("model", "decoding", "per field") else "right")
    for model in args.model:
        for constrained in (True, False):
            options = EvalOptions(limit=args.limit, constrain_values=constrained)
            report: EvalReport = run_eval(task, args.data, [model], options, console=Console(file=io.StringIO()))
            summary, latency = report.models[0].summary, report.models[0].latency
            p50 = latency.p50_ms if latency else None
            low, high = summary.field_error_ci95
            decoding = "values from input" if constrained else "plain schema"
            per_field = " ".join(f"{name} {rate:.0%}" for name, rate in summary.per_field.items())
            table.add_row(
                model,
                decoding,
                f"{summary.field_error_rate:.1%} ({low:.1%}–{high:.1%})",
                per_field,
                str(summary.invented),
                str(summary.hallucinations),
                f"{summary.invalid_rate:.1%}",
                f"{p50:.0f}" if p50 else "—",
            )
            entry = {"model": model, "decoding": decoding, "eval_run": report.run_id, "p50_ms": p50}
            figures["models"].append({**entry, **summary.to_dict()})
    console.print(table)
    reach = ", ".join(f"{name} {hit}/{total}" for name, (hit, total) in coverage.items())
    console.print(f"gold values a constrained decoder can write: {reach or 'no extractive fields'}")
    timing = figures["grammar_ms"]
    console.print(
        f"per request, median over the examples: decoding schema {timing['schema']:.1f} ms; llama.cpp grammar "
        f"(GBNF build + parse) {timing['gbnf']:.1f} ms; llguidance (Lark + compile) {timing['llguidance']:.1f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


def grammar_timings(task: Task, texts: list[str]) -> dict[str, float]:
    """Median per-request cost of the constraint: the decoding schema, and each engine's grammar from it."""
    from tuneloop.serve.grammar import gbnf_parses, json_schema_gbnf, llguidance_grammar

    spent: dict[str, list[float]] = {"schema": [], "gbnf": [], "llguidance": []}
    for text in texts:
        started = time.perf_counter()
        schema = decoding_schema(task, text)
        spent["schema"].append(time.perf_counter() - started)
        started = time.perf_counter()
        assert gbnf_parses(json_schema_gbnf(schema))
        spent["gbnf"].append(time.perf_counter() - started)
        started = time.perf_counter()
        llguidance_grammar(schema)
        spent["llguidance"].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 if values else 0.0 for name, values in spent.items()}


if __name__ == "__main__":
    main()
