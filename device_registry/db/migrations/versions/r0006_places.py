"""devices and gateways keep their own coordinates: a site's were shared by all in it

Revision ID: r0006_places
Revises: r0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0006_places"
down_revision = "r0005"
branch_labels = None
depends_on = None


TABLES = ("devices", "gateways")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("lat", sa.Float(), nullable=True))
            batch_op.add_column(sa.Column("lon", sa.Float(), nullable=True))
        # the site's coordinates are the best each one had until now: copied, so nothing a
        # crew was shown before is lost; installers correct them one by one
        op.execute(
            f"UPDATE {table} SET "
            f"lat = (SELECT sites.lat FROM sites WHERE sites.id = {table}.site_id), "
            f"lon = (SELECT sites.lon FROM sites WHERE sites.id = {table}.site_id) "
            "WHERE site_id IS NOT NULL"
        )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("lon")
            batch_op.drop_column("lat")
