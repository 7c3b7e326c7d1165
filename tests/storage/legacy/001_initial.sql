-- 001_initial: jobs, their reference images, delivered results, the quota ledger and a key/value store.
-- Timestamps are unix seconds (REAL). Discord snowflakes are INTEGER (64-bit fits).

CREATE TABLE jobs (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id                INTEGER NOT NULL,
    guild_id               INTEGER,
    channel_id             INTEGER,
    kind                   TEXT    NOT NULL,
    model                  TEXT    NOT NULL,
    prompt                 TEXT    NOT NULL DEFAULT '',
    params                 TEXT    NOT NULL DEFAULT '{}',
    count                  INTEGER NOT NULL CHECK (count > 0),
    status                 TEXT    NOT NULL DEFAULT 'queued'
                           CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    reserved               INTEGER NOT NULL CHECK (reserved >= 0),
    committed              INTEGER NOT NULL DEFAULT 0 CHECK (committed >= 0),
    refunded               INTEGER NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    provider               TEXT,
    provider_model         TEXT,
    task_id                TEXT,
    attempts               INTEGER NOT NULL DEFAULT 0,
    interaction_token      TEXT,
    interaction_created_at REAL,
    status_message_id      INTEGER,
    result_message_id      INTEGER,
    error                  TEXT,
    error_kind             TEXT,
    parent_job_id          INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    created_at             REAL    NOT NULL,
    started_at             REAL,
    finished_at            REAL,
    -- Set when the owner cleared their history: prompt/params/references are gone, the numbers stay
    -- (quota windows and the ledger still need them).
    purged_at              REAL,
    CHECK (committed + refunded <= reserved)
);

-- Quota windows and history pages.
CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
-- Jobs in flight per user (the concurrency limit); a user's done jobs, newest first (history).
CREATE INDEX jobs_user_status ON jobs (user_id, status, created_at);
-- Recovery: unfinished jobs, oldest first.
CREATE INDEX jobs_status ON jobs (status, created_at);
-- Guild-wide daily pool.
CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);

-- Reference images, persisted so a job can be re-run after a restart.
CREATE TABLE job_references (
    job_id               INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position             INTEGER NOT NULL,
    mime_type            TEXT,
    data                 BLOB,
    url                  TEXT,
    source_attachment_id INTEGER,
    PRIMARY KEY (job_id, position),
    CHECK (data IS NOT NULL OR url IS NOT NULL)
);

-- Delivered images (history).
CREATE TABLE results (
    id            INTEGER PRIMARY KEY,
    job_id        INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    user_id       INTEGER NOT NULL,
    guild_id      INTEGER,
    channel_id    INTEGER,
    message_id    INTEGER,
    attachment_id INTEGER,
    filename      TEXT    NOT NULL,
    sha256        TEXT    NOT NULL,
    width         INTEGER,
    height        INTEGER,
    mime_type     TEXT,
    size_bytes    INTEGER,
    provider      TEXT,
    created_at    REAL    NOT NULL
);

CREATE INDEX results_job ON results (job_id);
CREATE INDEX results_user ON results (user_id, created_at);

-- Append-only audit of quota movements. No foreign key: the audit outlives anything else.
CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    guild_id   INTEGER,
    entry      TEXT    NOT NULL CHECK (entry IN ('reserve', 'commit', 'refund')),
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    created_at REAL    NOT NULL
);

CREATE INDEX ledger_job ON ledger (job_id);

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END;

CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END;

-- The database writes the ledger itself, in the same transaction as the change to the job row: a job cannot
-- be created without its 'reserve' entry nor settled without its 'commit' (and 'refund') entries, whatever
-- code path does it. A finished job cannot change status again, so nothing is settled twice.
CREATE TRIGGER jobs_ledger_reserve AFTER INSERT ON jobs
BEGIN
    INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
    VALUES (NEW.id, NEW.user_id, NEW.guild_id, 'reserve', NEW.reserved, NEW.created_at);
END;

CREATE TRIGGER jobs_final_status BEFORE UPDATE OF status ON jobs
WHEN OLD.status IN ('done', 'failed', 'cancelled') AND NEW.status IS NOT OLD.status
BEGIN
    SELECT RAISE(ABORT, 'a finished job cannot change status');
END;

CREATE TRIGGER jobs_ledger_settle AFTER UPDATE OF status ON jobs
WHEN OLD.status IN ('queued', 'running') AND NEW.status IN ('done', 'failed', 'cancelled')
BEGIN
    INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
    VALUES (NEW.id, NEW.user_id, NEW.guild_id, 'commit', NEW.committed,
            COALESCE(NEW.finished_at, (julianday('now') - 2440587.5) * 86400.0));
    INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
    SELECT NEW.id, NEW.user_id, NEW.guild_id, 'refund', NEW.refunded,
           COALESCE(NEW.finished_at, (julianday('now') - 2440587.5) * 86400.0)
    WHERE NEW.refunded > 0;
END;

CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
