"""alert operations and device health: lifecycle, actions, delivery feed, webhooks, device info

Revision ID: r0003
Revises: r0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0003"
down_revision = "r0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("before", sa.String(length=16), nullable=False),
        sa.Column("after", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alert_actions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_actions_alert_id"), ["alert_id"], unique=False)

    op.create_table(
        "alert_ops",
        sa.Column("alert_id", sa.String(length=128), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("incident_id", sa.String(length=64), nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=True),
        sa.Column("time_limit_min", sa.Integer(), nullable=True),
        sa.Column("escalated_at", sa.BigInteger(), nullable=True),
        sa.Column("acked_by", sa.String(length=128), nullable=True),
        sa.Column("acked_at", sa.BigInteger(), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("resolved_at", sa.BigInteger(), nullable=True),
        sa.Column("closed_by", sa.String(length=128), nullable=True),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("alert_id"),
    )
    with op.batch_alter_table("alert_ops", schema=None) as batch_op:
        batch_op.create_index("ix_alert_ops_due", ["stage", "due_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_alert_ops_incident_id"), ["incident_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alert_ops_stage"), ["stage"], unique=False)

    op.create_table(
        "device_info",
        sa.Column("device_id", sa.String(length=260), nullable=False),
        sa.Column("profile", sa.String(length=128), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=True),
        sa.Column("firmware", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "feed_cursors",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "platform_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("alert_id", sa.String(length=128), nullable=False),
        sa.Column("district", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("platform_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_platform_events_at"), ["at"], unique=False)

    op.create_table(
        "webhook_dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.BigInteger(), nullable=False),
        sa.Column("replayed_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_dead_letters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_dead_letters_webhook_id"), ["webhook_id"], unique=False
        )

    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("district", sa.String(length=64), nullable=True),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("webhooks")
    with op.batch_alter_table("webhook_dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_dead_letters_webhook_id"))

    op.drop_table("webhook_dead_letters")
    with op.batch_alter_table("platform_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_platform_events_at"))

    op.drop_table("platform_events")
    op.drop_table("feed_cursors")
    op.drop_table("device_info")
    with op.batch_alter_table("alert_ops", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_ops_stage"))
        batch_op.drop_index(batch_op.f("ix_alert_ops_incident_id"))
        batch_op.drop_index("ix_alert_ops_due")

    op.drop_table("alert_ops")
    with op.batch_alter_table("alert_actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_actions_alert_id"))

    op.drop_table("alert_actions")
