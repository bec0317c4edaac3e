"""An LLM judge for free-text tasks: answers weighed pairwise against a baseline's, in both orders.

A text task (``output: text``) has no fields to compare, so ``tuneloop eval run --judge MODEL --baseline
MODEL`` asks a judge (any model id: an upstream model, a local base or version, through the same
``Candidate`` interface the models under test run on) which of two answers to the same request meets the
task's ``rubric`` better, given the reference answer of the gold row. Every pair is asked twice, the
candidate's answer once as A and once as B (``ORDERS``), because judges prefer a position (often the first):

- both orders name the candidate → a **win**; both name the baseline → a **loss**; both say tie → a tie;
- the two orders disagree → a **tie**, counted as *inconsistent*; a judge that always picks A is thus all
  ties (win rate 0.5), never a string of wins. The share of inconsistent pairs says how much position,
  not content, decided.

The verdict is strict JSON, ``{"winner": "A" | "B" | "tie", "reason": "..."}``, decoded under that schema
where the judge supports it (a local model's grammar; ``response_format`` for an endpoint) and validated
afterwards: a verdict that does not parse is reported as *unparseable*, and its pair left out of the win
rate rather than guessed. Identical answers are a tie without asking; an answer missing (a failed
request, an empty answer) loses to any answer, also without asking.

The win rate is (wins + ½ ties) / pairs decided, with Wilson's 95 % score interval over those pairs (a
tie's half point has less variance than a coin's, so the interval is, if anything, conservative).

Judge answers are eval results like any other (rows labelled ``judge|AB|<candidate>``), stored with the
answer cache's key (``store.cache_key``: the judge's identity, its messages, its decoding settings), so a
re-run asks the judge nothing it was asked before.

How far to trust a judge is measured, not assumed: ``measure_agreement`` (``tuneloop eval judge-agreement``,
or ``--judge-labels`` of ``eval run``) runs it on pairs a person labelled (A, B or tie), debiased the same
way, and reports the share it agrees on with Wilson's interval and Cohen's kappa (agreement beyond what the
two label distributions give by chance).
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from tuneloop.answers import unfenced
from tuneloop.errors import TuneloopError
from tuneloop.evals.candidates import Candidate, Completion, EndpointFailure, Generator, RequestFailed
from tuneloop.evals.store import ResultWriter, StoredResult, cache_key, cached_answers, run_results
from tuneloop.generation import GenerationParams, Message
from tuneloop.progress import progress_bar
from tuneloop.task import Task

Winner = Literal["A", "B", "tie"]
Outcome = Literal["win", "loss", "tie"]
WINNERS: tuple[Winner, ...] = ("A", "B", "tie")
ORDERS = ("AB", "BA")  # AB: the candidate's answer is shown as A, the baseline's as B; BA the other way
JUDGE_MAX_TOKENS = 200
REASON_MAX_CHARS = 300  # a local judge's grammar bounds the reason, so a small model cannot ramble past max_tokens
FAILURES_BEFORE_GIVING_UP = 3  # the runner's rule: a judge whose first requests all fail is misconfigured
ROW_PREFIX = "judge|"  # eval_results.model of a judge answer: judge|AB|<candidate label>
LABELS_ROW = "judge-labels|"  # ... and of one on a labelled pair: judge-labels|AB

SYSTEM_PROMPT = (
    "You are a strict, impartial judge. You compare two answers, A and B, to the same request, by the task's "
    "rubric. The reference answer is a verified good answer: an answer need not share its wording, only "
    "meet the rubric as well. Judge by the rubric alone, not by length or by which answer comes first. "
    'Reply with JSON only: {"winner": "A" or "B" or "tie", "reason": "one short sentence"}.'
)


def verdict_schema(*, bounded: bool) -> dict[str, Any]:
    """The verdict's JSON schema; ``bounded`` caps the reason's length (local grammars: OpenAI's strict mode
    takes no maxLength, and an endpoint's answer is capped by max_tokens anyway)."""
    reason: dict[str, Any] = {"type": "string"}
    if bounded:
        reason["maxLength"] = REASON_MAX_CHARS
    return {
        "type": "object",
        "properties": {"winner": {"type": "string", "enum": list(WINNERS)}, "reason": reason},
        "required": ["winner", "reason"],
        "additionalProperties": False,
    }


def judge_params(judge: Candidate, max_tokens: int = JUDGE_MAX_TOKENS) -> GenerationParams:
    """Greedy, under the verdict's schema (grammar on a local judge, response_format on an endpoint)."""
    return GenerationParams(
        max_tokens=max_tokens, temperature=0.0, top_p=1.0, json_schema=verdict_schema(bounded=judge.kind == "local")
    )


def judge_messages(
    task: Task, prompt: Sequence[Message], reference: str | None, first: str, second: str
) -> list[Message]:
    """What the judge reads: the task, the request (the prompt's non-system turns), rubric, reference, A, B."""
    turns = [message for message in prompt if message.get("role") != "system"]
    if len(turns) == 1:
        request = str(turns[0].get("content") or "")
    else:
        request = "\n\n".join(f"{message['role']}: {message.get('content') or ''}" for message in turns)
    parts = [
        f"# Task\n{task.system_prompt()}",
        f"# Request\n{request}",
        f"# Rubric\n{(task.rubric or '').strip()}",
    ]
    if reference is not None:
        parts.append(f"# Reference answer\n{reference}")
    parts += [
        f"# Answer A\n{first}",
        f"# Answer B\n{second}",
        "Which answer meets the rubric better? Reply with JSON only.",
    ]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


@dataclass(frozen=True)
class JudgeVerdict:
    """One judge answer read: ``winner`` (None when unparseable, with ``problem`` saying why)."""

    winner: Winner | None
    reason: str | None = None
    problem: str | None = None


def parse_verdict(text: str | None) -> JudgeVerdict:
    """A judge's raw answer as a verdict; anything but the strict JSON object is unparseable, never guessed."""
    if text is None:
        return JudgeVerdict(None, problem="no answer (the request failed)")
    try:
        value = json.loads(unfenced(text))
    except json.JSONDecodeError as exc:
        return JudgeVerdict(None, problem=f"not JSON: {exc.msg} at position {exc.pos}")
    if not isinstance(value, dict):
        return JudgeVerdict(None, problem=f"not a JSON object: {type(value).__name__}")
    winner = value.get("winner")
    if winner not in WINNERS:
        return JudgeVerdict(None, problem=f"winner is {winner!r}, not one of A, B, tie")
    reason = value.get("reason")
    return JudgeVerdict(winner, reason if isinstance(reason, str) else None)


def combine(ab: Winner, ba: Winner) -> tuple[Outcome, bool]:
    """The candidate's outcome from its two verdicts (in AB it is A, in BA it is B), and whether they agree.

    A win or a loss counts only when both orders say so; any disagreement is a tie.
    """
    first: Outcome = {"A": "win", "B": "loss", "tie": "tie"}[ab]  # type: ignore[assignment]
    second: Outcome = {"A": "loss", "B": "win", "tie": "tie"}[ba]  # type: ignore[assignment]
    return (first, True) if first == second else ("tie", False)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a share ``successes / n`` (95 % by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels (first, second): agreement beyond chance; None when undefined
    (no pairs, or both raters always giving one and the same label)."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[label] * second[label] for label in first) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


# --- judging an eval run's answers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One example's two answers for the judge: the candidate's and the baseline's."""

    example_id: str
    prompt: list[Message]
    reference: str | None
    candidate: str | None
    baseline: str | None


def row_label(order: str, candidate: str) -> str:
    return f"{ROW_PREFIX}{order}|{candidate}"


def _present(text: str | None) -> str | None:
    return text.strip() if text is not None and text.strip() else None


@dataclass(frozen=True)
class Job:
    """One judge request: which row it fills (label, example) and what it asks."""

    label: str
    example_id: str
    messages: list[Message]


def pair_jobs(task: Task, pairs: Sequence[Pair], candidate: str) -> list[Job]:
    """The judge requests of a candidate's pairs: two per pair with two different answers, none otherwise."""
    jobs = []
    for pair in pairs:
        mine, theirs = _present(pair.candidate), _present(pair.baseline)
        if mine is None or theirs is None or mine == theirs:
            continue  # decided without a judge: see outcome_of
        jobs.append(
            Job(
                row_label("AB", candidate),
                pair.example_id,
                judge_messages(task, pair.prompt, pair.reference, mine, theirs),
            )
        )
        jobs.append(
            Job(
                row_label("BA", candidate),
                pair.example_id,
                judge_messages(task, pair.prompt, pair.reference, theirs, mine),
            )
        )
    return jobs


def ask_judge(
    judge: Candidate,
    jobs: Sequence[Job],
    params: GenerationParams,
    *,
    writer: ResultWriter,
    done: set[tuple[str, str]],
    use_cache: bool,
    concurrency: int,
    console: Console,
) -> tuple[int, int]:
    """Fill each job's row: from the run (``done``: resuming), the answer cache, or the judge. Returns
    (answers from the cache, judge calls made). The judge is loaded only when something is left to ask."""
    todo = [job for job in jobs if (job.label, job.example_id) not in done]
    keys = {id(job): cache_key(judge.identity, job.messages, params) for job in todo}
    cached = cached_answers(keys.values()) if use_cache and todo else {}
    fresh = []
    for job in todo:
        hit = cached.get(keys[id(job)])
        if hit is None:
            fresh.append(job)
            continue
        writer.add(_judge_row(job, hit.output, hit.error, keys[id(job)], cached_from=hit))
    if todo and len(todo) > len(fresh):
        console.print(
            f"judge {judge.label}: {len(todo) - len(fresh)} verdicts from the cache", highlight=False, markup=False
        )
    if not fresh:
        return len(todo), 0
    with console.status(f"loading judge {escape(judge.label)}"):
        generator = judge.load()
    try:
        with progress_bar(console, unit="verdict") as progress:
            bar = progress.add_task(escape(f"judge {judge.label}"), total=len(fresh))

            def finished(job: Job, completion: Completion | None, error: str | None) -> None:
                text = completion.text if completion is not None else None
                row = _judge_row(job, text, error, keys[id(job)])
                if completion is not None:
                    row.latency_ms, row.ttft_ms = completion.latency_ms, completion.ttft_ms
                    row.prompt_tokens, row.completion_tokens = completion.prompt_tokens, completion.completion_tokens
                    # What the judge costs, as the models under test are costed (a local engine: its own time).
                    busy = completion.engine_ms if judge.one_at_a_time and completion.engine_ms is not None else None
                    row.cost_usd = judge.cost.request_cost(
                        prompt_tokens=completion.prompt_tokens,
                        completion_tokens=completion.completion_tokens,
                        cached_tokens=completion.cached_tokens,
                        machine_seconds=(busy if busy is not None else completion.latency_ms / concurrency) / 1000,
                    )
                writer.add(row)
                progress.advance(bar)

            _run_jobs(generator, fresh, params, concurrency, finished, label=judge.label)
    finally:
        generator.close()
    return len(todo) - len(fresh), len(fresh)


def _run_jobs(
    generator: Generator,
    jobs: Sequence[Job],
    params: GenerationParams,
    concurrency: int,
    finished: Callable[[Job, Completion | None, str | None], None],
    *,
    label: str,
) -> None:
    """``concurrency`` judge requests in flight; a failed request is recorded, an endpoint failure stops all,
    and so do failures of the first requests (a judge that refuses what it is asked would fail every one)."""
    stop = threading.Event()
    answered = failed = 0
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval-judge")
    queue = iter(jobs)
    in_flight: dict[Future[Completion], Job] = {}

    def submit_next() -> None:
        job = next(queue, None)
        if job is not None:
            in_flight[pool.submit(generator.complete, job.messages, params, stop)] = job

    try:
        for _ in range(concurrency):
            submit_next()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                job = in_flight.pop(future)
                try:
                    completion = future.result()
                except RequestFailed as exc:
                    failed += 1
                    if answered == 0 and failed >= FAILURES_BEFORE_GIVING_UP:
                        raise EndpointFailure(
                            f"the judge's first {failed} requests all failed; the last: {exc}",
                            where=f"--judge {label}",
                            hint="check the judge's id; an endpoint must take response_format json_schema "
                            "(structured output) for the verdict",
                        ) from None
                    finished(job, None, f"request failed: {exc}")
                else:
                    answered += 1
                    finished(job, completion, None)
                submit_next()
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _judge_row(
    job: Job, output: str | None, error: str | None, key: str, cached_from: StoredResult | None = None
) -> StoredResult:
    verdict = parse_verdict(output)
    row = StoredResult(
        example_id=job.example_id,
        model=job.label,
        output=output,
        field_verdicts=None,
        valid=verdict.winner is not None,
        error=error or verdict.problem,
        check_failures=None,
        latency_ms=None,
        ttft_ms=None,
        prompt_tokens=None,
        completion_tokens=None,
        cost_usd=None,
        cache_key=key,
    )
    if cached_from is not None:
        row.latency_ms, row.ttft_ms = cached_from.latency_ms, cached_from.ttft_ms
        row.prompt_tokens, row.completion_tokens = cached_from.prompt_tokens, cached_from.completion_tokens
        row.cost_usd, row.cached = cached_from.cost_usd, True
    return row


# --- summaries -------------------------------------------------------------------------------------------


How = Literal["judged", "inconsistent", "identical", "unanswered", "unparseable", "failed", "pending"]


def outcome_of(
    candidate: str | None, baseline: str | None, ab: StoredResult | None, ba: StoredResult | None
) -> tuple[Outcome | None, How]:
    """One pair's outcome for the candidate, and how it was reached. None: not counted (unparseable, a
    failed judge request, or not judged yet)."""
    mine, theirs = _present(candidate), _present(baseline)
    if mine is None or theirs is None:  # an answer beats no answer; two missing answers tie
        return ("tie" if mine is None and theirs is None else "win" if theirs is None else "loss"), "unanswered"
    if mine == theirs:
        return "tie", "identical"
    if ab is None or ba is None:
        return None, "pending"
    if ab.output is None or ba.output is None:
        return None, "failed"
    first, second = parse_verdict(ab.output), parse_verdict(ba.output)
    if first.winner is None or second.winner is None:
        return None, "unparseable"
    outcome, consistent = combine(first.winner, second.winner)
    return outcome, "judged" if consistent else "inconsistent"


@dataclass
class JudgeSummary:
    """A candidate against the baseline, as the judge saw it (both orders, position bias removed)."""

    candidate: str
    baseline: str
    judge: str
    pairs: int  # examples both models answered in the run
    wins: int = 0
    ties: int = 0
    losses: int = 0
    judged: int = 0  # pairs with two parsed verdicts
    inconsistent: int = 0  # ... that disagreed (counted as ties)
    identical: int = 0  # the same answer twice: a tie, not asked
    unanswered: int = 0  # one side (or both) gave no answer: decided without the judge
    unparseable: int = 0  # a verdict that is not the strict JSON asked for: left out of the win rate
    failed: int = 0  # a judge request that failed: left out too
    pending: int = 0  # not judged yet (an interrupted run)
    verdicts_cached: int = 0
    judge_calls: int = 0
    judge_spent_usd: float | None = None  # what this run's new judge calls cost (None: not known)

    @property
    def decided(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float | None:
        return (self.wins + 0.5 * self.ties) / self.decided if self.decided else None

    @property
    def win_rate_ci95(self) -> tuple[float, float] | None:
        return wilson_interval(self.wins + 0.5 * self.ties, self.decided) if self.decided else None

    @property
    def inconsistent_share(self) -> float | None:
        return self.inconsistent / self.judged if self.judged else None

    def to_dict(self) -> dict[str, Any]:
        interval = self.win_rate_ci95
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "judge": self.judge,
            "pairs": self.pairs,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "win_rate": self.win_rate,
            "win_rate_ci95": list(interval) if interval else None,
            "interval": "wilson",
            "judged": self.judged,
            "inconsistent": self.inconsistent,
            "inconsistent_share": self.inconsistent_share,
            "identical": self.identical,
            "unanswered": self.unanswered,
            "unparseable": self.unparseable,
            "failed": self.failed,
            "pending": self.pending,
            "verdicts_cached": self.verdicts_cached,
            "judge_calls": self.judge_calls,
            "judge_spent_usd": self.judge_spent_usd,
        }


def summarize_judging(judging: dict[str, Any], results: Sequence[StoredResult]) -> list[JudgeSummary]:
    """Per candidate, its pairs against the baseline, from a run's stored results and its ``judge`` config."""
    by_row = {(result.model, result.example_id): result for result in results}
    baseline = judging["baseline"]
    baseline_answers = {r.example_id: r.output for r in results if r.model == baseline}
    summaries = []
    for candidate in judging["candidates"]:
        summary = JudgeSummary(candidate, baseline, judging["judge"], pairs=0)
        for result in results:
            if result.model != candidate or result.example_id not in baseline_answers:
                continue
            summary.pairs += 1
            rows = [by_row.get((row_label(order, candidate), result.example_id)) for order in ORDERS]
            for row in rows:
                if row is not None:
                    summary.verdicts_cached += row.cached
                    summary.judge_calls += not row.cached
                    if not row.cached and row.cost_usd is not None:
                        summary.judge_spent_usd = (summary.judge_spent_usd or 0.0) + row.cost_usd
            outcome, how = outcome_of(result.output, baseline_answers[result.example_id], *rows)
            if outcome is not None:
                counter = _COUNTERS[outcome]
                setattr(summary, counter, getattr(summary, counter) + 1)
            if how in ("judged", "inconsistent"):
                summary.judged += 1
            if how != "judged":
                setattr(summary, how, getattr(summary, how) + 1)
        summaries.append(summary)
    return summaries


_COUNTERS = {"win": "wins", "tie": "ties", "loss": "losses"}


# --- agreement with human labels -------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledPair:
    """Two answers to one request and which one a person preferred (A, B or tie)."""

    id: str
    prompt: list[Message]
    reference: str | None
    a: str
    b: str
    label: Winner
    where: str


def load_labels(path: Path) -> list[LabelledPair]:
    """Labelled pairs from JSONL: ``{"id", "messages", "a", "b", "label": "A"|"B"|"tie"}``; ``messages`` is the
    prompt, optionally ending in the reference answer (an assistant message). Problems name file:line and field."""
    from tuneloop.data.jsonl import read_rows

    if not path.is_file():
        raise TuneloopError(f"no labels file {path}", where="--labels", hint="give a JSONL file of labelled pairs")
    text = path.read_text(encoding="utf-8")
    lines = [number for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    pairs: list[LabelledPair] = []
    seen: dict[str, str] = {}
    for row, line in zip(read_rows(path), lines, strict=True):
        where = f"{path}:{line}"
        example_id = row.get("id", f"line-{line}")
        if not isinstance(example_id, str | int) or isinstance(example_id, bool):
            raise TuneloopError(f"field `id` must be a string or an integer, got {example_id!r}", where=where)
        for key in ("a", "b"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise TuneloopError(f"field `{key}` must be a non-empty answer text", where=where, hint=_LABEL_ROW_HINT)
        label = row.get("label")
        if label not in WINNERS:
            raise TuneloopError(
                f"field `label` is {label!r}: the person's preference is one of A, B, tie",
                where=where,
                hint=_LABEL_ROW_HINT,
            )
        messages = row["messages"]
        reference = None
        if messages[-1].get("role") == "assistant":
            reference, messages = str(messages[-1].get("content") or "").strip() or None, messages[:-1]
        if not messages:
            raise TuneloopError("field `messages` holds no prompt before the reference answer", where=where)
        key = str(example_id)
        if key in seen:
            raise TuneloopError(f"id {key!r} is also on {seen[key]}", where=where, hint="ids must be unique")
        seen[key] = where
        pairs.append(LabelledPair(key, messages, reference, row["a"].strip(), row["b"].strip(), label, where))
    if not pairs:
        raise TuneloopError("no labelled pairs", where=str(path), hint=_LABEL_ROW_HINT)
    return pairs


_LABEL_ROW_HINT = (
    'rows look like {"id": "p1", "messages": [...prompt..., {"role": "assistant", "content": "<reference>"}], '
    '"a": "<answer>", "b": "<answer>", "label": "A"}'
)


def label_jobs(task: Task, pairs: Sequence[LabelledPair]) -> list[Job]:
    jobs = []
    for pair in pairs:
        jobs.append(Job(f"{LABELS_ROW}AB", pair.id, judge_messages(task, pair.prompt, pair.reference, pair.a, pair.b)))
        jobs.append(Job(f"{LABELS_ROW}BA", pair.id, judge_messages(task, pair.prompt, pair.reference, pair.b, pair.a)))
    return jobs


def debiased_label(ab: StoredResult | None, ba: StoredResult | None) -> tuple[Winner | None, How]:
    """The judge's preference on a labelled pair, both orders agreeing (else a tie), in the pair's A/B terms."""
    if ab is None or ba is None:
        return None, "pending"
    if ab.output is None or ba.output is None:
        return None, "failed"
    first, second = parse_verdict(ab.output), parse_verdict(ba.output)
    if first.winner is None or second.winner is None:
        return None, "unparseable"
    # In BA the pair's b is shown first: its "A" means the pair's B.
    swapped: Winner = {"A": "B", "B": "A", "tie": "tie"}[second.winner]  # type: ignore[assignment]
    if first.winner == swapped:
        return first.winner, "judged"
    return "tie", "inconsistent"


@dataclass
class Agreement:
    """The judge against people on labelled pairs."""

    judge: str
    labels: str
    pairs: int
    judged: int = 0  # pairs with two parsed verdicts: what the rates are over
    agree: int = 0
    inconsistent: int = 0
    unparseable: int = 0
    failed: int = 0
    pending: int = 0
    kappa: float | None = None
    # confusion[human][judge]: counts over the judged pairs
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    measured_in: int | None = None  # another run's measurement of this judge, shown beside this run's verdicts

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Agreement:
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**fields)

    @property
    def rate(self) -> float | None:
        return self.agree / self.judged if self.judged else None

    @property
    def rate_ci95(self) -> tuple[float, float] | None:
        return wilson_interval(self.agree, self.judged) if self.judged else None

    def to_dict(self) -> dict[str, Any]:
        interval = self.rate_ci95
        return {
            "judge": self.judge,
            "labels": self.labels,
            "pairs": self.pairs,
            "judged": self.judged,
            "agree": self.agree,
            "agreement": self.rate,
            "agreement_ci95": list(interval) if interval else None,
            "interval": "wilson",
            "kappa": self.kappa,
            "inconsistent": self.inconsistent,
            "unparseable": self.unparseable,
            "failed": self.failed,
            "pending": self.pending,
            "confusion": self.confusion,
            "measured_in": self.measured_in,
        }


def summarize_agreement(judging: dict[str, Any], results: Sequence[StoredResult]) -> Agreement:
    """Agreement from a run's stored label rows and the human labels its config recorded."""
    human: dict[str, str] = judging["human"]
    by_row = {(result.model, result.example_id): result for result in results}
    agreement = Agreement(judging["judge"], judging["labels"], pairs=len(human))
    rated: list[tuple[str, str]] = []
    for pair_id, label in human.items():
        verdict, how = debiased_label(*(by_row.get((f"{LABELS_ROW}{order}", pair_id)) for order in ORDERS))
        if how in ("failed", "unparseable", "pending"):
            setattr(agreement, how, getattr(agreement, how) + 1)
            continue
        assert verdict is not None
        agreement.inconsistent += how == "inconsistent"
        rated.append((label, verdict))
    agreement.judged = len(rated)
    agreement.agree = sum(h == j for h, j in rated)
    agreement.kappa = cohen_kappa(rated)
    agreement.confusion = {h: {j: sum(1 for x, y in rated if (x, y) == (h, j)) for j in WINNERS} for h in WINNERS}
    return agreement


# --- the two entry points: judging a run, measuring agreement ------------------------------------------------


@dataclass(frozen=True)
class JudgeOptions:
    """``eval run --judge MODEL --baseline MODEL [--judge-labels FILE] [--judge-max-tokens N] [--judge-backend B]``."""

    judge: str
    baseline: str | None = None
    labels: str | None = None
    max_tokens: int = JUDGE_MAX_TOKENS
    backend: str | None = None  # a local judge's engine (--judge-backend): llamacpp or transformers

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise TuneloopError(f"must be at least 16, got {self.max_tokens}", where="--judge-max-tokens")


def check_judgeable(task: Task, options: JudgeOptions) -> None:
    """Refuse, before anything runs, what the judge cannot do: JSON tasks (fields are scored exactly), no baseline."""
    if not task.is_text:
        raise TuneloopError(
            f"task {task.name} answers in JSON, which is scored field by field against verified answers",
            where="--judge",
            hint="the judge weighs free-text answers (a task with output: text and a rubric); drop --judge",
        )
    if options.baseline is None:
        raise TuneloopError(
            "the judge compares answers pairwise: name the model to compare against",
            where="--baseline",
            hint="add --baseline MODEL (any model id; it is run on the same examples if not already a --model)",
        )


def judging_config(
    judge: Candidate, options: JudgeOptions, baseline: str, candidates: list[str], labels: list[LabelledPair] | None
) -> dict[str, Any]:
    """What a run records about its judging (``config["judge"]``): enough to rebuild every summary."""
    return {
        "requested": options.judge,
        "judge": judge.label,
        "identity": judge.identity,
        "kind": judge.kind,
        "baseline": baseline,
        "candidates": candidates,
        "max_tokens": options.max_tokens,
        "labels": options.labels and str(Path(options.labels).expanduser().resolve()),
        "human": {pair.id: pair.label for pair in labels} if labels else None,
    }


def judge_run(
    task: Task,
    examples: Sequence[Any],
    judge: Candidate,
    judging: dict[str, Any],
    labels: Sequence[LabelledPair] | None,
    *,
    run_id: int,
    writer: ResultWriter,
    use_cache: bool,
    concurrency: int,
    console: Console,
) -> None:
    """Ask the judge about every candidate's pairs with the baseline (and the labelled pairs), into run ``run_id``."""
    writer.flush()
    results = run_results(run_id)
    answered = {(result.model, result.example_id): result.output for result in results}
    baseline = judging["baseline"]
    jobs: list[Job] = []
    for candidate in judging["candidates"]:
        pairs = [
            Pair(ex.id, ex.prompt, ex.reference, answered[(candidate, ex.id)], answered[(baseline, ex.id)])
            for ex in examples
            if (candidate, ex.id) in answered and (baseline, ex.id) in answered
        ]
        jobs += pair_jobs(task, pairs, candidate)
    if labels:
        jobs += label_jobs(task, labels)
    done = {(r.model, r.example_id) for r in results if r.model.startswith((ROW_PREFIX, LABELS_ROW))}
    ask_judge(
        judge,
        jobs,
        judge_params(judge, judging["max_tokens"]),
        writer=writer,
        done=done,
        use_cache=use_cache,
        concurrency=concurrency,
        console=console,
    )
    writer.flush()


def stored_agreement(task: str, identity: str) -> dict[str, Any] | None:
    """The newest agreement with human labels measured for this judge (same identity: same weights or
    endpoint model) on this task, in a finished run: shown beside a run's verdicts that measure none."""
    from tuneloop.evals.store import list_runs

    for run in list_runs(task=task, limit=500):
        judging = run.config.get("judge") or {}
        if run.status != "done" or judging.get("identity") != identity or not judging.get("human"):
            continue
        measured = ((run.summary or {}).get("judge") or {}).get("agreement")
        if measured:
            return {**measured, "measured_in": measured.get("measured_in") or run.id}
    return None
