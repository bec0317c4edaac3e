"""Comparing two stored runs: their models side by side, and example by example where they overlap.

Example-level pairs are made for models of the same name in both runs (or the one model of each, when
each run has exactly one) on the examples both answered, and only when both runs used the same data:
ids like ``line-3`` mean nothing across files. A pair carries an exact McNemar test on its fields: of the
fields one model got wrong and the other right, is the split more lopsided than chance? Fields (not whole
examples) are the unit because field error is what a run reports; fields of one example are not independent,
so the p-value is a guide, and the example-level counts (fixed, broken) are shown beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.evals.results import ModelResult, build_report
from tuneloop.evals.store import StoredResult, get_run, run_results
from tuneloop.stats import mcnemar_exact


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
    first_only_fields: int  # fields wrong in the first run and right in the second
    second_only_fields: int  # right in the first, wrong in the second

    @property
    def p_value(self) -> float:
        """Two-sided exact McNemar p over the discordant fields (1.0 when there are none)."""
        return mcnemar_exact(self.first_only_fields, self.second_only_fields)


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
    fields = list(runs[0].config.get("fields") or [])
    if same_data:
        for first_name, second_name in matched:
            pairs.append(_pair(first_name, second_name, results[0], results[1], fields))
    return RunComparison(rows, [pair for pair in pairs if pair.shared], same_data)


def _field_errors(result: StoredResult) -> int:
    verdicts = result.field_verdicts or {}
    return sum(verdict != "correct" for verdict in verdicts.values()) if verdicts else 1


def _wrong_fields(result: StoredResult, fields: list[str]) -> set[str]:
    """The fields this answer got wrong; every field when it has no verdicts (an invalid or missing answer)."""
    verdicts = result.field_verdicts or {}
    return {name for name in fields if verdicts.get(name, "invalid") != "correct"}


def _pair(
    first_name: str, second_name: str, first: list[StoredResult], second: list[StoredResult], fields: list[str]
) -> ExamplePair:
    before = {result.example_id: result for result in first if result.model == first_name}
    after = {result.example_id: result for result in second if result.model == second_name}
    shared = [example_id for example_id in before if example_id in after]
    errors_before = {example_id: _field_errors(before[example_id]) for example_id in shared}
    errors_after = {example_id: _field_errors(after[example_id]) for example_id in shared}
    wrong = [(_wrong_fields(before[e], fields), _wrong_fields(after[e], fields)) for e in shared]
    return ExamplePair(
        first_model=first_name,
        second_model=second_name,
        shared=len(shared),
        first_errors=sum(errors_before.values()),
        second_errors=sum(errors_after.values()),
        fixed=sum(errors_before[e] > 0 and errors_after[e] == 0 for e in shared),
        broken=sum(errors_before[e] == 0 and errors_after[e] > 0 for e in shared),
        unchanged_wrong=sum(errors_before[e] > 0 and errors_after[e] > 0 for e in shared),
        first_only_fields=sum(len(old - new) for old, new in wrong),
        second_only_fields=sum(len(new - old) for old, new in wrong),
    )
