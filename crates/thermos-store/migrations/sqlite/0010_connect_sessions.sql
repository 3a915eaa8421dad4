-- Connect sessions: the authorization code flow (with PKCE) that connects an
-- end user's account through their browser.
--
-- The state is stored only as its SHA-256 (a secret until it is used), the
-- PKCE code verifier only sealed. A session is `pending` until its state is
-- consumed (`exchanging`), then `completed`, `failed` or `expired`.

CREATE TABLE connect_sessions (
    id              TEXT    NOT NULL PRIMARY KEY,  -- cs_<32 hex>
    project         TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    external_id     TEXT    NOT NULL,
    scopes          TEXT    NOT NULL,              -- space-separated
    redirect_after  TEXT,
    state_hash      BLOB    UNIQUE,                -- SHA-256 of the state; NULL until begun
    code_verifier   BLOB,                          -- sealed; NULL until begun
    status          TEXT    NOT NULL,              -- pending | exchanging | completed | failed | expired
    connection_id   TEXT,
    error_code      TEXT,
    error_message   TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    begun_at        INTEGER,
    consumed_at     INTEGER,
    finished_at     INTEGER
) STRICT;
