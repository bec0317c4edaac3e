"""Prometheus metrics of the server, labelled by the resolved immutable version (``task@3``), never an alias.

Each app gets its own ``CollectorRegistry`` so several servers (tests, the demo) can live in one process.
Requests that fail before a model is resolved are labelled ``model="-"``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tuneloop.review.metrics import ModelLabels, ReviewMetrics

UNRESOLVED = "-"
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
BASE_STATES = ("cold", "loading", "hot", "evicting", "warm")


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Resolved versions only, but a store can hold many: a hard cap on the series (tuneloop.review.metrics).
        self.model_label = ModelLabels()
        self.requests = Counter(
            "tuneloop_serve_requests",
            "Chat completion requests answered, by resolved model and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tuneloop_serve_errors",
            "Requests answered with an error, by resolved model and OpenAI error code/type.",
            ["model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tuneloop_serve_request_latency_seconds",
            "Time from admission to the last token (queue wait included).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "tuneloop_serve_time_to_first_token_seconds",
            "Time from admission to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "tuneloop_serve_tokens",
            "Tokens processed, by kind (prompt, completion).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.schema_violations = Counter(
            "tuneloop_serve_schema_violations",
            "Answers that did not validate against their JSON schema (reported to the client, never hidden).",
            ["model"],
            registry=self.registry,
        )
        self.adapter_loads = Counter(
            "tuneloop_serve_adapter_verifications",
            "Versions verified against their content hash before being loaded.",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "tuneloop_serve_queue_depth",
            "Requests admitted and not yet finished (running + waiting).",
            registry=self.registry,
        )
        self.queue_rejections = Counter(
            "tuneloop_serve_queue_rejections",
            "Requests refused with 429 because the queue was full.",
            registry=self.registry,
        )
        # The pool (pool.py): bases are few, so they are labelled as they are.
        self.base_load = Histogram(
            "tuneloop_serve_base_load_seconds",
            "Time to load a base into an engine (on demand, or at startup).",
            ["base"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.base_evictions = Counter(
            "tuneloop_serve_base_evictions",
            "Bases unloaded to make room for another under the memory budget.",
            ["base"],
            registry=self.registry,
        )
        self.base_state = Gauge(
            "tuneloop_serve_base_state",
            "1 for the state each base is in (cold, loading, hot, evicting, warm), 0 for the others.",
            ["base", "state"],
            registry=self.registry,
        )
        # Check failures, actions (escalate, reject, fallback, …) and the review queue depth.
        self.review = ReviewMetrics(self.registry, "tuneloop_serve", labels=self.model_label)

    def observe_success(
        self, model: str, *, latency_s: float, ttft_s: float | None, prompt_tokens: int, completion_tokens: int
    ) -> None:
        model = self.model_label(model)
        self.requests.labels(model, "200").inc()
        self.latency.labels(model).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)

    def observe_error(self, model: str | None, status: int, code: str) -> None:
        label = self.model_label(model) if model else UNRESOLVED
        self.requests.labels(label, str(status)).inc()
        self.errors.labels(label, code).inc()

    def observe_base_load(self, base: str, seconds: float) -> None:
        self.base_load.labels(base).observe(seconds)

    def set_base_state(self, base: str, state: str) -> None:
        for name in BASE_STATES:
            self.base_state.labels(base, name).set(1 if name == state else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
