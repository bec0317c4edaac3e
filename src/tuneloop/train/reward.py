"""The task's own score as a reward: a generated answer against the verified one, for GRPO (``grpo.py``).

The scale, and why:

    invalid (not JSON, or not fitting the output schema)       -1
    valid: field agreement - 0.25 per extra failed check        -0.5 .. 1
           (agreement: the share of the task's fields its comparators call correct, 0..1)

- **Agreement is 1 - the record's field error**, computed by the scorer evals use (``answers.score_record``:
  the task's comparators, tolerances and date formats). Raising the reward is lowering the number the
  task's requirements are judged on, field by field; nothing else is rewarded (no length or format bonus
  that a model could learn to game).
- **Invalid is the lowest reward, alone**: an answer that does not parse gives a user nothing (evals count
  every one of its fields wrong), and keeping it 0.5 below the lowest valid answer means GRPO's advantages
  (rewards normalised within a prompt's group) always rank any parseable answer above any unparseable one.
- **The task's checks are penalties** (``Task.run_checks``: field ranges, cross-field rules, formats): each
  check the answer fails costs 0.25, because at serve time a failed check is acted on (escalated to review,
  a fallback call, a rejection). As many failures as the verified answer has itself are forgiven, so the
  right answer is never penalised where the data and the checks disagree. The penalty stops at the floor of -0.5:
  a valid answer never falls to the level of an invalid one.

Everything here is a pure function of the task, the answer's text and the verified answer, except
``TaskReward``, the callable TRL's ``GRPOTrainer`` calls with a batch of completions and the dataset's
``verified`` column.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneloop.answers import score_record
from tuneloop.comparators import Verdict
from tuneloop.errors import TuneloopError
from tuneloop.task import Task

INVALID_REWARD = -1.0
CHECK_PENALTY = 0.25  # per failed check beyond the verified answer's own
VALID_FLOOR = -0.5  # the lowest reward of a valid answer: above INVALID_REWARD, whatever checks it fails
VERIFIED_COLUMN = "verified"  # the dataset column holding the verified answer (canonical JSON)


@dataclass(frozen=True)
class Reward:
    """One answer's reward, with the parts it is made of (for logs, plots and tests)."""

    value: float
    valid: bool
    agreement: float  # share of fields correct, 0..1 (0 when invalid)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    failed_checks: list[str] = field(default_factory=list)  # the answer's, less as many as the verified has
    invalid_reason: str | None = None


def answer_reward(task: Task, output: str, verified: dict[str, Any]) -> Reward:
    """The reward of ``output`` (a model's raw text) against ``verified`` (the verified answer's fields)."""
    if task.is_text:  # no fields, so no field score: a judge weighs free text (evals/judge.py)
        raise TuneloopError(
            f"task {task.name} answers in free text (output: text): it has no field score to reward",
            hint="train a text task with SFT or --method dpo",
        )
    score = score_record(task, "", output, verified)
    if not score.valid:
        return Reward(INVALID_REWARD, False, 0.0, dict(score.verdicts), [], score.invalid_reason)
    agreement = sum(not verdict.is_error for verdict in score.verdicts.values()) / len(score.verdicts)
    # The verified answer's own failures are the data's, not the model's: as many as it has are forgiven.
    allowed = len(task.run_checks(verified))
    failed = score.check_failures[allowed:] if len(score.check_failures) > allowed else []
    value = max(VALID_FLOOR, agreement - CHECK_PENALTY * len(failed))
    return Reward(value, True, agreement, dict(score.verdicts), list(failed))


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(message.get("content") or "") for message in completion if isinstance(message, dict))
    raise TypeError(f"a completion is a string or a list of messages, not {type(completion).__name__}")


class TaskReward:
    """``reward_funcs`` for TRL's ``GRPOTrainer``: the task's score of each completion against the verified
    answer in the dataset's ``verified`` column (repeated by TRL for each of a prompt's generations).

    Also logs, per step, the share of invalid answers and the mean field agreement (``log_metric``), so the
    reward curve can be read apart: format learned, fields learned, checks learned.
    """

    __name__ = "task_score"  # TRL names the reward's logs after it: rewards/task_score/mean

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        verified: list[str],
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        rewards = [
            answer_reward(self.task, completion_text(completion), json.loads(gold))
            for completion, gold in zip(completions, verified, strict=True)
        ]
        if log_metric is not None and rewards:
            log_metric("task/invalid_share", sum(not r.valid for r in rewards) / len(rewards))
            log_metric("task/field_agreement", sum(r.agreement for r in rewards) / len(rewards))
            log_metric("task/failed_checks", sum(len(r.failed_checks) for r in rewards) / len(rewards))
        return [reward.value for reward in rewards]
