-- Schema for test/bench/inbox_bench.sh (run once in the throwaway cluster).
\ir business_schema.sql

-- What a user writes by hand to deduplicate messages.
CREATE TABLE processed (
    msg_id       text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

VACUUM ANALYZE accounts;
