"""Review: items know the drafting version, why they are queued, their request, the lock time and the
verified entry they became; statuses are pending | approved | corrected | rejected (the lock is columns).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

Written out in full (not imported from models.py); tests/test_store.py checks models and migrations agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)

NEW_STATUSES = "status IN ('pending', 'approved', 'corrected', 'rejected')"
OLD_STATUSES = "status IN ('pending', 'locked', 'approved', 'corrected', 'dismissed')"
REASONS = "reason IN ('check_failed', 'audit')"


def upgrade() -> None:
    # A lock is now its columns alone, and "dismissed" is called "rejected": move rows before the
    # new CHECK constraint sees them.
    op.execute("UPDATE review_items SET status = 'pending' WHERE status = 'locked'")
    op.execute("UPDATE review_items SET status = 'rejected' WHERE status = 'dismissed'")
    # Batch mode: SQLite can change a CHECK constraint or add a foreign key only by rebuilding the table.
    with op.batch_alter_table("review_items") as batch:
        batch.drop_constraint(op.f("ck_review_items_status"), type_="check")
        batch.add_column(sa.Column("capture_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("model_resolved", sa.String(255), nullable=True))
        batch.add_column(sa.Column("reason", sa.String(16), server_default="check_failed", nullable=False))
        batch.add_column(sa.Column("request", JSON, nullable=True))
        batch.add_column(sa.Column("confidence", sa.Float(), nullable=True))
        batch.add_column(sa.Column("locked_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("verified_entry_id", BIG_ID, nullable=True))
        batch.create_check_constraint(op.f("ck_review_items_status"), NEW_STATUSES)
        batch.create_check_constraint(op.f("ck_review_items_reason"), REASONS)
        batch.create_foreign_key(
            op.f("fk_review_items_verified_entry_id_dataset_entries"),
            "dataset_entries",
            ["verified_entry_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(op.f("ix_review_items_capture_id"), ["capture_id"])
        batch.create_index(op.f("ix_review_items_created_at"), ["created_at"])
        batch.create_index(op.f("ix_review_items_status_model_resolved"), ["status", "model_resolved"])


def downgrade() -> None:
    op.execute("UPDATE review_items SET status = 'dismissed' WHERE status = 'rejected'")
    with op.batch_alter_table("review_items") as batch:
        batch.drop_index(op.f("ix_review_items_status_model_resolved"))
        batch.drop_index(op.f("ix_review_items_created_at"))
        batch.drop_index(op.f("ix_review_items_capture_id"))
        batch.drop_constraint(op.f("fk_review_items_verified_entry_id_dataset_entries"), type_="foreignkey")
        batch.drop_constraint(op.f("ck_review_items_reason"), type_="check")
        batch.drop_constraint(op.f("ck_review_items_status"), type_="check")
        for column in (
            "verified_entry_id",
            "note",
            "locked_at",
            "confidence",
            "request",
            "reason",
            "model_resolved",
            "capture_id",
        ):
            batch.drop_column(column)
        batch.create_check_constraint(op.f("ck_review_items_status"), OLD_STATUSES)
