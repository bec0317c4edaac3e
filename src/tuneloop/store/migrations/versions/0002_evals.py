"""Evals: cached and failed results, check failures, one result per model and example, run end time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Written out in full (not imported from models.py); tests/test_store.py checks models and migrations agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("eval_runs", sa.Column("finished_at", TIMESTAMP, nullable=True))
    op.add_column("eval_results", sa.Column("cached", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("eval_results", sa.Column("error", sa.Text(), nullable=True))
    op.add_column("eval_results", sa.Column("check_failures", JSON, nullable=True))
    # The unique index starts with (run_id, model), so it serves the old index's lookups too.
    op.drop_index("ix_eval_results_run_id_model", table_name="eval_results")
    op.create_index(
        "ix_eval_results_run_id_model_example_id", "eval_results", ["run_id", "model", "example_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ix_eval_results_run_id_model_example_id", table_name="eval_results")
    op.create_index("ix_eval_results_run_id_model", "eval_results", ["run_id", "model"])
    # Batch mode: SQLite rebuilds the table to drop columns.
    with op.batch_alter_table("eval_results") as batch:
        batch.drop_column("check_failures")
        batch.drop_column("error")
        batch.drop_column("cached")
    with op.batch_alter_table("eval_runs") as batch:
        batch.drop_column("finished_at")
