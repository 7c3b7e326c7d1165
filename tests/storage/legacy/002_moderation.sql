-- 002_moderation: per-server policy, per-role limit overrides, prompt blocklist, generation bans,
-- blocked-attempt log (auto-bans) and result reports. Timestamps are unix seconds (REAL).

-- One row per server that changed anything; a missing row means "all defaults".
-- Limits: NULL = the global default from the settings; 0 = unlimited.
CREATE TABLE guild_policy (
    guild_id            INTEGER PRIMARY KEY,
    daily_limit         INTEGER CHECK (daily_limit >= 0),
    hourly_limit        INTEGER CHECK (hourly_limit >= 0),
    daily_pool          INTEGER CHECK (daily_pool >= 0),
    max_resolution      TEXT,
    max_images          INTEGER CHECK (max_images >= 0),
    -- JSON arrays; [] = every channel / every model.
    allowed_channels    TEXT    NOT NULL DEFAULT '[]',
    allowed_models      TEXT    NOT NULL DEFAULT '[]',
    default_model       TEXT,
    mod_role_id         INTEGER,
    modlog_channel_id   INTEGER,
    -- 'same': NSFW channels get the same rules as the rest; 'relaxed': no NSFW term list and no strict
    -- provider safety there.
    nsfw_mode           TEXT    NOT NULL DEFAULT 'same' CHECK (nsfw_mode IN ('same', 'relaxed')),
    builtin_blocklist   INTEGER NOT NULL DEFAULT 0,
    -- Auto-ban: autoban_hits blocked prompts within autoban_window seconds -> banned for autoban_duration
    -- seconds. autoban_hits = 0 disables it.
    autoban_hits        INTEGER NOT NULL DEFAULT 3 CHECK (autoban_hits >= 0),
    autoban_window      REAL    NOT NULL DEFAULT 600 CHECK (autoban_window > 0),
    autoban_duration    REAL    NOT NULL DEFAULT 3600 CHECK (autoban_duration > 0),
    updated_at          REAL    NOT NULL
);

-- Per-role overrides of the per-user limits (NULL = not overridden, 0 = unlimited).
CREATE TABLE role_limits (
    guild_id     INTEGER NOT NULL,
    role_id      INTEGER NOT NULL,
    daily_limit  INTEGER CHECK (daily_limit >= 0),
    hourly_limit INTEGER CHECK (hourly_limit >= 0),
    updated_at   REAL    NOT NULL,
    PRIMARY KEY (guild_id, role_id)
);

-- Blocked words ('word', '*' suffix = prefix) and regular expressions ('regex').
-- scope 'all' applies everywhere; 'sfw' is the NSFW term list (outside NSFW channels, and inside them
-- unless the server relaxed NSFW channels).
CREATE TABLE blocklist (
    id         INTEGER PRIMARY KEY,
    guild_id   INTEGER NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('word', 'regex')),
    pattern    TEXT    NOT NULL,
    scope      TEXT    NOT NULL DEFAULT 'all' CHECK (scope IN ('all', 'sfw')),
    added_by   INTEGER,
    created_at REAL    NOT NULL,
    UNIQUE (guild_id, kind, pattern)
);

-- Generation bans; expires_at NULL = until lifted.
CREATE TABLE bans (
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    expires_at REAL,
    reason     TEXT,
    banned_by  INTEGER,
    automatic  INTEGER NOT NULL DEFAULT 0,
    created_at REAL    NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- Prompts the filter refused (auto-ban counting and the moderators' record).
CREATE TABLE blocked_attempts (
    id         INTEGER PRIMARY KEY,
    guild_id   INTEGER,
    user_id    INTEGER NOT NULL,
    channel_id INTEGER,
    prompt     TEXT    NOT NULL,
    matched    TEXT    NOT NULL,
    created_at REAL    NOT NULL
);

CREATE INDEX blocked_attempts_user ON blocked_attempts (guild_id, user_id, created_at);

-- Results reported by members.
CREATE TABLE reports (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER,
    job_id      INTEGER NOT NULL,
    reporter_id INTEGER NOT NULL,
    reported_id INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    resolved_at REAL,
    resolution  TEXT
);

CREATE INDEX reports_job ON reports (job_id);
-- Purge: a user's result messages in one server.
CREATE INDEX results_guild_user ON results (guild_id, user_id);
