"""An eval run's report, computed from its stored results: what tables, JSON and HTML show.

Built from the store alone (the run's config and its per-example rows), so ``eval show`` of an old run
gives the numbers it gave then: the field list and the requirements are those recorded with the run.
The ``to_dict`` form is the documented ``--json`` schema (docs/evals.md).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneloop.comparators import Verdict
from tuneloop.cost import monthly_cost
from tuneloop.evals.judge import Agreement, JudgeSummary, summarize_agreement, summarize_judging
from tuneloop.evals.latency import LatencyStats, latency_stats
from tuneloop.evals.scoring import RecordScore, Summary, summarize_fields
from tuneloop.evals.store import RunInfo, StoredResult
from tuneloop.evals.verdict import RequirementsVerdict, judge
from tuneloop.licenses import normalize_license
from tuneloop.task import Requirements

JSON_SCHEMA_VERSION = "tuneloop.eval-report/1"


@dataclass
class ModelResult:
    name: str
    kind: str  # local | endpoint | predictions
    identity: str | None
    results: int  # answers stored for this model (fewer than the run's n when it was interrupted)
    summary: Summary
    latency: LatencyStats | None
    cost_per_1k_usd: float | None
    cost_per_month_usd: float | None
    cost_basis: str | None
    spent_usd: float | None  # what this run's new (not cached) requests cost
    cached: int
    failed_requests: int
    verdict: RequirementsVerdict
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # for the latency CDF
    base: str | None = None  # a local model's base (None for an endpoint, or a run recorded before bases were)
    license: str | None = None  # that base's license as written

    @property
    def license_id(self) -> str | None:
        return normalize_license(self.license) if self.license is not None else None

    def to_dict(self) -> dict[str, Any]:
        summary = self.summary.to_dict()
        summary.pop("n")
        return {
            "name": self.name,
            "kind": self.kind,
            "identity": self.identity,
            "base": self.base,
            "license": self.license,
            "license_id": self.license_id,
            "n": self.results,
            **summary,
            "latency_ms": self.latency.to_dict() if self.latency else None,
            "ttft_ms": self.latency.ttft_dict() if self.latency else None,
            "output_tokens_per_s": self.latency.output_tokens_per_s if self.latency else None,
            "cost_per_1k_usd": self.cost_per_1k_usd,
            "cost_per_month_usd": self.cost_per_month_usd,
            "cost_basis": self.cost_basis,
            "spent_usd": self.spent_usd,
            "cached": self.cached,
            "failed_requests": self.failed_requests,
            "verdict": self.verdict.to_dict(),
        }


@dataclass
class EvalReport:
    run_id: int
    task: str
    data: str
    mode: str  # run | score
    status: str
    n: int
    created_at: datetime
    fields: list[str]
    requirements: Requirements
    models: list[ModelResult]
    decoding: dict[str, Any] | None = None
    concurrency: int | None = None
    price_table: str | None = None
    requests_per_day: float | None = None
    # A text task's judging (evals/judge.py): the judge, each candidate against the baseline, and the
    # judge's agreement with human labels when it was measured in this run.
    judge: str | None = None
    judged: list[JudgeSummary] = field(default_factory=list)
    agreement: Agreement | None = None

    @property
    def complete(self) -> bool:
        return all(model.results == self.n for model in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": JSON_SCHEMA_VERSION,
            "run_id": self.run_id,
            "task": self.task,
            "data": self.data,
            "mode": self.mode,
            "status": self.status,
            "n": self.n,
            "created_at": self.created_at.isoformat(),
            "requirements": self.requirements.model_dump(),
            "decoding": self.decoding,
            "concurrency": self.concurrency,
            "price_table": self.price_table,
            "requests_per_day": self.requests_per_day,
            "models": [model.to_dict() for model in self.models],
            **({"judge": self.judge_dict()} if self.judge is not None else {}),
        }

    def judge_dict(self) -> dict[str, Any]:
        return {
            "model": self.judge,
            "pairs": [summary.to_dict() for summary in self.judged],
            "agreement": self.agreement.to_dict() if self.agreement is not None else None,
        }


def build_report(run: RunInfo, results: list[StoredResult]) -> EvalReport:
    config = run.config
    fields: list[str] = config["fields"]
    requirements = Requirements(**config["requirements"])
    options = config.get("options") or {}
    requests_per_day = options.get("requests_per_day")
    by_model: dict[str, list[StoredResult]] = defaultdict(list)
    for result in results:
        by_model[result.model].append(result)
    models = [
        _model_result(model, by_model[model["label"]], fields, requirements, config["mode"], requests_per_day)
        for model in config["models"]
        if by_model.get(model["label"])
    ]
    judging = config.get("judge")
    return EvalReport(
        run_id=run.id,
        task=run.task,
        data=run.data_ref,
        mode=config["mode"],
        status=run.status,
        n=config["n"],
        created_at=run.created_at,
        fields=fields,
        requirements=requirements,
        models=models,
        decoding=config.get("decoding"),
        concurrency=options.get("concurrency"),
        price_table=config.get("price_table"),
        requests_per_day=requests_per_day,
        judge=judging["judge"] if judging else None,
        judged=summarize_judging(judging, results) if judging and judging.get("candidates") else [],
        agreement=_agreement(judging, results),
    )


def _agreement(judging: dict[str, Any] | None, results: list[StoredResult]) -> Agreement | None:
    """The judge's agreement with human labels: measured in this run, else the one the run found recorded."""
    if not judging:
        return None
    if judging.get("human"):
        return summarize_agreement(judging, results)
    if judging.get("agreement_from"):
        return Agreement.from_dict(judging["agreement_from"])
    return None


