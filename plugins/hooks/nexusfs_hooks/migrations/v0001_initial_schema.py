"""Initial schema of the hooks service: events, counters, rules.

Revision ID: 0001
Revises: (none)

The same tables and indexes ``Base.metadata.create_all`` made before the service used
migrations, so databases created that way are adopted by stamping them at this revision
(see ``nexusfs_hooks.models.upgrade_schema``). Inserts the two counter rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PATH = sa.String(4096).with_variant(sa.String(4096, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "nexus_hooks_events",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),
        sa.Column("kernel_seq", sa.BigInteger(), nullable=True, unique=True),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("subject", sa.String(512), nullable=True),
        sa.Column("op", sa.String(64), nullable=False),
        sa.Column("path", _PATH, nullable=False),
        sa.Column("dst", _PATH, nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_nexus_hooks_events_path", "nexus_hooks_events", ["path"])
    op.create_index("ix_nexus_hooks_events_dst", "nexus_hooks_events", ["dst"])
    op.create_index("ix_nexus_hooks_events_subject", "nexus_hooks_events", ["subject"])
    op.create_index("ix_nexus_hooks_events_time", "nexus_hooks_events", ["time"])
    counters = op.create_table(
        "nexus_hooks_counters",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "nexus_hooks_rules",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("op", sa.String(64), nullable=False),
        sa.Column("glob", sa.String(4096), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.bulk_insert(counters, [{"name": "event_seq", "value": 0},
                              {"name": "rules_version", "value": 0}])  # fmt: skip


def downgrade() -> None:
    op.drop_table("nexus_hooks_rules")
    op.drop_table("nexus_hooks_counters")
    op.drop_table("nexus_hooks_events")
