"""sequence audit across a shared subscription: stream numbers with each seen message id

Revision ID: r0004
Revises: r0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0004"
down_revision = "r0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("seen_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stream", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("session", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_seen_stream", ["gateway", "stream", "seq"], unique=False)
    op.create_table(
        "seq_audit",
        sa.Column("gateway", sa.String(length=128), nullable=False),
        sa.Column("stream", sa.String(length=16), nullable=False),
        sa.Column("session", sa.BigInteger(), nullable=False),
        sa.Column("through", sa.BigInteger(), nullable=False),
        sa.Column("missing", sa.BigInteger(), nullable=False),
        sa.Column("audited_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("gateway", "stream"),
    )


def downgrade() -> None:
    op.drop_table("seq_audit")
    with op.batch_alter_table("seen_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_seen_stream")
        batch_op.drop_column("seq")
        batch_op.drop_column("session")
        batch_op.drop_column("stream")
