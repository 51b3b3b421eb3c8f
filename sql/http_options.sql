-- Destinations of kind http: option checking, privileges, hidden secrets,
-- and message headers that must be sendable over HTTP.
\set VERBOSITY default
CREATE EXTENSION IF NOT EXISTS eo_processing;

-- A valid destination, with every option.
SELECT eo.create_destination('hooks', 'http', '{
    "url": "https://hooks.example.com/eo?x=1",
    "headers": {"Authorization": "Bearer not-shown", "X-Tenant": "t1"},
    "signing_secret": ["whsec_2Oif9aTeuVtsG62WJ/3k0XtFC8+t5kJR", "whsec_dGhpcyBpcyBhIHNlY29uZCB0ZXN0IHNlY3JldCE="],
    "timeout_ms": 2000, "concurrency": 4, "max_attempts": 5,
    "retry_delays": ["1s", "10s"], "tls_verify": false}');
SELECT eo.create_destination('plain', 'http', '{"url": "http://127.0.0.1:9/x"}');
SELECT name, kind, enabled FROM eo.destination ORDER BY id;

-- What operators see: no secret, no header value.
SELECT name, options FROM eo.destinations ORDER BY name;
SELECT destination, kind, enabled, disabled_reason FROM eo.stats ORDER BY destination;

-- Bad options: a clear error each, and nothing written.
SELECT eo.create_destination('bad', 'http', '{}');
SELECT eo.create_destination('bad', 'http', '{"url": "ftp://example.com/"}');
SELECT eo.create_destination('bad', 'http', '{"url": "file:///etc/passwd"}');
SELECT eo.create_destination('bad', 'http', '{"url": "not a url"}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://user:pw@example.com/"}');
SELECT eo.create_destination('bad', 'http', '{"url": 42}');
SELECT eo.create_destination('bad', 'http', jsonb_build_object('url', 'http://example.com/' || repeat('a', 2100)));
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "signing_secret": "secret-without-prefix"}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "signing_secret": "whsec_c2hvcnQ="}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "signing_secret": "whsec_!!!not base64!!!"}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "signing_secret": []}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "signing_secret": 7}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "timeout_ms": -1}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "timeout_ms": 0}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "timeout_ms": 1.5}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "timeout_ms": "15000"}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "concurrency": 0}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "concurrency": 100000}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "tls_verify": "yes"}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "headers": ["a"]}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "headers": {"Bad Name": "x"}}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "headers": {"X-A": "line\r\nInjected: 1"}}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "headers": {"Idempotency-Key": "mine"}}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "headers": {"X-A": 1}}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "retry_delays": ["-1s"]}');
SELECT eo.create_destination('bad', 'http', '{"url": "http://example.com/", "channel": "c"}');
SELECT eo.create_destination('bad', 'notify', '{"url": "http://example.com/"}');
SELECT eo.create_destination('bad', 'smtp', '{}');
SELECT eo.alter_destination('hooks', '{"url": "gopher://example.com/"}');
SELECT count(*) AS destinations FROM eo.destination;
SELECT options->>'url' AS url_kept FROM eo.destination WHERE name = 'hooks';

-- Errors never show a secret, even a malformed one.
DO $$
BEGIN
    PERFORM eo.create_destination('bad', 'http',
        '{"url": "http://example.com/", "signing_secret": "whsec_TOPSECRETVALUE"}');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'mentions the secret: %',
        strpos(SQLERRM, 'TOPSECRET') > 0;
END $$;

-- Only superusers and the extension's owner configure http destinations,
-- even where EXECUTE was granted.
CREATE ROLE regress_eo_http_ops;
GRANT USAGE ON SCHEMA eo TO regress_eo_http_ops;
GRANT EXECUTE ON FUNCTION eo.create_destination(text, text, jsonb),
    eo.alter_destination(text, jsonb), eo.check_destination_options(text, jsonb),
    eo.find_destination(text) TO regress_eo_http_ops;
