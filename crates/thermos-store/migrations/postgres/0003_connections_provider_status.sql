-- The connection gauges count connections by provider and status every 15 s
-- (`count_by_status`). With this index the count can be an index-only scan
-- instead of reading every row with its sealed tokens.
CREATE INDEX connections_provider_status ON connections (provider, status);
