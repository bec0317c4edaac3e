"""CLI: eval — benchmark models on a task (field error, latency, cost, verdict); score saved predictions;
list, show and compare stored runs. Parse, call tuneloop.evals, print."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.errors import TuneloopError

if TYPE_CHECKING:  # the library is imported inside commands, so `tuneloop --help` starts fast
    from tuneloop.evals.results import EvalReport

app = typer.Typer(no_args_is_help=True)
# markup=False: model names, data paths and model outputs are printed as they are, never read as rich markup.
console = Console(highlight=False, markup=False)
err_console = Console(stderr=True, highlight=False)


def _write_outputs(report: EvalReport, json_path: Path | None, html_path: Path | None) -> None:
    from tuneloop.evals.report import write_html, write_json

    if json_path:
        write_json(report, json_path)
        err_console.print(f"wrote {json_path}", markup=False)
    if html_path:
        write_html(report, html_path)
        err_console.print(f"wrote {html_path}", markup=False)


@app.command("run")
def run(
    task: str | None = typer.Option(None, "--task", help="Task name or path to its YAML file."),
    data: str = typer.Option(
        None, "--data", help="Gold rows: FILE.jsonl, or dataset:NAME[:split] (default split test)."
    ),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="A base, a version (task@3), upstream/model or http://host:port/v1#model. Repeat."
    ),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Requests in flight at once, per model."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N examples."),
    backend: str | None = typer.Option(None, "--backend", help="Engine for local models: llamacpp or transformers."),
    llamacpp_weights: str = typer.Option(
        "native",
        "--llamacpp-weights",
        help="llama.cpp: the GGUF as it is (native), or its f16/f32 rewrite, as `tuneloop serve` takes it.",
    ),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="Override the task's decoding.max_tokens."),
    volume: str | None = typer.Option(None, "--volume", help="State cost per month at this volume, e.g. 16000000/day."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Ask the models again even for answers already stored."),
    plain_schema: bool = typer.Option(
        False,
        "--plain-schema",
        help="Decode local models under the task's output schema only: extractive fields and formats unconstrained.",
    ),
    no_stream: bool = typer.Option(
        False, "--no-stream", help="Don't stream endpoint answers (no time to first token)."
    ),
    judge: str | None = typer.Option(
        None, "--judge", help="Text tasks: a model (any id) that weighs each answer against --baseline's by the rubric."
    ),
    baseline: str | None = typer.Option(
        None, "--baseline", help="With --judge: the model every other is compared with (run too if not a --model)."
    ),
    judge_labels: Path | None = typer.Option(
        None, "--judge-labels", help="With --judge: pairs people labelled (JSONL), to measure the judge's agreement."
    ),
    judge_max_tokens: int = typer.Option(200, "--judge-max-tokens", min=16, help="Token limit of a judge's verdict."),
    judge_backend: str | None = typer.Option(
        None,
        "--judge-backend",
        help="A local judge's engine: llamacpp or transformers (default: llama.cpp for a GGUF base).",
    ),
    resume: int | None = typer.Option(None, "--resume", help="Finish an interrupted or failed run (its own options)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the report as JSON (schema: docs/evals.md)."),
    html_path: Path | None = typer.Option(None, "--html", help="Write an HTML report with plots."),
) -> None:
    """Run models on gold data: field error rate with its 95% CI, latency, cost, and the requirements verdict;
    for a text task, with --judge, each model's win rate against --baseline."""
    from tuneloop.cost import parse_volume
    from tuneloop.evals.candidates import ModelSpec
    from tuneloop.evals.report import print_report
    from tuneloop.evals.runner import EvalInterrupted, EvalOptions, JudgeOptions, resume_eval, run_eval

    try:
        if resume is not None:
            if task or data or model:
                raise TuneloopError("--resume takes the run's own task, data and models", where="--resume")
            report = resume_eval(resume, console=err_console)
        else:
            missing = [name for name, value in (("--task", task), ("--data", data), ("--model", model)) if not value]
            if missing:
                raise TuneloopError(f"missing {', '.join(missing)}", hint="e.g. --task T --data test.jsonl --model M")
            if judge is None and (baseline or judge_labels or judge_backend):
                raise TuneloopError(
                    "--baseline, --judge-labels and --judge-backend go with --judge",
                    where="--baseline" if baseline else "--judge-labels" if judge_labels else "--judge-backend",
                )
            _check_judge_backend(judge, judge_backend)
            judging = (
                JudgeOptions(
                    judge,
                    baseline=baseline,
                    labels=str(judge_labels) if judge_labels else None,
                    max_tokens=judge_max_tokens,
                    backend=judge_backend,
                )
                if judge
                else None
            )
            options = EvalOptions(
                concurrency=concurrency,
                limit=limit,
                max_tokens=max_tokens,
                use_cache=not no_cache,
                stream=not no_stream,
                constrain_values=not plain_schema,
                requests_per_day=parse_volume(volume) if volume else None,
                judge=judging,
            )
            local_options = {"weights": llamacpp_weights} if llamacpp_weights != "native" else {}
            specs = [
                ModelSpec(name, backend=backend, backend_options=local_options) if _is_local(name) else ModelSpec(name)
                for name in model
            ]
            report = run_eval(task, data, specs, options, console=err_console)
    except EvalInterrupted as stopped:
        err_console.print(
            f"[yellow]interrupted[/]: run {stopped.run_id} keeps {stopped.kept} finished results; "
            f"`tuneloop eval run --resume {stopped.run_id}` goes on from there"
        )
        raise typer.Exit(130) from None
    print_report(report, console)
    _write_outputs(report, json_path, html_path)


