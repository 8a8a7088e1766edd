"""alert actions record a resolve or close against the sensor: override, and what it said

Revision ID: r0007
Revises: r0006_places
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0007"
down_revision = "r0006_places"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alert_actions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("override", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("sensor", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("alert_actions", schema=None) as batch_op:
        batch_op.drop_column("sensor")
        batch_op.drop_column("override")
