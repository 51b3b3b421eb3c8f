-- Destinations of kind kafka: option checking (librdkafka properties
-- included), refused guarantee-breaking settings, hidden secrets and
-- privileges.  Nothing here connects to a broker (the relay is off in
-- regress).
\set VERBOSITY default
CREATE EXTENSION IF NOT EXISTS eo_processing;

-- Valid destinations: the default mode, exactly_once, properties of each
-- JSON type, brokers as a list or an array.
SELECT eo.create_destination('kf', 'kafka', '{
    "bootstrap_servers": "127.0.0.1:9092,kafka2.example.com:9093",
    "topic": "orders.v1", "concurrency": 32, "max_attempts": 5, "retry_delays": ["1s", "10s"],
    "properties": {"compression.type": "zstd", "linger.ms": 5, "enable.idempotence": true,
                   "acks": "all", "max.in.flight.requests.per.connection": 5,
                   "partitioner": "murmur2_random", "security.protocol": "sasl_ssl",
                   "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "relay",
                   "sasl.password": "pw-NOT-SHOWN", "ssl.key.password": "kp-NOT-SHOWN",
                   "sasl.oauthbearer.config": "principal=relay extension_x=cs-NOT-SHOWN"}}');
SELECT eo.create_destination('kf_eos', 'kafka',
    '{"bootstrap_servers": ["127.0.0.1:9092", "[::1]:9092"], "exactly_once": true,
      "positions_topic": "eo.positions", "properties": {"acks": -1}}');
SELECT eo.create_destination('kf_min', 'kafka', '{"bootstrap_servers": "localhost:9092"}');
SELECT name, kind, enabled FROM eo.destination WHERE kind = 'kafka' ORDER BY id;

-- What operators see: no password, secret or key.
SELECT name, jsonb_pretty(options) AS options FROM eo.destinations WHERE kind = 'kafka' ORDER BY name;
SELECT count(*) AS shown FROM eo.destinations WHERE options::text ~ 'NOT-SHOWN';

-- Bad options: a clear error each, and nothing written.
SELECT eo.create_destination('bad', 'kafka', '{}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": ""}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": 9092}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": [1]}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1,,b:2"}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "kafka://a:1/x"}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "user:pw-NOT-SHOWN@a:1"}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "topic": "orders/created"}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "topic": ".."}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "topic": 7}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "exactly_once": "yes"}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "exactly_once": true, "topic": "p", "positions_topic": "p"}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": "acks=all"}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"acks": [1]}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "concurrency": 0}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "max_attempts": 0}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "retry_delays": []}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "log_attempts": "all"}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "servers": "a:1"}');
-- librdkafka's own checks: unknown properties and bad values.
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"no.such.property": 1}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"compression.type": "rar"}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"linger.ms": "soon"}}');
-- Settings that would break the guarantees, or run code in the server.
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"enable.idempotence": false}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"acks": 1}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"request.required.acks": "0"}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"max.in.flight.requests.per.connection": 6}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"max.in.flight": 100}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"retries": 0}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"transactional.id": "mine"}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"partitioner": "random"}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"queuing.strategy": "lifo"}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"bootstrap.servers": "b:2"}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"plugin.library.paths": "/tmp/x.so"}}');
SELECT eo.create_destination('bad', 'kafka', '{"bootstrap_servers": "a:1", "properties": {"sasl.kerberos.kinit.cmd": "touch /tmp/x"}}');
SELECT eo.alter_destination('kf', '{"bootstrap_servers": "a:1", "properties": {"acks": 0}}');
SELECT count(*) AS destinations FROM eo.destination WHERE kind = 'kafka';
SELECT options->'properties'->>'acks' AS kf_acks FROM eo.destination WHERE name = 'kf';

-- Errors never show a secret.
DO $$
DECLARE
    bad jsonb[] := ARRAY[
        '{"bootstrap_servers": "u:TOPSECRET@a:1"}',
        '{"bootstrap_servers": "a:1", "properties": {"sasl.password": ["TOPSECRET"]}}',
        '{"bootstrap_servers": "a:1", "properties": {"ssl.key.password": "TOPSECRET", "linger.ms": "x"}}',
        '{"bootstrap_servers": "a:1", "properties": {"sasl.password": "TOPSECRET", "acks": 1}}',
        '{"bootstrap_servers": "a:1", "properties": {"sasl.password": "TOPSECRET"}, "topic": "a b"}']::jsonb[];
    b jsonb;
BEGIN
    FOREACH b IN ARRAY bad LOOP
        BEGIN
            PERFORM eo.create_destination('bad', 'kafka', b);
        EXCEPTION WHEN OTHERS THEN
            DECLARE
                detail text;
                hint text;
            BEGIN
                GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
                RAISE NOTICE 'mentions the secret: %',
                    strpos(SQLERRM || coalesce(detail, '') || coalesce(hint, ''), 'TOPSECRET') > 0;
            END;
        END;
    END LOOP;
END $$;

-- Only superusers and the extension's owner configure kafka destinations,
-- even where EXECUTE and table rights were granted.
CREATE ROLE regress_eo_kafka_ops;
GRANT USAGE ON SCHEMA eo TO regress_eo_kafka_ops;
GRANT EXECUTE ON FUNCTION eo.create_destination(text, text, jsonb),
    eo.alter_destination(text, jsonb), eo.check_destination_options(text, jsonb),
    eo.find_destination(text) TO regress_eo_kafka_ops;
GRANT SELECT, INSERT, UPDATE ON eo.destination, eo.destination_stats TO regress_eo_kafka_ops;
GRANT SELECT ON eo.destinations TO regress_eo_kafka_ops;
SET ROLE regress_eo_kafka_ops;
SELECT eo.create_destination('ops_kafka', 'kafka', '{"bootstrap_servers": "10.0.0.1:9092"}');
SELECT eo.alter_destination('kf', '{"bootstrap_servers": "10.0.0.1:9092"}');
INSERT INTO eo.destination (name, kind, options)
VALUES ('direct', 'kafka', '{"bootstrap_servers": "10.0.0.1:9092"}');
UPDATE eo.destination SET options = '{"bootstrap_servers": "10.0.0.1:9092"}' WHERE name = 'kf';
SELECT name, jsonb_pretty(options) AS options FROM eo.destinations WHERE name = 'kf';
RESET ROLE;
SELECT name FROM eo.destination WHERE kind = 'kafka' ORDER BY id;
REVOKE ALL ON eo.destination, eo.destination_stats, eo.destinations FROM regress_eo_kafka_ops;
REVOKE ALL ON FUNCTION eo.create_destination(text, text, jsonb),
    eo.alter_destination(text, jsonb), eo.check_destination_options(text, jsonb),
    eo.find_destination(text) FROM regress_eo_kafka_ops;
REVOKE ALL ON SCHEMA eo FROM regress_eo_kafka_ops;
DROP ROLE regress_eo_kafka_ops;

-- The owner may change them; options are checked again.
SELECT eo.alter_destination('kf', '{"bootstrap_servers": "127.0.0.1:9092", "properties": {"sasl.password": "new-NOT-SHOWN"}}');
SELECT options FROM eo.destinations WHERE name = 'kf';
SELECT kind, pending, in_flight, retrying, dead, delivered_total FROM eo.stats WHERE destination = 'kf';

SELECT eo.drop_destination('kf');
SELECT eo.drop_destination('kf_eos');
SELECT eo.drop_destination('kf_min');

DROP EXTENSION eo_processing;