GRANT SELECT, INSERT, UPDATE ON eo.destination, eo.destination_stats TO regress_eo_http_ops;
GRANT SELECT ON eo.destinations, eo.stats TO regress_eo_http_ops;
SET ROLE regress_eo_http_ops;
SELECT eo.create_destination('ops_http', 'http', '{"url": "http://169.254.169.254/latest"}');
SELECT eo.alter_destination('plain', '{"url": "http://10.0.0.1/"}');
INSERT INTO eo.destination (name, kind, options)
VALUES ('direct', 'http', '{"url": "http://169.254.169.254/"}');
UPDATE eo.destination SET options = '{"url": "http://10.0.0.1/"}' WHERE name = 'plain';
SELECT eo.create_destination('ops_notify', 'notify', '{}');
SELECT name, options FROM eo.destinations WHERE name = 'hooks';
RESET ROLE;
SELECT name FROM eo.destination ORDER BY id;
SELECT eo.drop_destination('ops_notify');
REVOKE ALL ON eo.destination, eo.destination_stats, eo.destinations, eo.stats FROM regress_eo_http_ops;
REVOKE ALL ON FUNCTION eo.create_destination(text, text, jsonb),
    eo.alter_destination(text, jsonb), eo.check_destination_options(text, jsonb),
    eo.find_destination(text) FROM regress_eo_http_ops;
REVOKE ALL ON SCHEMA eo FROM regress_eo_http_ops;
DROP ROLE regress_eo_http_ops;

-- Routing puts messages for http destinations in the log, after the
-- destination's cursor, for the relay's dispatcher; eo.relay_run() does not
-- send them itself, and they have no row in eo.delivery unless they fail.
SELECT eo.subscribe('orders.*', 'plain');
SELECT eo.publish('orders.created', '{"n": 1}'::jsonb, 'k1', '{"X-Trace": "abc"}') IS NOT NULL AS published;
SELECT eo.relay_run();
SELECT m.key, t.id = ANY (m.routes) AS routed_to_plain, m.seq > s.delivered_seq AS after_cursor
  FROM eo.message_log m, eo.destination t JOIN eo.destination_stats s ON s.destination_id = t.id
 WHERE t.name = 'plain' AND m.topic = 'orders.created';
SELECT count(*) AS parked FROM eo.delivery d JOIN eo.destination t ON t.id = d.destination_id
 WHERE t.name = 'plain';
SELECT destination, pending, in_flight FROM eo.stats WHERE destination = 'plain';

-- Message headers become HTTP headers: names must be tokens, values free of
-- line breaks, and the relay's own names are taken.
SELECT eo.publish('orders.created', '{}'::jsonb, NULL, '{"Bad Name": "x"}');
SELECT eo.publish('orders.created', '{}'::jsonb, NULL, '{"X-A": "a\r\nInjected: yes"}');
SELECT eo.publish('orders.created', '{}'::jsonb, NULL, '{"webhook-signature": "v1,forged"}');
SELECT eo.publish('orders.created', '{}'::jsonb, NULL, '{"Idempotency-Key": "other"}');
SELECT eo.publish('orders.created', '{}'::jsonb, NULL, '{"": "empty name"}');
SELECT count(*) AS queued FROM eo.outbox;

-- 410 Gone disables a destination; eo.alter_destination() enables it again.
UPDATE eo.destination SET enabled = false, disabled_reason = 'the receiver answered 410 Gone'
 WHERE name = 'plain';
SELECT destination, enabled, disabled_reason FROM eo.stats WHERE destination = 'plain';
SELECT eo.alter_destination('plain', '{"url": "http://127.0.0.1:9/y"}');
SELECT destination, enabled, disabled_reason FROM eo.stats WHERE destination = 'plain';

SELECT eo.drop_destination('plain', force => true);
SELECT eo.drop_destination('hooks');

DROP EXTENSION eo_processing;
