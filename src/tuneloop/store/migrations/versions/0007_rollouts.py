"""Rollouts: canary splits and live shadows of an alias (``rollouts``), the calls that took part in one
(``requests.rollout_id``, ``rollout_arm``, ``shadow_of``, ``comparison``), the checks' outcome of every
logged call (``requests.checks_passed``), and rollout events in the alias history (``alias_events.kind``,
``rollout_id``, ``details``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

Written out in full (not imported from models.py); tests/test_store.py checks models and migrations agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("candidate_version_id", sa.Integer(), nullable=False),
        sa.Column("production_version_id", sa.Integer(), nullable=True),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("sticky_tag", sa.String(255), nullable=True),
        sa.Column("guard", JSON, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("started_by", sa.String(255), nullable=True),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.Column("ended_by", sa.String(255), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("figures", JSON, nullable=True),
        sa.Column("figures_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("kind IN ('canary', 'shadow')", name=op.f("ck_rollouts_kind")),
        sa.CheckConstraint(
            "state IN ('active', 'stopped', 'tripped', 'promoted', 'ended')", name=op.f("ck_rollouts_state")
        ),
        sa.ForeignKeyConstraint(
            ["candidate_version_id"],
            ["model_versions.id"],
            name=op.f("fk_rollouts_candidate_version_id_model_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["production_version_id"],
            ["model_versions.id"],
            name=op.f("fk_rollouts_production_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index("ix_rollouts_task_alias_state", "rollouts", ["task", "alias", "state"])
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("checks_passed", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("rollout_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rollout_arm", sa.String(16), nullable=True))
        batch.add_column(sa.Column("shadow_of", sa.String(64), nullable=True))
        batch.add_column(sa.Column("comparison", JSON, nullable=True))
        batch.create_index(op.f("ix_requests_shadow_of"), ["shadow_of"])
        batch.create_index("ix_requests_rollout_id_created_at", ["rollout_id", "created_at"])
    with op.batch_alter_table("alias_events") as batch:
        batch.add_column(sa.Column("kind", sa.String(32), server_default="move", nullable=False))
        batch.add_column(sa.Column("rollout_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("details", JSON, nullable=True))
        batch.create_foreign_key(
            op.f("fk_alias_events_rollout_id_rollouts"), "rollouts", ["rollout_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("alias_events") as batch:
        batch.drop_constraint(op.f("fk_alias_events_rollout_id_rollouts"), type_="foreignkey")
        batch.drop_column("details")
        batch.drop_column("rollout_id")
        batch.drop_column("kind")
    with op.batch_alter_table("requests") as batch:
        batch.drop_index("ix_requests_rollout_id_created_at")
        batch.drop_index(op.f("ix_requests_shadow_of"))
        batch.drop_column("comparison")
        batch.drop_column("shadow_of")
        batch.drop_column("rollout_arm")
        batch.drop_column("rollout_id")
        batch.drop_column("checks_passed")
    op.drop_index("ix_rollouts_task_alias_state", table_name="rollouts")
    op.drop_table("rollouts")
