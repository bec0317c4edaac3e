"""Licenses: read from the catalog, GGUF metadata or the model card; normalized; a task's `licenses:` holds
promotion (refused with the reason, nothing moved); shown by `models show`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_serve import TASK, register_random_version
from tuneloop.bases import DEFAULT_BASE, resolve_base
from tuneloop.bases.licenses import find_license, gguf_license
from tuneloop.cli.main import app
from tuneloop.errors import TuneloopError
from tuneloop.licenses import check_license_id, license_allowed, normalize_license
from tuneloop.registry.promotion import alias_history, promote
from tuneloop.registry.versions import version_base_license
from tuneloop.task import TaskSpecError, parse_task
from tuneloop.testing.fake_hub import tiny_gguf


def test_license_texts_normalize_to_hub_ids() -> None:
    cases = {
        "Apache-2.0": "apache-2.0",
        "Apache License 2.0": "apache-2.0",
        "MIT": "mit",
        "Gemma Terms of Use": "gemma",
        "Llama 3.1": "llama3.1",
        "llama3.1": "llama3.1",
        "CC-BY-NC-4.0": "cc-by-nc-4.0",
        "acme-model-license": "acme-model",
        None: "unknown",
    }
    assert {text: normalize_license(text) for text in cases} == cases
    assert check_license_id("Apache-2.0") == "apache-2.0"
    assert check_license_id("acme-internal") == "acme-internal"  # not a near miss of a known id: allowed
    with pytest.raises(ValueError, match="did you mean 'mit'"):
        check_license_id("mti")
    assert license_allowed("Apache-2.0", ["apache-2.0", "mit"]) and license_allowed("gemma", None)
    assert not license_allowed("gemma", ["apache-2.0"])


def test_licenses_come_from_the_catalog_the_gguf_header_and_the_model_card(tmp_path: Path) -> None:
    bundled = resolve_base(DEFAULT_BASE)
    assert (bundled.license, bundled.license_id, bundled.license_source) == ("Apache-2.0", "apache-2.0", "catalog")
    assert gguf_license(bundled.gguf_path) == "apache-2.0"  # the same file's own metadata

    gguf = tmp_path / "model.gguf"
    tiny_gguf(gguf, gguf_license="llama3.1")
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    local = resolve_base(str(gguf))
    assert (local.license, local.license_source) == ("llama3.1", "gguf")  # the file before the card

    tiny_gguf(gguf, gguf_license=None)
    assert find_license(gguf_path=gguf).source == "model card"
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: tongyi-qianwen\n---\n# card\n")
    assert find_license(folder=tmp_path).text == "tongyi-qianwen"
    (tmp_path / "README.md").write_text("# a card without front matter\nlicense: mit\n")
    assert find_license(gguf_path=gguf).id == "unknown"


def test_a_task_lists_licenses_by_id_and_a_typo_is_refused_at_its_line() -> None:
    text = (resources.files("tuneloop") / "tasks" / f"{TASK}.yaml").read_text()
    task = parse_task(text + "licenses: [Apache-2.0, mit, MIT]\n", "t.yaml")
    assert task.licenses == ["apache-2.0", "mit"]
    assert parse_task(text, "t.yaml").licenses is None  # no licenses: any
    line = text.count("\n") + 3
    with pytest.raises(TaskSpecError) as caught:
        parse_task(text + "licenses:\n  - apache-2.0\n  - mti\n", "t.yaml")
    assert f"t.yaml:{line}: licenses[1]: 'mti' is not a license id" in str(caught.value)
    with pytest.raises(TaskSpecError, match="an empty list allows no base"):
        parse_task(text + "licenses: []\n", "t.yaml")


def write_task_licenses(home: Path, licenses: str) -> Path:
    """The packaged task with a `licenses:` line, as the user's own copy in $TUNELOOP_HOME/tasks."""
    text = (resources.files("tuneloop") / "tasks" / f"{TASK}.yaml").read_text()
    path = home / "tasks" / f"{TASK}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + f"licenses: {licenses}\n")
    return path


@pytest.fixture
def version(tmp_path: Path):
    return register_random_version(tmp_path, 1, layers=2)  # on the bundled SmolLM2 base: Apache-2.0


def test_registration_records_the_base_license(version) -> None:
    assert version.config["base"]["license"] == "Apache-2.0"
    assert version.config["base"]["license_id"] == "apache-2.0"
    assert version_base_license(version).id == "apache-2.0"


