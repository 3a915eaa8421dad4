-- Connect sessions: the authorization code flow (with PKCE) that connects an
-- end user's account through their browser (as migrations/sqlite/0010).
--
-- The state is stored only as its SHA-256 (a secret until it is used), the
-- PKCE code verifier only sealed. A session is `pending` until its state is
-- consumed (`exchanging`), then `completed`, `failed` or `expired`.

CREATE TABLE connect_sessions (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,  -- cs_<32 hex>
    project         TEXT COLLATE "C" NOT NULL,
    provider        TEXT COLLATE "C" NOT NULL,
    external_id     TEXT COLLATE "C" NOT NULL,
    scopes          TEXT        NOT NULL,                   -- space-separated
    redirect_after  TEXT,
    state_hash      BYTEA       UNIQUE,                     -- SHA-256 of the state; NULL until begun
    code_verifier   BYTEA,                                  -- sealed; NULL until begun
    status          TEXT COLLATE "C" NOT NULL,              -- pending | exchanging | completed | failed | expired
    connection_id   TEXT COLLATE "C",
    error_code      TEXT,
    error_message   TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    begun_at        TIMESTAMPTZ,
    consumed_at     TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ
);
