-- The audit log (the same table as migrations/sqlite/0009_audit_log.sql, in
-- PostgreSQL's types): who did what to which resource, from where, when.
-- Append-only: the trigger refuses every UPDATE, DELETE and TRUNCATE. An
-- operator may go further and grant Thermos's role only INSERT and SELECT on
-- it. Never holds a secret.

CREATE TABLE audit_log (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL,
    first_at       TIMESTAMPTZ NOT NULL,
    actor          TEXT        NOT NULL,
    actor_project  TEXT,
    action         TEXT        NOT NULL,
    target         TEXT,
    client         TEXT,
    request_id     TEXT,
    status         INTEGER     NOT NULL,
    count          INTEGER     NOT NULL DEFAULT 1
);

CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_target ON audit_log (target, id) WHERE target IS NOT NULL;
CREATE INDEX audit_log_action ON audit_log (action, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
