"""The task spec: loading, validation errors with file:line:key, and the answer format."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.errors import TuneloopError
from tuneloop.task import TaskSpecError, load_task

GOOD = textwrap.dedent(
    """\
    name: invoice-fields
    instructions: Extract the invoice fields. Answer with JSON only.
    input: "Invoice:\\n{text}"
    output_schema:
      type: object
      properties:
        total: {type: [number, "null"]}
        due:   {type: [string, "null"], format: date}
        vendor: {type: [string, "null"]}
    fields:
      total: {compare: number, tolerance: 0.01}
      vendor: {compare: fuzzy, threshold: 0.8}
    checks:
      - {field: total, range: [0, 1000000]}
      - {rule: "total is null or total > 0"}
    on_check_failure: fallback:openai/gpt-4o
    requirements: {max_error_rate: 0.05}
    """
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return path


def test_packaged_demo_task_loads_with_its_six_nullable_fields() -> None:
    task = load_task("liability-extraction")
    assert task.field_names == [
        "payoff_amount",
        "escrow_balance",
        "next_due_date",
        "interest_rate",
        "account_last4",
        "servicer",
    ]
    for prop in task.output_schema["properties"].values():
        assert "null" in prop["type"]
    assert task.requirements.max_error_rate == 0.09
    assert task.on_check_failure == "escalate"


def test_user_file_loads_and_infers_comparators(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, GOOD))
    assert task.field_spec("total").compare == "number"
    assert task.field_spec("due").compare == "date"  # inferred from format: date
    messages = task.build_messages({"text": "ACME, total $5"})
    assert messages[0] == {"role": "system", "content": "Extract the invoice fields. Answer with JSON only."}
    assert messages[1]["content"] == "Invoice:\nACME, total $5"
    assert json.loads(task.answer_json({"vendor": "ACME"})) == {"total": None, "due": None, "vendor": "ACME"}


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "words"),
    [
        ("compare: number, tolerance", "compare: numbr, tolerance", 11, "fields.total.compare", "'number'"),
        ("threshold: 0.8", "threshold: 1.8", 12, "fields.vendor.threshold", "less than or equal to 1"),
        ("- {field: total, range", "- {field: totl, range", 14, "checks[0].field", "'totl' is not a property"),
        ('rule: "total is null or total > 0"', 'rule: "total >> import"', 15, "checks[1].rule", "does not parse"),
        ("on_check_failure: fallback:openai/gpt-4o", "on_check_failure: retry", 16, "on_check_failure", "'retry'"),
        (
            "requirements: {max_error_rate: 0.05}",
            "requirements: {max_eror_rate: 0.05}",
            17,
            "max_eror_rate",
            "unknown key",
        ),
        ('vendor: {type: [string, "null"]}', 'vendor: {type: [strng, "null"]}', 9, "output_schema", "JSON Schema"),
        ("name: invoice-fields", "name: Invoice Fields", 1, "name", "pattern"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, old: str, new: str, line: int, key: str, words: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(TaskSpecError) as caught:
        load_task(path)
    problem = caught.value.problems[0]
    assert problem.startswith(f"{path}:{line}: "), problem
    assert key in problem and words in problem, problem


def test_missing_required_key_points_at_the_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("instructions: Extract the invoice fields. Answer with JSON only.\n", ""))
    with pytest.raises(TaskSpecError) as caught:
        load_task(path)
    assert caught.value.problems == [f"{path}:1: instructions: Field required"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  type: object", "  type: [object"))
    with pytest.raises(TuneloopError) as caught:
        load_task(path)
    assert caught.value.where is not None and caught.value.where.startswith(f"{path}:")


def test_unknown_task_name_lists_the_known_ones() -> None:
    with pytest.raises(TuneloopError) as caught:
        load_task("no-such-task")
    assert "liability-extraction" in str(caught.value)


def test_user_task_folder_is_searched_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "tasks").mkdir(parents=True)
    (home / "tasks" / "invoice-fields.yaml").write_text(GOOD)
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    assert load_task("invoice-fields").name == "invoice-fields"


def test_cli_validate_reports_ok_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["task", "validate", str(write(tmp_path, GOOD))])
    assert ok.exit_code == 0 and "invoice-fields" in ok.output
    bad = write(tmp_path, GOOD.replace("compare: number, tolerance", "compare: numbr, tolerance"))
    result = runner.invoke(app, ["task", "validate", str(bad)])
    assert result.exit_code != 0
    assert isinstance(result.exception, TaskSpecError)


def test_cli_show_prints_fields_and_checks() -> None:
    result = CliRunner().invoke(app, ["task", "show", "liability-extraction"])
    assert result.exit_code == 0, result.output
    for word in ("payoff_amount", "fuzzy", "interest_rate", "escalate"):
        assert word in result.output
    as_json = CliRunner().invoke(app, ["task", "show", "liability-extraction", "--json"])
    assert json.loads(as_json.output)["name"] == "liability-extraction"
