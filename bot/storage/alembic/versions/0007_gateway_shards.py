"""Gateway shards: which process runs each shard (heartbeats), identify buckets shared by every gateway
process, and the once-per-deployment command sync claim.

Revision ID: 0007
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0003"
branch_labels = None
depends_on = None

_Seconds = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "gateway_shards",
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("shard_id", sa.Integer(), nullable=False),
        sa.Column("shard_count", sa.Integer(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("latency_s", _Seconds),
        sa.Column("heartbeat_at", _Seconds, nullable=False),
        sa.PrimaryKeyConstraint("worker_id", "shard_id", name="pk_gateway_shards"),
    )
    op.create_table(
        "identify_buckets",
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("next_at", _Seconds, nullable=False),
        sa.Column("holder", sa.Text()),
        sa.PrimaryKeyConstraint("bucket", name="pk_identify_buckets"),
    )
    op.create_table(
        "command_syncs",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("claimed_at", _Seconds, nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_command_syncs"),
    )


def downgrade() -> None:
    op.drop_table("command_syncs")
    op.drop_table("identify_buckets")
    op.drop_table("gateway_shards")
