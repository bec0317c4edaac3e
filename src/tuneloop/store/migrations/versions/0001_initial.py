"""The initial schema: every table of the store.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Written out in full (not imported from models.py) so that it keeps creating the same schema when
the models move on; tests/test_store.py checks that models and migrations agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The column types of models.py, spelled in plain SQLAlchemy.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("rate_limit_per_min", sa.Integer(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )

    op.create_table(
        "requests",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("task", sa.String(255), nullable=True),
        sa.Column("model_requested", sa.String(255), nullable=False),
        sa.Column("model_resolved", sa.String(255), nullable=True),
        sa.Column("upstream", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("request", JSON, nullable=False),
        sa.Column("response", JSON, nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("overhead_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("cached_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("price_table_version", sa.String(64), nullable=True),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_requests_api_key_id_api_keys"), ondelete="SET NULL"
        ),
    )
    op.create_index(op.f("ix_requests_created_at"), "requests", ["created_at"])
    op.create_index(op.f("ix_requests_model_resolved"), "requests", ["model_resolved"])
    op.create_index(op.f("ix_requests_task"), "requests", ["task"])

    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("task", sa.String(255), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )
    op.create_index(op.f("ix_datasets_task"), "datasets", ["task"])

    op.create_table(
        "dataset_entries",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("input_hash", sa.String(128), nullable=False),
        sa.Column("output_hash", sa.String(128), nullable=False),
        sa.Column("messages", JSON, nullable=False),
        sa.Column("fields", JSON, nullable=True),
        sa.Column("provenance", sa.String(16), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("source_request_id", BIG_ID, nullable=True),
        sa.Column("parent_entry_id", BIG_ID, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_entries")),
        sa.UniqueConstraint(
            "dataset_id",
            "input_hash",
            "output_hash",
            name=op.f("uq_dataset_entries_dataset_id_input_hash_output_hash"),
        ),
        sa.CheckConstraint(
            "provenance IN ('log', 'upload', 'teacher', 'human')", name=op.f("ck_dataset_entries_provenance")
        ),
        sa.CheckConstraint("split IN ('train', 'test')", name=op.f("ck_dataset_entries_split")),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_dataset_entries_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["source_request_id"],
            ["requests.id"],
            name=op.f("fk_dataset_entries_source_request_id_requests"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["parent_entry_id"],
            ["dataset_entries.id"],
            name=op.f("fk_dataset_entries_parent_entry_id_dataset_entries"),
            ondelete="SET NULL",
        ),
    )
    op.create_index(op.f("ix_dataset_entries_dataset_id_split"), "dataset_entries", ["dataset_id", "split"])
    op.create_index(op.f("ix_dataset_entries_source_request_id"), "dataset_entries", ["source_request_id"])

    op.create_table(
        "eval_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("data_ref", sa.String(1024), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("summary", JSON, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )
    op.create_index(op.f("ix_eval_runs_task"), "eval_runs", ["task"])

    op.create_table(
        "eval_results",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("example_id", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("field_verdicts", JSON, nullable=True),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("cache_key", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_results")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["eval_runs.id"], name=op.f("fk_eval_results_run_id_eval_runs"), ondelete="CASCADE"
        ),
    )
    op.create_index(op.f("ix_eval_results_run_id_model"), "eval_results", ["run_id", "model"])
    op.create_index(op.f("ix_eval_results_cache_key"), "eval_results", ["cache_key"])

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        sa.Column("base_id", sa.String(255), nullable=False),
        sa.Column("base_weights_hash", sa.String(128), nullable=True),
        sa.Column("artifact_path", sa.String(1024), nullable=False),
        sa.Column("dataset_ref", sa.String(1024), nullable=True),
        sa.Column("config", JSON, nullable=False),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_model_versions_content_hash")),
        sa.UniqueConstraint("task", "version", name=op.f("uq_model_versions_task_version")),
    )

    op.create_table(
        "aliases",
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("task", "alias", name=op.f("pk_aliases")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_aliases_version_id_model_versions"),
            ondelete="RESTRICT",
        ),
    )

    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_events")),
        sa.ForeignKeyConstraint(
            ["from_version_id"], ["model_versions.id"], name=op.f("fk_alias_events_from_version_id_model_versions")
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"], ["model_versions.id"], name=op.f("fk_alias_events_to_version_id_model_versions")
        ),
    )
    op.create_index(op.f("ix_alias_events_task_alias"), "alias_events", ["task", "alias"])

    op.create_table(
        "review_items",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("request_id", BIG_ID, nullable=True),
        sa.Column("entry_id", BIG_ID, nullable=True),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("draft", JSON, nullable=True),
        sa.Column("failed_checks", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("locked_by", sa.String(255), nullable=True),
        sa.Column("lock_expires_at", TIMESTAMP, nullable=True),
        sa.Column("reviewer", sa.String(255), nullable=True),
        sa.Column("correction", JSON, nullable=True),
        sa.Column("time_spent_s", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_items")),
        sa.CheckConstraint(
            "status IN ('pending', 'locked', 'approved', 'corrected', 'dismissed')",
            name=op.f("ck_review_items_status"),
        ),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name=op.f("fk_review_items_request_id_requests"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["dataset_entries.id"],
            name=op.f("fk_review_items_entry_id_dataset_entries"),
            ondelete="SET NULL",
        ),
    )
    op.create_index(op.f("ix_review_items_task_status"), "review_items", ["task", "status"])
    op.create_index(op.f("ix_review_items_request_id"), "review_items", ["request_id"])
    op.create_index(op.f("ix_review_items_entry_id"), "review_items", ["entry_id"])


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes.
    for table in (
        "review_items",
        "alias_events",
        "aliases",
        "model_versions",
        "eval_results",
        "eval_runs",
        "dataset_entries",
        "datasets",
        "requests",
        "api_keys",
    ):
        op.drop_table(table)
