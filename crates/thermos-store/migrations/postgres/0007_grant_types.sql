-- Grant types beyond refresh_token (as migrations/sqlite/0011, docs/grants.md):
-- how a connection's tokens are re-issued. Existing rows keep the user's grant.
--
-- `grant_params` is JSONB, NULL for `refresh_token`: the scope a
-- `client_credentials` connection asks for; the claims of a `jwt_bearer`
-- connection's assertions (iss, sub, aud, scope, kid, alg). It never holds a
-- secret: a `jwt_bearer` connection's private key is sealed (field
-- `private_key`) in `refresh_token`, the column the engine keeps across
-- refreshes and that master key rotation re-encrypts.
ALTER TABLE connections ADD COLUMN grant_type TEXT COLLATE "C" NOT NULL DEFAULT 'refresh_token'
    CHECK (grant_type IN ('refresh_token', 'client_credentials', 'jwt_bearer'));
ALTER TABLE connections ADD COLUMN grant_params JSONB;
