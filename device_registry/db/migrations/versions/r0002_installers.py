"""registry for installers: registration, tokens, audit, commands

Revision ID: r0002
Revises: r0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0002"
down_revision = "r0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # columns added to existing tables get server defaults: rows made before this revision
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=260), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_ts"), ["ts"], unique=False)
        batch_op.create_index("ix_audit_target", ["target"], unique=False)

    op.create_table(
        "commands",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("gateway_id", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=260), nullable=False),
        sa.Column("point", sa.String(length=128), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("requested_at", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("answered_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commands_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_commands_gateway_id"), ["gateway_id"], unique=False)

    op.create_table(
        "grid_cells",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("district_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False, server_default=""),
        sa.ForeignKeyConstraint(
            ["district_id"],
            ["districts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "streets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("district_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False, server_default=""),
        sa.ForeignKeyConstraint(
            ["district_id"],
            ["districts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("district_id", "name"),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("registered_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("retired_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("profile", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("bus", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("unit_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("address", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("install_date", sa.String(length=10), nullable=True))
        batch_op.add_column(
            sa.Column("firmware", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_devices_profile"), ["profile"], unique=False)

    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.add_column(sa.Column("registered_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("retired_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("name", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("settings", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("config_desired", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("config_acked", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("config_accepted", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("config_errors", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("config_acked_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.drop_column("config_acked_at")
        batch_op.drop_column("config_errors")
        batch_op.drop_column("config_accepted")
        batch_op.drop_column("config_acked")
        batch_op.drop_column("config_desired")
        batch_op.drop_column("settings")
        batch_op.drop_column("labels")
        batch_op.drop_column("name")
        batch_op.drop_column("retired_at")
        batch_op.drop_column("registered_at")

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_profile"))
        batch_op.drop_column("labels")
        batch_op.drop_column("firmware")
        batch_op.drop_column("install_date")
        batch_op.drop_column("address")
        batch_op.drop_column("unit_id")
        batch_op.drop_column("bus")
        batch_op.drop_column("profile")
        batch_op.drop_column("retired_at")
        batch_op.drop_column("registered_at")

    op.drop_table("streets")
    op.drop_table("grid_cells")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commands_gateway_id"))
        batch_op.drop_index(batch_op.f("ix_commands_device_id"))

    op.drop_table("commands")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_target")
        batch_op.drop_index(batch_op.f("ix_audit_log_ts"))

    op.drop_table("audit_log")
    op.drop_table("api_tokens")
