"""Scoring saved predictions, gold-row validation, stored runs and their reports, the eval CLI.

No model runs here: predictions are written by hand, so every number below is known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.jsonl import write_rows
from tuneloop.errors import TuneloopError
from tuneloop.evals.compare import compare_runs
from tuneloop.evals.examples import load_examples
from tuneloop.evals.report import render_plots, write_html
from tuneloop.evals.runner import score_predictions
from tuneloop.evals.store import list_runs
from tuneloop.store import Dataset, DatasetEntry, EvalRun, session_scope
from tuneloop.task import Task, load_task

GOLD = [
    {
        "payoff_amount": 1234.56,
        "escrow_balance": None,
        "next_due_date": "2026-04-15",
        "interest_rate": 6.125,
        "account_last4": "0042",
        "servicer": "Rocket Mortgage",
    },
    {
        "payoff_amount": 250000.0,
        "escrow_balance": 1800.25,
        "next_due_date": "2026-05-01",
        "interest_rate": 4.5,
        "account_last4": "9911",
        "servicer": "Mr. Cooper",
    },
    {
        "payoff_amount": None,
        "escrow_balance": 310.0,
        "next_due_date": None,
        "interest_rate": None,
        "account_last4": "5150",
        "servicer": None,
    },
]


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("liability-extraction")


def gold_row(task: Task, example_id: str, fields: dict, *, text: str = "servicer letter") -> dict:
    messages = [*task.build_messages({"text": text}), {"role": "assistant", "content": task.answer_json(fields)}]
    return {"id": example_id, "messages": messages, "metadata": {"fields": fields, "split": "test"}}


@pytest.fixture
def gold_file(tmp_path: Path, task: Task) -> Path:
    path = tmp_path / "gold.jsonl"
    write_rows(path, [gold_row(task, f"ex-{i}", fields, text=f"letter {i}") for i, fields in enumerate(GOLD)])
    return path


def predictions_file(path: Path, outputs: dict[str, str | None]) -> Path:
    write_rows(path, [{"id": example_id, "output": output} for example_id, output in outputs.items()])
    return path


# --- saved predictions ---------------------------------------------------------------------------


def test_scoring_saved_predictions(tmp_path: Path, task: Task, gold_file: Path) -> None:
    one_wrong = {**GOLD[1], "interest_rate": 4.75, "escrow_balance": None}  # a wrong value and a miss
    predictions = predictions_file(
        tmp_path / "model-a.jsonl",
        {
            "ex-0": "```json\n" + json.dumps(GOLD[0]) + "\n```",  # all right, in a code fence
            "ex-1": json.dumps(one_wrong),
            # ex-2 has no prediction: invalid, all six fields wrong
            "not-in-gold": "{}",
        },
    )
    report, unmatched = score_predictions(task, gold_file, predictions)
    assert unmatched == ["not-in-gold"]
    (model,) = report.models
    assert model.name == "model-a" and model.results == 3
    assert model.summary.field_error_rate == pytest.approx(8 / 18)
    assert model.summary.exact_match_rate == pytest.approx(1 / 3)
    assert model.summary.invalid_rate == pytest.approx(1 / 3)
    assert (model.summary.misses, model.summary.hallucinations) == (1, 0)
    assert model.latency is None and model.cost_per_1k_usd is None
    assert model.verdict.to_dict() == {"max_error_rate": False, "meets_all": False}

    data = report.to_dict()
    assert data["task"] == "liability-extraction" and data["n"] == 3 and data["mode"] == "score"
    entry = data["models"][0]
    for key in (
        "name",
        "field_error_rate",
        "field_error_ci95",
        "per_field",
        "exact_match_rate",
        "invalid_rate",
        "hallucinations",
        "misses",
        "check_failure_rate",
        "latency_ms",
        "cost_per_1k_usd",
        "verdict",
    ):
        assert key in entry, key
    assert entry["per_field"]["interest_rate"] == pytest.approx(2 / 3)
    assert entry["latency_ms"] is None and entry["cost_per_1k_usd"] is None
    lo, hi = entry["field_error_ci95"]
    assert lo < 8 / 18 < hi
    json.dumps(data)  # the whole report is JSON

    (run,) = list_runs()
    assert run.id == report.run_id and run.status == "done" and run.summary == data


def test_a_gold_row_outside_the_schema_names_line_and_field_and_stores_nothing(
    tmp_path: Path, task: Task, gold_file: Path
) -> None:
    rows = [json.loads(line) for line in gold_file.read_text().splitlines()]
    bad = {**GOLD[1], "payoff_amount": "a lot"}
    rows[1] = gold_row(task, "ex-1", bad)
    rows[1]["metadata"].pop("fields")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")  # a blank line: row 2 is on line 3
    predictions = predictions_file(tmp_path / "p.jsonl", {"ex-0": json.dumps(GOLD[0])})
    with pytest.raises(TuneloopError) as caught:
        score_predictions(task, path, predictions)
    assert caught.value.where == f"{path}:3"
    assert "payoff_amount" in caught.value.message and "messages[2].content" in caught.value.message
    assert list_runs() == []


def test_metadata_fields_must_agree_with_the_answer(tmp_path: Path, task: Task) -> None:
    row = gold_row(task, "ex-0", GOLD[0])
    row["metadata"]["fields"] = {**GOLD[0], "account_last4": "0043"}
    path = tmp_path / "gold.jsonl"
    write_rows(path, [row])
    with pytest.raises(TuneloopError, match=r"metadata\.fields\.account_last4") as caught:
        load_examples(task, str(path))
    assert caught.value.where == f"{path}:1"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"output": "{}"}, "missing field `id`"),
        ({"id": "ex-0"}, "missing field `output`"),
        ({"id": "ex-0", "output": {"payoff_amount": 1}}, "must be the raw text"),
    ],
)
def test_bad_prediction_rows_name_their_line(tmp_path: Path, task: Task, gold_file: Path, row, problem) -> None:
    path = tmp_path / "p.jsonl"
    write_rows(path, [{"id": "ex-1", "output": "{}"}, row])
    with pytest.raises(TuneloopError, match=problem) as caught:
        score_predictions(task, gold_file, path)
    assert caught.value.where == f"{path}:2"


def test_gold_for_predictions_needs_ids(tmp_path: Path, task: Task) -> None:
    row = gold_row(task, "x", GOLD[0])
    del row["id"]
    path = tmp_path / "gold.jsonl"
    write_rows(path, [row])
    predictions = predictions_file(tmp_path / "p.jsonl", {"x": "{}"})
    with pytest.raises(TuneloopError, match="missing field `id`"):
        score_predictions(task, path, predictions)


# --- datasets in the store -----------------------------------------------------------------------


def test_examples_from_a_dataset_in_the_store(task: Task) -> None:
    with session_scope() as session:
        dataset = Dataset(name="liability-v1", task=task.name)
        session.add(dataset)
        session.flush()
        for index, fields in enumerate(GOLD):
            row = gold_row(task, str(index), fields, text=f"letter {index}")
            session.add(
                DatasetEntry(
                    dataset_id=dataset.id,
                    input_hash=f"in-{index}",
                    output_hash=f"out-{index}",
                    messages=row["messages"],
                    fields=fields,
                    provenance="human",
                    split="train" if index == 0 else "test",
                )
            )
    test = load_examples(task, "dataset:liability-v1")
    assert [example.gold for example in test] == GOLD[1:]
    assert test[0].prompt[-1]["content"] == "letter 1"
    assert len(load_examples(task, "dataset:liability-v1:train")) == 1
    with pytest.raises(TuneloopError, match="no dataset named 'nope'") as caught:
        load_examples(task, "dataset:nope")
    assert "liability-v1" in (caught.value.hint or "")


# --- reports, stored runs, the CLI ---------------------------------------------------------------


def test_html_report_embeds_its_plots(tmp_path: Path, task: Task, gold_file: Path) -> None:
    predictions = predictions_file(tmp_path / "p.jsonl", {"ex-0": json.dumps(GOLD[0]), "ex-1": "no"})
    report, _ = score_predictions(task, gold_file, predictions)
    plots = render_plots(report)
    assert set(plots) == {"fields"}  # no latency or cost for saved predictions
    assert all(png.startswith(b"\x89PNG") for png in plots.values())
    page = tmp_path / "report.html"
    write_html(report, page)
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 1 and "liability-extraction" in html and "p.jsonl" not in html


def test_cli_score_list_show_compare(tmp_path: Path, task: Task, gold_file: Path) -> None:
    runner = CliRunner()
    first = predictions_file(tmp_path / "first.jsonl", {"ex-0": json.dumps(GOLD[0]), "ex-1": "oops", "ex-2": "{}"})
    second = predictions_file(
        tmp_path / "second.jsonl",
        {"ex-0": json.dumps({**GOLD[0], "servicer": None}), "ex-1": json.dumps(GOLD[1]), "ex-2": json.dumps(GOLD[2])},
    )
    out = tmp_path / "score.json"
    common = ["eval", "score", "--task", "liability-extraction", "--gold", str(gold_file)]
    result = runner.invoke(app, [*common, "--predictions", str(first), "--name", "tuned", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["models"][0]["name"] == "tuned" and report["models"][0]["invalid_rate"] == pytest.approx(2 / 3)
    assert "field error" in result.output or "error (95% CI)" in result.output
    result = runner.invoke(app, [*common, "--predictions", str(second), "--name", "tuned"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["eval", "list"])
    assert result.exit_code == 0 and "tuned" in result.output
    result = runner.invoke(app, ["eval", "show", "1", "--examples", "5"])
    assert result.exit_code == 0 and "2 examples with errors" in result.output

    comparison = compare_runs(1, 2)
    (pair,) = comparison.pairs
    assert (pair.fixed, pair.broken, pair.unchanged_wrong) == (2, 1, 0)
    assert (pair.first_errors, pair.second_errors) == (12, 1)
    # The paired test: 12 fields wrong only before, 1 only after; P(X >= 12 | 13, 1/2) = 14 / 2**13, doubled.
    assert (pair.first_only_fields, pair.second_only_fields) == (12, 1)
    assert pair.p_value == pytest.approx(2 * 14 / 2**13)
    result = runner.invoke(app, ["eval", "compare", "1", "2"])
    output = " ".join(result.output.split())
    assert result.exit_code == 0 and "2 examples fixed, 1 broken" in output
    assert "12 wrong only in run 1, 1 wrong only in run 2; exact McNemar p = 0.00342" in output

    result = runner.invoke(app, ["eval", "show", "99"])
    assert result.exit_code != 0 and isinstance(result.exception, TuneloopError)


def test_results_are_one_per_model_and_example(tmp_path: Path, task: Task, gold_file: Path) -> None:
    # The unique index is what makes resuming safe: a second answer for the same example is refused.
    predictions = predictions_file(tmp_path / "p.jsonl", {"ex-0": json.dumps(GOLD[0])})
    report, _ = score_predictions(task, gold_file, predictions)
    with session_scope() as session:
        run = session.get(EvalRun, report.run_id)
        assert run is not None
        count = session.scalar(sa.select(sa.func.count()).select_from(run.results.select().subquery()))
        assert count == 3
    from tuneloop.evals.store import ResultWriter, run_results

    duplicate = run_results(report.run_id)[0]
    writer = ResultWriter(report.run_id)
    writer.add(duplicate)
    with pytest.raises(sa.exc.IntegrityError):
        writer.flush()
