"""Running an eval: every model on every example, scored, timed, costed, stored, judged.

``run_eval`` checks everything it can before it stores anything (the task, every gold row, every model
id, API keys), then runs the models one after another, so that one model's load does not slow down
another's latency. Within a model, ``concurrency`` requests are in flight at once (a thread pool);
local engines take them one at a time, endpoints in parallel. Answers are committed in batches as
they finish. Ctrl-C marks the run ``interrupted`` and keeps its answers; ``resume_eval`` (or running
the same command again, through the cache) asks only for what is missing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from tuneloop.cost import PriceTable, load_price_table
from tuneloop.errors import TuneloopError
from tuneloop.evals.candidates import (
    Candidate,
    Completion,
    EndpointFailure,
    Generator,
    ModelSpec,
    RequestFailed,
    resolve_candidate,
)
from tuneloop.evals.examples import (
    Example,
    canonical_data_ref,
    fingerprint,
    load_examples,
    load_predictions,
)
from tuneloop.evals.judge import (
    JUDGE_MAX_TOKENS,
    JudgeOptions,
    LabelledPair,
    ask_judge,
    check_judgeable,
    judge_params,
    judge_run,
    judging_config,
    label_jobs,
    load_labels,
    stored_agreement,
)
from tuneloop.evals.results import EvalReport, build_report
from tuneloop.evals.scoring import score_record
from tuneloop.evals.store import (
    ResultWriter,
    StoredResult,
    cache_key,
    cached_answers,
    create_run,
    get_run,
    mark_run,
    run_results,
)
from tuneloop.extraction import decoding_schema, source_text
from tuneloop.generation import GenerationParams
from tuneloop.progress import progress_bar
from tuneloop.task import Task, load_task

# A model whose first requests all fail is misconfigured (a parameter the endpoint refuses, say):
# stop after this many rather than record a run of failures.
FAILURES_BEFORE_GIVING_UP = 3


@dataclass(frozen=True)
class EvalOptions:
    concurrency: int = 1
    limit: int | None = None
    max_tokens: int | None = None  # overrides the task's decoding.max_tokens
    use_cache: bool = True
    stream: bool = True  # stream endpoint answers, which is how time to first token is measured
    requests_per_day: float | None = None  # the volume that monthly cost is stated at
    # Local models decode extractive fields and formats under their per-input constraints (extraction.py);
    # False decodes under the task's plain output schema (the comparison benchmarks make).
    constrain_values: bool = True
    # A text task's answers weighed pairwise against a baseline by an LLM judge (evals/judge.py).
    judge: JudgeOptions | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise TuneloopError(f"must be at least 1, got {self.concurrency}", where="--concurrency")


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: its finished answers are stored and the run can be resumed."""

    def __init__(self, run_id: int, kept: int) -> None:
        super().__init__(f"eval run {run_id} interrupted; {kept} results kept")
        self.run_id, self.kept = run_id, kept


ResultCallback = Callable[[str, int], None]  # (model label, results stored for it so far)


def decoding_params(task: Task, max_tokens: int | None = None) -> GenerationParams:
    return GenerationParams(
        max_tokens=max_tokens or task.decoding.max_tokens,
        temperature=task.decoding.temperature,
        top_p=task.decoding.top_p,
    )