def test_promotion_is_refused_when_the_task_does_not_allow_the_base_license(version, tuneloop_home: Path) -> None:
    task_file = write_task_licenses(tuneloop_home, "[mit, gemma]")
    with pytest.raises(TuneloopError) as caught:
        promote(TASK, version.id, "prod", actor="ana")
    error = caught.value
    assert f"{version.id} is built on {DEFAULT_BASE}, whose license is 'Apache-2.0' (apache-2.0)" in error.message
    assert f"task {TASK} allows only mit, gemma" in error.message
    assert error.where == f"{task_file}: licenses"
    assert error.hint is not None and "add apache-2.0 to the task's licenses" in error.hint
    assert alias_history(TASK) == []  # nothing moved

    write_task_licenses(tuneloop_home, "[apache-2.0, mit]")
    assert promote(TASK, version.id, "prod", actor="ana").to_version == version.id


def test_cli_promote_refused_by_license_exits_non_zero(version, tuneloop_home: Path) -> None:
    write_task_licenses(tuneloop_home, "[mit]")
    runner = CliRunner()
    result = runner.invoke(app, ["models", "promote", version.id, "--alias", "prod"])
    assert result.exit_code != 0 and isinstance(result.exception, TuneloopError)
    assert "allows only mit" in str(result.exception)  # the `tuneloop` command prints it and exits 2
    assert alias_history(TASK) == []

    shown = runner.invoke(app, ["models", "show", version.id], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "base license" in shown.output and "Apache-2.0 (apache-2.0), from the catalog" in shown.output


def test_the_eval_report_names_each_candidates_base_license(version, tmp_path: Path) -> None:
    """What `eval run` records of each model (Candidate.describe) reaches the terminal table, JSON and HTML."""
    import json
    from datetime import UTC, datetime

    from rich.console import Console

    from tuneloop.cost import load_price_table
    from tuneloop.evals.candidates import ModelSpec, resolve_candidate
    from tuneloop.evals.report import report_tables, write_html, write_json
    from tuneloop.evals.results import build_report
    from tuneloop.evals.store import RunInfo, StoredResult

    prices = load_price_table()
    models = [resolve_candidate(ModelSpec(name), prices).describe() for name in (DEFAULT_BASE, version.id)]
    assert [(model["base"], model["license"]) for model in models] == [(DEFAULT_BASE, "Apache-2.0")] * 2
    models.append({"label": "openai/gpt-x", "kind": "endpoint", "identity": "x", "base": None, "license": None})
    config = {"mode": "run", "fields": ["a"], "requirements": {}, "n": 1, "models": models}
    run = RunInfo(1, TASK, "data.jsonl", "done", config, None, datetime.now(UTC), None)
    results = [
        StoredResult("e1", model["label"], '{"a": 1}', {"a": "correct"}, True, None, [], 10.0, 5.0, 3, 2, 0.0, "k")
        for model in models
    ]
    report = build_report(run, results)
    console = Console(record=True, width=200)
    console.print(report_tables(report))
    verdict = console.export_text().split("quality")[0]  # the first table: the verdict
    rows = [line.split() for line in verdict.splitlines() if line.strip().startswith(("smollm2", f"{TASK}@", "openai"))]
    assert [row[:2] for row in rows] == [
        [DEFAULT_BASE, "Apache-2.0"],
        [version.id, "Apache-2.0"],
        ["openai/gpt-x", "—"],
    ]

    write_json(report, tmp_path / "report.json")
    entries = json.loads((tmp_path / "report.json").read_text())["models"]
    assert [(entry["base"], entry["license"], entry["license_id"]) for entry in entries] == [
        (DEFAULT_BASE, "Apache-2.0", "apache-2.0"),
        (DEFAULT_BASE, "Apache-2.0", "apache-2.0"),
        (None, None, None),
    ]
    write_html(report, tmp_path / "report.html")
    assert "<th>base license</th>" in (page := (tmp_path / "report.html").read_text())
    assert page.count("Apache-2.0 <span") == 2


def test_the_ui_models_page_shows_base_licenses_and_refuses_a_disallowed_promotion(
    version, tuneloop_home: Path
) -> None:
    from fastapi.testclient import TestClient

    from test_ui import SECRET, csrf_of, login
    from tuneloop.store.keys import create_key
    from tuneloop.ui import create_ui_app

    write_task_licenses(tuneloop_home, "[mit]")
    with TestClient(create_ui_app(SECRET), follow_redirects=False) as client:
        token = login(client, create_key("ana", role="admin").key)
        page = client.get(f"/models/{TASK}").text
        assert "Base licenses allowed by the task: mit" in page
        row = page[page.index('id="versions"') :]
        assert "Apache-2.0 (apache-2.0) — not allowed" in row
        confirm = client.get(f"/models/{TASK}/promote", params={"version": version.id, "alias": "prod"})
        assert csrf_of(confirm.text)
        client.post(f"/models/{TASK}/promote", data={"csrf_token": token, "version": version.id, "alias": "prod"})
        assert "allows only mit" in client.get(f"/models/{TASK}").text  # the flash: the reason
    assert alias_history(TASK) == []
