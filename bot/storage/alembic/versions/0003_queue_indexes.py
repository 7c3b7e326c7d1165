"""The queue's indexes on jobs: "is a job waiting for this provider?" (a claim's first look) and the
unfinished jobs in claim order (partial: claims and queue positions do not read the whole history).

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Word for word the condition of bot.storage.schema (SQLite uses a partial index only for a query that
# repeats it).
_UNFINISHED_JOBS = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    op.create_index("jobs_queue_provider_status", "jobs", ["queue_provider", "status"])
    op.create_index(
        "jobs_unfinished_user",
        "jobs",
        ["user_id", "created_at"],
        sqlite_where=_UNFINISHED_JOBS,
        postgresql_where=_UNFINISHED_JOBS,
    )


def downgrade() -> None:
    op.drop_index("jobs_unfinished_user", "jobs")
    op.drop_index("jobs_queue_provider_status", "jobs")
