"""bridge heartbeats: each bridge's dependencies, for a registry in another process

Revision ID: r0008_i17_health
Revises: r0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0008_i17_health"
down_revision = "r0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bridge_heartbeats",
        sa.Column("bridge_id", sa.String(length=128), nullable=False),
        sa.Column("beat_at", sa.BigInteger(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("bridge_id"),
    )


def downgrade() -> None:
    op.drop_table("bridge_heartbeats")
