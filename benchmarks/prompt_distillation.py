"""Prompt distillation on the demo task: the same data trained twice, with the task's instructions and without.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prompt_distillation.py [--time-budget 6m] [--eval 20]
        [--documents 600] [--seed 0] [--system-prompt ""] [--json out.json]

As ``tuneloop demo`` trains (its documents, its schedule, its ``--time-budget``), one run: synthesizes the
demo task's documents, fine-tunes the bundled base on the train split twice under the same budget, once with
the task's instructions as the system prompt (today's versions) and once with ``--system-prompt`` (default
``""``: no system message; the version is then served with it), and evaluates both on the same test
documents with the evals stage through llama.cpp, the serving engine, as they are served: field error with
its 95 % interval, prompt tokens per request and latency p50. The latency is measured twice: as served (the
llama.cpp prefix cache on, which saves the instructions' prefill of the first version after its first
request) and with the prefix cache off (today's code before it). Both evals send the task's full
instructions; the distilled version swaps them for its trained prompt (serve/backends/base.py).
Everything lives in a temporary TUNELOOP_HOME, so the user's store is untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from homes import scratch_home

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=600, help="synthetic documents (the demo's 600)")
    parser.add_argument("--eval", type=int, default=20, help="test documents scored (the demo's 20)")
    parser.add_argument("--time-budget", default=None, help="each training run's budget (default: the demo's)")
    parser.add_argument("--system-prompt", default="", help='the distilled version\'s prompt ("": none)')
    parser.add_argument("--max-steps", type=int, default=None, help="a fixed schedule instead (a quick check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    home = scratch_home("tuneloop-distillation-")

    from rich.console import Console

    from tuneloop.bases import resolve_base, transformers_dir
    from tuneloop.demo.generators import synthesize_with_progress
    from tuneloop.demo.run import DEMO_BASE, DEMO_FAST_SCHEDULE, DEMO_TASK, DEMO_TIME_BUDGET
    from tuneloop.store import upgrade
    from tuneloop.task import load_task
    from tuneloop.train import train
    from tuneloop.train.config import TrainConfig

    console = Console()
    upgrade()
    budget = f"{args.max_steps} steps" if args.max_steps else (args.time_budget or DEMO_TIME_BUDGET)
    task = load_task(DEMO_TASK)
    rows = synthesize_with_progress(task, args.documents, args.seed, console=console)
    train_rows = [r for r in rows if r["metadata"]["split"] == "train"]
    test_rows = [r for r in rows if r["metadata"]["split"] == "test"][: args.eval]
    train_file, test_file = home / "train.jsonl", home / "test.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    test_file.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    console.print(f"{len(train_rows)} training documents, {len(test_rows)} test documents; home {home}")
    # Converted before either run, so neither budget pays for it.
    transformers_dir(resolve_base(DEMO_BASE), progress=lambda line: console.print(line, highlight=False))

    runs: dict[str, dict[str, Any]] = {}
    for name, prompt in (("instructions", None), ("distilled", args.system_prompt)):
        console.rule(f"training: {name}")
        started = time.perf_counter()
        result = train(
            task,
            train_file,
            DEMO_BASE,
            TrainConfig(sft={**DEMO_FAST_SCHEDULE, **({"max_steps": args.max_steps} if args.max_steps else {})}),
            time_budget=None if args.max_steps else budget,
            system_prompt=prompt,
            console=console,
        )
        runs[name] = {
            "version": result.version.id,
            "train_seconds": time.perf_counter() - started,
            "steps": (result.plan or {}).get("steps"),
            "epochs": (result.plan or {}).get("epochs"),
            "kept_field_error": result.metrics.get("kept_field_error"),
        }

    served = _evaluate(task, test_file, runs, prefix_cache=True, console=console)
    uncached = _evaluate(task, test_file, runs, prefix_cache=False, console=console)
    figures: dict[str, Any] = {
        "documents": args.documents,
        "train_documents": len(train_rows),
        "test_documents": len(test_rows),
        "time_budget": budget,
        "system_prompt": args.system_prompt,
        "load_average_at_end": os.getloadavg()[0],
        "runs": {name: {**runs[name], **served[name], **uncached[name]} for name in runs},
    }
    _print(figures, console)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def _evaluate(
    task: Any, test_file: Path, runs: dict[str, dict[str, Any]], *, prefix_cache: bool, console: Any
) -> dict[str, dict[str, Any]]:
    """Both versions on the test documents (llama.cpp, one request at a time); field error, prompt tokens
    and latency per version. Without the prefix cache the answers are not taken from the first eval's cache."""
    from tuneloop.evals.candidates import ModelSpec
    from tuneloop.evals.runner import EvalOptions, run_eval
    from tuneloop.evals.store import run_results

    options = {} if prefix_cache else {"prefix_cache_mb": 0}
    suffix = "" if prefix_cache else "_no_prefix_cache"
    console.rule("eval: as served" if prefix_cache else "eval: prefix cache off")
    specs = [ModelSpec(runs[name]["version"], backend="llamacpp", backend_options=options) for name in runs]
    report = run_eval(task, str(test_file), specs, EvalOptions(use_cache=prefix_cache), console=console)
    out: dict[str, dict[str, Any]] = {}
    for name, model in zip(runs, report.models, strict=True):
        results = run_results(report.run_id, model.name)
        latencies = [r.latency_ms for r in results if r.latency_ms is not None]
        entry: dict[str, Any] = {
            f"p50_ms{suffix}": statistics.median(latencies),
            f"prompt_tokens{suffix}": statistics.mean(r.prompt_tokens for r in results if r.prompt_tokens),
        }
        if prefix_cache:
            summary = model.summary
            entry |= {
                "field_error": summary.field_error_rate,
                "field_error_ci95": list(summary.field_error_ci95),
                "invalid_rate": summary.invalid_rate,
                "per_field": summary.per_field,
                "answers": {r.example_id: r.output for r in results},
            }
        else:
            first = {r.example_id: r.output for r in results}
            entry["same_answers_without_prefix_cache"] = sum(
                first.get(key) == runs[name].get("answers", {}).get(key) for key in first
            )
        out[name] = entry
        runs[name] |= entry
    return out