def record_score(result: StoredResult, fields: list[str]) -> RecordScore:
    """A stored result back as a RecordScore (its verdicts were computed when it was stored)."""
    stored = result.field_verdicts or {}
    verdicts = {name: Verdict(stored.get(name, Verdict.INVALID.value)) for name in fields}
    return RecordScore(
        example_id=result.example_id,
        verdicts=verdicts,
        valid=result.valid,
        invalid_reason=None if result.valid else result.error,
        check_failures=list(result.check_failures or []),
    )


def _model_result(
    model: dict[str, Any],
    results: list[StoredResult],
    fields: list[str],
    requirements: Requirements,
    mode: str,
    requests_per_day: float | None,
) -> ModelResult:
    summary = summarize_fields(fields, [record_score(result, fields) for result in results])
    answered = [result for result in results if result.output is not None]
    latency = latency_stats(answered)
    costs = [result.cost_usd for result in answered if result.cost_usd is not None]
    cost_per_1k = sum(costs) / len(costs) * 1000 if costs else None
    fresh_costs = [result.cost_usd for result in answered if result.cost_usd is not None and not result.cached]
    return ModelResult(
        name=model["label"],
        kind=model["kind"],
        identity=model.get("identity"),
        results=len(results),
        summary=summary,
        latency=latency,
        cost_per_1k_usd=cost_per_1k,
        cost_per_month_usd=monthly_cost(cost_per_1k, requests_per_day)
        if cost_per_1k is not None and requests_per_day
        else None,
        cost_basis=model.get("cost_basis"),
        spent_usd=sum(fresh_costs) if mode == "run" else None,
        cached=sum(result.cached for result in results),
        failed_requests=sum(result.output is None for result in results) if mode == "run" else 0,
        verdict=judge(
            requirements,
            field_error_rate=summary.field_error_rate,
            p95_latency_ms=latency.p95_ms if latency else None,
            cost_per_1k_usd=cost_per_1k,
            error_only=mode == "score",
        ),
        latencies_ms=[result.latency_ms for result in answered if result.latency_ms is not None],
        base=model.get("base"),
        license=model.get("license"),
    )
