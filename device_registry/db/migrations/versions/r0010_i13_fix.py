"""alert actions keep the Chinese of the centre's own notes beside the English: note_zh

The centre's notes (filed by the centre, verified by the sensor, re-dispatched ...) were English
only; a person's note stays as typed. Existing rows get "" (the dashboard shows their ``note``).

Revision ID: r0010_i13_fix
Revises: r0009_i13_case
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0010_i13_fix"
down_revision = "r0009_i14_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alert_actions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note_zh", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("alert_actions", schema=None) as batch_op:
        batch_op.drop_column("note_zh")
