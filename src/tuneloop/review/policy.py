"""The escalation policy: check each structured answer, and apply the task's ``on_check_failure``.

``tuneloop serve`` and the gateway call :meth:`ReviewPolicy.apply` on every ``chat.completion`` they
return, streamed ones included (see "Streams" below). The task is the one of the answering version
(``task@3``, also behind an upstream: ``local/task@3``), else the request's ``metadata.task``; without a
task, or when the request asked for plain text, nothing is checked.

Checks (``Task.run_checks``): schema validity (formats included), field rules, cross-field rules, and
``min_confidence`` against the mean token probability when the response carries ``logprobs``. A free-text
task (``output: text``) has no schema or fields: its answer is checked for being there and for its confidence.

On failure, the task's ``on_check_failure``:

- ``escalate``: a review item is created; the response carries the header ``x-tuneloop-review: <id>``
  and ``tuneloop.review = {id, reason, status, hold: true}`` in its body, so the caller can hold its action.
- ``reject``: the caller gets 422 ``check_failed`` (OpenAI's error shape) naming the failed checks.
- ``fallback:<model>``: the request is sent again to ``<model>`` (a teacher, say); its answer is checked
  too and returned, with the first draft and its failures in ``tuneloop.fallback``. Should the fallback
  fail its checks as well, or fail outright, the item is escalated instead (a person decides).
- ``pass``: the answer goes out as it is; the failures are reported in ``tuneloop.checks`` and counted.

A share of passing answers (``audit_sample_rate`` of the task, or the server's override) is queued for
audit (reason ``audit``, ``hold: false``, no header). Every checked response carries ``tuneloop.checks =
{task, passed, failures, confidence, action}``, which the gateway's log keeps, for drift reports.

Streams: a sent token cannot be taken back, so under ``reject`` and ``fallback`` the answer is produced
whole, checked, and only then sent as a stream ("buffered"); under ``escalate`` and ``pass`` tokens go
out as they come and the result of the checks follows in the stream's last chunk ("live").
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneloop.errors import TuneloopError
from tuneloop.protocol import OpenAIError
from tuneloop.review.metrics import ReviewMetrics
from tuneloop.task import Task

log = logging.getLogger("tuneloop.review")

REVIEW_HEADER = "x-tuneloop-review"
# Sent by a gateway with a call it mirrors to a shadow candidate: the answer is checked, never acted on.
SHADOW_HEADER = "x-tuneloop-shadow"
TASK_CACHE_S = 5.0  # a running server sees an edited task spec within this long
TASK_CACHE_LIMIT = 256  # task names remembered (found or not)

StreamMode = Literal["none", "live", "buffered"]

# Send the request to another model; returns its whole chat.completion (raises OpenAIError on failure).
Retry = Callable[[str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class CheckResult:
    """One answer against its task's checks."""

    task: str
    text: str | None
    fields: dict[str, Any] | None  # the answer's JSON object, when it parses as one
    failures: list[str]
    confidence: float | None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self, action: str) -> dict[str, Any]:
        return {
            "task": self.task,
            "passed": self.passed,
            "failures": self.failures,
            "confidence": self.confidence,
            "action": action,
        }


@dataclass
class PolicyOutcome:
    """What to send back: ``completion`` (annotated) with ``headers``, or ``error`` (reject)."""

    action: str  # none | passed | audit | pass | escalate | reject | fallback | observed
    completion: dict[str, Any]
    check: CheckResult | None = None
    review_id: int | None = None
    error: OpenAIError | None = None
    fallback_model: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


# --- checking ----------------------------------------------------------------------------------------


