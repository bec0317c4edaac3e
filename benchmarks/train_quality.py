"""The fine-tune quality figure: field error of the bundled base zero-shot and of its LoRA fine-tune, one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_quality.py [--documents 1100] [--eval 200]
        [--epochs 1] [--config train.yaml] [--seed 0]

Synthesizes the demo task's documents (train and test splits by hash), fine-tunes the bundled base on the
train split (at most 1,000 training documents) with ``tuneloop train``'s recipe, then scores the base and the
fine-tune on test documents with the evals stage (``tuneloop eval run``: field error with its 95 % interval,
through llama.cpp, the serving engine, so the fine-tune is measured as it will be served). Prints the two
side by side with the training wall time; ``--json`` also writes them. Everything lives in a temporary
TUNELOOP_HOME, so the user's store is untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from homes import scratch_home

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=1100, help="synthetic documents (train + test splits)")
    parser.add_argument("--max-train", type=int, default=1000, help="training documents used, at most")
    parser.add_argument("--eval", type=int, default=200, help="test documents scored")
    parser.add_argument("--epochs", type=float, default=None, help="num_train_epochs (default: tuneloop's rule)")
    parser.add_argument("--config", type=Path, default=None, help="a train.yaml (HF/TRL/PEFT field names)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    home = scratch_home("tuneloop-quality-")

    from rich.console import Console
    from rich.table import Table

    from tuneloop.demo.synth import synthesize
    from tuneloop.evals.candidates import ModelSpec
    from tuneloop.evals.runner import EvalOptions, run_eval
    from tuneloop.store import upgrade
    from tuneloop.task import load_task
    from tuneloop.train import train
    from tuneloop.train.config import load_config

    console = Console()
    upgrade()
    task = load_task("liability-extraction")
    rows = synthesize(task, args.documents, seed=args.seed)
    train_rows = [r for r in rows if r["metadata"]["split"] == "train"][: args.max_train]
    test_rows = [r for r in rows if r["metadata"]["split"] == "test"][: args.eval]
    train_file, test_file = home / "train.jsonl", home / "test.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    test_file.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    console.print(f"{len(train_rows)} training documents, {len(test_rows)} test documents; home {home}")

    config = load_config(args.config)
    if args.epochs is not None:
        config.sft["num_train_epochs"] = args.epochs
    started = time.perf_counter()
    result = train(task, train_file, "smollm2-135m-instruct", config, console=console)
    train_seconds = time.perf_counter() - started

    models = [ModelSpec("smollm2-135m-instruct"), ModelSpec(result.version.id)]
    report = run_eval(task, str(test_file), models, EvalOptions(), console=console)
    table = Table(title=f"field error on {len(test_rows)} test documents (demo task)")
    for column in ("model", "field error", "95 % CI", "invalid outputs", "training wall time"):
        table.add_column(column)
    figures = {"train_documents": len(train_rows), "test_documents": len(test_rows), "models": {}}
    for model in report.models:
        summary = model.summary
        low, high = summary.field_error_ci95
        wall = "-" if model.name == "smollm2-135m-instruct" else f"{train_seconds / 60:.1f} min"
        table.add_row(
            model.identity or model.name,
            f"{summary.field_error_rate:.1%}",
            f"{low:.1%}-{high:.1%}",
            f"{summary.invalid_rate:.1%}",
            wall,
        )
        figures["models"][model.identity or model.name] = summary.to_dict()
    figures["train_seconds"] = train_seconds
    figures["train_tokens_per_second"] = result.tokens_per_second
    figures["train_config"] = result.version.config.get("train")
    console.print(table)
    console.print(f"training: {train_seconds:.0f} s at {result.tokens_per_second:.0f} tokens/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
