"""Capture: call ids and gateway attempts on requests; entry options, check failures, source model;
the teacher label cache.

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-22

Written out in full (not imported from models.py); tests/test_store.py checks models and migrations agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Batch mode: SQLite can only add a UNIQUE constraint by rebuilding the table.
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("capture_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("attempts", JSON, nullable=True))
        batch.create_unique_constraint(op.f("uq_requests_capture_id"), ["capture_id"])
    op.add_column("dataset_entries", sa.Column("options", JSON, nullable=True))
    op.add_column("dataset_entries", sa.Column("check_failures", JSON, nullable=True))
    op.add_column("dataset_entries", sa.Column("source_model", sa.String(255), nullable=True))
    op.create_table(
        "teacher_labels",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("teacher", sa.String(255), nullable=False),
        sa.Column("input_hash", sa.String(128), nullable=False),
        sa.Column("message", JSON, nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("model_resolved", sa.String(255), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("price_table_version", sa.String(64), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teacher_labels")),
        sa.UniqueConstraint("teacher", "input_hash", name=op.f("uq_teacher_labels_teacher_input_hash")),
    )


def downgrade() -> None:
    op.drop_table("teacher_labels")
    with op.batch_alter_table("dataset_entries") as batch:
        batch.drop_column("source_model")
        batch.drop_column("check_failures")
        batch.drop_column("options")
    with op.batch_alter_table("requests") as batch:
        batch.drop_constraint(op.f("uq_requests_capture_id"), type_="unique")
        batch.drop_column("attempts")
        batch.drop_column("capture_id")