def _print(figures: dict[str, Any], console: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    runs = figures["runs"]
    table = Table(
        title=f"prompt distillation, demo task: {figures['test_documents']} test documents, "
        f"each version trained for {figures['time_budget']}"
    )
    for column in (
        "trained with",
        "version",
        "steps",
        "field error (95 % CI)",
        "invalid",
        "prompt tokens / request",
        "p50 ms (as served)",
        "p50 ms (no prefix cache)",
    ):
        table.add_column(column)
    labels = {
        "instructions": "the task's instructions",
        "distilled": f"--system-prompt {figures['system_prompt']!r}",
    }
    for name, run in runs.items():
        low, high = run["field_error_ci95"]
        table.add_row(
            labels[name],
            run["version"],
            str(run["steps"]),
            f"{run['field_error']:.1%} ({low:.1%}-{high:.1%})",
            f"{run['invalid_rate']:.1%}",
            f"{run['prompt_tokens']:.0f}",
            f"{run['p50_ms']:.0f}",
            f"{run['p50_ms_no_prefix_cache']:.0f}",
        )
    wide = Console(width=max(console.width, 160))  # the whole table, in a log file too
    wide.print(table)
    full, distilled = runs["instructions"], runs["distilled"]
    wide.print(
        f"distilled ÷ instructions: prompt tokens {distilled['prompt_tokens'] / full['prompt_tokens']:.2f}, "
        f"p50 as served {distilled['p50_ms'] / full['p50_ms']:.2f}, "
        f"p50 without the prefix cache {distilled['p50_ms_no_prefix_cache'] / full['p50_ms_no_prefix_cache']:.2f}; "
        f"load average at the end {figures['load_average_at_end']:.2f}"
    )


if __name__ == "__main__":
    main()
