-- Bad input to the outbox functions: a clear error with a SQLSTATE, and
-- nothing written.
CREATE EXTENSION eo_processing;
\set VERBOSITY sqlstate
\set ON_ERROR_STOP 0

----------------------------------------------------------------------
-- eo.publish
----------------------------------------------------------------------
-- Topic: not NULL, not empty, at most 256 bytes.
SELECT eo.publish(NULL, '{}'::jsonb);
SELECT eo.publish(NULL, 'x'::text);
SELECT eo.publish('', '{}'::jsonb);
SELECT eo.publish('', 'x'::text);
SELECT eo.publish(repeat('t', 257), '{}'::jsonb);
SELECT eo.publish(repeat('é', 129), 'x'::text);
-- Key: NULL means no key; not empty, at most 1024 bytes.
SELECT eo.publish('t', '{}'::jsonb, '');
SELECT eo.publish('t', 'x'::text, '');
SELECT eo.publish('t', '{}'::jsonb, repeat('k', 1025));
SELECT eo.publish('t', 'x'::text, repeat('é', 513));
-- Headers: a JSON object whose values are strings.
SELECT eo.publish('t', '{}'::jsonb, NULL, '[]');
SELECT eo.publish('t', 'x'::text, NULL, '[]');
SELECT eo.publish('t', '{}'::jsonb, NULL, '"h"');
SELECT eo.publish('t', '{}'::jsonb, NULL, 'null');
SELECT eo.publish('t', '{}'::jsonb, NULL, '1');
SELECT eo.publish('t', '{}'::jsonb, NULL, '{"a": 1}');
SELECT eo.publish('t', 'x'::text, NULL, '{"a": 1}');
SELECT eo.publish('t', '{}'::jsonb, NULL, '{"a": true}');
SELECT eo.publish('t', '{}'::jsonb, NULL, '{"a": null}');
SELECT eo.publish('t', '{}'::jsonb, NULL, '{"a": {"b": "c"}}');
SELECT eo.publish('t', '{}'::jsonb, NULL, '{"a": ["b"]}');
SELECT eo.publish('t', '{}'::jsonb, NULL, '{"ok": "v", "bad": 2}');
-- The limits themselves are accepted (then rolled back).
BEGIN;
SELECT eo.publish(repeat('t', 256), '{}'::jsonb, repeat('k', 1024), '{"a": "b"}') IS NOT NULL AS at_limits;
SELECT eo.publish(repeat('é', 128), 'x'::text, repeat('é', 512)) IS NOT NULL AS at_limits_multibyte;
ROLLBACK;
-- Writers refuse read-only transactions (as on a hot standby); eo.message reads.
BEGIN READ ONLY;
SELECT eo.publish('t', '{}'::jsonb);
ROLLBACK;
BEGIN READ ONLY;
SELECT eo.publish('t', 'x'::text, 'k');
ROLLBACK;
BEGIN READ ONLY;
SELECT eo.message('00000000-0000-7000-8000-000000000000') IS NULL AS message_readable;
ROLLBACK;
-- A failed publish inside a transaction aborts it, as any error does.
BEGIN;
SELECT eo.publish('t', 'first'::text, 'k-abort') IS NOT NULL AS published;
SELECT eo.publish('t', 'x'::text, NULL, '[]');
COMMIT;

----------------------------------------------------------------------
-- Destinations
----------------------------------------------------------------------
SELECT eo.create_destination('d', 'notify');
-- Name: not NULL, not empty, at most 256 bytes, unique.
SELECT eo.create_destination(NULL, 'notify');
SELECT eo.create_destination('', 'notify');
SELECT eo.create_destination(repeat('n', 257), 'notify');
SELECT eo.create_destination('d', 'notify');
-- Kind: only 'notify'.
SELECT eo.create_destination('x', 'webhook');
SELECT eo.create_destination('x', 'NOTIFY');
SELECT eo.create_destination('x', NULL);
-- Options: a JSON object of known options.
SELECT eo.create_destination('x', 'notify', '[]');
SELECT eo.create_destination('x', 'notify', '"channel"');
SELECT eo.create_destination('x', 'notify', 'null');
SELECT eo.create_destination('x', 'notify', '{"chanel": "c"}');
SELECT eo.create_destination('x', 'notify', '{"channel": "c", "url": "http://x"}');
-- channel: a string of 1 to 63 bytes.
SELECT eo.create_destination('x', 'notify', '{"channel": ""}');
SELECT eo.create_destination('x', 'notify', jsonb_build_object('channel', repeat('c', 64)));
SELECT eo.create_destination('x', 'notify', jsonb_build_object('channel', repeat('é', 32)));
SELECT eo.create_destination('x', 'notify', '{"channel": 1}');
SELECT eo.create_destination('x', 'notify', '{"channel": null}');
SELECT eo.create_destination('x', 'notify', '{"channel": ["c"]}');
-- max_attempts: an integer of at least 1.
SELECT eo.create_destination('x', 'notify', '{"max_attempts": 0}');
SELECT eo.create_destination('x', 'notify', '{"max_attempts": -1}');
SELECT eo.create_destination('x', 'notify', '{"max_attempts": 2.5}');
SELECT eo.create_destination('x', 'notify', '{"max_attempts": "x"}');
SELECT eo.create_destination('x', 'notify', '{"max_attempts": "3"}');
SELECT eo.create_destination('x', 'notify', '{"max_attempts": null}');
SELECT eo.create_destination('x', 'notify', '{"max_attempts": true}');
-- retry_delays: a non-empty array (at most 100) of interval strings >= 0.
SELECT eo.create_destination('x', 'notify', '{"retry_delays": []}');
SELECT eo.create_destination('x', 'notify', '{"retry_delays": ["-1s"]}');
SELECT eo.create_destination('x', 'notify', '{"retry_delays": ["1s", "-1s"]}');
SELECT eo.create_destination('x', 'notify', '{"retry_delays": ["1 mon -40 days"]}');
SELECT eo.create_destination('x', 'notify', '{"retry_delays": [1]}');
SELECT eo.create_destination('x', 'notify', '{"retry_delays": ["1s", null]}');
SELECT eo.create_destination('x', 'notify', '{"retry_delays": "1s"}');
SELECT eo.create_destination('x', 'notify', '{"retry_delays": {"a": "1s"}}');
SELECT eo.create_destination('x', 'notify', '{"retry_delays": null}');
SELECT eo.create_destination('x', 'notify',
    jsonb_build_object('retry_delays', (SELECT jsonb_agg('1s'::text) FROM generate_series(1, 101))));
