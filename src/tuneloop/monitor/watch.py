"""Watching, not remembering: the rollouts' figures, the canary guard and drift, computed on a clock.

A :class:`Watcher` runs in the gateway (every ``watch.every_s`` seconds, in a thread) or alone as
``tuneloop monitor watch`` (with its own /metrics port). Each round it:

- computes every active canary's arms over its guard's window (tuneloop.monitor.canary), keeps them on the
  rollout (``rollouts.figures``: the UI and ``models rollouts`` show them) and switches the canary off
  (``tripped``, with the figures in the alias history) when the guard's tests fail;
- adds up every active shadow's comparisons (tuneloop.monitor.live_shadow);
- every ``drift_every_s``, compares each watched model's latest window with its baseline
  (tuneloop.monitor.drift);

and sets Prometheus gauges on its registry, so alerting rules need no one to remember a command
(docs/review.md → Watching has example rules). Several watchers (gateway workers, a watch process) may
run at once: their figures agree, and a guard's trip is recorded once (tuneloop.registry.rollouts).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from tuneloop.monitor.canary import CanaryStatus, canary_status
from tuneloop.monitor.live_shadow import DEFAULT_WINDOW_S, ShadowStatus, shadow_status
from tuneloop.registry.rollouts import Rollout, active_rollouts, record_figures, trip_rollout

log = logging.getLogger(__name__)
# Under `tuneloop gateway --workers N` every worker watches and sets the same figures: one sample, the latest
# of a live worker, rather than one per worker (prometheus_client's multiprocess mode).
MODE = "livemostrecent"


@dataclass
class WatchRound:
    """What one round found: per rollout its status, the canaries tripped, the drift flagged."""

    canaries: dict[int, CanaryStatus] = field(default_factory=dict)
    shadows: dict[int, ShadowStatus] = field(default_factory=dict)
    tripped: list[Rollout] = field(default_factory=list)
    drift_flagged: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Watcher:
    def __init__(
        self,
        url: str | None = None,
        *,
        registry: CollectorRegistry | None = None,
        shadow_window_s: float = DEFAULT_WINDOW_S,
        drift_models: list[str] | None = None,
        drift_every_s: float = 300.0,
        drift_baseline: timedelta = timedelta(days=7),
        drift_window: timedelta = timedelta(days=1),
        prefix: str = "tuneloop",
    ) -> None:
        self.url = url
        self.registry = registry or CollectorRegistry()
        self.shadow_window_s = shadow_window_s
        self.drift_models = list(drift_models or [])
        self.drift_every_s = drift_every_s
        self.drift_baseline, self.drift_window = drift_baseline, drift_window
        self._drift_at: float | None = None
        r = self.registry
        rollout = ["rollout", "task", "alias", "candidate"]
        self.active = Gauge(
            f"{prefix}_rollout_active",
            "1 for each active rollout",
            [*rollout, "kind"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self.calls = Gauge(
            f"{prefix}_canary_calls",
            "Calls in the guard's window, by arm",
            [*rollout, "arm"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self.error_rate = Gauge(
            f"{prefix}_canary_error_rate",
            "Server-error rate in the guard's window, by arm",
            [*rollout, "arm"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self.check_failure_rate = Gauge(
            f"{prefix}_canary_check_failure_rate",
            "Check-failure rate in the guard's window, by arm",
            [*rollout, "arm"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self.p95 = Gauge(
            f"{prefix}_canary_p95_latency_seconds",
            "p95 latency in the guard's window, by arm",
            [*rollout, "arm"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self.guard_p = Gauge(
            f"{prefix}_canary_guard_p_value",
            "The guard's one-sided p-value, by metric",
            [*rollout, "metric"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self.tripped = Gauge(
            f"{prefix}_canary_tripped",
            "1 once the guard switched the canary off (until the next restart)",
            rollout,
            registry=r,
            multiprocess_mode=MODE,
        )
        self.shadow_calls = Gauge(
            f"{prefix}_shadow_calls", "Shadow comparisons in the window", rollout, registry=r, multiprocess_mode=MODE
        )
        self.shadow_agreement = Gauge(
            f"{prefix}_shadow_agreement",
            "Share of shadowed calls agreeing on every field",
            rollout,
            registry=r,
            multiprocess_mode=MODE,
        )
        self.shadow_field_agreement = Gauge(
            f"{prefix}_shadow_field_agreement",
            "Share of shadowed calls agreeing on a field",
            [*rollout, "field"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self.shadow_text_similarity = Gauge(
            f"{prefix}_shadow_text_similarity",
            "A text task's mean word similarity of the candidate's shadow answers to production's (0..1)",
            rollout,
            registry=r,
            multiprocess_mode=MODE,
        )
        self.shadow_check_failure_rate = Gauge(
            f"{prefix}_shadow_check_failure_rate",
            "Share of the candidate's shadow answers failing the checks",
            rollout,
            registry=r,
            multiprocess_mode=MODE,
        )
        self.drift_flagged = Gauge(
            f"{prefix}_drift_flagged",
            "1 when the metric drifted (latest window vs baseline)",
            ["model", "metric"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self.drift_p = Gauge(
            f"{prefix}_drift_p_value",
            "The drift test's p-value",
            ["model", "metric"],
            registry=r,
            multiprocess_mode=MODE,
        )
        self._shown: set[tuple[str, ...]] = set()

    def run_once(self, *, now_s: float | None = None) -> WatchRound:
        """One round (blocking: the gateway calls it in a thread)."""
        result = WatchRound()
        try:
            rollouts = active_rollouts(self.url)
        except Exception as exc:  # the store is away: try again next round
            result.errors.append(f"reading the active rollouts: {exc}")
            return result
        self._forget_ended(rollouts)
        for rollout in rollouts:
            labels = (str(rollout.id), rollout.task, rollout.alias, rollout.candidate)
            self.active.labels(*labels, rollout.kind).set(1)
            try:
                if rollout.kind == "canary":
                    self._canary(rollout, labels, result)
                else:
                    self._shadow(rollout, labels, result)
            except Exception as exc:
                log.exception("watching rollout %s failed", rollout.id)
                result.errors.append(f"rollout {rollout.id}: {exc}")
        now_s = time.monotonic() if now_s is None else now_s
        if self.drift_models and (self._drift_at is None or now_s - self._drift_at >= self.drift_every_s):
            self._drift_at = now_s
            self._drift(result)
        return result

    def _canary(self, rollout: Rollout, labels: tuple[str, ...], result: WatchRound) -> None:
        status = canary_status(rollout, url=self.url)
        result.canaries[rollout.id] = status
        for arm, figures in status.arms.items():
            self.calls.labels(*labels, arm).set(figures.calls)
            self._set(self.error_rate.labels(*labels, arm), figures.error_rate)
            self._set(self.check_failure_rate.labels(*labels, arm), figures.check_failure_rate)
            p95 = figures.quantile_ms(0.95)
            self._set(self.p95.labels(*labels, arm), p95 / 1000 if p95 is not None else None)
        for test in status.tests:
            self._set(self.guard_p.labels(*labels, test.metric), test.p_value)
        figures = status.to_json()
        if status.trip:
            reason = "guard: " + "; ".join(status.reasons)
            tripped = trip_rollout(rollout.id, reason, figures)
            self.tripped.labels(*labels).set(1)
            if tripped is not None:
                log.warning("canary %s of %s switched off: %s", rollout.id, rollout.alias_id, reason)
                result.tripped.append(tripped)
            return
        record_figures(rollout.id, figures, url=self.url)

    def _shadow(self, rollout: Rollout, labels: tuple[str, ...], result: WatchRound) -> None:
        status = shadow_status(rollout, window_s=self.shadow_window_s, url=self.url)
        result.shadows[rollout.id] = status
        self.shadow_calls.labels(*labels).set(status.calls)
        self._set(self.shadow_agreement.labels(*labels), status.agreement)
        self._set(self.shadow_check_failure_rate.labels(*labels), status.check_failure_rate)
        if status.text_similarity is not None:
            self.shadow_text_similarity.labels(*labels).set(status.text_similarity)
        for name, share in status.field_agreement.items():
            self.shadow_field_agreement.labels(*labels, name).set(share)
        record_figures(rollout.id, status.to_json(), url=self.url)

    def _drift(self, result: WatchRound) -> None:
        from tuneloop.monitor.drift import drift_report

        for model in self.drift_models:
            try:
                report = drift_report(model, baseline=self.drift_baseline, window=self.drift_window, url=self.url)
            except Exception as exc:  # no traffic yet, an unknown task: reported, tried again next time
                result.errors.append(f"drift of {model}: {exc}")
                continue
            result.drift_flagged[model] = [row.metric for row in report.flagged]
            for row in report.rows:
                self.drift_flagged.labels(model, row.metric).set(1 if row.flagged else 0)
                self._set(self.drift_p.labels(model, row.metric), row.p_value)

    def _forget_ended(self, rollouts: list[Rollout]) -> None:
        """Drop the gauges of rollouts no longer active (a stopped canary must not look live on a dashboard)."""
        current = {str(rollout.id) for rollout in rollouts}
        for gauge in (
            self.active,
            self.calls,
            self.error_rate,
            self.check_failure_rate,
            self.p95,
            self.guard_p,
            self.shadow_calls,
            self.shadow_agreement,
            self.shadow_field_agreement,
            self.shadow_text_similarity,
            self.shadow_check_failure_rate,
        ):
            for sample_labels in list(_label_sets(gauge)):
                if sample_labels[0] not in current:
                    gauge.remove(*sample_labels)

    @staticmethod
    def _set(child: Any, value: float | None) -> None:
        child.set(float("nan") if value is None else value)


def _label_sets(gauge: Gauge) -> list[tuple[str, ...]]:
    return list(gauge._metrics)  # prometheus_client keeps its children by label tuple
