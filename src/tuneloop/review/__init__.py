"""Human escape hatches: the escalation policy applied to each structured answer, and the review queue.

- :mod:`tuneloop.review.policy`: :class:`ReviewPolicy` (serve and gateway call ``apply`` on each answer),
  :func:`check_answer`, :func:`confidence_from_logprobs`, :func:`task_for`.
- :mod:`tuneloop.review.queue`: items, the 5-minute lock, approve / correct / reject; approvals and
  corrections become human-verified dataset entries.
- :mod:`tuneloop.review.metrics`: :class:`ReviewMetrics`, the Prometheus metrics of both (serve and the
  gateway each hold one on their own registry).

See docs/review.md.
"""

from tuneloop.review.policy import (
    REVIEW_HEADER,
    CheckResult,
    PolicyOutcome,
    ReviewPolicy,
    check_answer,
    check_completion,
    confidence_from_logprobs,
    task_for,
)
from tuneloop.review.queue import (
    LOCK_SECONDS,
    Decision,
    ItemLocked,
    ReviewView,
    approve_item,
    correct_item,
    create_item,
    get_item,
    list_items,
    lock_item,
    parse_field_value,
    queue_depth,
    reject_item,
    release_item,
)

__all__ = [
    "LOCK_SECONDS",
    "REVIEW_HEADER",
    "CheckResult",
    "Decision",
    "ItemLocked",
    "PolicyOutcome",
    "ReviewPolicy",
    "ReviewView",
    "approve_item",
    "check_answer",
    "check_completion",
    "confidence_from_logprobs",
    "correct_item",
    "create_item",
    "get_item",
    "list_items",
    "lock_item",
    "parse_field_value",
    "queue_depth",
    "reject_item",
    "release_item",
    "task_for",
]
