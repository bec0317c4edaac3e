"""Agreement of the llamacpp and transformers backends on one version: the share of fields that match.

    HF_HUB_OFFLINE=1 TUNELOOP_HOME=... .venv/bin/python benchmarks/serve_agreement.py --model TASK@N \
        --data test.jsonl [--limit 100] [--llamacpp-weights native|f16|f32] [--no-cache]

Runs the version through both backends with the eval stage (greedy, the task's decoding defaults), then
scores the transformers answer of each example against the llama.cpp answer with the task's own field
comparators (``tuneloop.evals.scoring``): a field agrees when the comparator would accept one answer as the
other's gold value. Prints both backends' field error against the human-verified answers beside it.
The serve issue's goal: >= 98 % of fields agree on the demo task's test split.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tuneloop.bases.widen import LLAMA_WEIGHTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a registered version, e.g. liability-extraction@1")
    parser.add_argument("--data", required=True, help="a dataset JSONL with gold answers, or dataset:NAME")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument(
        "--llamacpp-weights",
        default="native",
        choices=LLAMA_WEIGHTS,
        help="llama.cpp on the GGUF as it is, or on its float rewrite (bases/widen.py)",
    )
    parser.add_argument("--no-cache", action="store_true", help="ask both engines again instead of reusing answers")
    args = parser.parse_args()

    from rich.console import Console

    from tuneloop.answers import parse_answer
    from tuneloop.evals.candidates import ModelSpec
    from tuneloop.evals.comparators import Verdict
    from tuneloop.evals.runner import EvalOptions, run_eval
    from tuneloop.evals.scoring import score_record
    from tuneloop.evals.store import run_results
    from tuneloop.registry.versions import resolve_version

    console = Console()
    info = resolve_version(args.model)
    from tuneloop.task import load_task

    task = load_task(info.task)
    specs = [
        ModelSpec(info.id, backend="llamacpp", backend_options={"weights": args.llamacpp_weights}),
        ModelSpec(info.id, backend="transformers"),
    ]
    report = run_eval(
        task, args.data, specs, EvalOptions(limit=args.limit, use_cache=not args.no_cache), console=console
    )
    llama, reference = (
        {result.example_id: result.output for result in run_results(report.run_id, model=model.name)}
        for model in report.models
    )
    agree = fields = examples = 0
    for example_id, output in llama.items():
        answer, _ = parse_answer(task, output or "")
        if answer is None or example_id not in reference:
            continue
        examples += 1
        score = score_record(task, example_id, reference[example_id], answer)
        fields += len(score.verdicts)
        agree += sum(verdict == Verdict.CORRECT for verdict in score.verdicts.values())
    for model in report.models:
        console.print(
            f"{model.name}: field error {model.summary.field_error_rate:.1%} vs gold, "
            f"invalid {model.summary.invalid_rate:.1%}"
        )
    console.print(
        f"agreement llamacpp vs transformers: {agree}/{fields} fields = {agree / max(fields, 1):.1%} "
        f"over {examples} examples with a valid llama.cpp answer"
    )


if __name__ == "__main__":
    main()
