-- Thermos on PostgreSQL: the same tables, columns and meaning as the SQLite
-- schema (migrations/sqlite/0001 to 0004), in PostgreSQL's own types.
--
-- Timestamps are TIMESTAMPTZ holding whole milliseconds (the store truncates
-- before binding, so values round-trip exactly). Tokens and secrets are
-- sealed bytes (BYTEA); this schema never holds a plaintext secret. JSON is
-- JSONB. Identifiers and the columns the store orders by use the "C"
-- collation, so that ids sort bytewise (UUIDv7 order) as they do on SQLite.
--
-- Nothing here reads the clock: no column defaults to now().

-- Connections ----------------------------------------------------------------

CREATE TABLE connections (
    id                      TEXT COLLATE "C" NOT NULL PRIMARY KEY,  -- con_<32 hex>
    project                 TEXT COLLATE "C" NOT NULL,
    provider                TEXT COLLATE "C" NOT NULL,
    external_id             TEXT COLLATE "C" NOT NULL,
    access_token            BYTEA       NOT NULL,
    refresh_token           BYTEA,
    token_type              TEXT        NOT NULL,
    scope                   TEXT,
    issued_at               TIMESTAMPTZ NOT NULL,
    expires_at              TIMESTAMPTZ NOT NULL,
    metadata                JSONB       NOT NULL,
    status                  TEXT COLLATE "C" NOT NULL,              -- active | failing | needs_reauth | disabled
    next_refresh_at         TIMESTAMPTZ,
    last_refreshed_at       TIMESTAMPTZ,
    refresh_count           BIGINT      NOT NULL,
    consecutive_failures    BIGINT      NOT NULL,
    last_error_code         TEXT,
    last_error_message      TEXT,
    last_error_http_status  INTEGER,
    last_error_at           TIMESTAMPTZ,
    version                 BIGINT      NOT NULL,
    lease_owner             TEXT,
    lease_until             TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL,
    UNIQUE (project, provider, external_id)
);

-- The schedule: only scheduled rows, ordered by due time. `next_due_at` and
-- `claim_due` spell the same status literals so that the planner can use it.
CREATE INDEX connections_due ON connections (next_refresh_at) WHERE status IN ('active', 'failing');

CREATE TABLE refresh_attempts (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection_id  TEXT COLLATE "C" NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    started_at     TIMESTAMPTZ NOT NULL,
    "trigger"      TEXT        NOT NULL,
    outcome        TEXT        NOT NULL,
    error_code     TEXT,
    http_status    INTEGER,
    duration_ms    BIGINT      NOT NULL
);

CREATE INDEX refresh_attempts_connection ON refresh_attempts (connection_id, id);

CREATE TABLE api_keys (
    key_id       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    project      TEXT COLLATE "C" NOT NULL,
    secret_hash  BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

-- Custom apps: a project's own OAuth client for a configured provider. The
-- client secret is sealed bytes, NULL for public clients (auth_method
-- 'none'). One app per (project, provider).

CREATE TABLE custom_apps (
    project        TEXT COLLATE "C" NOT NULL,
    provider       TEXT COLLATE "C" NOT NULL,
    client_id      TEXT        NOT NULL,
    client_secret  BYTEA,
    auth_method    TEXT        NOT NULL,  -- client_secret_basic | client_secret_post | none
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project, provider)
);

-- The transactional outbox -------------------------------------------------
--
-- Events have no foreign key to connections: deleting a connection keeps its
-- history. `seq` is handed out under a transaction-scoped advisory lock (see
-- src/postgres/outbox.rs), so seq order is commit order and a consumer's
-- cursor never skips an event committed late.

CREATE TABLE events (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused: consumers' cursors
    id             TEXT COLLATE "C" NOT NULL UNIQUE,                  -- evt_<32 hex>, the webhook-id
    kind           TEXT COLLATE "C" NOT NULL,
    project        TEXT COLLATE "C",
    connection_id  TEXT COLLATE "C",
    provider       TEXT COLLATE "C",
    data           JSONB       NOT NULL,                              -- JSON object
    at             TIMESTAMPTZ NOT NULL
);

-- Retention: events older than the cut-off.
CREATE INDEX events_at ON events (at);

