"""Servers' own provider keys (encrypted) and whether they may fall back to the operator's providers.

Revision ID: 0005
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0008"
branch_labels = None
depends_on = None

Snowflake = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "guild_provider_keys",
        sa.Column("guild_id", Snowflake, nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("added_by", Snowflake),
        sa.Column("updated_at", Seconds, nullable=False),
        sa.PrimaryKeyConstraint("guild_id", "provider", name="pk_guild_provider_keys"),
    )
    op.create_table(
        "guild_key_settings",
        sa.Column("guild_id", Snowflake, nullable=False, autoincrement=False),
        sa.Column("operator_fallback", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("updated_at", Seconds, nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name="pk_guild_key_settings"),
    )


def downgrade() -> None:
    op.drop_table("guild_key_settings")
    op.drop_table("guild_provider_keys")
