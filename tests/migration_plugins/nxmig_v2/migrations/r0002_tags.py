"""Add a ``tag`` column (filled for existing rows) and index it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nxmig_notes", sa.Column("tag", sa.String(50), nullable=True))
    op.execute("UPDATE nxmig_notes SET tag = 'untagged'")
    op.create_index("ix_nxmig_notes_tag", "nxmig_notes", ["tag"])


def downgrade() -> None:
    op.drop_index("ix_nxmig_notes_tag", table_name="nxmig_notes")
    op.drop_column("nxmig_notes", "tag")
