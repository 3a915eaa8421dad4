-- The audit log: who (the acting key's public id) did what to which
-- resource, from where, when. Append-only: the triggers below refuse every
-- UPDATE and DELETE, so neither Thermos nor a bug in it can rewrite history.
-- Never holds a secret: actors are key ids, targets are resource ids.
--
-- A folded entry stands for `count` equal token reads between `first_at`
-- and `at`. Listings go newest first by id, filtered by actor, action or
-- target: the indexes serve each filter in that order.

CREATE TABLE audit_log (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,               -- unix ms (the last occurrence)
    first_at       INTEGER NOT NULL,               -- unix ms (the first occurrence)
    actor          TEXT    NOT NULL,               -- key id, 'admin' or 'cli'
    actor_project  TEXT,
    action         TEXT    NOT NULL,               -- token.read, connection.delete, …
    target         TEXT,
    client         TEXT,                           -- the client's address
    request_id     TEXT,
    status         INTEGER NOT NULL,               -- the HTTP status answered
    count          INTEGER NOT NULL DEFAULT 1
) STRICT;

CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_target ON audit_log (target, id) WHERE target IS NOT NULL;
CREATE INDEX audit_log_action ON audit_log (action, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
