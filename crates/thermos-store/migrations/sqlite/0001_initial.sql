-- Thermos on SQLite: connections, their refresh attempts, project API keys.
--
-- Every timestamp is INTEGER unix milliseconds (UTC). Tokens are sealed bytes
-- (BLOB); this schema never holds a plaintext secret. Tables are STRICT so a
-- value of the wrong type is refused on write rather than read back as corrupt.

CREATE TABLE connections (
    id                      TEXT    NOT NULL PRIMARY KEY,  -- con_<32 hex>
    project                 TEXT    NOT NULL,
    provider                TEXT    NOT NULL,
    external_id             TEXT    NOT NULL,
    access_token            BLOB    NOT NULL,
    refresh_token           BLOB,
    token_type              TEXT    NOT NULL,
    scope                   TEXT,
    issued_at               INTEGER NOT NULL,
    expires_at              INTEGER NOT NULL,
    metadata                TEXT    NOT NULL,              -- JSON
    status                  TEXT    NOT NULL,              -- active | failing | needs_reauth | disabled
    next_refresh_at         INTEGER,
    last_refreshed_at       INTEGER,
    refresh_count           INTEGER NOT NULL,
    consecutive_failures    INTEGER NOT NULL,
    last_error_code         TEXT,
    last_error_message      TEXT,
    last_error_http_status  INTEGER,
    last_error_at           INTEGER,
    version                 INTEGER NOT NULL,
    lease_owner             TEXT,
    lease_until             INTEGER,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    UNIQUE (project, provider, external_id)
) STRICT;

-- The schedule: only scheduled rows, ordered by due time. `next_due_at` and
-- `claim_due` spell the same status literals so that the planner can use it.
CREATE INDEX connections_due ON connections (next_refresh_at) WHERE status IN ('active', 'failing');

CREATE TABLE refresh_attempts (
    id             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    connection_id  TEXT    NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    started_at     INTEGER NOT NULL,
    "trigger"      TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    error_code     TEXT,
    http_status    INTEGER,
    duration_ms    INTEGER NOT NULL
) STRICT;

CREATE INDEX refresh_attempts_connection ON refresh_attempts (connection_id, id);

CREATE TABLE api_keys (
    key_id       TEXT    NOT NULL PRIMARY KEY,
    project      TEXT    NOT NULL,
    secret_hash  BLOB    NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;
