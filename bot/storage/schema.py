"""The database schema as SQLAlchemy Core metadata: one description for SQLite and PostgreSQL.

The repositories build their statements from these tables; Alembic's migrations
(``bot/storage/alembic/``) create them. Timestamps are unix seconds (``REAL`` / ``DOUBLE PRECISION``),
Discord snowflakes are 64-bit integers. Dialect-specific pieces (the ledger's triggers, claims,
notifications) live in :mod:`bot.storage.dialect`, each in one place.

Queue columns (``queue_provider``, ``worker_id``, ``lease_expires_at``, ``delivery``) and the tables
``provider_slots``, ``provider_health``, ``provider_calls``, ``moderation_versions`` and ``workers``
are what lets several processes share one database: see :mod:`bot.storage.queue`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

# Snowflakes need 64 bits; SQLite's INTEGER PRIMARY KEY must stay INTEGER to be the rowid alias.
Snowflake = BigInteger().with_variant(Integer(), "sqlite")
RowId = BigInteger().with_variant(Integer(), "sqlite")
Seconds = Float(precision=53)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("user_id", Snowflake, nullable=False),
    Column("guild_id", Snowflake),
    Column("channel_id", Snowflake),
    Column("kind", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("prompt", Text, nullable=False, server_default=""),
    Column("params", Text, nullable=False, server_default="{}"),
    Column("count", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default="queued"),
    Column("reserved", Integer, nullable=False),
    Column("committed", Integer, nullable=False, server_default="0"),
    Column("refunded", Integer, nullable=False, server_default="0"),
    Column("provider", Text),
    Column("provider_model", Text),
    Column("task_id", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("interaction_token", Text),
    Column("interaction_created_at", Seconds),
    Column("status_message_id", Snowflake),
    Column("result_message_id", Snowflake),
    Column("error", Text),
    Column("error_kind", Text),
    Column("parent_job_id", RowId, ForeignKey("jobs.id", ondelete="SET NULL")),
    Column("created_at", Seconds, nullable=False),
    Column("started_at", Seconds),
    Column("finished_at", Seconds),
    # Set when the owner cleared their history: prompt/params/references are gone, the numbers stay.
    Column("purged_at", Seconds),
    # --- the queue (several processes) ---
    # The provider whose slot the job waits for (its best route when it was queued).
    Column("queue_provider", Text),
    # Which worker runs it, and until when that claim holds unless renewed.
    Column("worker_id", Text),
    Column("lease_expires_at", Seconds),
    # What was posted (JSON), written right after posting and before settling: a job taken over after a
    # crash between the two is settled from this, never posted again.
    Column("delivery", Text),
    # --- cancel and compare (issue 12) ---
    # Who cancelled the job (requester or moderator); the job is settled as 'cancelled' in the same write,
    # and a worker still running it drops its result (see bot.jobs.worker).
    Column("cancelled_by", Snowflake),
    # The /compare group the job belongs to (job_groups.id): its jobs share one result message.
    Column("group_id", RowId),
    CheckConstraint("count > 0", name="count_positive"),
    CheckConstraint("status IN ('queued', 'running', 'done', 'failed', 'cancelled')", name="status_known"),
    CheckConstraint("reserved >= 0", name="reserved_nonnegative"),
    CheckConstraint("committed >= 0", name="committed_nonnegative"),
    CheckConstraint("refunded >= 0", name="refunded_nonnegative"),
    CheckConstraint("committed + refunded <= reserved", name="settled_within_reserved"),
    # Job ids are never reused (the ledger keeps them after anything else is gone).
    sqlite_autoincrement=True,
)
Index("jobs_user_created", jobs.c.user_id, jobs.c.created_at)
Index("jobs_user_status", jobs.c.user_id, jobs.c.status, jobs.c.created_at)
Index("jobs_status", jobs.c.status, jobs.c.created_at)
Index("jobs_guild_created", jobs.c.guild_id, jobs.c.created_at)
# The queue: "is a job waiting for this provider?" (a claim's first, read-only look).
Index("jobs_queue_provider_status", jobs.c.queue_provider, jobs.c.status)
# The queue in claim order: only unfinished jobs (the round-robin levels are numbered over these), so
# claims and queue positions do not read the whole history. The WHERE must stay word for word what
# bot.storage.queue_sql writes (SQLite only uses a partial index for a query that repeats its condition).
_UNFINISHED_JOBS = text("status IN ('queued', 'running')")
Index(
    "jobs_unfinished_user",
    jobs.c.user_id,
    jobs.c.created_at,
    sqlite_where=_UNFINISHED_JOBS,
    postgresql_where=_UNFINISHED_JOBS,
)

Index("jobs_group", jobs.c.group_id)

job_references = Table(
    "job_references",
    metadata,
    Column("job_id", RowId, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("mime_type", Text),
    # Bytes stored with the row (databases made before reference_blobs); new rows use blob_id.
    Column("data", LargeBinary),
    Column("url", Text),
    Column("source_attachment_id", Snowflake),
    # The bytes in reference_blobs, written in their own short transactions before the job (so storing
    # large references never holds the write lock for long).
    Column("blob_id", RowId),
    PrimaryKeyConstraint("job_id", "position"),
    CheckConstraint("data IS NOT NULL OR url IS NOT NULL OR blob_id IS NOT NULL", name="data_or_url"),
)
Index("job_references_blob", job_references.c.blob_id)

# Reference image bytes, one row per image; deleted when the job is settled. A row no job_references row
# points to (the reservation was refused, or the process died in between) is swept after an hour.
reference_blobs = Table(
    "reference_blobs",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Seconds, nullable=False),
)

results = Table(
    "results",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("job_id", RowId, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Snowflake, nullable=False),
    Column("guild_id", Snowflake),
    Column("channel_id", Snowflake),
    Column("message_id", Snowflake),
    Column("attachment_id", Snowflake),
    Column("filename", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("width", Integer),
    Column("height", Integer),
    Column("mime_type", Text),
    Column("size_bytes", Integer),
    Column("provider", Text),
    Column("created_at", Seconds, nullable=False),
)
Index("results_job", results.c.job_id)
Index("results_user", results.c.user_id, results.c.created_at)
Index("results_guild_user", results.c.guild_id, results.c.user_id)

# Append-only audit of quota movements (guards in bot.storage.dialect). No foreign key: it outlives jobs.
ledger = Table(
    "ledger",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("job_id", RowId, nullable=False),
    Column("user_id", Snowflake, nullable=False),
    Column("guild_id", Snowflake),
    Column("entry", Text, nullable=False),
    Column("amount", Integer, nullable=False),
    Column("created_at", Seconds, nullable=False),
    CheckConstraint("entry IN ('reserve', 'commit', 'refund')", name="entry_known"),
    CheckConstraint("amount >= 0", name="amount_nonnegative"),
)
Index("ledger_job", ledger.c.job_id)

kv = Table(
    "kv",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Seconds, nullable=False),
)

guild_policy = Table(
    "guild_policy",
    metadata,
    Column("guild_id", Snowflake, primary_key=True, autoincrement=False),
    Column("daily_limit", Integer),
    Column("hourly_limit", Integer),
    Column("daily_pool", Integer),
    Column("max_resolution", Text),
    Column("max_images", Integer),
    Column("allowed_channels", Text, nullable=False, server_default="[]"),
    Column("allowed_models", Text, nullable=False, server_default="[]"),
    Column("default_model", Text),
    Column("mod_role_id", Snowflake),
    Column("modlog_channel_id", Snowflake),
    Column("nsfw_mode", Text, nullable=False, server_default="same"),
    Column("builtin_blocklist", Integer, nullable=False, server_default="0"),
    Column("autoban_hits", Integer, nullable=False, server_default="3"),
    Column("autoban_window", Seconds, nullable=False, server_default="600"),
    Column("autoban_duration", Seconds, nullable=False, server_default="3600"),
    Column("updated_at", Seconds, nullable=False),
    Column("denied_channels", Text, nullable=False, server_default="[]"),
    # The language of the server's public posts (a Discord locale code, /palette settings); NULL = the
    # server's Discord locale.
    Column("locale", Text),
    CheckConstraint("daily_limit >= 0", name="daily_limit_nonnegative"),
    CheckConstraint("hourly_limit >= 0", name="hourly_limit_nonnegative"),
    CheckConstraint("daily_pool >= 0", name="daily_pool_nonnegative"),
    CheckConstraint("max_images >= 0", name="max_images_nonnegative"),
    CheckConstraint("nsfw_mode IN ('same', 'relaxed')", name="nsfw_mode_known"),
    CheckConstraint("autoban_hits >= 0", name="autoban_hits_nonnegative"),
    CheckConstraint("autoban_window > 0", name="autoban_window_positive"),
    CheckConstraint("autoban_duration > 0", name="autoban_duration_positive"),
)

role_limits = Table(
    "role_limits",
    metadata,
    Column("guild_id", Snowflake, nullable=False),
    Column("role_id", Snowflake, nullable=False),
    Column("daily_limit", Integer),
    Column("hourly_limit", Integer),
    Column("updated_at", Seconds, nullable=False),
    PrimaryKeyConstraint("guild_id", "role_id"),
    CheckConstraint("daily_limit >= 0", name="daily_limit_nonnegative"),
    CheckConstraint("hourly_limit >= 0", name="hourly_limit_nonnegative"),
)

blocklist = Table(
    "blocklist",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("guild_id", Snowflake, nullable=False),
    Column("kind", Text, nullable=False),
    Column("pattern", Text, nullable=False),
    Column("scope", Text, nullable=False, server_default="all"),
    Column("added_by", Snowflake),
    Column("created_at", Seconds, nullable=False),
    UniqueConstraint("guild_id", "kind", "pattern"),
    CheckConstraint("kind IN ('word', 'regex')", name="kind_known"),
    CheckConstraint("scope IN ('all', 'sfw')", name="scope_known"),
)

bans = Table(
    "bans",
    metadata,
    Column("guild_id", Snowflake, nullable=False),
    Column("user_id", Snowflake, nullable=False),
    Column("expires_at", Seconds),
    Column("reason", Text),
    Column("banned_by", Snowflake),
    Column("automatic", Integer, nullable=False, server_default="0"),
    Column("created_at", Seconds, nullable=False),
    # A reason Palette wrote itself (an auto-ban, a ban from a report): its code and values (JSON), put
    # into words in each reader's language (bot.moderation.bans.ban_reason); ``reason`` keeps the English.
    Column("reason_code", Text),
    Column("reason_values", Text),
    PrimaryKeyConstraint("guild_id", "user_id"),
)

blocked_attempts = Table(
    "blocked_attempts",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("guild_id", Snowflake),
    Column("user_id", Snowflake, nullable=False),
    Column("channel_id", Snowflake),
    Column("prompt", Text, nullable=False),
    Column("matched", Text, nullable=False),
    Column("created_at", Seconds, nullable=False),
)
Index("blocked_attempts_user", blocked_attempts.c.guild_id, blocked_attempts.c.user_id,
      blocked_attempts.c.created_at)  # fmt: skip

reports = Table(
    "reports",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("guild_id", Snowflake),
    Column("job_id", RowId, nullable=False),
    Column("reporter_id", Snowflake, nullable=False),
    Column("reported_id", Snowflake, nullable=False),
    Column("created_at", Seconds, nullable=False),
    Column("resolved_at", Seconds),
    Column("resolution", Text),
)
Index("reports_job", reports.c.job_id)
# One report per member per job (add_report returns None for a second one).
Index("reports_job_reporter", reports.c.job_id, reports.c.reporter_id, unique=True)

# --- shared state of a deployment (several processes, one database) --------------------------------------

# One row per concurrent call a provider allows (``*_CONCURRENCY``), counted over every worker: a job
# holds a slot while it talks to the provider. The only owner of provider concurrency.
provider_slots = Table(
    "provider_slots",
    metadata,
    Column("provider", Text, nullable=False),
    Column("slot", Integer, nullable=False),
    Column("job_id", RowId),
    Column("worker_id", Text),
    Column("lease_expires_at", Seconds),
    PrimaryKeyConstraint("provider", "slot"),
)
Index("provider_slots_job", provider_slots.c.job_id)

# Circuit breaker state per provider, shared by every worker.
provider_health = Table(
    "provider_health",
    metadata,
    Column("provider", Text, primary_key=True),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("opened_at", Seconds),
    # While half-open, the one probe call's claim holds until then.
    Column("probe_until", Seconds),
    Column("updated_at", Seconds, nullable=False),
)

# Recent call outcomes per provider (error rate and latency for /palette status), pruned by age.
provider_calls = Table(
    "provider_calls",
    metadata,
    Column("id", RowId, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("latency_s", Seconds, nullable=False),
    Column("created_at", Seconds, nullable=False),
)
Index("provider_calls_provider_created", provider_calls.c.provider, provider_calls.c.created_at)

# Bumped on every moderation change of a server; every process drops its cached state when it moves.
moderation_versions = Table(
    "moderation_versions",
    metadata,
    Column("guild_id", Snowflake, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", Seconds, nullable=False),
)
Index("moderation_versions_updated", moderation_versions.c.updated_at)

# Processes of the deployment (gateways, workers) and their heartbeats, for status and health checks.
workers = Table(
    "workers",
    metadata,
    Column("worker_id", Text, primary_key=True),
    Column("role", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Seconds, nullable=False),
    Column("heartbeat_at", Seconds, nullable=False),
)

# --- servers as tenants (issue 12) -------------------------------------------------------------------------

# A server's own provider keys, encrypted (a Fernet token made with PALETTE_SECRET_KEY; never plain text).
guild_provider_keys = Table(
    "guild_provider_keys",
    metadata,
    Column("guild_id", Snowflake, nullable=False),
    Column("provider", Text, nullable=False),
    Column("secret", Text, nullable=False),
    Column("added_by", Snowflake),
    Column("updated_at", Seconds, nullable=False),
    PrimaryKeyConstraint("guild_id", "provider"),
)

# Whether a server that has keys of its own may also use the operator's providers (off by default).
guild_key_settings = Table(
    "guild_key_settings",
    metadata,
    Column("guild_id", Snowflake, primary_key=True, autoincrement=False),
    Column("operator_fallback", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", Seconds, nullable=False),
)

# --- the web gallery and dashboard (bot/web) ------------------------------------------------------------

# Signed-in browsers. ``id`` is the SHA-256 of the session cookie (the cookie itself is never stored);
# ``access_token`` is the user's Discord OAuth token, encrypted (bot.web.security), kept only to refresh
# ``guilds`` (their servers and permissions, JSON) every few minutes. Every POST carries ``csrf``.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Snowflake, nullable=False),
    Column("username", Text, nullable=False, server_default=""),
    Column("access_token", Text),
    Column("guilds", Text, nullable=False, server_default="[]"),
    Column("guilds_at", Seconds, nullable=False),
    Column("csrf", Text, nullable=False),
    Column("created_at", Seconds, nullable=False),
    Column("expires_at", Seconds, nullable=False),
    # The user's Discord language (``locale`` of /users/@me): the site's pages are shown in it.
    Column("locale", Text),
)
Index("web_sessions_expires", web_sessions.c.expires_at)

# OAuth2 logins under way: the SHA-256 of ``state`` and the PKCE verifier, for a few minutes.
oauth_states = Table(
    "oauth_states",
    metadata,
    Column("id", Text, primary_key=True),
    Column("verifier", Text, nullable=False),
    Column("next_path", Text, nullable=False, server_default="/"),
    Column("expires_at", Seconds, nullable=False),
)

# Servers that turned their web gallery on (``/palette gallery on``); off when absent.
gallery_settings = Table(
    "gallery_settings",
    metadata,
    Column("guild_id", Snowflake, primary_key=True, autoincrement=False),
    Column("enabled", Boolean, nullable=False, server_default="0"),
    Column("updated_by", Snowflake),
    Column("updated_at", Seconds, nullable=False),
)

# --- gateway shards (bot/ops/shards.py) -----------------------------------------------------------------

# Which process runs which gateway shard, and its latency: one row per (process, shard), kept fresh by a
# heartbeat, for /palette status and the metrics.
gateway_shards = Table(
    "gateway_shards",
    metadata,
    Column("worker_id", Text, nullable=False),
    Column("shard_id", Integer, nullable=False),
    Column("shard_count", Integer, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("latency_s", Seconds),
    Column("heartbeat_at", Seconds, nullable=False),
    PrimaryKeyConstraint("worker_id", "shard_id"),
)

# Identify buckets (shard_id % max_concurrency): a bucket may IDENTIFY once per window across the
# deployment; a gateway claims it by moving ``next_at`` forward (an atomic conditional update).
identify_buckets = Table(
    "identify_buckets",
    metadata,
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("next_at", Seconds, nullable=False),
    Column("holder", Text),
)

# Command sync, once per deployment: the gateway that claims a scope's new command hash syncs it; the
# others wait for the kv ``command_hash:<scope>`` to show it (a claim left by a crash goes stale).
command_syncs = Table(
    "command_syncs",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("digest", Text, nullable=False),
    Column("holder", Text, nullable=False),
    Column("claimed_at", Seconds, nullable=False),
)

# --- styles and compare (issue 12) ------------------------------------------------------------------------

# A named prompt template ("{prompt}" marks the user's words): personal (owner_id = the user) or a
# server's (owner_id = the guild, managed by its moderators). See bot.styles.
styles = Table(
    "styles",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("scope", Text, nullable=False),
    Column("owner_id", Snowflake, nullable=False),
    Column("name", Text, nullable=False),
    Column("template", Text, nullable=False),
    Column("model", Text),
    Column("aspect_ratio", Text),
    Column("created_by", Snowflake, nullable=False),
    Column("created_at", Seconds, nullable=False),
    UniqueConstraint("scope", "owner_id", "name"),
    CheckConstraint("scope IN ('personal', 'server')", name="scope_known"),
)

# A style's reference images (bytes with the row: one small image per row, written with the style).
style_references = Table(
    "style_references",
    metadata,
    Column("style_id", RowId, ForeignKey("styles.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("mime_type", Text),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("style_id", "position"),
)

# A /compare request: its jobs (jobs.group_id) post into one shared message. Workers add their part to
# that message one at a time: lock_owner/lock_until is the short lease a worker holds while editing it.
job_groups = Table(
    "job_groups",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("user_id", Snowflake, nullable=False),
    Column("guild_id", Snowflake),
    Column("size", Integer, nullable=False),
    Column("created_at", Seconds, nullable=False),
    Column("lock_owner", Text),
    Column("lock_until", Seconds),
    CheckConstraint("size > 0", name="size_positive"),
)
