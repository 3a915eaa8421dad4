-- Live instances: one row per Thermos process using this database (the same
-- table as migrations/sqlite/0005_instances.sql, in PostgreSQL's types).
--
-- Each instance beats `heartbeat_at` every few seconds and deletes its row
-- on a graceful stop; readers take the rows with a recent heartbeat as the
-- live ones. Every beat also deletes rows whose heartbeat is more than 24 h
-- old (instances that died), so the table stays a handful of rows and needs
-- no index beyond its key. Names use the "C" collation so they sort
-- bytewise, as on SQLite.

CREATE TABLE instances (
    name            TEXT COLLATE "C" NOT NULL PRIMARY KEY,  -- thermos-{pid}-{random}
    started_at      TIMESTAMPTZ      NOT NULL,
    heartbeat_at    TIMESTAMPTZ      NOT NULL,
    engine_enabled  BOOLEAN          NOT NULL,
    version         TEXT             NOT NULL               -- the binary's version
);
