-- Live instances: one row per Thermos process using this database.
--
-- Each instance beats `heartbeat_at` every few seconds and deletes its row
-- on a graceful stop; readers take the rows with a recent heartbeat as the
-- live ones. Every beat also deletes rows whose heartbeat is more than 24 h
-- old (instances that died), so the table stays a handful of rows and needs
-- no index beyond its key.

CREATE TABLE instances (
    name            TEXT    NOT NULL PRIMARY KEY,  -- thermos-{pid}-{random}
    started_at      INTEGER NOT NULL,
    heartbeat_at    INTEGER NOT NULL,
    engine_enabled  INTEGER NOT NULL,              -- 0 | 1
    version         TEXT    NOT NULL               -- the binary's version
) STRICT;
