"""The store's tables, as SQLAlchemy 2.0 typed models.

One file on purpose: every stage meets here, so the whole schema should be readable top to bottom.
The Alembic migrations in ``store/migrations/versions`` must create exactly this schema; a test
compares the two on SQLite and PostgreSQL.

Conventions:

- Times are timezone-aware and stored as UTC (``UTCDateTime``); naive datetimes are refused.
- JSON columns are ``JSON`` (``JSONB`` on PostgreSQL); Python ``None`` is SQL NULL. Changes inside a
  JSON value are not tracked: assign a new value (``row.tags = [*row.tags, "x"]``) to persist it.
- Enum-like columns are short strings; where the set of values is closed, a CHECK constraint keeps
  it so (the allowed values are the tuples below).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, WriteOnlyMapped, mapped_column, relationship

PROVENANCES = ("log", "upload", "teacher", "human")
SPLITS = ("train", "test")
REVIEW_STATUSES = ("pending", "approved", "corrected", "rejected")
# Why an item is in the queue: an answer failed its checks, or a passing one was sampled for audit.
REVIEW_REASONS = ("check_failed", "audit")
# A rollout sends part of an alias's live traffic to a candidate version (canary: its answer goes back) or
# mirrors it there (shadow: the candidate's answer is only logged and compared).
ROLLOUT_KINDS = ("canary", "shadow")
# active → stopped (by a person), tripped (by the guard), promoted (the alias moved to the candidate) or
# ended (the alias moved elsewhere, so the comparison lost its production side).
ROLLOUT_STATES = ("active", "stopped", "tripped", "promoted", "ended")
ROLLOUT_ARMS = ("production", "candidate", "shadow")

# Explicit constraint names make Alembic migrations identical on SQLite and PostgreSQL, and let a
# later migration drop or alter a constraint by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL: indexable and compact. none_as_null so that "no value" is SQL NULL, which
# `IS NULL` filters can see, instead of the JSON literal null.
JSONType = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")

# 64-bit ids for tables that grow with traffic. SQLite only auto-increments an INTEGER PRIMARY KEY
# (which is 64-bit there anyway), so it keeps INTEGER.
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware datetime, stored as UTC on every backend and read back with ``tzinfo=UTC``.

    SQLite has no time zones, so values are converted to UTC before they are written and marked as
    UTC when read; that keeps ordering and comparisons right. Naive datetimes are refused because
    their time zone is a guess.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one, e.g. datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=column)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """A key for the gateway/serve HTTP APIs. Only a hash of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    key_hash: Mapped[str] = mapped_column(sa.String(128), unique=True)
    # The first characters of the key, shown in listings so a user can tell keys apart.
    prefix: Mapped[str] = mapped_column(sa.String(32))
    role: Mapped[str] = mapped_column(sa.String(32))
    rate_limit_per_min: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RequestLog(Base):
    """One LLM call seen by capture (gateway or SDK wrapper), with everything needed to replay or
    relabel it. ``model_resolved`` names the concrete version (``task@3``), never an alias."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    task: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    model_requested: Mapped[str] = mapped_column(sa.String(255))
    model_resolved: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    upstream: Mapped[str | None] = mapped_column(sa.String(255))
    status: Mapped[str] = mapped_column(sa.String(16))  # "ok" or "error"
    http_status: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.Text)
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    ttft_ms: Mapped[float | None] = mapped_column(sa.Float)
    # Time tuneloop itself added on top of the upstream call.
    overhead_ms: Mapped[float | None] = mapped_column(sa.Float)
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    cached_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    cost_usd: Mapped[float | None] = mapped_column(sa.Float)
    price_table_version: Mapped[str | None] = mapped_column(sa.String(64))
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # "metadata" is reserved on declarative classes, hence the trailing underscore.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    api_key_id: Mapped[int | None] = mapped_column(sa.ForeignKey("api_keys.id", ondelete="SET NULL"))
    # A unique id given when the call is captured, before it reaches the store: replaying a durable
    # journal or retrying an upload to the gateway can then never log the same call twice.
    capture_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    # The gateway's tries, in order (upstream, model, outcome, latency): retries and fallbacks.
    attempts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    # The task's checks on the answer the client got (from its ``tuneloop.checks``; a 422 check_failed is
    # False); None where no task's checks ran.
    checks_passed: Mapped[bool | None] = mapped_column(sa.Boolean)
    # A call that took part in a rollout (canary or shadow, ``rollouts.id``) and its arm: production or
    # candidate (canary), shadow (a mirrored call, whose ``shadow_of`` is the production call's capture_id
    # and whose ``comparison`` holds the field-by-field agreement with production's answer).
    rollout_id: Mapped[int | None] = mapped_column(sa.Integer)
    rollout_arm: Mapped[str | None] = mapped_column(sa.String(16))
    shadow_of: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    comparison: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (sa.Index("ix_requests_rollout_id_created_at", "rollout_id", "created_at"),)


class DeadLetter(Base):
    """A captured call the store refused to take as a ``requests`` row, kept so it is neither lost nor retried
    forever (see docs/capture.md → Dead letters). ``record`` is the call as JSON text (not JSON: the store
    refused something in it, a NUL or a value out of range, so it is kept as text, escaped)."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Which log writer set it aside ("gateway", "sdk") and when: while writing, or replaying a journal.
    writer: Mapped[str] = mapped_column(sa.String(64))
    stage: Mapped[str] = mapped_column(sa.String(16))
    capture_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    # The store's refusal, as it said it.
    error: Mapped[str] = mapped_column(sa.Text)
    record: Mapped[str] = mapped_column(sa.Text)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    task: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Write-only: a dataset can hold many entries; query them with `dataset.entries.select()`.
    entries: WriteOnlyMapped[DatasetEntry] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True
    )


