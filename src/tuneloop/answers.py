"""Reading a model's answer for a task: the JSON object in its raw output, or why there is none; and one
answer scored field by field against its verified answer (``score_record``).

Evals score these answers, datasets turn them into entries, the review policy checks them at serve time,
and training's reward (train/reward.py) scores sampled answers: one parser and one scorer, so a text that
counts as an answer (and a field that counts as right) in one place counts everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tuneloop.comparators import Verdict, compare_field
from tuneloop.errors import TuneloopError
from tuneloop.extraction import value_in_input
from tuneloop.task import Task

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def unfenced(output: str) -> str:
    """A model's output without surrounding whitespace and one Markdown code fence (API models add them)."""
    text = output.strip()
    fenced = _FENCE.match(text)
    return fenced.group(1) if fenced else text


def parse_answer(task: Task, output: str) -> tuple[dict[str, Any] | None, str | None]:
    """The answer object in a model's raw output, or None and the reason it is invalid.

    Surrounding whitespace and one Markdown code fence are tolerated (API models add them); anything
    else around the JSON makes the output invalid.
    """
    if task.is_text:  # callers branch on is_text first; a text answer is never parsed as JSON
        raise TuneloopError(
            f"task {task.name} answers in free text (output: text): there is no JSON answer to parse",
            hint="read the answer as text (Task.is_text); text answers are judged with `tuneloop eval run --judge`",
        )
    try:
        answer = json.loads(unfenced(output))
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at position {exc.pos}"
    problems = task.schema_errors(answer, check_formats=False)
    if problems:
        return None, "does not fit the schema: " + "; ".join(problems)
    return answer, None


@dataclass
class RecordScore:
    example_id: str
    verdicts: dict[str, Verdict]
    valid: bool
    invalid_reason: str | None = None
    answer: dict[str, Any] | None = None
    check_failures: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(v.is_error for v in self.verdicts.values())

    @property
    def exact(self) -> bool:
        return self.errors == 0


def score_record(
    task: Task, example_id: str, output: str | None, gold: dict[str, Any], source: str | None = None
) -> RecordScore:
    """Score one output; ``output=None`` (no prediction) counts as invalid.

    With ``source`` (the example's input text), a wrong value of an extractive field that the input does
    not hold is counted as *invented* rather than wrong: the error constrained decoding rules out.
    """
    if task.is_text:  # free text has no fields to compare: valid when there is one; a judge weighs it (evals/judge.py)
        if output is None or not output.strip():
            why = "no prediction for this example" if output is None else "the answer is empty"
            return RecordScore(example_id, {}, False, why)
        return RecordScore(example_id, {}, True, None, None, task.run_checks(output.strip()))
    if output is None:
        answer, reason = None, "no prediction for this example"
    else:
        answer, reason = parse_answer(task, output)
    if answer is None:
        return RecordScore(example_id, {f: Verdict.INVALID for f in task.field_names}, False, reason)
    verdicts = {f: compare_field(task.field_spec(f), answer.get(f), gold.get(f)) for f in task.field_names}
    if source is not None:
        for name, verdict in verdicts.items():
            copied = task.field_spec(name).extract is not None
            if copied and verdict.is_error and not value_in_input(task, name, answer.get(name), source):
                verdicts[name] = Verdict.INVENTED
    return RecordScore(example_id, verdicts, True, None, answer, task.run_checks(answer))
