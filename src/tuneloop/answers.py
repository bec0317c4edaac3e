"""Reading a model's answer for a task: the JSON object in its raw output, or why there is none.

Evals score these answers, datasets turn them into entries, and the review policy checks them at serve
time: one parser, so a text that counts as an answer in one place counts everywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any

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
    try:
        answer = json.loads(unfenced(output))
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at position {exc.pos}"
    problems = task.schema_errors(answer, check_formats=False)
    if problems:
        return None, "does not fit the schema: " + "; ".join(problems)
    return answer, None