-- A deleted webhook is kept as a tombstone (deleted_at set) while deliveries
-- still name it; retention removes it once none do.
CREATE TABLE webhooks (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,  -- wh_<32 hex>
    project     TEXT COLLATE "C" NOT NULL,
    url         TEXT        NOT NULL,
    events      TEXT[],                                 -- kinds wanted; NULL = all
    secret      BYTEA       NOT NULL,                   -- sealed whsec_ secret
    created_at  TIMESTAMPTZ NOT NULL,
    deleted_at  TIMESTAMPTZ
);

CREATE INDEX webhooks_project ON webhooks (project, created_at) WHERE deleted_at IS NULL;

-- A delivery's channel is (webhook_id, connection_id), NULLs included (NULL
-- webhook_id = the operators' channel). Within a channel deliveries go out
-- in id order: only the first pending one (`head`) may be claimed, so one
-- connection's events reach a receiver in order even across retries.
CREATE TABLE deliveries (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq         BIGINT      NOT NULL REFERENCES events (seq),
    webhook_id        TEXT COLLATE "C" REFERENCES webhooks (id),
    connection_id     TEXT COLLATE "C",
    status            TEXT COLLATE "C" NOT NULL,  -- pending | delivered | failed
    head              BOOLEAN     NOT NULL,       -- the first pending delivery of its channel
    attempts          BIGINT      NOT NULL,
    next_attempt_at   TIMESTAMPTZ NOT NULL,
    lease_owner       TEXT,
    lease_until       TIMESTAMPTZ,
    last_http_status  INTEGER,
    last_error        TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    delivered_at      TIMESTAMPTZ
);

-- Claimable work: pending channel heads by due time (claim, next due time).
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending' AND head;
-- Order within a channel: the pending deliveries of one (webhook, connection).
-- NULL is spelt '' (never a real id) so that one equality finds a channel;
-- the queries compare COALESCE(…, '') to use it.
CREATE INDEX deliveries_channel ON deliveries ((COALESCE(webhook_id, '')), (COALESCE(connection_id, '')), id)
    WHERE status = 'pending';
CREATE INDEX deliveries_event ON deliveries (event_seq);
-- Deleting a webhook tombstone checks that no delivery names it.
CREATE INDEX deliveries_webhook ON deliveries (webhook_id);
-- Retention: finished deliveries by age.
CREATE INDEX deliveries_done ON deliveries (created_at) WHERE status IN ('delivered', 'failed');

CREATE TABLE delivery_attempts (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   BIGINT      NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    at            TIMESTAMPTZ NOT NULL,
    http_status   INTEGER,
    latency_ms    BIGINT      NOT NULL,
    error         TEXT
);

CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);

CREATE TABLE outbox_cursors (
    name   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    value  BIGINT NOT NULL
);

-- Runs: bulk refresh operations ---------------------------------------------
--
-- A run is `running` while its owner works through the matching connections
-- and beats `heartbeat_at`; it ends `succeeded`, `failed` or `cancelled`. A
-- running run whose heartbeat stopped is marked `failed` with `stale`.

CREATE TABLE runs (
    id                 TEXT COLLATE "C" PRIMARY KEY,  -- run_ + UUIDv7 simple hex
    "trigger"          TEXT             NOT NULL,     -- manual | api | sweep
    filter             JSONB            NOT NULL,
    status             TEXT COLLATE "C" NOT NULL,     -- running | succeeded | failed | cancelled
    total              BIGINT           NOT NULL DEFAULT 0,
    succeeded          BIGINT           NOT NULL DEFAULT 0,
    failed             BIGINT           NOT NULL DEFAULT 0,
    skipped            BIGINT           NOT NULL DEFAULT 0,
    failures_by_code   JSONB            NOT NULL DEFAULT '{}',  -- code -> count
    failure_threshold  DOUBLE PRECISION NOT NULL,
    owner              TEXT             NOT NULL,
    stale              BOOLEAN          NOT NULL DEFAULT FALSE,
    cancel_requested   BOOLEAN          NOT NULL DEFAULT FALSE,
    heartbeat_at       TIMESTAMPTZ      NOT NULL,
    started_at         TIMESTAMPTZ      NOT NULL,
    finished_at        TIMESTAMPTZ
);

CREATE INDEX runs_started ON runs (started_at DESC, id DESC);
CREATE INDEX runs_running ON runs (heartbeat_at) WHERE status = 'running';
