"""The schema of the hand-written SQLite migrations 001-003: jobs, references, results, the ledger and its
guards, kv, and moderation (policy, role limits, blocklist, bans, blocked attempts, reports).

A SQLite database made by those migrations (``schema_migrations`` at version 3) is stamped with this
revision instead of running it (see :mod:`bot.storage.migrator`).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bot.storage.dialect import create_trigger_statements

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen here (not imported from schema.py): this revision must keep creating what it always created.
Snowflake = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds = sa.Float(precision=53)


def _check(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("user_id", Snowflake, nullable=False),
        sa.Column("guild_id", Snowflake),
        sa.Column("channel_id", Snowflake),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False, server_default=""),
        sa.Column("params", sa.Text, nullable=False, server_default="{}"),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        sa.Column("reserved", sa.Integer, nullable=False),
        sa.Column("committed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("refunded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("provider", sa.Text),
        sa.Column("provider_model", sa.Text),
        sa.Column("task_id", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("interaction_token", sa.Text),
        sa.Column("interaction_created_at", Seconds),
        sa.Column("status_message_id", Snowflake),
        sa.Column("result_message_id", Snowflake),
        sa.Column("error", sa.Text),
        sa.Column("error_kind", sa.Text),
        sa.Column("parent_job_id", RowId, sa.ForeignKey("jobs.id", ondelete="SET NULL",
                                                       name=op.f("fk_jobs_parent_job_id_jobs"))),
        sa.Column("created_at", Seconds, nullable=False),
        sa.Column("started_at", Seconds),
        sa.Column("finished_at", Seconds),
        sa.Column("purged_at", Seconds),
        _check("jobs", "count_positive", "count > 0"),
        _check("jobs", "status_known", "status IN ('queued', 'running', 'done', 'failed', 'cancelled')"),
        _check("jobs", "reserved_nonnegative", "reserved >= 0"),
        _check("jobs", "committed_nonnegative", "committed >= 0"),
        _check("jobs", "refunded_nonnegative", "refunded >= 0"),
        _check("jobs", "settled_within_reserved", "committed + refunded <= reserved"),
        sqlite_autoincrement=True,
    )  # fmt: skip
    op.create_index("jobs_user_created", "jobs", ["user_id", "created_at"])
    op.create_index("jobs_user_status", "jobs", ["user_id", "status", "created_at"])
    op.create_index("jobs_status", "jobs", ["status", "created_at"])
    op.create_index("jobs_guild_created", "jobs", ["guild_id", "created_at"])

    op.create_table(
        "job_references",
        sa.Column("job_id", RowId, sa.ForeignKey("jobs.id", ondelete="CASCADE",
                                                name=op.f("fk_job_references_job_id_jobs")), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("mime_type", sa.Text),
        sa.Column("data", sa.LargeBinary),
        sa.Column("url", sa.Text),
        sa.Column("source_attachment_id", Snowflake),
        sa.PrimaryKeyConstraint("job_id", "position", name=op.f("pk_job_references")),
        _check("job_references", "data_or_url", "data IS NOT NULL OR url IS NOT NULL"),
    )  # fmt: skip

    op.create_table(
        "results",
        sa.Column("id", RowId, primary_key=True),
        sa.Column("job_id", RowId, sa.ForeignKey("jobs.id", ondelete="CASCADE",
                                                name=op.f("fk_results_job_id_jobs")), nullable=False),
        sa.Column("user_id", Snowflake, nullable=False),
        sa.Column("guild_id", Snowflake),
        sa.Column("channel_id", Snowflake),
        sa.Column("message_id", Snowflake),
        sa.Column("attachment_id", Snowflake),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("mime_type", sa.Text),
        sa.Column("size_bytes", sa.Integer),
        sa.Column("provider", sa.Text),
        sa.Column("created_at", Seconds, nullable=False),
    )  # fmt: skip
    op.create_index("results_job", "results", ["job_id"])
    op.create_index("results_user", "results", ["user_id", "created_at"])
    op.create_index("results_guild_user", "results", ["guild_id", "user_id"])

    op.create_table(
        "ledger",
        sa.Column("id", RowId, primary_key=True),
        sa.Column("job_id", RowId, nullable=False),
        sa.Column("user_id", Snowflake, nullable=False),
        sa.Column("guild_id", Snowflake),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("amount", sa.Integer, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        _check("ledger", "entry_known", "entry IN ('reserve', 'commit', 'refund')"),
        _check("ledger", "amount_nonnegative", "amount >= 0"),
    )
    op.create_index("ledger_job", "ledger", ["job_id"])

    op.create_table(
        "kv",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", Seconds, nullable=False),
    )

    op.create_table(
        "guild_policy",
        sa.Column("guild_id", Snowflake, primary_key=True, autoincrement=False),
        sa.Column("daily_limit", sa.Integer),
        sa.Column("hourly_limit", sa.Integer),
        sa.Column("daily_pool", sa.Integer),
        sa.Column("max_resolution", sa.Text),
        sa.Column("max_images", sa.Integer),
        sa.Column("allowed_channels", sa.Text, nullable=False, server_default="[]"),
        sa.Column("allowed_models", sa.Text, nullable=False, server_default="[]"),
        sa.Column("default_model", sa.Text),
        sa.Column("mod_role_id", Snowflake),
        sa.Column("modlog_channel_id", Snowflake),
        sa.Column("nsfw_mode", sa.Text, nullable=False, server_default="same"),
        sa.Column("builtin_blocklist", sa.Integer, nullable=False, server_default="0"),
        sa.Column("autoban_hits", sa.Integer, nullable=False, server_default="3"),
        sa.Column("autoban_window", Seconds, nullable=False, server_default="600"),
        sa.Column("autoban_duration", Seconds, nullable=False, server_default="3600"),
        sa.Column("updated_at", Seconds, nullable=False),
        sa.Column("denied_channels", sa.Text, nullable=False, server_default="[]"),
        _check("guild_policy", "daily_limit_nonnegative", "daily_limit >= 0"),
        _check("guild_policy", "hourly_limit_nonnegative", "hourly_limit >= 0"),
        _check("guild_policy", "daily_pool_nonnegative", "daily_pool >= 0"),
        _check("guild_policy", "max_images_nonnegative", "max_images >= 0"),
        _check("guild_policy", "nsfw_mode_known", "nsfw_mode IN ('same', 'relaxed')"),
        _check("guild_policy", "autoban_hits_nonnegative", "autoban_hits >= 0"),
        _check("guild_policy", "autoban_window_positive", "autoban_window > 0"),
        _check("guild_policy", "autoban_duration_positive", "autoban_duration > 0"),
    )

    op.create_table(
        "role_limits",
        sa.Column("guild_id", Snowflake, nullable=False),
        sa.Column("role_id", Snowflake, nullable=False),
        sa.Column("daily_limit", sa.Integer),
        sa.Column("hourly_limit", sa.Integer),
        sa.Column("updated_at", Seconds, nullable=False),
        sa.PrimaryKeyConstraint("guild_id", "role_id", name=op.f("pk_role_limits")),
        _check("role_limits", "daily_limit_nonnegative", "daily_limit >= 0"),
        _check("role_limits", "hourly_limit_nonnegative", "hourly_limit >= 0"),
    )

    op.create_table(
        "blocklist",
        sa.Column("id", RowId, primary_key=True),
        sa.Column("guild_id", Snowflake, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("pattern", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False, server_default="all"),
        sa.Column("added_by", Snowflake),
        sa.Column("created_at", Seconds, nullable=False),
        sa.UniqueConstraint("guild_id", "kind", "pattern", name=op.f("uq_blocklist_guild_id_kind_pattern")),
        _check("blocklist", "kind_known", "kind IN ('word', 'regex')"),
        _check("blocklist", "scope_known", "scope IN ('all', 'sfw')"),
    )

    op.create_table(
        "bans",
        sa.Column("guild_id", Snowflake, nullable=False),
        sa.Column("user_id", Snowflake, nullable=False),
        sa.Column("expires_at", Seconds),
        sa.Column("reason", sa.Text),
        sa.Column("banned_by", Snowflake),
        sa.Column("automatic", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", Seconds, nullable=False),
        sa.PrimaryKeyConstraint("guild_id", "user_id", name=op.f("pk_bans")),
    )

    op.create_table(
        "blocked_attempts",
        sa.Column("id", RowId, primary_key=True),
        sa.Column("guild_id", Snowflake),
        sa.Column("user_id", Snowflake, nullable=False),
        sa.Column("channel_id", Snowflake),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("matched", sa.Text, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
    )
    op.create_index("blocked_attempts_user", "blocked_attempts", ["guild_id", "user_id", "created_at"])

    op.create_table(
        "reports",
        sa.Column("id", RowId, primary_key=True),
        sa.Column("guild_id", Snowflake),
        sa.Column("job_id", RowId, nullable=False),
        sa.Column("reporter_id", Snowflake, nullable=False),
        sa.Column("reported_id", Snowflake, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        sa.Column("resolved_at", Seconds),
        sa.Column("resolution", sa.Text),
    )
    op.create_index("reports_job", "reports", ["job_id"])

    for statement in create_trigger_statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("Palette's migrations go forward only; restore a backup instead")