def run_eval(
    task: Task | str,
    data_ref: str,
    models: Sequence[ModelSpec | str],
    options: EvalOptions | None = None,
    *,
    console: Console | None = None,
    on_result: ResultCallback | None = None,
    resume_run: int | None = None,
) -> EvalReport:
    """Evaluate ``models`` on the examples of ``data_ref`` and store the run; returns its report."""
    options = options or EvalOptions()
    console = console or Console(stderr=True)
    task_ref = _task_ref(task)
    task = load_task(task) if isinstance(task, str) else task
    specs = [ModelSpec(spec) if isinstance(spec, str) else spec for spec in models]  # a baseline may join
    if not specs:
        raise TuneloopError("no model to evaluate", hint="name one or more with --model")
    if options.judge is not None:
        check_judgeable(task, options.judge)
    # Everything that can be wrong with the input is found here, before a run is stored.
    examples = load_examples(task, data_ref, limit=options.limit)
    prices = load_price_table()
    resolved = [resolve_candidate(spec, prices, stream=options.stream) for spec in specs]
    judging = _judging(options.judge, specs, resolved, prices, stream=options.stream)
    _refuse_duplicate_labels(resolved)
    params = decoding_params(task, options.max_tokens)
    config = {
        "mode": "run",
        "task_ref": task_ref,
        "fields": task.field_names,
        "requirements": task.requirements.model_dump(),
        "data_fingerprint": fingerprint(examples),
        "n": len(examples),
        "decoding": {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens},
        "models": [
            {**model.describe(), "backend": spec.backend, "backend_options": spec.backend_options}
            for model, spec in zip(resolved, specs, strict=True)
        ],
        "options": {
            "concurrency": options.concurrency,
            "limit": options.limit,
            "max_tokens": options.max_tokens,
            "use_cache": options.use_cache,
            "stream": options.stream,
            "requests_per_day": options.requests_per_day,
            "judge": None if options.judge is None else _judge_options(options.judge),
        },
        "price_table": prices.version,
    }
    if judging is not None:
        candidates = [model.label for model in resolved if model.label != judging.baseline]
        config["judge"] = judging_config(
            judging.candidate, judging.options, judging.baseline, candidates, judging.labels
        )
        if judging.labels is None:  # shown beside the verdicts: the judge's last measured agreement, if any
            config["judge"]["agreement_from"] = stored_agreement(task.name, judging.candidate.identity)
    data_name = canonical_data_ref(data_ref)
    if resume_run is None:
        run_id = create_run(task.name, data_name, config)
    else:
        run_id = resume_run
        mark_run(run_id, "running")
    writer = ResultWriter(run_id)
    try:
        for model in resolved:
            _run_model(task, model, examples, params, options, run_id, writer, console, on_result)
        if judging is not None:
            judge_run(
                task,
                examples,
                judging.candidate,
                config["judge"],
                judging.labels,
                run_id=run_id,
                writer=writer,
                use_cache=options.use_cache,
                concurrency=options.concurrency,
                console=console,
            )
    except KeyboardInterrupt:
        writer.flush()
        mark_run(run_id, "interrupted")
        raise EvalInterrupted(run_id, len(run_results(run_id))) from None
    except TuneloopError as exc:
        writer.flush()
        mark_run(run_id, "failed")
        kept = len(run_results(run_id))
        resume = f"run {run_id} keeps its {kept} finished results: `tuneloop eval run --resume {run_id}` goes on"
        exc.hint = f"{exc.hint}; {resume}" if exc.hint else resume
        raise
    writer.flush()
    report = replace(build_report(get_run(run_id), run_results(run_id)), status="done")
    mark_run(run_id, "done", summary=report.to_dict())
    return report


def resume_eval(run_id: int, *, console: Console | None = None, on_result: ResultCallback | None = None) -> EvalReport:
    """Finish an interrupted or failed run: same task, data, models and options; only missing answers run."""
    run = get_run(run_id)
    config = run.config
    if config.get("mode") != "run":
        what = "measured a judge's agreement" if config.get("mode") == "agreement" else "scored saved predictions"
        raise TuneloopError(
            f"eval run {run_id} {what}; there is nothing to resume",
            hint="run the same command again: what was answered comes from the cache",
        )
    if run.status == "done":
        raise TuneloopError(f"eval run {run_id} is complete", hint=f"`tuneloop eval show {run_id}` shows it")
    task = load_task(config["task_ref"])
    saved = config["options"]
    options = EvalOptions(
        concurrency=saved["concurrency"],
        limit=saved["limit"],
        max_tokens=saved["max_tokens"],
        use_cache=saved["use_cache"],
        stream=saved["stream"],
        requests_per_day=saved["requests_per_day"],
        judge=JudgeOptions(**saved["judge"]) if saved.get("judge") else None,
    )
    examples = load_examples(task, run.data_ref, limit=options.limit)
    if fingerprint(examples) != config["data_fingerprint"]:
        raise TuneloopError(
            f"the data of eval run {run_id} has changed since it started",
            where=run.data_ref,
            hint="start a new run with `tuneloop eval run` (answers already given are reused from the cache)",
        )
    specs = [
        ModelSpec(model["requested"], model.get("backend"), model.get("backend_options") or {})
        for model in config["models"]
    ]
    return run_eval(
        config["task_ref"], run.data_ref, specs, options, console=console, on_result=on_result, resume_run=run_id
    )


