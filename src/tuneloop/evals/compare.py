"""Comparing two stored runs: their models side by side, and example by example where they overlap.

Example-level pairs are made for models of the same name in both runs (or the one model of each, when
each run has exactly one) on the examples both answered, and only when both runs used the same data:
ids like ``line-3`` mean nothing across files.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.evals.results import ModelResult, build_report
from tuneloop.evals.store import StoredResult, get_run, run_results


@dataclass(frozen=True)
class ExamplePair:
    first_model: str
    second_model: str
    shared: int  # examples both answered
    first_errors: int  # wrong fields over the shared examples
    second_errors: int
    fixed: int  # wrong somewhere in the first run, all right in the second
    broken: int  # all right in the first, wrong somewhere in the second
    unchanged_wrong: int


@dataclass(frozen=True)
class RunComparison:
    rows: list[tuple[int, ModelResult]]
    pairs: list[ExamplePair]
    same_data: bool


def compare_runs(first: int, second: int) -> RunComparison:
    runs = [get_run(first), get_run(second)]
    results = [run_results(first), run_results(second)]
    reports = [build_report(run, rows) for run, rows in zip(runs, results, strict=True)]
    rows = [(report.run_id, model) for report in reports for model in report.models]
    same_data = runs[0].data_ref == runs[1].data_ref
    names = [[model.name for model in report.models] for report in reports]
    matched = [(name, name) for name in names[0] if name in names[1]]
    if not matched and len(names[0]) == 1 and len(names[1]) == 1:
        matched = [(names[0][0], names[1][0])]
    pairs = []
    if same_data:
        for first_name, second_name in matched:
            pairs.append(_pair(first_name, second_name, results[0], results[1]))
    return RunComparison(rows, [pair for pair in pairs if pair.shared], same_data)


def _field_errors(result: StoredResult) -> int:
    verdicts = result.field_verdicts or {}
    return sum(verdict != "correct" for verdict in verdicts.values()) if verdicts else 1


def _pair(first_name: str, second_name: str, first: list[StoredResult], second: list[StoredResult]) -> ExamplePair:
    before = {result.example_id: result for result in first if result.model == first_name}
    after = {result.example_id: result for result in second if result.model == second_name}
    shared = [example_id for example_id in before if example_id in after]
    errors_before = {example_id: _field_errors(before[example_id]) for example_id in shared}
    errors_after = {example_id: _field_errors(after[example_id]) for example_id in shared}
    return ExamplePair(
        first_model=first_name,
        second_model=second_name,
        shared=len(shared),
        first_errors=sum(errors_before.values()),
        second_errors=sum(errors_after.values()),
        fixed=sum(errors_before[e] > 0 and errors_after[e] == 0 for e in shared),
        broken=sum(errors_before[e] == 0 and errors_after[e] > 0 for e in shared),
        unchanged_wrong=sum(errors_before[e] > 0 and errors_after[e] > 0 for e in shared),
    )
