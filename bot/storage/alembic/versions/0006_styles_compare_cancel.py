"""Styles, compare and cancel (issue 12): jobs.cancelled_by and jobs.group_id; the styles,
style_references and job_groups tables.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

Snowflake = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds = sa.Float(precision=53)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cancelled_by", Snowflake))
    op.add_column("jobs", sa.Column("group_id", RowId))
    op.create_index("jobs_group", "jobs", ["group_id"])
    op.create_table(
        "styles",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("owner_id", Snowflake, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("aspect_ratio", sa.Text),
        sa.Column("created_by", Snowflake, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_styles")),
        sa.UniqueConstraint("scope", "owner_id", "name", name=op.f("uq_styles_scope_owner_id_name")),
        sa.CheckConstraint("scope IN ('personal', 'server')", name=op.f("ck_styles_scope_known")),
    )
    op.create_table(
        "style_references",
        sa.Column(
            "style_id",
            RowId,
            sa.ForeignKey("styles.id", ondelete="CASCADE", name=op.f("fk_style_references_style_id_styles")),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("mime_type", sa.Text),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("style_id", "position", name=op.f("pk_style_references")),
    )
    op.create_table(
        "job_groups",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("user_id", Snowflake, nullable=False),
        sa.Column("guild_id", Snowflake),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        sa.Column("lock_owner", sa.Text),
        sa.Column("lock_until", Seconds),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_groups")),
        sa.CheckConstraint("size > 0", name=op.f("ck_job_groups_size_positive")),
    )


def downgrade() -> None:
    op.drop_table("job_groups")
    op.drop_table("style_references")
    op.drop_table("styles")
    op.drop_index("jobs_group", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("group_id")
        batch.drop_column("cancelled_by")
