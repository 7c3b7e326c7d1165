"""The language of a server's public posts: guild_policy.locale (``/palette settings locale``; NULL =
the server's Discord locale).

Revision ID: 0008
Revises: 0007
Create Date: 2025-01-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("guild_policy") as batch:
        batch.add_column(sa.Column("locale", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guild_policy") as batch:
        batch.drop_column("locale")
