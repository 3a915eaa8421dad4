-- Runs: bulk refresh operations (manual, API or scheduled sweep).
--
-- A run is `running` while its owner works through the matching connections
-- and beats `heartbeat_at`; it ends `succeeded`, `failed` (more than
-- `failure_threshold` of the attempts failed) or `cancelled`. A running run
-- whose heartbeat stopped (its process died) is marked `failed` with
-- `stale` = 1, never left running forever.

CREATE TABLE runs (
    id                 TEXT    PRIMARY KEY,  -- run_ + UUIDv7 simple hex
    trigger            TEXT    NOT NULL,     -- manual | api | sweep
    filter             TEXT    NOT NULL,     -- JSON
    status             TEXT    NOT NULL,     -- running | succeeded | failed | cancelled
    total              INTEGER NOT NULL DEFAULT 0,
    succeeded          INTEGER NOT NULL DEFAULT 0,
    failed             INTEGER NOT NULL DEFAULT 0,
    skipped            INTEGER NOT NULL DEFAULT 0,
    failures_by_code   TEXT    NOT NULL DEFAULT '{}',  -- JSON object code -> count
    failure_threshold  REAL    NOT NULL,
    owner              TEXT    NOT NULL,
    stale              INTEGER NOT NULL DEFAULT 0,
    cancel_requested   INTEGER NOT NULL DEFAULT 0,
    heartbeat_at       INTEGER NOT NULL,
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER
) STRICT;

CREATE INDEX runs_started ON runs (started_at DESC, id DESC);
CREATE INDEX runs_running ON runs (heartbeat_at) WHERE status = 'running';