-- The same checks guard alter_destination; the options stay as they were.
SELECT eo.alter_destination('d', '{"channel": ""}');
SELECT eo.alter_destination('d', '{"max_attempts": 0}');
SELECT eo.alter_destination('d', '{"retry_delays": []}');
SELECT eo.alter_destination('d', '{"unknown": 1}');
SELECT eo.alter_destination('d', '[]');
-- A destination that does not exist.
SELECT eo.alter_destination('missing', '{}');
SELECT eo.alter_destination(NULL, '{}');
SELECT eo.drop_destination('missing');
SELECT eo.drop_destination('missing', true);
SELECT eo.drop_destination(NULL);
SELECT eo.subscribe('t', 'missing');
SELECT eo.subscribe('t', NULL);
SELECT eo.unsubscribe('t', 'missing');
SELECT eo.redrive('missing');
SELECT eo.redrive(NULL);
-- Names are case-sensitive and not trimmed.
SELECT eo.drop_destination('D');
SELECT eo.drop_destination(' d');

----------------------------------------------------------------------
-- Subscriptions
----------------------------------------------------------------------
-- A pattern is an exact topic, or a prefix followed by one '*' at the end.
SELECT eo.subscribe('a*b', 'd');
SELECT eo.subscribe('**', 'd');
SELECT eo.subscribe('*a', 'd');
SELECT eo.subscribe('orders.**', 'd');
SELECT eo.subscribe('', 'd');
SELECT eo.subscribe(NULL, 'd');
SELECT eo.subscribe(repeat('t', 257), 'd');
SELECT eo.subscribe(repeat('t', 256) || '*', 'd');
-- Unsubscribing what is not subscribed.
SELECT eo.unsubscribe('t', 'd');
SELECT eo.subscribe('t', 'd');
SELECT eo.unsubscribe('t.*', 'd');
SELECT eo.unsubscribe(NULL, 'd');

----------------------------------------------------------------------
-- Nothing above was written but destination 'd' and its subscription.
----------------------------------------------------------------------
\set VERBOSITY default
SELECT count(*) AS outbox_rows FROM eo.outbox;
SELECT count(*) AS key_rows FROM eo.outbox_key;
SELECT name, kind, options, enabled FROM eo.destination;
SELECT s.topic, d.name FROM eo.subscription s JOIN eo.destination d ON d.id = s.destination_id;
SELECT count(*) AS stats_rows FROM eo.destination_stats;

-- Full messages for the documented errors.
SELECT eo.publish(repeat('t', 257), '{}'::jsonb);
SELECT eo.publish('t', '{}'::jsonb, '');
SELECT eo.publish('t', '{}'::jsonb, NULL, '[]');
SELECT eo.publish('t', '{}'::jsonb, NULL, '{"a": 1}');
SELECT eo.check_destination_options('webhook', '{}');
SELECT eo.check_destination_options('notify', '{"chanel": "c"}');
SELECT eo.check_destination_options('notify', '{"channel": ""}');
SELECT eo.check_destination_options('notify', '{"max_attempts": 0}');
SELECT eo.check_destination_options('notify', '{"max_attempts": "x"}');
SELECT eo.check_destination_options('notify', '{"retry_delays": []}');
SELECT eo.check_destination_options('notify', '{"retry_delays": [1]}');
SELECT eo.check_destination_options('notify', '{"retry_delays": ["-1s"]}');
SELECT eo.create_destination('d', 'notify');
SELECT eo.redrive('missing');
SELECT eo.subscribe('a*b', 'd');
SELECT eo.unsubscribe('t.*', 'd');

-- Limits that keep every message deliverable as a NOTIFY: headers up to
-- 4096 bytes as stored, retry delays up to 365 days, max_attempts up to
-- 1000000; errors name the option.
SELECT eo.publish('t', '{}'::jsonb, NULL,
                  jsonb_build_object('h', repeat('x', 5000)));
SELECT eo.publish('t', '{}'::jsonb, NULL,
                  jsonb_build_object('h', repeat('x', 3000))) IS NOT NULL AS fits;
SELECT eo.check_destination_options('notify', '{"retry_delays": ["400 days"]}');
SELECT eo.check_destination_options('notify', '{"retry_delays": ["-1000000 years"]}');
SELECT eo.check_destination_options('notify', '{"retry_delays": ["bogus"]}');
SELECT eo.check_destination_options('notify', '{"max_attempts": 1e10}');
SELECT eo.check_destination_options('notify', '{"max_attempts": 1000000, "retry_delays": ["365 days"]}') IS NOT NULL AS at_the_limits;
SELECT eo.create_destination(NULL, 'notify');
SELECT eo.subscribe(NULL, 'd');

DROP EXTENSION eo_processing;
