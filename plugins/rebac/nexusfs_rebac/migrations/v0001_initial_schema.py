"""Initial schema of the rebac service: meta, models, tuples, changes.

Revision ID: 0001
Revises: (none)

The ``meta`` rows (``revision``, ``store_id``) are inserted by
``nexusfs_rebac.tables.upgrade_schema`` (the store id is random per database).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "nexus_rebac_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "nexus_rebac_models",
        sa.Column("revision", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("dsl", sa.Text(), nullable=False),
        sa.Column("json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_nexus_rebac_models_model_id", "nexus_rebac_models", ["model_id"])
    op.create_table(
        "nexus_rebac_tuples",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("relation", sa.String(64), nullable=False),
        sa.Column("user", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "nexus_rebac_changes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("operation", sa.String(8), nullable=False),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("relation", sa.String(64), nullable=False),
        sa.Column("user", sa.Text(), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
    )
    op.create_index("ix_nexus_rebac_changes_revision", "nexus_rebac_changes", ["revision"])


def downgrade() -> None:
    op.drop_table("nexus_rebac_changes")
    op.drop_table("nexus_rebac_tuples")
    op.drop_table("nexus_rebac_models")
    op.drop_table("nexus_rebac_meta")
