-- The transactional outbox: events, project webhooks, deliveries and their
-- attempts, and the named cursors of event consumers (the alert aggregator).
--
-- An event is inserted in the transaction of the state change it reports,
-- and in that same transaction one delivery per matching webhook (or, for an
-- alert, one delivery to the operators' channel, webhook_id NULL). Events
-- have no foreign key to connections: deleting a connection keeps its
-- history. Timestamps are INTEGER unix milliseconds (UTC).

CREATE TABLE events (
    seq            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,  -- never reused: consumers' cursors
    id             TEXT    NOT NULL UNIQUE,                     -- evt_<32 hex>, the webhook-id
    kind           TEXT    NOT NULL,
    project        TEXT,
    connection_id  TEXT,
    provider       TEXT,
    data           TEXT    NOT NULL,                            -- JSON object
    at             INTEGER NOT NULL
) STRICT;

-- Retention: events older than the cut-off.
CREATE INDEX events_at ON events (at);

-- A deleted webhook is kept as a tombstone (deleted_at set) while deliveries
-- still name it; retention removes it once none do.
CREATE TABLE webhooks (
    id          TEXT    NOT NULL PRIMARY KEY,  -- wh_<32 hex>
    project     TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    events      TEXT,                          -- JSON array of kinds; NULL = all
    secret      BLOB    NOT NULL,              -- sealed whsec_ secret
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER
) STRICT;

CREATE INDEX webhooks_project ON webhooks (project, created_at) WHERE deleted_at IS NULL;

-- A delivery's channel is (webhook_id, connection_id), NULLs included (NULL
-- webhook_id = the operators' channel). Within a channel deliveries go out
-- in id order: only the first pending one (`head` = 1) may be claimed, so one
-- connection's events reach a receiver in order even across retries.
-- A claim moves next_attempt_at to the lease's end, so the earliest
-- next_attempt_at among pending heads is when the dispatcher has work next.
CREATE TABLE deliveries (
    id                INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    event_seq         INTEGER NOT NULL REFERENCES events (seq),
    webhook_id        TEXT    REFERENCES webhooks (id),
    connection_id     TEXT,
    status            TEXT    NOT NULL,  -- pending | delivered | failed
    head              INTEGER NOT NULL,  -- 1: the first pending delivery of its channel
    attempts          INTEGER NOT NULL,
    next_attempt_at   INTEGER NOT NULL,
    lease_owner       TEXT,
    lease_until       INTEGER,
    last_http_status  INTEGER,
    last_error        TEXT,
    created_at        INTEGER NOT NULL,
    delivered_at      INTEGER
) STRICT;

-- Claimable work: pending channel heads by due time (claim, next due time).
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending' AND head = 1;
-- Order within a channel: the pending deliveries of one (webhook, connection).
CREATE INDEX deliveries_channel ON deliveries (webhook_id, connection_id, id) WHERE status = 'pending';
CREATE INDEX deliveries_event ON deliveries (event_seq);
-- Deleting a webhook tombstone checks that no delivery names it.
CREATE INDEX deliveries_webhook ON deliveries (webhook_id);
-- Retention: finished deliveries by age.
CREATE INDEX deliveries_done ON deliveries (created_at) WHERE status IN ('delivered', 'failed');

CREATE TABLE delivery_attempts (
    id            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    delivery_id   INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    at            INTEGER NOT NULL,
    http_status   INTEGER,
    latency_ms    INTEGER NOT NULL,
    error         TEXT
) STRICT;

CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);

CREATE TABLE outbox_cursors (
    name   TEXT    NOT NULL PRIMARY KEY,
    value  INTEGER NOT NULL
) STRICT;
