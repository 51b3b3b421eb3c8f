-- Destinations of kind nats: option checking, hidden secrets, privileges.
-- Nothing here connects to a server (the relay is off in regress).
\set VERBOSITY default
CREATE EXTENSION IF NOT EXISTS eo_processing;

-- Valid destinations: one server, several, each way of authenticating.
SELECT eo.create_destination('js', 'nats', '{
    "servers": ["nats://127.0.0.1:4222", "tls://nats2.example.com:4443", "nats3.example.com"],
    "subject": "eo.orders", "stream": "ORDERS", "token": "tok-NOT-SHOWN",
    "tls_verify": false, "timeout_ms": 3000, "concurrency": 8, "max_attempts": 5,
    "retry_delays": ["1s", "10s"]}');
SELECT eo.create_destination('js_user', 'nats',
    '{"servers": "nats://[::1]:4222", "user": "relay", "password": "pw-NOT-SHOWN"}');
SELECT eo.create_destination('js_creds', 'nats', jsonb_build_object('servers', 'nats://127.0.0.1:4222',
    'credentials', E'-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.SECRETJWT.sig\n------END NATS USER JWT------\n\n'
    || E'-----BEGIN USER NKEY SEED-----\nSUACSECRETSEEDNOTSHOWN\n------END USER NKEY SEED------\n'));
SELECT name, kind, enabled FROM eo.destination WHERE kind = 'nats' ORDER BY id;

-- What operators see: no credentials, token or password.
SELECT name, options FROM eo.destinations WHERE kind = 'nats' ORDER BY name;
SELECT count(*) AS shown FROM eo.destinations
 WHERE options::text ~ '(NOT-SHOWN|SECRETJWT|SECRETSEED)';

-- Bad options: a clear error each, and nothing written.
SELECT eo.create_destination('bad', 'nats', '{}');
SELECT eo.create_destination('bad', 'nats', '{"servers": []}');
SELECT eo.create_destination('bad', 'nats', '{"servers": 4222}');
SELECT eo.create_destination('bad', 'nats', '{"servers": ""}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "http://127.0.0.1:4222"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://user:pw-NOT-SHOWN@127.0.0.1:4222"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://127.0.0.1:0"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://127.0.0.1:x"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://127.0.0.1:4222/path"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1,nats://b:2"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": ["nats://a:1", 2]}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "subject": "orders.*"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "subject": "orders..x"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "subject": "orders >"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "subject": ""}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "stream": "a.b"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "stream": 1}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "user": "u"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "password": "pw-NOT-SHOWN"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "token": "t", "user": "u", "password": "p"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "credentials": "SECRETJWT-NOT-SHOWN"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "token": ""}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "tls_verify": "no"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "timeout_ms": 0}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "concurrency": 0}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "max_attempts": 0}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "retry_delays": []}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "log_attempts": "all"}');
SELECT eo.create_destination('bad', 'nats', '{"servers": "nats://a:1", "url": "http://x/"}');
SELECT eo.alter_destination('js', '{"servers": "ws://127.0.0.1:4222"}');
SELECT count(*) AS destinations FROM eo.destination WHERE kind = 'nats';

-- Errors never show a secret.
DO $$
DECLARE
    bad jsonb[] := ARRAY[
        '{"servers": "nats://u:TOPSECRET@a:1"}',
        '{"servers": "nats://a:1", "credentials": "TOPSECRET"}',
        '{"servers": "nats://a:1", "password": "TOPSECRET"}',
        '{"servers": "nats://a:1", "token": "TOPSECRET", "user": "u", "password": "TOPSECRET"}']::jsonb[];
    b jsonb;
BEGIN
    FOREACH b IN ARRAY bad LOOP
        BEGIN
            PERFORM eo.create_destination('bad', 'nats', b);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'mentions the secret: %', strpos(SQLERRM || coalesce(SQLSTATE, ''), 'TOPSECRET') > 0;
        END;
    END LOOP;
END $$;

-- Only superusers and the extension's owner configure nats destinations,
-- even where EXECUTE and table rights were granted.
CREATE ROLE regress_eo_nats_ops;
GRANT USAGE ON SCHEMA eo TO regress_eo_nats_ops;
GRANT EXECUTE ON FUNCTION eo.create_destination(text, text, jsonb),
    eo.alter_destination(text, jsonb), eo.check_destination_options(text, jsonb),
    eo.find_destination(text) TO regress_eo_nats_ops;
GRANT SELECT, INSERT, UPDATE ON eo.destination, eo.destination_stats TO regress_eo_nats_ops;
GRANT SELECT ON eo.destinations TO regress_eo_nats_ops;
SET ROLE regress_eo_nats_ops;
SELECT eo.create_destination('ops_nats', 'nats', '{"servers": "nats://10.0.0.1:4222"}');
SELECT eo.alter_destination('js', '{"servers": "nats://10.0.0.1:4222"}');
INSERT INTO eo.destination (name, kind, options)
VALUES ('direct', 'nats', '{"servers": "nats://10.0.0.1:4222"}');
UPDATE eo.destination SET options = '{"servers": "nats://10.0.0.1:4222"}' WHERE name = 'js';
SELECT name, options FROM eo.destinations WHERE name = 'js_user';
RESET ROLE;
SELECT name FROM eo.destination WHERE kind = 'nats' ORDER BY id;
REVOKE ALL ON eo.destination, eo.destination_stats, eo.destinations FROM regress_eo_nats_ops;
REVOKE ALL ON FUNCTION eo.create_destination(text, text, jsonb),
    eo.alter_destination(text, jsonb), eo.check_destination_options(text, jsonb),
    eo.find_destination(text) FROM regress_eo_nats_ops;
REVOKE ALL ON SCHEMA eo FROM regress_eo_nats_ops;
DROP ROLE regress_eo_nats_ops;

-- The owner may change them; options are checked again.
SELECT eo.alter_destination('js', '{"servers": "nats://127.0.0.1:4222", "token": "new-NOT-SHOWN"}');
SELECT options FROM eo.destinations WHERE name = 'js';

SELECT eo.drop_destination('js');
SELECT eo.drop_destination('js_user');
SELECT eo.drop_destination('js_creds');

DROP EXTENSION eo_processing;
