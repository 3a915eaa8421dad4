-- Custom apps: a project's own OAuth client for a configured provider.
--
-- The client secret is sealed bytes (associated data
-- `thermos/v1/app/{project}/{provider}/client_secret`), NULL for public
-- clients (auth_method 'none'). One app per (project, provider); registering
-- again replaces the credentials and keeps created_at.

CREATE TABLE custom_apps (
    project        TEXT    NOT NULL,
    provider       TEXT    NOT NULL,
    client_id      TEXT    NOT NULL,
    client_secret  BLOB,
    auth_method    TEXT    NOT NULL,  -- client_secret_basic | client_secret_post | none
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (project, provider)
) STRICT;
