"""The store on SQLite and PostgreSQL: migrations, constraints, round trips, errors, the db CLI.

PostgreSQL cases need TUNELOOP_TEST_POSTGRES_URL (see .ci/postgres.sh); each gets a new database.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import IntegrityError, StatementError
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.errors import TuneloopError
from tuneloop.store import (
    Alias,
    AliasEvent,
    ApiKey,
    Base,
    Dataset,
    DatasetEntry,
    EvalResult,
    EvalRun,
    ModelVersion,
    RequestLog,
    ReviewItem,
    check_connection,
    current_revision,
    dispose_engines,
    get_engine,
    head_revision,
    mask_url,
    resolve_url,
    session_scope,
    upgrade,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


def add_dataset(url: str, name: str = "liability-v1") -> int:
    with session_scope(url) as session:
        dataset = Dataset(name=name, task="liability-extraction")
        session.add(dataset)
        session.flush()
        return dataset.id


def entry(dataset_id: int, input_hash: str = "in-1", output_hash: str = "out-1", **overrides) -> DatasetEntry:
    values = {
        "dataset_id": dataset_id,
        "input_hash": input_hash,
        "output_hash": output_hash,
        "messages": [{"role": "user", "content": "Payoff is $1,200.00"}, {"role": "assistant", "content": "{}"}],
        "provenance": "upload",
        "split": "train",
        **overrides,
    }
    return DatasetEntry(**values)


# --- migrations ----------------------------------------------------------------------------------


def test_first_session_applies_migrations(db_url: str) -> None:
    assert current_revision(db_url) is None
    with session_scope(db_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(RequestLog)) == 0
    assert current_revision(db_url) == head_revision()


def test_upgrade_is_idempotent(db_url: str) -> None:
    first = upgrade(db_url)
    assert (first.from_revision, first.to_revision, first.changed) == (None, head_revision(), True)
    again = upgrade(db_url)
    assert (again.from_revision, again.changed) == (head_revision(), False)
    dispose_engines()  # as a new process would find it
    assert not upgrade(db_url).changed


def test_two_processes_can_upgrade_the_same_database_at_once(db_url: str) -> None:
    script = "import sys; from tuneloop.store import upgrade; print(upgrade(sys.argv[1]).changed)"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = [process.communicate(timeout=120) for process in processes]
    for process, (_, stderr) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, stderr
    # Exactly one migrated; the other waited for its lock, or came later, and found the schema at head.
    assert sorted(stdout.strip() for stdout, _ in outcomes) == ["False", "True"]
    assert current_revision(db_url) == head_revision()


def test_models_match_migrations(db_url: str) -> None:
    upgrade(db_url)
    with get_engine(db_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []

        # The comparison sees differences: a column the migrations lack is reported.
        changed = sa.MetaData()
        for table in Base.metadata.sorted_tables:
            table.to_metadata(changed)
        changed.tables["datasets"].append_column(sa.Column("owner", sa.String(64)))
        assert [diff[0] for diff in compare_metadata(context, changed)] == ["add_column"]

        # Alembic does not compare CHECK constraints; names and presence are checked here.
        inspector = sa.inspect(connection)
        for table in Base.metadata.sorted_tables:
            expected = {c.name for c in table.constraints if isinstance(c, sa.CheckConstraint)}
            reflected = {c["name"] for c in inspector.get_check_constraints(table.name)}
            assert reflected == expected, table.name


def test_database_from_a_newer_tuneloop_is_refused(db_url: str) -> None:
    upgrade(db_url)
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    dispose_engines()

    with pytest.raises(TuneloopError) as refused, session_scope(db_url):
        pass
    assert "9999" in refused.value.message and "newer" in refused.value.message
    assert refused.value.hint is not None and "upgrade tuneloop" in refused.value.hint
    with pytest.raises(TuneloopError, match="9999"):
        upgrade(db_url)
    ok, detail = check_connection(db_url)
    assert not ok and "9999" in detail


def test_unreachable_postgres_names_the_url_without_its_password() -> None:
    url = "postgresql://tuneloop:s3cret-pw@127.0.0.1:1/nowhere"
    with pytest.raises(TuneloopError) as unreachable, session_scope(url):
        pass
    text = str(unreachable.value)
    assert "s3cret-pw" not in text
    assert "postgresql+psycopg://tuneloop:***@127.0.0.1:1/nowhere" in text
    assert unreachable.value.hint is not None and "start the PostgreSQL server" in unreachable.value.hint
    ok, detail = check_connection(url)
    assert not ok and "s3cret-pw" not in detail and "***" in detail


def test_postgres_urls_use_the_psycopg_driver_and_print_masked() -> None:
    for url in ("postgres://u:pw@db/x", "postgresql://u:pw@db/x", "postgresql+psycopg://u:pw@db/x"):
        assert resolve_url(url) == "postgresql+psycopg://u:pw@db/x"
        assert mask_url(url) == "postgresql+psycopg://u:***@db/x"
    assert resolve_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_default_database_is_sqlite_in_tuneloop_home(tuneloop_home: Path) -> None:
    with session_scope() as session:
        session.add(Dataset(name="d"))
    assert (tuneloop_home / "tuneloop.db").exists()


def test_a_bad_database_url_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", "not a url")
    with pytest.raises(TuneloopError) as refused:
        get_engine()
    assert refused.value.where == "TUNELOOP_DATABASE_URL"
    with pytest.raises(TuneloopError, match="unsupported database 'oracle'"):
        get_engine("oracle://u:pw@host/db")


# --- SQLite specifics ----------------------------------------------------------------------------


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'dir' / 'store.db'}"  # parent directories are created
    with session_scope(url) as session:
        assert session.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
        assert session.execute(sa.text("PRAGMA busy_timeout")).scalar() >= 1000
    ok, detail = check_connection(url)
    assert ok and "(wal)" in detail and "up to date" in detail


def test_check_connection_does_not_create_the_sqlite_file(tmp_path: Path) -> None:
    ok, detail = check_connection(f"sqlite:///{tmp_path / 'later.db'}")
    assert ok and "created on first use" in detail
    assert not (tmp_path / "later.db").exists()


# --- tables --------------------------------------------------------------------------------------


def test_every_table_round_trips(db_url: str) -> None:
    request_json = {
        "model": "liability-extraction@prod",
        "messages": [{"role": "user", "content": "Zahlung fällig am 1. März — 1 200,50 €"}],
        "response_format": {"type": "json_schema", "strict": True, "nested": [1, 2.5, None, {"deep": [True]}]},
    }
    with session_scope(db_url) as session:
        key = ApiKey(name="ci", key_hash="h" * 64, prefix="tl_ab12", role="admin", rate_limit_per_min=600)
        session.add(key)
        session.flush()
        logged = RequestLog(
            task="liability-extraction",
            model_requested="liability-extraction@prod",
            model_resolved="liability-extraction@2",
            upstream="local",
            status="ok",
            http_status=200,
            request=request_json,
            response={"choices": [{"message": {"content": '{"payoff_amount": 1200.5}'}}]},
            latency_ms=123.4,
            ttft_ms=20.5,
            overhead_ms=0.8,
            prompt_tokens=50,
            completion_tokens=12,
            cached_tokens=0,
            cost_usd=0.000125,
            price_table_version="2024-08",
            tags=["demo", "eval"],
            metadata_={"customer": "acme"},
            api_key_id=key.id,
        )
        failed = RequestLog(model_requested="openai/gpt-4o", status="error", error="timeout", request={"x": 1})
        dataset = Dataset(name="liability-v1", task="liability-extraction", description="from logs")
        session.add_all([logged, failed, dataset])
        session.flush()
        original = entry(dataset.id, provenance="log", source_request_id=logged.id, fields={"payoff_amount": 1200.5})
        session.add(original)
        session.flush()
        fixed = entry(dataset.id, output_hash="out-2", provenance="human", parent_entry_id=original.id)
        run = EvalRun(task="liability-extraction", data_ref="liability-v1", status="done", config={"n": 1})
        version = ModelVersion(
            task="liability-extraction",
            version=1,
            content_hash="ab" * 32,
            base_id="smollm2-135m-instruct",
            base_weights_hash="cd" * 32,
            artifact_path="/artifacts/liability-extraction/1",
            dataset_ref="liability-v1",
            config={"lora_r": 16},
            metrics={"field_error": 0.05},
        )
        session.add_all([fixed, run, version])
        session.flush()
        run.results.add(
            EvalResult(
                example_id=str(original.id),
                model="liability-extraction@1",
                output='{"payoff_amount": 1200.5}',
                field_verdicts={"payoff_amount": "correct", "servicer": "missed"},
                valid=True,
                latency_ms=80.0,
                ttft_ms=10.0,
                prompt_tokens=50,
                completion_tokens=12,
                cost_usd=0.0,
                cache_key="k" * 64,
            )
        )
        session.add(
            ReviewItem(
                request_id=logged.id,
                entry_id=original.id,
                task="liability-extraction",
                draft={"interest_rate": 45.0},
                failed_checks=[{"field": "interest_rate", "range": [0, 30]}],
            )
        )
        ids = {"logged": logged.id, "failed": failed.id, "original": original.id, "fixed": fixed.id}

    dispose_engines()  # read back through new connections, not the identity map
    with session_scope(db_url) as session:
        logged = session.get_one(RequestLog, ids["logged"])
        assert logged.request == request_json
        assert logged.tags == ["demo", "eval"] and logged.metadata_ == {"customer": "acme"}
        assert logged.cost_usd == pytest.approx(0.000125)
        assert logged.created_at.tzinfo is UTC
        assert session.get_one(ApiKey, logged.api_key_id).name == "ci"

        # A missing response is SQL NULL (so IS NULL finds it), and JSON defaults apply.
        failed = session.scalars(sa.select(RequestLog).where(RequestLog.response.is_(None))).one()
        assert (failed.id, failed.tags, failed.metadata_) == (ids["failed"], [], {})

        dataset = session.scalars(sa.select(Dataset).where(Dataset.name == "liability-v1")).one()
        entries = session.scalars(dataset.entries.select().order_by(DatasetEntry.id)).all()
        assert [e.id for e in entries] == [ids["original"], ids["fixed"]]
        assert entries[0].source_request_id == ids["logged"] and entries[0].fields == {"payoff_amount": 1200.5}
        assert entries[1].parent_entry_id == ids["original"] and entries[1].fields is None
        assert entries[0].messages[0]["content"] == "Payoff is $1,200.00"

        run = session.scalars(sa.select(EvalRun)).one()
        result = session.scalars(run.results.select()).one()
        assert result.valid is True and result.field_verdicts["servicer"] == "missed"
        assert run.config == {"n": 1} and run.summary is None

        version = session.scalars(sa.select(ModelVersion)).one()
        assert (version.version, version.metrics) == (1, {"field_error": 0.05})

        review = session.scalars(sa.select(ReviewItem)).one()
        assert review.status == "pending" and review.failed_checks[0]["range"] == [0, 30]
        assert (review.request_id, review.entry_id) == (ids["logged"], ids["original"])


def test_times_are_stored_as_utc_and_naive_ones_refused(db_url: str) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    with session_scope(db_url) as session:
        session.add(ReviewItem(task="t", lock_expires_at=expires, locked_by="ana"))
    with session_scope(db_url) as session:
        item = session.scalars(sa.select(ReviewItem)).one()
        assert item.lock_expires_at == expires and item.lock_expires_at.tzinfo is UTC
        assert item.lock_expires_at.hour == 1
        # Comparisons in SQL use the same instant, whatever zone the bound value is in.
        later = datetime(2030, 1, 2, 1, 4, 6, tzinfo=UTC)
        assert session.scalar(sa.select(sa.func.count()).where(ReviewItem.lock_expires_at < later)) == 1

    with pytest.raises(StatementError, match="naive datetime"), session_scope(db_url) as session:
        session.add(ReviewItem(task="t", lock_expires_at=datetime(2030, 1, 1)))


def test_session_scope_rolls_back_when_the_block_fails(db_url: str) -> None:
    with pytest.raises(RuntimeError), session_scope(db_url) as session:
        session.add(Dataset(name="half-written"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(db_url) as session:
        assert session.scalars(sa.select(Dataset)).all() == []


def test_entry_of_a_missing_dataset_is_rejected(db_url: str) -> None:
    with pytest.raises(IntegrityError), session_scope(db_url) as session:
        session.add(entry(dataset_id=424242))


def test_entry_values_outside_the_allowed_sets_are_rejected(db_url: str) -> None:
    dataset_id = add_dataset(db_url)
    with pytest.raises(IntegrityError), session_scope(db_url) as session:
        session.add(entry(dataset_id, provenance="scraped"))
    with pytest.raises(IntegrityError), session_scope(db_url) as session:
        session.add(entry(dataset_id, split="dev"))


def test_deleting_a_dataset_deletes_its_entries(db_url: str) -> None:
    dataset_id = add_dataset(db_url)
    with session_scope(db_url) as session:
        session.add_all([entry(dataset_id), entry(dataset_id, output_hash="out-2")])
    with session_scope(db_url) as session:
        session.delete(session.get_one(Dataset, dataset_id))
    with session_scope(db_url) as session:
        assert session.scalars(sa.select(DatasetEntry)).all() == []


def test_the_same_example_is_stored_once_per_dataset(db_url: str) -> None:
    first = add_dataset(db_url, "first")
    second = add_dataset(db_url, "second")
    with session_scope(db_url) as session:
        session.add(entry(first))
    with pytest.raises(IntegrityError), session_scope(db_url) as session:
        session.add(entry(first, provenance="teacher", split="test"))
    with session_scope(db_url) as session:
        session.add(entry(first, output_hash="another-answer"))  # same input, other output: kept
        session.add(entry(second))  # same pair in another dataset: kept
    with session_scope(db_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(DatasetEntry)) == 3


def test_alias_moves_are_recorded_and_protect_their_version(db_url: str) -> None:
    with session_scope(db_url) as session:
        v1, v2 = (
            ModelVersion(
                task="liability-extraction",
                version=n,
                content_hash=f"{n}" * 64,
                base_id="smollm2-135m-instruct",
                artifact_path=f"/artifacts/{n}",
            )
            for n in (1, 2)
        )
        session.add_all([v1, v2])
        session.flush()
        session.add(Alias(task="liability-extraction", alias="prod", version_id=v1.id))
        session.add(AliasEvent(task="liability-extraction", alias="prod", to_version_id=v1.id, actor="ana"))
    with session_scope(db_url) as session:
        prod = session.get_one(Alias, ("liability-extraction", "prod"))
        created = prod.updated_at
        prod.version_id = v2.id
        session.add(
            AliasEvent(
                task="liability-extraction",
                alias="prod",
                from_version_id=v1.id,
                to_version_id=v2.id,
                actor="ana",
                reason="lower field error",
            )
        )
    with session_scope(db_url) as session:
        prod = session.get_one(Alias, ("liability-extraction", "prod"))
        assert prod.version.version == 2 and prod.updated_at >= created
        events = session.scalars(sa.select(AliasEvent).order_by(AliasEvent.id)).all()
        assert [(e.from_version_id, e.to_version_id) for e in events] == [(None, v1.id), (v1.id, v2.id)]
        assert events[1].reason == "lower field error"

    with pytest.raises(IntegrityError), session_scope(db_url) as session:
        session.add(Alias(task="liability-extraction", alias="prod", version_id=v1.id))
    with pytest.raises(IntegrityError), session_scope(db_url) as session:
        session.add(
            ModelVersion(task="liability-extraction", version=2, content_hash="f" * 64, base_id="b", artifact_path="/x")
        )
    with pytest.raises(IntegrityError), session_scope(db_url) as session:
        session.execute(sa.delete(ModelVersion).where(ModelVersion.id == v2.id))  # prod points at it


# --- CLI -----------------------------------------------------------------------------------------


def test_db_upgrade_and_current_commands(db_url: str, tuneloop_home: Path) -> None:
    env = {"TUNELOOP_HOME": str(tuneloop_home)}
    if db_url.startswith("postgresql"):
        env["TUNELOOP_DATABASE_URL"] = db_url
    runner = CliRunner()

    first = runner.invoke(app, ["db", "upgrade"], env=env)
    assert first.exit_code == 0, first.output
    assert f"(empty) → {head_revision()}" in first.output
    assert "database: " + mask_url(db_url if db_url.startswith("postgresql") else None) in first.output
    if db_url.startswith("postgresql"):
        password = sa.make_url(db_url).password
        assert ":***@" in first.output and f":{password}@" not in first.output
    else:
        assert (tuneloop_home / "tuneloop.db").exists()

    again = runner.invoke(app, ["db", "upgrade"], env=env)
    assert again.exit_code == 0 and f"already at {head_revision()}" in again.output
    current = runner.invoke(app, ["db", "current"], env=env)
    assert current.exit_code == 0 and f"revision: {head_revision()} (head)" in current.output