def answer_text(completion: dict[str, Any]) -> str | None:
    """The first choice's text, or None (no choices, tool calls only)."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def confidence_from_logprobs(completion: dict[str, Any]) -> float | None:
    """Mean token probability of the first choice, from OpenAI-shaped ``logprobs.content``; None without."""
    try:
        tokens = completion["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    values = [t.get("logprob") for t in tokens or [] if isinstance(t, dict)]
    values = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if not values:
        return None
    return sum(math.exp(min(v, 0.0)) for v in values) / len(values)


def check_answer(task: Task, text: str | None, confidence: float | None = None) -> CheckResult:
    """Parse an answer (one Markdown code fence tolerated) and run every check of the task on it."""
    if text is None:
        return CheckResult(task.name, None, None, ["schema: no text answer"], confidence)
    if task.is_text:  # free text: there is nothing to parse, only its presence and confidence to check
        return CheckResult(task.name, text, None, task.run_checks(text, confidence=confidence), confidence)
    from tuneloop.answers import unfenced

    try:
        answer = json.loads(unfenced(text))
    except json.JSONDecodeError as exc:
        return CheckResult(
            task.name, text, None, [f"schema: not valid JSON: {exc.msg} at position {exc.pos}"], confidence
        )
    failures = task.run_checks(answer, confidence=confidence)
    return CheckResult(task.name, text, answer if isinstance(answer, dict) else None, failures, confidence)


def check_completion(task: Task, completion: dict[str, Any]) -> CheckResult:
    return check_answer(task, answer_text(completion), confidence_from_logprobs(completion))


class TaskCache:
    """Task specs by (tasks folder, name), each kept ``TASK_CACHE_S``; the least recently used go past
    ``limit`` entries (names come from clients, so there is no end to the ones that can be asked for)."""

    def __init__(self, limit: int = TASK_CACHE_LIMIT) -> None:
        self.limit = limit
        self._entries: OrderedDict[tuple[str, str], tuple[float, Task | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> tuple[float, Task | None] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[str, str], entry: tuple[float, Task | None]) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)


task_cache = TaskCache()


def task_for(model: str | None, metadata: dict[str, Any] | None = None) -> Task | None:
    """The task whose checks apply: the answering version's (``task@3``, ``upstream/task@3``), else the
    request's ``metadata.task``; None when neither names a task spec this process can find. Both come from
    clients, so they are only ever looked up as names (the task-name grammar), never as paths."""
    from tuneloop.registry.ids import EndpointRef, VersionRef, parse_model_id

    name = None
    candidate = model
    for _ in range(2):  # upstream/task@3 → task@3
        if not candidate or "@" not in candidate:
            break  # no version named (and parsing would ask the filesystem whether it is a path, on each call)
        try:
            ref = parse_model_id(candidate)
        except TuneloopError:
            break
        if isinstance(ref, VersionRef):
            name = ref.task
            break
        candidate = ref.model if isinstance(ref, EndpointRef) else None
    if name is None and isinstance(metadata, dict) and isinstance(metadata.get("task"), str):
        name = metadata["task"]
    return _load_task_cached(name) if name else None


def _load_task_cached(name: str) -> Task | None:
    from tuneloop.config import get_settings
    from tuneloop.task import TASK_NAME_PATTERN, load_task_named

    if not re.fullmatch(TASK_NAME_PATTERN, name):
        return None  # not a task name (a path, say): nothing to look up, nothing to cache
    now = time.monotonic()
    key = (str(get_settings().tasks_dir), name)  # another TUNELOOP_HOME has other task specs
    cached = task_cache.get(key)
    if cached is not None and now - cached[0] < TASK_CACHE_S:
        return cached[1]
    try:
        task: Task | None = load_task_named(name)
    except TuneloopError as exc:
        if cached is not None and cached[1] is not None:  # a spec that was there went bad or away
            log.warning("no checks for task %s: %s", name, exc)
        else:  # any client can name any task: no warning per name
            log.debug("no checks for task %s: %s", name, exc)
        task = None
    task_cache.put(key, (now, task))
    return task


def wants_text(request: dict[str, Any]) -> bool:
    """The caller asked for free text, so there is no structured answer to check."""
    response_format = request.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "text"


# --- the policy --------------------------------------------------------------------------------------


class ReviewPolicy:
    """Checks answers and applies ``on_check_failure``. One per server; safe to share across requests.

    ``audit_rate`` overrides every task's ``audit_sample_rate``; ``redact`` rewrites the request and
    the draft before they are stored in a review item (the gateway passes its redactor).
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        metrics: ReviewMetrics | None = None,
        audit_rate: float | None = None,
        redact: Callable[[Any], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if audit_rate is not None and not 0 <= audit_rate <= 1:
            raise TuneloopError(f"must be between 0 and 1, got {audit_rate}", where="--audit-rate")
        self.url = url
        self.metrics = metrics
        self.audit_rate = audit_rate
        self.redact = redact
        self.rng = rng or random.Random()

    def stream_mode(self, model: str, request: dict[str, Any]) -> StreamMode:
        """How to check a streamed answer of ``model`` to ``request``: ``none`` (no task, or plain text
        asked for), ``buffered`` (``reject``/``fallback``: whatever leaves must have passed, so the answer
        is produced whole and checked before any of it is sent), else ``live`` (streamed as it comes,
        the result follows in the last chunk: a person, or nobody, acts on a failure afterwards)."""
        task = task_for(model, request.get("metadata"))
        if task is None or wants_text(request):
            return "none"
        action = task.on_check_failure
        return "buffered" if action == "reject" or action.startswith("fallback:") else "live"

    async def apply(
        self,
        request: dict[str, Any],
        completion: dict[str, Any],
        *,
        model: str,
        retry: Retry | None = None,
        capture_id: str | None = None,
        request_id: int | None = None,
        observe_only: bool = False,
    ) -> PolicyOutcome:
        """Check ``completion`` (the answer ``model`` gave to ``request``) and decide what goes back.

        ``observe_only`` (a shadow's mirrored call, whose answer no client sees): the checks run and annotate
        the answer (action ``observed``), and nothing else happens: no review item, no fallback, no 422."""
        task = task_for(model, request.get("metadata"))
        if task is None or wants_text(request) or not isinstance(completion.get("choices"), list):
            return PolicyOutcome("none", completion)
        check = check_completion(task, completion)
        self._observe(model, check)
        if observe_only:
            return self._annotated("observed", completion, check, model, count=False)
        ids = {"capture_id": capture_id, "request_id": request_id}
        if check.passed:
            rate = self.audit_rate if self.audit_rate is not None else task.audit_sample_rate
            if rate > 0 and self.rng.random() < rate:
                review_id = await self._queue(task, request, check, model, "audit", **ids)
                return self._annotated("audit", completion, check, model, review_id=review_id, hold=False)
            return self._annotated("passed", completion, check, model)

        action = task.on_check_failure
        if action == "pass":
            return self._annotated("pass", completion, check, model)
        if action == "reject":
            self._count_action(model, "reject")
            message = (
                f"the answer of {model} failed the checks of task {task.name}: {'; '.join(check.failures)}. "
                "Nothing was returned; retry, or send the input to another model"
            )
            return PolicyOutcome("reject", completion, check, error=OpenAIError(422, message, code="check_failed"))
        if action.startswith("fallback:") and retry is not None:
            fallback_model = action.removeprefix("fallback:")
            return await self._fallback(task, request, completion, check, model, fallback_model, retry, ids)
        if action.startswith("fallback:"):
            log.warning("%s: fallback is not possible here; escalating instead", model)
        review_id = await self._queue(task, request, check, model, "check_failed", **ids)
        return self._annotated("escalate", completion, check, model, review_id=review_id, hold=True)

    async def _fallback(
        self,
        task: Task,
        request: dict[str, Any],
        completion: dict[str, Any],
        check: CheckResult,
        model: str,
        fallback_model: str,
        retry: Retry,
        ids: dict[str, Any],
    ) -> PolicyOutcome:
        draft = {"model": model, "content": check.text, "failures": check.failures}
        try:
            second = await retry_checked(fallback_model, retry)
        except Exception as exc:  # the fallback is down: a person decides on the first draft
            log.warning("fallback from %s to %s failed (%s); escalating the draft", model, fallback_model, exc)
            review_id = await self._queue(task, request, check, model, "check_failed", **ids)
            outcome = self._annotated("escalate", completion, check, model, review_id=review_id, hold=True)
            outcome.completion["tuneloop"]["fallback"] = {**draft, "to": fallback_model, "error": str(exc)}
            return outcome
        answered_by = str(second.get("model") or fallback_model)
        second_check = check_completion(task, second)
        self._observe(answered_by, second_check)
        log.info(
            "fallback: %s failed %d check(s), %s answered instead (%s)",
            model,
            len(check.failures),
            answered_by,
            "passed" if second_check.passed else "failed too",
        )
        self._count_action(model, "fallback")
        if second_check.passed:
            outcome = self._annotated("fallback", second, second_check, answered_by, count=False)
        else:
            review_id = await self._queue(task, request, second_check, answered_by, "check_failed", **ids)
            outcome = self._annotated("fallback", second, second_check, answered_by, review_id=review_id, hold=True)
        outcome.completion["tuneloop"]["fallback"] = {**draft, "to": answered_by}
        outcome.fallback_model = answered_by
        return outcome

    # --- helpers -------------------------------------------------------------------------------------

    async def _queue(
        self,
        task: Task,
        request: dict[str, Any],
        check: CheckResult,
        model: str,
        reason: str,
        *,
        capture_id: str | None,
        request_id: int | None,
    ) -> int:
        from tuneloop.review.queue import create_item

        stored_request = {key: value for key, value in request.items() if key != "stream"}
        text, fields = check.text, check.fields
        if self.redact is not None:
            stored_request, text, fields = self.redact(stored_request), self.redact(text), self.redact(fields)
        review_id = await asyncio.to_thread(
            create_item,
            task=task.name,
            request=stored_request,
            draft_text=text,
            draft_fields=fields,
            failed_checks=check.failures,
            model=model,
            reason=reason,
            confidence=check.confidence,
            capture_id=capture_id,
            request_id=request_id,
            url=self.url,
        )
        if self.metrics is not None:
            self.metrics.observe_escalation(model, reason)
        log.info("review item %d: %s from %s (%s)", review_id, reason, model, "; ".join(check.failures) or "audit")
        return review_id

    def _observe(self, model: str, check: CheckResult) -> None:
        if self.metrics is not None:
            self.metrics.observe_check(model, check.failures)

    def _count_action(self, model: str, action: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_action(model, action)

    def _annotated(
        self,
        action: str,
        completion: dict[str, Any],
        check: CheckResult,
        model: str,
        *,
        review_id: int | None = None,
        hold: bool = False,
        count: bool = True,
    ) -> PolicyOutcome:
        if count and action != "passed":
            self._count_action(model, action)
        body = copy.copy(completion)
        extension = dict(body.get("tuneloop") or {})
        extension["checks"] = check.to_json(action)
        headers: dict[str, str] = {}
        if review_id is not None:
            extension["review"] = {
                "id": review_id,
                "reason": "audit" if action == "audit" else "check_failed",
                "status": "pending",
                "hold": hold,
            }
            if hold:
                headers[REVIEW_HEADER] = str(review_id)
        body["tuneloop"] = extension
        return PolicyOutcome(action, body, check, review_id=review_id, headers=headers)


async def retry_checked(model: str, retry: Retry) -> dict[str, Any]:
    """Call ``retry(model)`` and insist on a chat.completion back."""
    completion = await retry(model)
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        raise TuneloopError(f"{model} did not answer with a chat.completion", where=f"fallback {model}")
    return completion
