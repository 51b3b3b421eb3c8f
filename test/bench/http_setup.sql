-- Schema for test/bench/http_bench.sh (run once in the throwaway cluster).
CREATE EXTENSION eo_processing;

-- Every message of the benchmark, from eo.publish and in the hand-written
-- outbox alike: about 100 bytes of JSON ({"i": 12345, "pad": "ppp..."}).
CREATE FUNCTION bench_payload(i integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('i', i, 'pad', repeat('p', 80));

-- What a user writes by hand for a transactional outbox (drained by
-- http_bench.py handwritten).
CREATE TABLE app_outbox (
    id      bigserial PRIMARY KEY,
    payload jsonb NOT NULL
);
