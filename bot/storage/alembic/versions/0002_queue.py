"""Several processes on one database: queue columns on jobs (queue_provider, worker_id, lease_expires_at,
delivery); provider_slots, provider_health, provider_calls, moderation_versions and workers; reference
bytes in reference_blobs (job_references.blob_id); one report per member per job (unique index, after
removing the duplicates older code could leave).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Snowflake = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds = sa.Float(precision=53)

_REFERENCE_CHECK = "data IS NOT NULL OR url IS NOT NULL OR blob_id IS NOT NULL"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name

    # --- jobs: the queue ---
    op.add_column("jobs", sa.Column("queue_provider", sa.Text))
    op.add_column("jobs", sa.Column("worker_id", sa.Text))
    op.add_column("jobs", sa.Column("lease_expires_at", Seconds))
    op.add_column("jobs", sa.Column("delivery", sa.Text))

    # --- reference bytes in their own table ---
    op.create_table(
        "reference_blobs",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
    )
    if dialect == "sqlite":
        # SQLite cannot change a CHECK constraint in place: rebuild the table, rows and bytes kept.
        op.create_table(
            "job_references_new",
            sa.Column("job_id", RowId, sa.ForeignKey("jobs.id", ondelete="CASCADE",
                                                    name=op.f("fk_job_references_job_id_jobs")),
                      nullable=False),
            sa.Column("position", sa.Integer, nullable=False),
            sa.Column("mime_type", sa.Text),
            sa.Column("data", sa.LargeBinary),
            sa.Column("url", sa.Text),
            sa.Column("source_attachment_id", Snowflake),
            sa.Column("blob_id", RowId),
            sa.PrimaryKeyConstraint("job_id", "position", name=op.f("pk_job_references")),
            sa.CheckConstraint(_REFERENCE_CHECK, name=op.f("ck_job_references_data_or_url")),
        )  # fmt: skip
        op.execute(
            "INSERT INTO job_references_new (job_id, position, mime_type, data, url, source_attachment_id) "
            "SELECT job_id, position, mime_type, data, url, source_attachment_id FROM job_references"
        )
        op.drop_table("job_references")
        op.rename_table("job_references_new", "job_references")
    else:
        op.add_column("job_references", sa.Column("blob_id", RowId))
        op.drop_constraint(op.f("ck_job_references_data_or_url"), "job_references", type_="check")
        op.create_check_constraint(op.f("ck_job_references_data_or_url"), "job_references", _REFERENCE_CHECK)
    op.create_index("job_references_blob", "job_references", ["blob_id"])

    # --- one report per member per job ---
    op.execute(
        "DELETE FROM reports WHERE id NOT IN (SELECT MIN(id) FROM reports GROUP BY job_id, reporter_id)"
    )
    op.create_index("reports_job_reporter", "reports", ["job_id", "reporter_id"], unique=True)

    # --- shared state of a deployment ---
    op.create_table(
        "provider_slots",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("job_id", RowId),
        sa.Column("worker_id", sa.Text),
        sa.Column("lease_expires_at", Seconds),
        sa.PrimaryKeyConstraint("provider", "slot", name=op.f("pk_provider_slots")),
    )
    op.create_index("provider_slots_job", "provider_slots", ["job_id"])
    op.create_table(
        "provider_health",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("opened_at", Seconds),
        sa.Column("probe_until", Seconds),
        sa.Column("updated_at", Seconds, nullable=False),
    )
    op.create_table(
        "provider_calls",
        sa.Column("id", RowId, primary_key=True),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("latency_s", Seconds, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
    )
    op.create_index("provider_calls_provider_created", "provider_calls", ["provider", "created_at"])
    op.create_table(
        "moderation_versions",
        sa.Column("guild_id", Snowflake, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", Seconds, nullable=False),
    )
    op.create_index("moderation_versions_updated", "moderation_versions", ["updated_at"])
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", Seconds, nullable=False),
        sa.Column("heartbeat_at", Seconds, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("Palette's migrations go forward only; restore a backup instead")
