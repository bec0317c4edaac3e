"""SFT alone, SFT + DPO on human corrections, SFT + GRPO on the task's score: field error side by side, one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/beyond_sft.py [--home DIR] [--sft-documents 160]
        [--corrections 100] [--pool 200] [--test 100] [--grpo-budget 20m] [--seed 3] [--json F]

The protocol (issue 20), on the demo task and the bundled base, everything through tuneloop's public API:

1. documents synthesized with verified answers, in three disjoint parts: a fixed budget of verified training
   documents (``--sft-documents``), a pool standing for production traffic (``--pool``), and the test split
   (``--test``, synthesized as test);
2. SFT: ``tuneloop train`` on the training documents (``--sft-epochs``, 1 by default, as the other quality
   tables here; tuneloop's own rule would give 160 documents 10 epochs, ~1 hour on 2 cores) → ``T@1``;
3. corrections: ``T@1`` answers the pool (``eval run``: the served decoding); for the first
   ``--corrections`` documents where it got a field wrong, a reviewer corrects the draft in the review queue
   (``create_item``, ``lock_item``, ``correct_item`` with the verified values): what a person fixing
   production mistakes leaves behind;
4. DPO: ``train --method dpo --parent T@1 --data pairs:corrections`` → a child version;
5. GRPO: ``train --method grpo --parent T@1 --data <the SFT training file> --time-budget`` → a child version
   (the same verified documents, used again with the task's score as the reward);
6. each version answers the whole test split (``eval run``, llama.cpp as served), and each child is compared
   with ``T@1`` example by example (``eval compare``: fields fixed and broken, exact McNemar test).

Each finished step is recorded in ``<home>/beyond_sft.json``: run it again with the same ``--home`` to go on
after an interruption. Without ``--home`` a scratch home is made (the user's store is untouched).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from homes import scratch_home

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASK = "liability-extraction"
BASE = "smollm2-135m-instruct"
REVIEWER = "benchmark-reviewer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="TUNELOOP_HOME to use (and resume in)")
    parser.add_argument("--sft-documents", type=int, default=160, help="verified training documents (SFT, GRPO)")
    parser.add_argument("--pool", type=int, default=200, help="production documents the SFT version answers")
    parser.add_argument("--corrections", type=int, default=100, help="reviewed corrections DPO learns from")
    parser.add_argument("--test", type=int, default=100, help="test documents every version answers")
    parser.add_argument("--sft-epochs", type=float, default=1, help="SFT's num_train_epochs (tuneloop's rule: 10)")
    parser.add_argument("--grpo-budget", default="20m", help="GRPO's --time-budget")
    parser.add_argument("--arms", default="sft,dpo,grpo", help="which of sft,dpo,grpo to train and evaluate now")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    if args.home is not None:
        args.home.mkdir(parents=True, exist_ok=True)
        os.environ["TUNELOOP_HOME"] = str(args.home.resolve())
        home = args.home.resolve()
    else:
        home = scratch_home("tuneloop-beyond-sft-")

    from rich.console import Console

    from tuneloop.store import upgrade

    console = Console()
    upgrade()
    state_file = home / "beyond_sft.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else {}

    def save() -> None:
        state_file.write_text(json.dumps(state, indent=2, default=str))

    arms = {"sft", *(arm.strip() for arm in args.arms.split(",") if arm.strip())}  # the others start from SFT
    files = make_documents(home, args, console)
    if "sft" not in state:
        state["sft"] = train_step(console, files["train"], method="sft", epochs=args.sft_epochs)
        save()
    sft_version = state["sft"]["version"]
    if "dpo" in arms and "corrections" not in state:
        state["corrections"] = correct_pool(console, sft_version, files["pool"], args.corrections)
        save()
    steps = {
        "dpo": lambda: train_step(console, "pairs:corrections", method="dpo", parent=sft_version),
        "grpo": lambda: train_step(
            console, files["train"], method="grpo", parent=sft_version, time_budget=args.grpo_budget
        ),
    }
    for arm in ("sft", "dpo", "grpo"):  # each arm trained, then evaluated, before the next is trained
        if arm not in arms:
            continue
        if arm not in state:
            state[arm] = steps[arm]()
            save()
        if "test_run" not in state[arm]:
            state[arm]["test_run"] = evaluate(console, state[arm]["version"], files["test"])
            save()
    figures = report(console, state, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def make_documents(home: Path, args: argparse.Namespace, console: Any) -> dict[str, str]:
    """The three disjoint parts as JSONL files in the home (made once: same seed, same documents)."""
    from tuneloop.demo.synth import synthesize
    from tuneloop.task import load_task

    files = {part: home / f"{part}.jsonl" for part in ("train", "pool", "test")}
    if not all(path.is_file() for path in files.values()):
        task = load_task(TASK)
        wanted = args.sft_documents + args.pool
        count = int((wanted + args.test) * 1.3) + 20  # the split is drawn per document: some room
        rows = synthesize(task, count, seed=args.seed)
        train_rows = [row for row in rows if row["metadata"]["split"] == "train"]
        test_rows = [row for row in rows if row["metadata"]["split"] == "test"][: args.test]
        if len(train_rows) < wanted or len(test_rows) < args.test:
            raise SystemExit(f"{count} documents gave {len(train_rows)} train and {len(test_rows)} test rows")
        parts = {
            "train": train_rows[: args.sft_documents],
            "pool": train_rows[args.sft_documents : wanted],
            "test": test_rows,
        }
        for part, part_rows in parts.items():
            files[part].write_text("".join(json.dumps(row) + "\n" for row in part_rows))
    counts = {part: sum(1 for _ in path.open()) for part, path in files.items()}
    console.print(f"documents: {counts} in {home}")
    return {part: str(path) for part, path in files.items()}


def train_step(
    console: Any,
    data: str,
    *,
    method: str,
    parent: str | None = None,
    time_budget: str | None = None,
    epochs: float | None = None,
) -> dict[str, Any]:
    """One `tuneloop train`; the version, its wall time and the metrics it registered."""
    from tuneloop.task import load_task
    from tuneloop.train import train
    from tuneloop.train.config import load_config

    config = load_config(None)
    if epochs is not None:
        config.sft["num_train_epochs"] = epochs

    started = time.perf_counter()
    result = train(
        load_task(TASK),
        data,
        None if parent else BASE,
        config if method == "sft" else None,
        method=method,
        parent=parent,
        time_budget=time_budget,
        console=console,
    )
    seconds = time.perf_counter() - started
    console.print(f"[bold]{method}[/]: {result.version.id} in {seconds / 60:.1f} min")
    return {"version": result.version.id, "seconds": seconds, "metrics": result.metrics}


def evaluate(console: Any, model: str, data: str, limit: int | None = None) -> int:
    """`tuneloop eval run` of one version on a file; the run id."""
    from tuneloop.evals.candidates import ModelSpec
    from tuneloop.evals.runner import EvalOptions, run_eval
    from tuneloop.task import load_task

    report = run_eval(load_task(TASK), data, [ModelSpec(model)], EvalOptions(limit=limit), console=console)
    return report.run_id


def correct_pool(console: Any, version: str, pool: str, wanted: int) -> dict[str, Any]:
    """The SFT version answers the pool; a reviewer corrects its first ``wanted`` wrong drafts to the verified one."""
    from tuneloop.answers import parse_answer
    from tuneloop.evals.examples import load_examples
    from tuneloop.evals.results import record_score
    from tuneloop.evals.store import run_results
    from tuneloop.review.queue import correct_item, create_item, lock_item
    from tuneloop.task import load_task

    task = load_task(TASK)
    run_id = evaluate(console, version, pool)
    examples = {example.id: example for example in load_examples(task, pool)}
    corrected, right = 0, 0
    for result in run_results(run_id):
        if result.valid and not record_score(result, task.field_names).errors:  # the evals' own verdict
            right += 1
            continue
        if corrected >= wanted:
            continue
        example = examples[result.example_id]
        fields, _ = parse_answer(task, result.output) if result.output is not None else (None, None)
        item = create_item(
            task=TASK,
            request={"model": version, "messages": example.prompt},
            draft_text=result.output,
            draft_fields=fields,
            failed_checks=list(result.check_failures or []),
            model=version,
            reason="audit",
        )
        lock_item(item, REVIEWER)
        changes = {name: value for name, value in example.gold.items() if (fields or {}).get(name) != value}
        correct_item(item, REVIEWER, changes or dict(example.gold), seconds=30.0)
        corrected += 1
    answered = len(examples)
    console.print(f"pool: {version} got {right} of {answered} documents right; {corrected} corrections made")
    if corrected < wanted:
        console.print(f"[yellow]only {corrected} wrong answers in the pool; DPO learns from those[/]")
    return {"pool_run": run_id, "pool_documents": answered, "pool_right": right, "corrections": corrected}


def report(console: Any, state: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from rich.table import Table

    from tuneloop.evals.compare import compare_runs
    from tuneloop.evals.results import build_report
    from tuneloop.evals.store import get_run, run_results

    table = Table(title=f"{TASK}: field error on the {args.test} test documents, one SFT parent")
    for column in ("version", "method", "trained on", "training", "field error (95 % CI)", "exact", "invalid",
                   "vs SFT: fields fixed / broken", "McNemar p"):  # fmt: skip
        table.add_column(column)
    corrections = state.get("corrections", {}).get("corrections")
    figures: dict[str, Any] = {"corrections": state.get("corrections"), "arms": {}}
    trained_on = {
        "sft": f"{args.sft_documents} verified documents",
        "dpo": f"{corrections} review corrections",
        "grpo": f"the same {args.sft_documents} documents, task score as reward",
    }
    for arm in ("sft", "dpo", "grpo"):
        if "test_run" not in state.get(arm, {}):
            continue
        run_id = state[arm]["test_run"]
        (model,) = build_report(get_run(run_id), run_results(run_id)).models
        summary = model.summary
        low, high = summary.field_error_ci95
        paired = "–", "–"
        pair = None
        if arm != "sft":
            (pair,) = compare_runs(state["sft"]["test_run"], run_id).pairs
            paired = f"{pair.first_only_fields} / {pair.second_only_fields}", f"{pair.p_value:.3g}"
        table.add_row(
            state[arm]["version"],
            arm.upper(),
            trained_on[arm],
            f"{state[arm]['seconds'] / 60:.1f} min",
            f"{summary.field_error_rate:.1%} ({low:.1%}–{high:.1%})",
            f"{summary.exact_match_rate:.0%}",
            f"{summary.invalid_rate:.0%}",
            *paired,
        )
        figures["arms"][arm] = {
            **state[arm],
            "summary": summary.to_dict(),
            "fields_fixed": pair.first_only_fields if pair else None,
            "fields_broken": pair.second_only_fields if pair else None,
            "mcnemar_p": pair.p_value if pair else None,
        }
    console.print(table)
    return figures


if __name__ == "__main__":
    main()
