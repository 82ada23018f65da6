-- Fewer, cheaper indexes on the log: every index is paid on every append.
-- `occurred_at` follows the append order closely, so a BRIN index (a few pages per million rows)
-- serves `switchyard events export --since` as well as the btree did, at a fraction of the
-- write cost. Nothing reads events by tenant through an index (`events tail --tenant` walks
-- back from the newest position), so that index goes.
DROP INDEX IF EXISTS events_tenant_position;
DROP INDEX IF EXISTS events_occurred_at;
CREATE INDEX events_occurred_at_brin ON events USING brin (occurred_at);
-- The log is insert-only: autovacuum visits it to set visibility bits and freeze old rows, which
-- can wait. Unthrottled, that pass over a log in memory takes a whole core for as long as it lasts
-- and the ingest falls behind meanwhile; at a 20 ms cost delay it takes a fraction of one.
ALTER TABLE events SET (autovacuum_vacuum_cost_delay = 20);
