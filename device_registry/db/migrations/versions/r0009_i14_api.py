"""indexes of the device lists: by place and profile in id pages, counted from the index

Revision ID: r0009_i14_api
Revises: r0008_i17_health

The device list filters by district, street or grid cell (through the site), by profile (the
installer's, else the one the birth named) and pages by id; ``ix_devices_site`` answers the
filters and the page's count (X-Total-Count) from the index, ``ix_sites_grid`` finds a grid
cell's sites, ``ix_device_info_profile`` the devices whose birth named a profile. Existing rows
need no change: indexes only.
"""

from __future__ import annotations

from alembic import op

revision = "r0009_i14_api"
down_revision = "r0009_i13_case"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_devices_site", "devices", ["site_id", "retired_at", "profile", "id"])
    op.create_index("ix_sites_grid", "sites", ["grid"])
    op.create_index("ix_device_info_profile", "device_info", ["profile"])


def downgrade() -> None:
    op.drop_index("ix_device_info_profile", table_name="device_info")
    op.drop_index("ix_sites_grid", table_name="sites")
    op.drop_index("ix_devices_site", table_name="devices")