def _check_judge_backend(judge: str | None, backend: str | None) -> None:
    if judge is not None and backend is not None and not _is_local(judge):
        raise TuneloopError(
            f"--judge-backend applies to a local judge; {judge} answers from an endpoint",
            where="--judge-backend",
            hint="leave it out, or name a local judge (a base or task@N)",
        )


def _is_local(model: str) -> bool:
    # --backend applies to local models only; endpoint ids are left without it.
    from tuneloop.registry.ids import EndpointRef, parse_model_id

    return not isinstance(parse_model_id(model), EndpointRef)


@app.command("judge-agreement")
def judge_agreement(
    task: str = typer.Option(..., "--task", help="The text task (name or YAML path) whose rubric the judge reads."),
    judge: str = typer.Option(..., "--judge", help="The judge: any model id (upstream/model, a base, task@N, a URL)."),
    labels: Path = typer.Option(
        ..., "--labels", help='JSONL: {"id", "messages" (prompt[, reference]), "a", "b", "label": "A"|"B"|"tie"}.'
    ),
    max_tokens: int = typer.Option(200, "--max-tokens", min=16, help="Token limit of a verdict."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Judge requests in flight at once."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Ask the judge again even for verdicts already stored."),
    backend: str | None = typer.Option(None, "--backend", help="A local judge's engine: llamacpp or transformers."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the report as JSON."),
) -> None:
    """How far to trust a judge: its agreement with people on labelled pairs (both orders, position bias
    removed), with a 95% Wilson interval and Cohen's kappa."""
    from tuneloop.evals.report import print_report
    from tuneloop.evals.runner import EvalInterrupted
    from tuneloop.evals.runner import judge_agreement as measure

    try:
        report = measure(
            task,
            labels,
            judge,
            max_tokens=max_tokens,
            use_cache=not no_cache,
            concurrency=concurrency,
            backend=backend,
            console=err_console,
        )
    except EvalInterrupted as stopped:
        err_console.print(f"[yellow]interrupted[/]: run {stopped.run_id} keeps {stopped.kept} verdicts (cached)")
        raise typer.Exit(130) from None
    print_report(report, console)
    _write_outputs(report, json_path, None)


@app.command("score")
def score(
    task: str = typer.Option(..., "--task", help="Task name or path to its YAML file."),
    gold: Path = typer.Option(..., "--gold", help="Gold rows (JSONL): id, messages ending in the verified answer."),
    predictions: Path = typer.Option(..., "--predictions", help='JSONL rows {"id": ..., "output": "<raw text>"}.'),
    name: str | None = typer.Option(None, "--name", help="Model name in the report (default: the file's name)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the report as JSON (schema: docs/evals.md)."),
    html_path: Path | None = typer.Option(None, "--html", help="Write an HTML report with plots."),
) -> None:
    """Score saved predictions against gold rows without calling a model (the error verdict only)."""
    from tuneloop.evals.report import print_report
    from tuneloop.evals.runner import score_predictions

    report, unmatched = score_predictions(task, gold, predictions, model_name=name)
    if unmatched:
        err_console.print(
            f"[yellow]warning[/]: {len(unmatched)} prediction ids match no gold row and were ignored "
            f"(first: {escape(repr(unmatched[0]))})"
        )
    print_report(report, console)
    _write_outputs(report, json_path, html_path)


@app.command("list")
def list_command(
    task: str | None = typer.Option(None, "--task", help="Only runs of this task."),
    limit: int = typer.Option(20, "--limit", min=1, help="How many of the newest runs."),
) -> None:
    """The stored eval runs, newest first."""
    from tuneloop.evals.report import run_rows
    from tuneloop.evals.store import list_runs

    runs = list_runs(task=task, limit=limit)
    if not runs:
        console.print("no eval runs yet: `tuneloop eval run --task T --data FILE --model M` makes one")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for heading in ("run", "UTC", "task", "data", "n", "models", "status", "best"):
        table.add_column(heading, no_wrap=heading in ("UTC", "status", "best"))
    for row in run_rows(runs):
        table.add_row(*row)
    console.print(table)


@app.command("show")
def show(
    run_id: int = typer.Argument(..., help="The run's id (see `tuneloop eval list`)."),
    examples: int = typer.Option(0, "--examples", help="Also list up to N examples each model got wrong."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the report as JSON."),
    html_path: Path | None = typer.Option(None, "--html", help="Write an HTML report with plots."),
) -> None:
    """One stored run: its tables, and optionally the examples that went wrong."""
    from tuneloop.evals.report import print_report
    from tuneloop.evals.results import build_report
    from tuneloop.evals.store import get_run, run_results

    results = run_results(run_id)
    report = build_report(get_run(run_id), results)
    if not report.models and report.judge is None:
        console.print(f"run {run_id} ({report.status}) has no results yet")
        return
    print_report(report, console)
    if examples:
        for model in report.models:
            # A text task has no fields: what went wrong there is an invalid (empty or missing) answer.
            wrong = [
                r
                for r in results
                if r.model == model.name and (not _all_correct(r.field_verdicts) if report.fields else not r.valid)
            ]
            table = Table("example", "wrong fields", "output", title=f"{model.name}: {len(wrong)} examples with errors")
            for result in wrong[:examples]:
                fields = ", ".join(f"{k} ({v})" for k, v in (result.field_verdicts or {}).items() if v != "correct")
                output = result.output if result.output is not None else f"<{result.error}>"
                table.add_row(result.example_id, fields, output[:200])
            console.print(table)
    _write_outputs(report, json_path, html_path)


def _all_correct(verdicts: dict[str, str] | None) -> bool:
    return bool(verdicts) and all(value == "correct" for value in (verdicts or {}).values())


@app.command("compare")
def compare(
    first: int = typer.Argument(..., help="A run id."),
    second: int = typer.Argument(..., help="Another run id."),
) -> None:
    """Two runs side by side, and for models in both on the same examples: which got fixed, which broke."""
    from tuneloop.evals.compare import compare_runs
    from tuneloop.evals.report import error_with_interval, number_ms, pct, usd

    comparison = compare_runs(first, second)
    table = Table(
        "run",
        "model",
        "n",
        "field error (95% CI)",
        "exact",
        "invalid",
        "p95 ms",
        "$ / 1k",
        "meets all",
        box=box.SIMPLE_HEAD,
    )

    for run_id, model in comparison.rows:
        table.add_row(
            str(run_id),
            model.name,
            str(model.results),
            error_with_interval(model),
            pct(model.summary.exact_match_rate, 0),
            pct(model.summary.invalid_rate, 0),
            number_ms(model.latency.p95_ms if model.latency else None),
            usd(model.cost_per_1k_usd),
            "yes" if model.verdict.meets_all else "no",
        )
    console.print(table)
    for pair in comparison.pairs:
        console.print(
            f"{pair.first_model} (run {first}) → {pair.second_model} (run {second}) on {pair.shared} shared examples: "
            f"field errors {pair.first_errors} → {pair.second_errors}; "
            f"{pair.fixed} example{'' if pair.fixed == 1 else 's'} fixed, {pair.broken} broken, "
            f"{pair.unchanged_wrong} still wrong"
        )
        if pair.first_only_fields or pair.second_only_fields:
            console.print(
                f"  paired test on fields: {pair.first_only_fields} wrong only in run {first}, "
                f"{pair.second_only_fields} wrong only in run {second}; exact McNemar p = {pair.p_value:.3g}"
            )
    if not comparison.same_data:
        console.print("the runs used different data, so there is no example-level comparison")
    elif not comparison.pairs:
        console.print("no model answered the same examples in both runs, so there is no example-level comparison")