def score_predictions(
    task: Task | str,
    gold_path: Path,
    predictions_path: Path,
    *,
    model_name: str | None = None,
) -> tuple[EvalReport, list[str]]:
    """Score saved predictions against gold rows without calling a model; stored as a run.

    Returns the report and the prediction ids that match no gold row (ignored). A gold id without a
    prediction counts as an invalid output.
    """
    task_ref = _task_ref(task)
    task = load_task(task) if isinstance(task, str) else task
    examples = load_examples(task, str(gold_path), require_ids=True)
    predictions = load_predictions(predictions_path)
    gold_ids = {example.id for example in examples}
    unmatched = [example_id for example_id in predictions if example_id not in gold_ids]
    label = model_name or predictions_path.stem
    config = {
        "mode": "score",
        "task_ref": task_ref,
        "fields": task.field_names,
        "requirements": task.requirements.model_dump(),
        "data_fingerprint": fingerprint(examples),
        "n": len(examples),
        "predictions": str(predictions_path.resolve()),
        "models": [{"label": label, "requested": str(predictions_path), "identity": None, "kind": "predictions"}],
        "options": {},
    }
    run_id = create_run(task.name, canonical_data_ref(str(gold_path)), config)
    writer = ResultWriter(run_id, batch_size=500)
    for example in examples:
        output = predictions.get(example.id)
        writer.add(_scored(task, example, label, output, None, cache_key_value=None))
    writer.flush()
    report = replace(build_report(get_run(run_id), run_results(run_id)), status="done")
    mark_run(run_id, "done", summary=report.to_dict())
    return report, unmatched


# --- one model -----------------------------------------------------------------------------------


def _run_model(
    task: Task,
    model: Candidate,
    examples: list[Example],
    params: GenerationParams,
    options: EvalOptions,
    run_id: int,
    writer: ResultWriter,
    console: Console,
    on_result: ResultCallback | None,
) -> None:
    writer.flush()  # results of a previous model must be visible to the resume check below
    per_example = {example.id: _structured(task, model, example, params, options) for example in examples}
    keys = {example.id: cache_key(model.identity, example.prompt, per_example[example.id]) for example in examples}
    already = {result.example_id for result in run_results(run_id, model.label)}  # when resuming
    todo = [example for example in examples if example.id not in already]
    cached = cached_answers(keys[example.id] for example in todo) if options.use_cache else {}
    fresh = [example for example in todo if keys[example.id] not in cached]
    stored = len(already)
    if len(already) == len(examples):
        console.print(f"{model.label}: all {len(examples)} answers already in this run", highlight=False, markup=False)
        return
    for example in todo:
        if keys[example.id] in cached:
            writer.add(_from_cache(task, example, model, cached[keys[example.id]]))
            stored += 1
    if cached:
        console.print(f"{model.label}: {len(todo) - len(fresh)} answers from the cache", highlight=False, markup=False)
    if not fresh:
        if on_result:
            on_result(model.label, stored)
        return
    with console.status(Text(f"loading {model.label}")):
        generator = model.load()
    try:
        with progress_bar(console, unit="req") as progress:
            # escape: the bar's description is rich markup, and "base [transformers]" is not a style
            bar = progress.add_task(escape(model.label), total=len(examples), completed=stored)

            def finished(result: StoredResult) -> None:
                nonlocal stored
                writer.add(result)
                stored += 1
                progress.advance(bar)
                if on_result:
                    on_result(model.label, stored)

            _ask(task, model, generator, fresh, keys, per_example, options.concurrency, finished)
    finally:
        generator.close()


def _structured(
    task: Task, model: Candidate, example: Example, params: GenerationParams, options: EvalOptions
) -> GenerationParams:
    """An example's decoding settings: a local model decodes under the task's schema, narrowed to the
    example's input where the task's fields copy values or enforce formats (the same rule as serving)."""
    if not model.structured or task.is_text:  # free text decodes freely
        return params
    if not options.constrain_values:
        return replace(params, json_schema=task.output_schema)
    return replace(params, json_schema=decoding_schema(task, source_text(example.prompt)))


