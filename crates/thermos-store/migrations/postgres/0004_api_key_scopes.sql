-- API key scopes, expiry and revocation. `scopes` is a space-separated list
-- of `read`, `token`, `admin`; keys created before scopes existed get all
-- three, so every key that worked keeps working. A revoked key keeps its
-- row (with `revoked_at`) so that listings show it.
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'read token admin';
ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE api_keys ADD COLUMN revoked_at TIMESTAMPTZ;

CREATE INDEX api_keys_project ON api_keys (project, created_at);
