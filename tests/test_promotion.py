"""Promote / rollback: atomic alias moves with an audit trail, through the library and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_serve import TASK, register_random_version, tamper
from tuneloop.cli.main import app
from tuneloop.errors import TuneloopError
from tuneloop.registry.promotion import alias_history, promote, rollback
from tuneloop.registry.versions import resolve_version


@pytest.fixture
def versions(tmp_path: Path) -> list:
    # Tiny adapters (2 layers): the registry hashes them; nothing loads them here.
    return [register_random_version(tmp_path, seed, layers=2) for seed in (1, 2, 3)]


def test_promote_and_rollback_move_the_alias_and_record_who_and_when(versions) -> None:
    first = promote(TASK, f"{TASK}@1", "prod", actor="ana", reason="first release")
    assert (first.from_version, first.to_version, first.actor) == (None, f"{TASK}@1", "ana")
    promote(TASK, "2", "prod", actor="bo")  # a bare number means this task's version
    assert resolve_version(f"{TASK}@prod", verify=False).id == f"{TASK}@2"
    back = rollback(TASK, "prod", actor="cy")
    assert (back.from_version, back.to_version, back.actor, back.reason) == (f"{TASK}@2", f"{TASK}@1", "cy", "rollback")
    assert resolve_version(f"{TASK}@prod", verify=False).id == f"{TASK}@1"
    history = alias_history(TASK, "prod")
    assert [(m.from_version, m.to_version) for m in history] == [
        (None, f"{TASK}@1"),
        (f"{TASK}@1", f"{TASK}@2"),
        (f"{TASK}@2", f"{TASK}@1"),
    ]
    assert all(move.at is not None for move in history)


def test_rollback_needs_an_earlier_version(versions) -> None:
    with pytest.raises(TuneloopError, match="never been moved"):
        rollback(TASK, "prod")
    promote(TASK, f"{TASK}@1", "prod")
    with pytest.raises(TuneloopError, match="no earlier version"):
        rollback(TASK, "prod")


def test_promote_refuses_bad_aliases_other_tasks_and_tampered_versions(versions) -> None:
    with pytest.raises(TuneloopError, match="not a valid alias"):
        promote(TASK, f"{TASK}@1", "Prod!")
    with pytest.raises(TuneloopError, match="no such version"):
        promote(TASK, f"{TASK}@9", "prod")
    tamper(versions[2])
    with pytest.raises(TuneloopError, match="content hash"):
        promote(TASK, f"{TASK}@3", "prod")
    assert alias_history(TASK) == []  # nothing moved


def test_cli_promote_rollback_history(versions) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["models", "promote", f"{TASK}@1", "--alias", "prod", "--actor", "ana"])
    assert result.exit_code == 0, result.output
    assert f"{TASK}@prod: (new) → {TASK}@1" in result.output
    result = runner.invoke(app, ["models", "promote", f"{TASK}@2", "--alias", "prod", "--actor", "ana"])
    assert f"{TASK}@1 → {TASK}@2" in result.output
    result = runner.invoke(app, ["models", "rollback", TASK, "--alias", "prod", "--actor", "bo"])
    assert result.exit_code == 0 and f"{TASK}@2 → {TASK}@1" in result.output
    result = runner.invoke(app, ["models", "history", TASK])
    assert result.exit_code == 0 and "bo" in result.output and "rollback" in result.output
