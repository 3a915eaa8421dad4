-- The connection gauges count connections by provider and status every 15 s
-- (`count_by_status`). With this index the count reads the index, not every
-- row with its sealed tokens; a refresh does not touch it (it changes neither
-- column), only a status change does.
CREATE INDEX connections_provider_status ON connections (provider, status);
