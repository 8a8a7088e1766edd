"""alerts become cases of the city's workflow: 上报 立案 派遣 处置 核查 结案, with urging (督办)

Revision ID: r0009_i13_case
Revises: r0009_i13_xuhui (merged into this branch; the lead re-chains)

The stages of the generic lifecycle map onto the city's (docs/alerts.md, "From the old stages"):

    old stage       new stage    why
    open            reported     nobody took it up: an alert, no case yet
    acknowledged    filed        a person took it up: a case, not yet dispatched to a department
    cleared         reported     the device cleared it before anybody acted: an operator closes
                                 it (never filed) or files it
    resolved        disposed     a person said it was dealt with: it waits for verification
    closed          closed

The actions recorded in ``alert_actions`` are renamed the same way (ack -> file, resolve ->
dispose; close and device_clear keep their names) with their stages before and after, so a
case's history reads in one vocabulary. Columns: ``acked_*`` -> ``filed_*``, ``resolved_*`` ->
``disposed_*``, ``escalated_at`` -> ``urged_at`` (an escalated alert counts as urged once); new:
``dispatched_*``, ``verified_*``, ``dispatch_count``, ``urge_count``, ``component_id``,
``area_class``, ``department``. Messages already in the delivery feed keep their old words.
The downgrade maps back (dispatched -> acknowledged, verified -> resolved), losing the
distinctions the old stages cannot hold.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0009_i13_case"
down_revision = "r0009_i13_xuhui"
branch_labels = None
depends_on = None

STAGES_UP = {"open": "reported", "acknowledged": "filed", "cleared": "reported",
             "resolved": "disposed"}  # fmt: skip
STAGES_DOWN = {"reported": "open", "filed": "acknowledged", "dispatched": "acknowledged",
               "disposed": "resolved", "verified": "resolved"}  # fmt: skip
ACTIONS_UP = {"ack": "file", "resolve": "dispose"}
ACTIONS_DOWN = {"file": "ack", "dispatch": "ack", "dispose": "resolve", "verify": "resolve"}
RENAMED = (("acked_by", "filed_by", 128), ("acked_at", "filed_at", None),
           ("resolved_by", "disposed_by", 128), ("resolved_at", "disposed_at", None),
           ("escalated_at", "urged_at", None))  # fmt: skip


def _case(column: str, mapping: dict[str, str]) -> str:
    whens = " ".join(f"WHEN '{old}' THEN '{new}'" for old, new in mapping.items())
    return f"CASE {column} {whens} ELSE {column} END"


def _map(stages: dict[str, str], actions: dict[str, str]) -> None:
    op.execute(f"UPDATE alert_ops SET stage = {_case('stage', stages)}")
    before, after = '"before"', '"after"'  # quoted: words SQL dialects keep for themselves
    op.execute(
        f"UPDATE alert_actions SET action = {_case('action', actions)}, "
        f"{before} = {_case(before, stages)}, {after} = {_case(after, stages)}"
    )


def _type(length: int | None) -> sa.String | sa.BigInteger:
    return sa.String(length=length) if length else sa.BigInteger()


def upgrade() -> None:
    with op.batch_alter_table("alert_ops", schema=None) as batch_op:
        for old, new, length in RENAMED:
            batch_op.alter_column(old, new_column_name=new, existing_type=_type(length),
                                  existing_nullable=True)  # fmt: skip
        batch_op.add_column(sa.Column("component_id", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("area_class", sa.String(length=1), nullable=True))
        batch_op.add_column(sa.Column("department", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("dispatch_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("urge_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("dispatched_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("dispatched_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("verified_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("verified_at", sa.BigInteger(), nullable=True))
    _map(STAGES_UP, ACTIONS_UP)
    op.execute("UPDATE alert_ops SET urge_count = 1 WHERE urged_at IS NOT NULL")


def downgrade() -> None:
    _map(STAGES_DOWN, ACTIONS_DOWN)
    with op.batch_alter_table("alert_ops", schema=None) as batch_op:
        for name in ("verified_at", "verified_by", "dispatched_at", "dispatched_by",
                     "urge_count", "dispatch_count", "department", "area_class",
                     "component_id"):  # fmt: skip
            batch_op.drop_column(name)
        for old, new, length in RENAMED:
            batch_op.alter_column(new, new_column_name=old, existing_type=_type(length),
                                  existing_nullable=True)  # fmt: skip
