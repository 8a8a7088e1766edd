"""devices may be attached to a city component (部件): its 16-digit id and three departments

Revision ID: r0009_i13_xuhui
Revises: r0008_i17_health
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0009_i13_xuhui"
down_revision = "r0008_i17_health"
branch_labels = None
depends_on = None

DEPARTMENTS = ("competent", "owner", "maintainer")


def upgrade() -> None:
    # existing devices are attached to no component: null id, no departments (names "", as the
    # models write them, so the server default fills the rows already there)
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("component_id", sa.String(length=16), nullable=True))
        for dept in DEPARTMENTS:
            batch_op.add_column(sa.Column(f"dept_{dept}_code", sa.String(length=32), nullable=True))
            batch_op.add_column(sa.Column(f"dept_{dept}_name", sa.String(length=200),
                                          nullable=False, server_default=""))  # fmt: skip
        batch_op.create_index("ix_devices_component_id", ["component_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_component_id")
        for dept in reversed(DEPARTMENTS):
            batch_op.drop_column(f"dept_{dept}_name")
            batch_op.drop_column(f"dept_{dept}_code")
        batch_op.drop_column("component_id")