def _ask(
    task: Task,
    model: Candidate,
    generator: Generator,
    examples: list[Example],
    keys: dict[str, str],
    params: dict[str, GenerationParams],
    concurrency: int,
    finished: Callable[[StoredResult], None],
) -> None:
    """Keep ``concurrency`` requests in flight; score each answer in this thread as it comes back."""
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"eval-{model.kind}")
    queue = iter(examples)
    in_flight: dict[Future[Completion], Example] = {}
    answered = failed = 0

    def submit_next() -> None:
        example = next(queue, None)
        if example is not None:
            in_flight[pool.submit(generator.complete, example.prompt, params[example.id], stop)] = example

    try:
        # Submitting as slots free up (not all at once) keeps Ctrl-C from leaving a long queue behind.
        for _ in range(concurrency):
            submit_next()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                example = in_flight.pop(future)
                try:
                    completion = future.result()
                except RequestFailed as exc:
                    failed += 1
                    if answered == 0 and failed >= FAILURES_BEFORE_GIVING_UP:
                        raise EndpointFailure(
                            f"the first {failed} requests all failed; the last: {exc}", where=f"model {model.label}"
                        ) from None
                    finished(_failed(task, example, model, str(exc), keys[example.id]))
                else:
                    answered += 1
                    finished(_answered(task, example, model, completion, keys[example.id], concurrency))
                submit_next()
    except BaseException:
        stop.set()  # endpoint requests stop at their next chunk; a local one finishes its answer
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _answered(
    task: Task, example: Example, model: Candidate, completion: Completion, key: str, concurrency: int
) -> StoredResult:
    # Machine time for self-hosted cost: a local engine's own busy time; for an endpoint serving
    # `concurrency` requests at once, its share of the wall time.
    if model.one_at_a_time and completion.engine_ms is not None:
        machine_seconds = completion.engine_ms / 1000
    else:
        machine_seconds = completion.latency_ms / 1000 / concurrency
    cost = model.cost.request_cost(
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cached_tokens=completion.cached_tokens,
        machine_seconds=machine_seconds,
    )
    result = _scored(task, example, model.label, completion.text, None, cache_key_value=key)
    result.latency_ms, result.ttft_ms = completion.latency_ms, completion.ttft_ms
    result.prompt_tokens, result.completion_tokens = completion.prompt_tokens, completion.completion_tokens
    result.cost_usd = cost
    return result


def _failed(task: Task, example: Example, model: Candidate, error: str, key: str) -> StoredResult:
    return _scored(task, example, model.label, None, f"request failed: {error}", cache_key_value=key)


def _from_cache(task: Task, example: Example, model: Candidate, answer: StoredResult) -> StoredResult:
    # The answer is reused, the score is not: the same prompt may carry another gold answer here.
    result = _scored(task, example, model.label, answer.output, None, cache_key_value=answer.cache_key)
    result.latency_ms, result.ttft_ms = answer.latency_ms, answer.ttft_ms
    result.prompt_tokens, result.completion_tokens = answer.prompt_tokens, answer.completion_tokens
    result.cost_usd, result.cached = answer.cost_usd, True
    return result


def _scored(
    task: Task, example: Example, label: str, output: str | None, error: str | None, *, cache_key_value: str | None
) -> StoredResult:
    score = score_record(task, example.id, output, example.gold, source_text(example.prompt))
    return StoredResult(
        example_id=example.id,
        model=label,
        output=output,
        field_verdicts={name: verdict.value for name, verdict in score.verdicts.items()},
        valid=score.valid,
        error=error or score.invalid_reason,
        check_failures=score.check_failures or None,
        latency_ms=None,
        ttft_ms=None,
        prompt_tokens=None,
        completion_tokens=None,
        cost_usd=None,
        cache_key=cache_key_value,
    )


def _task_ref(task: Task | str) -> str:
    """How a resumed run finds its task again: a file by absolute path, otherwise by name."""
    if isinstance(task, Task):
        return task.name
    path = Path(task).expanduser()
    return str(path.resolve()) if path.is_file() else task