class DatasetEntry(Base):
    """One example (chat messages ending in the assistant's answer). The same input/output pair is
    stored once per dataset: the unique (dataset_id, input_hash, output_hash) deduplicates."""

    __tablename__ = "dataset_entries"
    __table_args__ = (
        sa.UniqueConstraint("dataset_id", "input_hash", "output_hash"),
        sa.Index("ix_dataset_entries_dataset_id_split", "dataset_id", "split"),
        _one_of("provenance", PROVENANCES),
        _one_of("split", SPLITS),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("datasets.id", ondelete="CASCADE"))
    input_hash: Mapped[str] = mapped_column(sa.String(128))
    output_hash: Mapped[str] = mapped_column(sa.String(128))
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    # The parsed output fields, when the task has an output schema.
    fields: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Request fields beside the messages that shape the answer (tools, tool_choice, response_format);
    # part of the input hash, and sent again when a teacher relabels the entry.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Why the answer is unfit for training (invalid for the task, failed plausibility checks); [] when it
    # passed, NULL when it was not checked (no task). Failing entries stay visible but are never trained on.
    check_failures: Mapped[list[str] | None] = mapped_column(JSONType)
    # The model that wrote the answer (the resolved model of a logged call, or the teacher); NULL for people.
    source_model: Mapped[str | None] = mapped_column(sa.String(255))
    provenance: Mapped[str] = mapped_column(sa.String(16))
    split: Mapped[str] = mapped_column(sa.String(16))
    source_request_id: Mapped[int | None] = mapped_column(
        BigIntId, sa.ForeignKey("requests.id", ondelete="SET NULL"), index=True
    )
    # The entry this one corrects or relabels (a human fix of a teacher label, say).
    parent_entry_id: Mapped[int | None] = mapped_column(
        BigIntId, sa.ForeignKey("dataset_entries.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="entries")


class TeacherLabel(Base):
    """A teacher model's answer to one input, kept so relabelling never pays for the same question twice
    and resumes where it stopped. Keyed by (teacher, input hash): any dataset holding that input reuses it."""

    __tablename__ = "teacher_labels"
    __table_args__ = (sa.UniqueConstraint("teacher", "input_hash"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    teacher: Mapped[str] = mapped_column(sa.String(255))
    input_hash: Mapped[str] = mapped_column(sa.String(128))
    # The assistant message as the teacher returned it (content and/or tool_calls).
    message: Mapped[dict[str, Any]] = mapped_column(JSONType)
    finish_reason: Mapped[str | None] = mapped_column(sa.String(32))
    # The model that answered, as the endpoint named it (a dated snapshot, say).
    model_resolved: Mapped[str | None] = mapped_column(sa.String(255))
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    cost_usd: Mapped[float | None] = mapped_column(sa.Float)
    price_table_version: Mapped[str | None] = mapped_column(sa.String(64))
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EvalRun(Base):
    __tablename__ = "eval_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(sa.String(255), index=True)
    # What was evaluated on: a dataset name (its test split) or a file path.
    data_ref: Mapped[str] = mapped_column(sa.String(1024))
    # running | done | interrupted (Ctrl-C; resumable) | failed (e.g. an endpoint went away; resumable)
    status: Mapped[str] = mapped_column(sa.String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    results: WriteOnlyMapped[EvalResult] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )


class EvalResult(Base):
    """One model's answer to one example in an eval run, scored field by field."""

    __tablename__ = "eval_results"
    # One answer per model and example in a run: resuming a run can never count an example twice.
    __table_args__ = (
        sa.Index("ix_eval_results_run_id_model_example_id", "run_id", "model", "example_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("eval_runs.id", ondelete="CASCADE"))
    example_id: Mapped[str] = mapped_column(sa.String(255))
    model: Mapped[str] = mapped_column(sa.String(255))
    output: Mapped[str | None] = mapped_column(sa.Text)
    field_verdicts: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    valid: Mapped[bool] = mapped_column(sa.Boolean)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    ttft_ms: Mapped[float | None] = mapped_column(sa.Float)
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    cost_usd: Mapped[float | None] = mapped_column(sa.Float)
    # Identifies (model, decoding settings, input) so an unchanged answer can be reused across runs.
    cache_key: Mapped[str | None] = mapped_column(sa.String(128), index=True)
    # Copied from an earlier result with the same cache_key instead of asking the model again; its
    # latency and cost are those measured then.
    cached: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    # Why the output is invalid, or why the request failed (then output is NULL).
    error: Mapped[str | None] = mapped_column(sa.Text)
    # The plausibility checks a valid answer failed, in words.
    check_failures: Mapped[list[str] | None] = mapped_column(JSONType)

    run: Mapped[EvalRun] = relationship(back_populates="results")


class ModelVersion(Base):
    """An immutable fine-tune: ``task@version``, also addressable as ``task@sha256:<content_hash>``."""

    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("task", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(sa.String(255))
    version: Mapped[int] = mapped_column(sa.Integer)
    content_hash: Mapped[str] = mapped_column(sa.String(128), unique=True)
    base_id: Mapped[str] = mapped_column(sa.String(255))
    base_weights_hash: Mapped[str | None] = mapped_column(sa.String(128))
    artifact_path: Mapped[str] = mapped_column(sa.String(1024))
    dataset_ref: Mapped[str | None] = mapped_column(sa.String(1024))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alias(Base):
    """A movable name (``task@prod``) for one version. Moves are recorded in ``alias_events``."""

    __tablename__ = "aliases"

    task: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    alias: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    # RESTRICT: a version an alias points at cannot be deleted from under it.
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id", ondelete="RESTRICT"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    version: Mapped[ModelVersion] = relationship()


class AliasEvent(Base):
    """The audit trail of promote/rollback: who moved which alias from where to where, and why."""

    __tablename__ = "alias_events"
    __table_args__ = (sa.Index("ix_alias_events_task_alias", "task", "alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(sa.String(255))
    alias: Mapped[str] = mapped_column(sa.String(255))
    # NULL from: the alias was created; NULL to: it was removed.
    from_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model_versions.id"))
    to_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model_versions.id"))
    actor: Mapped[str | None] = mapped_column(sa.String(255))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # "move" (promote/rollback: the only kind rollback reads), or a rollout's start and end
    # ("canary_start", "canary_tripped", "shadow_stopped", ...: tuneloop.registry.rollouts), whose figures
    # and settings are in ``details``.
    kind: Mapped[str] = mapped_column(sa.String(32), default="move", server_default="move")
    rollout_id: Mapped[int | None] = mapped_column(sa.ForeignKey("rollouts.id", ondelete="SET NULL"))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class Rollout(Base):
    """A canary split or a live shadow of ``task@alias`` towards a candidate version (see
    tuneloop.registry.rollouts). At most one active canary and one active shadow per alias, kept so by the
    code that starts them, under the alias row's lock."""

    __tablename__ = "rollouts"
    __table_args__ = (
        _one_of("kind", ROLLOUT_KINDS),
        _one_of("state", ROLLOUT_STATES),
        sa.Index("ix_rollouts_task_alias_state", "task", "alias", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    task: Mapped[str] = mapped_column(sa.String(255))
    alias: Mapped[str] = mapped_column(sa.String(255))
    candidate_version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id", ondelete="RESTRICT"))
    # The alias's version when the rollout started.
    production_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model_versions.id"))
    percent: Mapped[float] = mapped_column(sa.Float)
    # Canary: the tag (``x-tuneloop-tags`` / ``metadata`` key, or ``user``) whose value keeps a caller on one arm.
    sticky_tag: Mapped[str | None] = mapped_column(sa.String(255))
    # The guard's settings (margins, minimum calls, window, alpha): tuneloop.registry.rollouts.Guard.
    guard: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(sa.String(16), default="active")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_by: Mapped[str | None] = mapped_column(sa.String(255))
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_by: Mapped[str | None] = mapped_column(sa.String(255))
    end_reason: Mapped[str | None] = mapped_column(sa.Text)
    # The latest figures the watcher computed (per arm, or the shadow's agreement), for the UI and CLI.
    figures: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    figures_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReviewItem(Base):
    """An answer a human should look at: it failed its task's checks, or was sampled for audit.

    It refers to the call it came from (``request_id``; from the gateway also ``capture_id``, since the
    log row is written after the response leaves) or to a dataset entry (``entry_id``), and keeps its own
    copy of the request (``request``) so an item is reviewable even when the call was not logged.
    ``model_resolved`` is the immutable version that drafted the answer, never an alias.

    A reviewer takes a time-limited lock (``locked_by``, ``locked_at``, ``lock_expires_at``): while it
    holds, nobody else can resolve the item. Resolution is approved (the draft is right), corrected
    (``correction`` holds the fixed fields) or rejected (not an example worth keeping, e.g. spam). An
    approval or correction becomes a human-verified dataset entry (``verified_entry_id``);
    ``time_spent_s`` is the time from taking the lock to resolving.
    """

    __tablename__ = "review_items"
    __table_args__ = (
        sa.Index("ix_review_items_task_status", "task", "status"),
        sa.Index("ix_review_items_status_model_resolved", "status", "model_resolved"),
        _one_of("status", REVIEW_STATUSES),
        _one_of("reason", REVIEW_REASONS),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(
        BigIntId, sa.ForeignKey("requests.id", ondelete="SET NULL"), index=True
    )
    capture_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    entry_id: Mapped[int | None] = mapped_column(
        BigIntId, sa.ForeignKey("dataset_entries.id", ondelete="SET NULL"), index=True
    )
    task: Mapped[str] = mapped_column(sa.String(255))
    model_resolved: Mapped[str | None] = mapped_column(sa.String(255))
    reason: Mapped[str] = mapped_column(sa.String(16), default="check_failed", server_default="check_failed")
    # The request as the client sent it (messages and the options that shape the answer).
    request: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The model's answer: {"content": text, "fields": parsed fields or null when it does not parse}.
    draft: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    failed_checks: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    # Mean token probability of the draft, when the engine returned logprobs.
    confidence: Mapped[float | None] = mapped_column(sa.Float)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    locked_by: Mapped[str | None] = mapped_column(sa.String(255))
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reviewer: Mapped[str | None] = mapped_column(sa.String(255))
    # The corrected fields (all of them, after the reviewer's changes) when status is corrected.
    correction: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    note: Mapped[str | None] = mapped_column(sa.Text)
    verified_entry_id: Mapped[int | None] = mapped_column(
        BigIntId, sa.ForeignKey("dataset_entries.id", ondelete="SET NULL")
    )
    time_spent_s: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
