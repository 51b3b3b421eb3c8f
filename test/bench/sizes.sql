-- Storage per remembered id: the same :nids ids (uuid text, 36 chars, in
-- random order) go into a fresh hand-written table and into eo.inbox
-- (via eo.process, one statement in one transaction each).
-- Run with psql -X -v ON_ERROR_STOP=1 -v nids=N -At -F'|'.
\set QUIET on
DROP TABLE IF EXISTS size_ids, processed_size;
TRUNCATE eo.inbox;
CREATE TABLE size_ids AS
    SELECT gen_random_uuid()::text AS id FROM generate_series(1, :nids);
CREATE TABLE processed_size (
    msg_id       text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CHECKPOINT;

SELECT clock_timestamp() AS t0 \gset
INSERT INTO processed_size(msg_id) SELECT id FROM size_ids ON CONFLICT DO NOTHING;
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000 AS hand_ms \gset

SELECT clock_timestamp() AS t0 \gset
SELECT count(*) FILTER (WHERE first) AS eo_first
  FROM (SELECT eo.process(id) AS first FROM size_ids) AS s \gset
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000 AS eo_ms \gset

VACUUM ANALYZE processed_size;
VACUUM ANALYZE eo.inbox;

-- name|rows|heap bytes|index bytes|total bytes|total bytes per id|insert ms
SELECT 'hand-written processed', n,
       pg_relation_size('processed_size'), pg_indexes_size('processed_size'),
       pg_total_relation_size('processed_size'),
       round(pg_total_relation_size('processed_size')::numeric / n, 1),
       round(:hand_ms, 0)
  FROM (SELECT count(*) AS n FROM processed_size) AS c;
SELECT 'eo.inbox', n,
       pg_relation_size('eo.inbox'), pg_indexes_size('eo.inbox'),
       pg_total_relation_size('eo.inbox'),
       round(pg_total_relation_size('eo.inbox')::numeric / n, 1),
       round(:eo_ms, 0)
  FROM (SELECT count(*) AS n FROM eo.inbox) AS c;
SELECT 'check', :eo_first, (SELECT count(*) FROM size_ids), 0, 0, 0, 0;
