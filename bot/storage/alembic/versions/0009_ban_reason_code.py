"""Ban reasons that Palette writes itself, as a code and its values: bans.reason_code and
bans.reason_values (JSON), so that each reader sees them in their own language. Both NULL for a
moderator's typed reason and for the bans made before (their English ``reason`` is shown as it is).

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bans") as batch:
        batch.add_column(sa.Column("reason_code", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reason_values", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bans") as batch:
        batch.drop_column("reason_values")
        batch.drop_column("reason_code")
