-- Schema of each database of test/bench/relay_bench.sh (one database per
-- measurement, so that each starts from empty tables without touching the
-- extension's own tables): the extension and the business tables.
\ir business_schema.sql

-- How many messages the transactions of an account have published
-- (relay_load.pgbench): sum(events) is the number of committed messages,
-- read in the same snapshot as eo.stats.
ALTER TABLE accounts ADD COLUMN events bigint NOT NULL DEFAULT 0;

VACUUM ANALYZE accounts;

