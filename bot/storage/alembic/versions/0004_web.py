"""The web gallery and dashboard: browser sessions, OAuth2 logins under way, per-server gallery switch.

Revision ID: 0004
Revises: 0005
Create Date: 2025-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0005"
branch_labels = None
depends_on = None

Snowflake = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user_id", Snowflake, nullable=False),
        sa.Column("username", sa.Text, nullable=False, server_default=""),
        sa.Column("access_token", sa.Text),
        sa.Column("guilds", sa.Text, nullable=False, server_default="[]"),
        sa.Column("guilds_at", Seconds, nullable=False),
        sa.Column("csrf", sa.Text, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        sa.Column("expires_at", Seconds, nullable=False),
        sa.Column("locale", sa.Text),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
    )
    op.create_index("web_sessions_expires", "web_sessions", ["expires_at"])
    op.create_table(
        "oauth_states",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("verifier", sa.Text, nullable=False),
        sa.Column("next_path", sa.Text, nullable=False, server_default="/"),
        sa.Column("expires_at", Seconds, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_states")),
    )
    op.create_table(
        "gallery_settings",
        sa.Column("guild_id", Snowflake, primary_key=True, autoincrement=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("updated_by", Snowflake),
        sa.Column("updated_at", Seconds, nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_gallery_settings")),
    )


def downgrade() -> None:
    op.drop_table("gallery_settings")
    op.drop_table("oauth_states")
    op.drop_index("web_sessions_expires", "web_sessions")
    op.drop_table("web_sessions")
