-- The refresh token's lifetime (as migrations/sqlite/0012,
-- docs/refresh-token-lifetime.md): when the provider
-- (`refresh_token_expires_in` and its variants) or the importer said it
-- dies, and when `connection.refresh_token_expiring` was emitted for that
-- expiry (cleared whenever the expiry changes).
ALTER TABLE connections ADD COLUMN refresh_token_expires_at TIMESTAMPTZ;
ALTER TABLE connections ADD COLUMN refresh_token_warned_at TIMESTAMPTZ;

-- The upkeep's scan: per provider, the not yet warned expiries in order.
-- Warned rows leave the index, so the scan never wades through them.
CREATE INDEX connections_refresh_token_expiring ON connections (provider, refresh_token_expires_at)
    WHERE refresh_token_warned_at IS NULL AND refresh_token_expires_at IS NOT NULL;
