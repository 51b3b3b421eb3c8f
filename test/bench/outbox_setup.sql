-- Schema for test/bench/outbox_bench.sh (run once in the throwaway cluster).
\ir business_schema.sql

-- What a user writes by hand for a transactional outbox.
CREATE TABLE my_outbox (
    id         bigserial PRIMARY KEY,
    topic      text,
    payload    jsonb,
    created_at timestamptz DEFAULT now()
);

-- The relay delivers every bench.* message as a NOTIFY on channel "bench".
SELECT eo.create_destination('n', 'notify', '{"channel": "bench"}');
SELECT eo.subscribe('bench.*', 'n');

VACUUM ANALYZE accounts;

-- The LISTEN client's own role (no privileges needed to LISTEN).
CREATE ROLE bench_listener LOGIN;
