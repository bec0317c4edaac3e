"""Prometheus metrics of the escape hatches: checked answers, check failures, actions, review queue depth.

Both HTTP surfaces (``tuneloop serve`` and the gateway) own one :class:`ReviewMetrics` on their own
registry, with their own prefix (``tuneloop_serve_…``, ``tuneloop_gateway_…``), labelled by the resolved
model that answered (``task@3``, ``local/task@3``), never an alias. The queue depth is read from the
store when Prometheus scrapes (cached a few seconds), so every process reports the same, true number.

Every ``model`` label goes through a :class:`ModelLabels`: each distinct value is a series Prometheus keeps
for good, and model names can come from clients, so names the server does not know, and any past a hard
cap, are counted under ``other``. The gateway and ``tuneloop serve`` bound their own metrics with it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

QUEUE_DEPTH_CACHE_S = 5.0
OTHER_MODELS = "other"  # the one label value of every model not labelled by name
DEFAULT_MAX_MODEL_LABELS = 500


class ModelLabels:
    """Bounded values for a ``model`` label: ``labels(name)`` is ``name`` when ``known(name)`` says the server
    knows that model (default: every name) and fewer than ``limit`` names were admitted before, else
    :data:`OTHER_MODELS`. A name once admitted stays (its series exist already). Safe across threads."""

    def __init__(self, known: Callable[[str], bool] | None = None, limit: int = DEFAULT_MAX_MODEL_LABELS) -> None:
        self.known = known
        self.limit = limit
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, model: str) -> str:
        if model in self._admitted:
            return model
        if model == OTHER_MODELS or (self.known is not None and not self.known(model)):
            return OTHER_MODELS
        with self._lock:
            if len(self._admitted) >= self.limit:
                return OTHER_MODELS
            self._admitted.add(model)
        return model


def check_kind(failure: str) -> str:
    """The kind of a failure as ``run_checks`` words it: schema, rule, confidence, else a field check."""
    head = failure.split(":", 1)[0]
    return head if head in ("schema", "rule", "confidence") else "field"


class QueueDepthCollector(Collector):
    """``tuneloop_review_queue_depth{model}``: pending review items per drafting model, from the store."""

    def __init__(
        self, url: str | None = None, cache_s: float = QUEUE_DEPTH_CACHE_S, labels: ModelLabels | None = None
    ) -> None:
        self.url = url
        self.cache_s = cache_s
        self.labels = labels or ModelLabels()
        self._cached: tuple[float, dict[str, int]] | None = None
        self._lock = threading.Lock()

    def depths(self) -> dict[str, int]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_s:
                from tuneloop.review.queue import queue_depth

                self._cached = (now, queue_depth(url=self.url))
            return self._cached[1]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tuneloop_review_queue_depth", "Review items waiting for a person, by the model that drafted them.",
            labels=["model"],
        )  # fmt: skip
        try:
            depths = self.depths()
        except Exception as exc:  # a scrape must not fail because the store is away; the log says why
            log.warning("review queue depth unavailable: %s", exc)
            depths = {}
        bounded: dict[str, int] = defaultdict(int)
        for model, depth in depths.items():
            bounded[self.labels(model)] += depth
        for model, depth in sorted(bounded.items()):
            family.add_metric([model], depth)
        yield family

    def describe(self) -> list[Any]:
        return []  # no store query at registration time


class ReviewMetrics:
    """The counters the review policy updates, registered on ``registry`` under ``prefix``; ``labels`` bounds
    their ``model`` label (default: at most :data:`DEFAULT_MAX_MODEL_LABELS` names)."""

    def __init__(
        self, registry: CollectorRegistry, prefix: str, *, url: str | None = None, labels: ModelLabels | None = None
    ) -> None:
        self.labels = labels or ModelLabels()
        self.checked = Counter(
            f"{prefix}_checked_outputs",
            "Structured answers run through their task's checks, by resolved model and outcome (passed/failed).",
            ["model", "outcome"],
            registry=registry,
        )
        self.check_failures = Counter(
            f"{prefix}_check_failures",
            "Checks failed by answers, by resolved model and kind (schema, field, rule, confidence).",
            ["model", "kind"],
            registry=registry,
        )
        self.actions = Counter(
            f"{prefix}_check_actions",
            "What was done about an answer: escalate, reject, fallback, pass (failed but passed on), audit.",
            ["model", "action"],
            registry=registry,
        )
        self.escalations = Counter(
            f"{prefix}_escalations",
            "Review items created, by resolved model and reason (check_failed, audit).",
            ["model", "reason"],
            registry=registry,
        )
        self.queue = QueueDepthCollector(url, labels=self.labels)
        registry.register(self.queue)

    def observe_check(self, model: str, failures: list[str]) -> None:
        model = self.labels(model)
        self.checked.labels(model, "failed" if failures else "passed").inc()
        for failure in failures:
            self.check_failures.labels(model, check_kind(failure)).inc()

    def observe_action(self, model: str, action: str) -> None:
        self.actions.labels(self.labels(model), action).inc()

    def observe_escalation(self, model: str, reason: str) -> None:
        self.escalations.labels(self.labels(model), reason).inc()