@dataclass(frozen=True)
class _Judging:
    options: JudgeOptions
    candidate: Candidate  # the judge
    baseline: str  # the baseline's label among the run's models
    labels: list[LabelledPair] | None  # pairs a person labelled, to measure the judge's agreement on


def _judging(
    options: JudgeOptions | None,
    specs: list[ModelSpec],
    resolved: list[Candidate],
    prices: PriceTable,
    *,
    stream: bool,
) -> _Judging | None:
    """The judge resolved, and the baseline found among the models (or added to them: it answers too)."""
    if options is None:
        return None
    assert options.baseline is not None  # check_judgeable
    judge = resolve_candidate(ModelSpec(options.judge, backend=options.backend), prices, stream=False)
    named = [
        model for model, spec in zip(resolved, specs, strict=True) if options.baseline in (spec.model, model.label)
    ]
    if named:
        baseline = named[0]
    else:
        baseline = resolve_candidate(ModelSpec(options.baseline), prices, stream=stream)
        resolved.append(baseline)
        specs.append(ModelSpec(options.baseline))
    if len(resolved) < 2:
        raise TuneloopError(
            f"{baseline.label} is the baseline and the only model: there is nothing to compare with it",
            where="--baseline",
            hint="name the model to judge with --model, and the one to compare it with as --baseline",
        )
    labels = load_labels(Path(options.labels).expanduser()) if options.labels else None
    return _Judging(options, judge, baseline.label, labels)


def _judge_options(options: JudgeOptions) -> dict[str, Any]:
    return {
        "judge": options.judge,
        "baseline": options.baseline,
        "labels": options.labels,
        "max_tokens": options.max_tokens,
        "backend": options.backend,
    }


def judge_agreement(
    task: Task | str,
    labels_path: Path,
    judge_model: str,
    *,
    max_tokens: int = JUDGE_MAX_TOKENS,
    use_cache: bool = True,
    concurrency: int = 1,
    backend: str | None = None,
    console: Console | None = None,
) -> EvalReport:
    """A judge on pairs people labelled: its agreement with them (Wilson interval) and Cohen's kappa, stored
    as a run (mode ``agreement``) whose verdicts the answer cache keeps, so measuring it again costs nothing."""
    console = console or Console(stderr=True)
    task_ref = _task_ref(task)
    task = load_task(task) if isinstance(task, str) else task
    options = JudgeOptions(judge_model, labels=str(labels_path), max_tokens=max_tokens, backend=backend)
    if not task.is_text:
        check_judgeable(task, options)  # the JSON-task refusal, with its hint
    labels = load_labels(labels_path)
    judge = resolve_candidate(ModelSpec(judge_model, backend=backend), load_price_table(), stream=False)
    config = {
        "mode": "agreement",
        "task_ref": task_ref,
        "fields": [],
        "requirements": {},
        "n": len(labels),
        "models": [],
        "options": {"concurrency": concurrency, "use_cache": use_cache, "judge": _judge_options(options)},
        "judge": judging_config(judge, options, "", [], labels),
    }
    run_id = create_run(task.name, str(labels_path.expanduser().resolve()), config)
    writer = ResultWriter(run_id)
    try:
        ask_judge(
            judge,
            label_jobs(task, labels),
            judge_params(judge, max_tokens),
            writer=writer,
            done=set(),
            use_cache=use_cache,
            concurrency=concurrency,
            console=console,
        )
    except KeyboardInterrupt:
        writer.flush()
        mark_run(run_id, "interrupted")
        raise EvalInterrupted(run_id, len(run_results(run_id))) from None
    except TuneloopError:
        writer.flush()
        mark_run(run_id, "failed")
        raise
    writer.flush()
    report = replace(build_report(get_run(run_id), run_results(run_id)), status="done")
    mark_run(run_id, "done", summary=report.to_dict())
    return report


def _refuse_duplicate_labels(models: list[Candidate]) -> None:
    seen: set[str] = set()
    for model in models:
        if model.label in seen:
            raise TuneloopError(f"model {model.label!r} is named twice", where="--model", hint="name each model once")
        seen.add(model.label)


__all__ = [
    "EvalInterrupted",
    "EvalOptions",
    "JudgeOptions",
    "ModelSpec",
    "decoding_params",
    "judge_agreement",
    "resume_eval",
    "run_eval",
    "score_predictions",
]
