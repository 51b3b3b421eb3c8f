-- eo.publish, eo.message, destinations, subscriptions and the outbox views:
-- behaviour within one session.
--
-- The test cluster runs with eo.relay_enabled = off, so no message is ever
-- routed or delivered here.  Where a view needs routed messages or
-- deliveries, the relay's work is done by hand, as superuser.  No uuid,
-- timestamp or pid is printed: ids are kept in temporary tables and
-- compared there.
CREATE EXTENSION eo_processing;

-- Published ids, by step.
CREATE TEMP TABLE ids (step int PRIMARY KEY, id uuid NOT NULL);

----------------------------------------------------------------------
-- Publishing
----------------------------------------------------------------------

-- A jsonb payload, a text payload, a key, headers, a NULL payload.
INSERT INTO ids VALUES (1, eo.publish('orders.created', '{"order": 1, "total": 9.5}'::jsonb));
INSERT INTO ids VALUES (2, eo.publish('orders.created', 'plain text'::text));
INSERT INTO ids VALUES (3, eo.publish('orders.paid', '{"order": 1}'::jsonb, 'order-1'));
INSERT INTO ids VALUES (4, eo.publish('orders.paid', 'paid'::text, key => 'order-1',
    headers => '{"trace": "abc", "content-type": "text/plain"}'));
INSERT INTO ids VALUES (5, eo.publish('audit', NULL::jsonb, headers => '{}'));
-- An untyped literal goes to the text variant (text is the preferred type).
INSERT INTO ids VALUES (6, eo.publish('audit', '{"untyped": true}'));
-- jsonb scalars are payloads too.
INSERT INTO ids VALUES (7, eo.publish('audit', '42'::jsonb, 'order-2'));

-- One row per message in eo.outbox, as published.
SELECT i.step, o.topic, o.key, o.headers, o.payload, o.payload_text
  FROM ids i JOIN eo.outbox o USING (id) ORDER BY i.step;
SELECT count(*) AS outbox_rows FROM eo.outbox;

-- The ids are UUIDv7 (RFC 9562): version nibble 7, variant bits 10, and
-- the first 48 bits are the Unix time in milliseconds of the publication.
SELECT i.step,
       get_byte(uuid_send(i.id), 6) >> 4 AS version,
       get_byte(uuid_send(i.id), 8) >> 6 = 2 AS rfc_variant,
       abs(('x' || encode(substr(uuid_send(i.id), 1, 6), 'hex'))::bit(48)::bigint
           - (extract(epoch FROM o.published_at) * 1000)::bigint) < 1000
         AS time_is_publication_time
  FROM ids i JOIN eo.outbox o USING (id) ORDER BY i.step;

-- Ids increase within a session: over statements ...
SELECT count(*) FILTER (WHERE id <= prev) AS out_of_order
  FROM (SELECT id, lag(id) OVER (ORDER BY step) AS prev FROM ids) s;
-- ... and within one statement, keyed or not.
CREATE TEMP TABLE bulk (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bulk
SELECT g, eo.publish('bulk', g::text, CASE WHEN g % 3 = 0 THEN NULL ELSE 'bulk-' || g % 3 END)
  FROM generate_series(1, 500) AS g;
SELECT count(*) AS published,
       count(*) FILTER (WHERE id <= prev) AS out_of_order
  FROM (SELECT id, lag(id) OVER (ORDER BY n) AS prev FROM bulk) s;
-- The outbox's order (its primary key) is the publish order.
SELECT bool_and(payload_text::int = rn) AS id_order_is_publish_order
  FROM (SELECT payload_text, row_number() OVER (ORDER BY id) AS rn
          FROM eo.outbox WHERE topic = 'bulk') s;
-- One eo.outbox_key row per key, holding the key's last id.
SELECT k.key,
       k.last_id = (SELECT o.id FROM eo.outbox o WHERE o.key = k.key
                     ORDER BY o.id DESC LIMIT 1) AS holds_last_id
  FROM eo.outbox_key k ORDER BY k.key;

-- The message belongs to the caller's transaction: a rollback publishes
-- nothing (and leaves no key row), ...
BEGIN;
INSERT INTO ids VALUES (8, eo.publish('rolled.back', '{}'::jsonb, 'rb-key'));
SELECT count(*) AS visible_in_own_transaction FROM eo.outbox WHERE topic = 'rolled.back';
SELECT eo.message(id) IS NOT NULL AS message_in_own_transaction FROM ids WHERE step = 8;
ROLLBACK;
SELECT count(*) AS after_rollback FROM eo.outbox WHERE topic = 'rolled.back';
SELECT count(*) AS key_rows_after_rollback FROM eo.outbox_key WHERE key = 'rb-key';
SELECT count(*) AS ids_after_rollback FROM ids WHERE step = 8;
-- ... and so does a rolled-back savepoint.
BEGIN;
SAVEPOINT a;
SELECT eo.publish('savepoint', 'undone'::text, 'sp-key') IS NOT NULL AS published;
ROLLBACK TO SAVEPOINT a;
SELECT eo.publish('savepoint', 'kept'::text, 'sp-key') IS NOT NULL AS published;
COMMIT;
SELECT payload_text FROM eo.outbox WHERE topic = 'savepoint';

----------------------------------------------------------------------
-- eo.message: the envelope of a message, never truncated
----------------------------------------------------------------------
SELECT i.step, eo.message(i.id) - 'id' - 'published_at' AS envelope
  FROM ids i ORDER BY i.step;
SELECT i.step,
       eo.message(i.id) ->> 'id' = i.id::text AS id_matches,
       (eo.message(i.id) ->> 'published_at')::timestamptz = o.published_at AS published_at_matches,
       eo.message(i.id) ->> 'published_at' LIKE '%Z' AS utc
  FROM ids i JOIN eo.outbox o USING (id) ORDER BY i.step;
-- Unknown ids and NULL give NULL.
SELECT eo.message('00000000-0000-7000-8000-000000000000') IS NULL AS unknown,
       eo.message(NULL) IS NULL AS null_id;
-- Text is escaped and comes back byte for byte; a payload far larger than
-- a NOTIFY can carry is returned whole.
INSERT INTO ids VALUES (9, eo.publish('odd "topic" ✓', E'quote " backslash \\ newline \n tab \t ünï ✓'::text,
    E'key "with" \\ quotes', '{"h": "v \"q\" ✓"}'));
INSERT INTO ids VALUES (10, eo.publish('big', repeat('x', 100000)::text));
INSERT INTO ids VALUES (11, eo.publish('big', jsonb_build_object('list', (SELECT jsonb_agg(g) FROM generate_series(1, 10000) g))));
SELECT eo.message(id) ->> 'topic' AS topic,
       eo.message(id) ->> 'key' AS key,
       eo.message(id) -> 'headers' AS headers,
       eo.message(id) ->> 'payload' = E'quote " backslash \\ newline \n tab \t ünï ✓' AS payload_intact
  FROM ids WHERE step = 9;
SELECT step, length(eo.message(id) ->> 'payload') AS payload_length,
       jsonb_array_length(eo.message(id) -> 'payload' -> 'list') AS list_length,
       eo.message(id) ? 'truncated' AS truncated
  FROM ids WHERE step IN (10, 11) ORDER BY step;

-- A routed message (moved to eo.message_log, here by hand) is still found,
-- and one that matched no subscription is listed by eo.unrouted.
WITH moved AS (
    DELETE FROM eo.outbox o USING ids i
     WHERE o.id = i.id AND i.step IN (1, 3)
    RETURNING o.*
)
INSERT INTO eo.message_log (id, published_at, topic, key, headers, payload, payload_text,
                            routed_at, destinations, published_by, slot)
SELECT m.id, m.published_at, m.topic, m.key, m.headers, m.payload, m.payload_text,
       now(), CASE WHEN m.key IS NULL THEN 0 ELSE 1 END, m.published_by,
       coalesce((SELECT current_slot FROM eo.message_log_rotation), 0) FROM moved m;
SELECT i.step, eo.message(i.id) - 'id' - 'published_at' AS envelope
  FROM ids i WHERE i.step IN (1, 3) ORDER BY i.step;
SELECT u.topic, u.key, u.id = i.id AS is_step_1,
       u.published_at <= u.routed_at AS routed_after_publication
  FROM eo.unrouted u, ids i WHERE i.step = 1;

----------------------------------------------------------------------
-- Destinations
----------------------------------------------------------------------
SELECT eo.create_destination('orders', 'notify');
SELECT eo.create_destination('audit', 'notify',
    '{"channel": "audit_events", "max_attempts": 3, "retry_delays": ["0s", "1s", "1 min"]}');
SELECT eo.create_destination('spare', 'notify', NULL);
-- Limits: 63-byte channel, one attempt, one delay, 256-byte name.
SELECT eo.create_destination(repeat('n', 256), 'notify',
    jsonb_build_object('channel', repeat('c', 63), 'max_attempts', 1, 'retry_delays', jsonb_build_array('2 hours')));
SELECT left(name, 10) AS name, kind, options, enabled
  FROM eo.destination ORDER BY id;
-- alter_destination replaces the options and re-enables the destination.
UPDATE eo.destination SET enabled = false WHERE name = 'audit';
SELECT eo.alter_destination('audit', '{"max_attempts": 5}');
SELECT name, options, enabled FROM eo.destination WHERE name = 'audit';
SELECT eo.alter_destination('audit', NULL);
SELECT name, options, enabled FROM eo.destination WHERE name = 'audit';
-- A fresh destination in eo.stats: nothing queued, nothing delivered.
SELECT left(destination, 10) AS destination, kind, enabled, pending, in_flight, retrying, dead,
       delivered_total, oldest_pending_age, last_error, last_error_at, last_success_at
  FROM eo.stats ORDER BY destination;

----------------------------------------------------------------------
-- Subscriptions
----------------------------------------------------------------------
SELECT eo.subscribe('orders.created', 'orders');
SELECT eo.subscribe('orders.*', 'orders');
SELECT eo.subscribe('*', 'audit');
SELECT eo.subscribe('orders.paid', 'spare');
-- Subscribing twice is a no-op.
SELECT eo.subscribe('orders.*', 'orders');
-- A 256-byte topic.
SELECT eo.subscribe(repeat('t', 256), 'spare');
SELECT left(s.topic, 20) AS topic, d.name AS destination
  FROM eo.subscription s JOIN eo.destination d ON d.id = s.destination_id
 ORDER BY 1, 2;
SELECT eo.unsubscribe('orders.paid', 'spare');
SELECT eo.unsubscribe(repeat('t', 256), 'spare');
SELECT count(*) AS spare_subscriptions
  FROM eo.subscription s JOIN eo.destination d ON d.id = s.destination_id
 WHERE d.name = 'spare';

----------------------------------------------------------------------
-- Deliveries: eo.stats, eo.redrive, eo.drop_destination
----------------------------------------------------------------------
-- Deliveries in every state, written by hand as the relay would.
INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts,
                         next_attempt_at, created_at, last_attempt_at, last_error)
SELECT d.id, b.id, NULL, v.state, v.attempts, now(), now() - interval '1 minute',
       CASE WHEN v.attempts > 0 THEN now() END,
       CASE WHEN v.attempts > 0 THEN 'failed' END
  FROM eo.destination d,
       (VALUES (1, 'pending', 0), (2, 'pending', 0), (3, 'in_flight', 1),
               (4, 'retrying', 2), (5, 'dead', 10), (6, 'dead', 10)) AS v(n, state, attempts)
  JOIN bulk b ON b.n = v.n
 WHERE d.name = 'orders';
INSERT INTO eo.delivery (destination_id, message_id, state, attempts, next_attempt_at, created_at)
SELECT d.id, b.id, 'dead', 3, now(), now()
  FROM eo.destination d, bulk b WHERE d.name = 'audit' AND b.n = 7;
UPDATE eo.destination_stats SET delivered_total = 12
 WHERE destination_id = (SELECT id FROM eo.destination WHERE name = 'orders');
SELECT left(destination, 10) AS destination, pending, in_flight, retrying, dead, delivered_total,
       oldest_pending_age >= interval '1 minute' AS oldest_pending_age_ok
  FROM eo.stats ORDER BY destination;

-- redrive: dead deliveries go back to pending with no attempts; it counts
-- them, and a second call finds none.
SELECT eo.redrive('orders') AS redriven;
SELECT eo.redrive('orders') AS redriven_again;
SELECT eo.redrive('spare') AS nothing_dead;
SELECT state, attempts, count(*) FROM eo.delivery d
  JOIN eo.destination x ON x.id = d.destination_id WHERE x.name = 'orders'
 GROUP BY 1, 2 ORDER BY 1, 2;
SELECT left(destination, 10) AS destination, pending, in_flight, retrying, dead
  FROM eo.stats ORDER BY destination;
-- A rolled-back redrive changes nothing.
BEGIN;
SELECT eo.redrive('audit') AS redriven;
ROLLBACK;
SELECT dead FROM eo.stats WHERE destination = 'audit';

-- drop_destination refuses a destination with unfinished deliveries ...
SELECT eo.drop_destination('orders');
SELECT count(*) AS still_there FROM eo.destination WHERE name = 'orders';
-- ... unless forced: its subscriptions, deliveries and stats go with it.
SELECT eo.drop_destination('orders', force => true);
SELECT (SELECT count(*) FROM eo.destination WHERE name = 'orders') AS destinations,
       (SELECT count(*) FROM eo.subscription s WHERE NOT EXISTS
            (SELECT 1 FROM eo.destination d WHERE d.id = s.destination_id)) AS orphan_subscriptions,
       (SELECT count(*) FROM eo.delivery) AS deliveries,
       (SELECT count(*) FROM eo.destination_stats) AS stats_rows;
-- Dead deliveries are unfinished business too (eo.redrive can send them
-- again): they hold a drop back, and only force discards them.
SELECT eo.drop_destination('audit');
SELECT state, count(*) FROM eo.delivery GROUP BY state;
SELECT eo.drop_destination('audit', force => true);
SELECT eo.drop_destination('spare', NULL);
SELECT eo.drop_destination(repeat('n', 256));
SELECT (SELECT count(*) FROM eo.destination) AS destinations,
       (SELECT count(*) FROM eo.subscription) AS subscriptions,
       (SELECT count(*) FROM eo.delivery) AS deliveries,
       (SELECT count(*) FROM eo.destination_stats) AS stats_rows,
       (SELECT count(*) FROM eo.stats) AS stats_view_rows;
-- A name can be used again after the drop.
SELECT eo.create_destination('orders', 'notify');
SELECT name, pending, dead, delivered_total FROM eo.stats s JOIN eo.destination d ON d.name = s.destination;
SELECT eo.drop_destination('orders');

----------------------------------------------------------------------
-- eo.relay_status: one row per database, no worker while the relay is off
----------------------------------------------------------------------
SELECT attname, format_type(atttypid, atttypmod) AS type
  FROM pg_attribute
 WHERE attrelid = 'eo.relay_status'::regclass AND attnum > 0
 ORDER BY attnum;
SELECT count(*) AS rows,
       bool_and(pid IS NULL) AS no_pid,
       bool_and(started_at IS NULL) AS never_started,
       sum(delivered_since_start) AS delivered,
       bool_and(last_error IS NULL) AS no_error
  FROM eo.relay_status WHERE datname = current_database();
SELECT state FROM eo.relay_status WHERE datname = current_database();
SHOW eo.relay_enabled;

----------------------------------------------------------------------
-- Privileges
----------------------------------------------------------------------
CREATE ROLE regress_eo_publisher;
CREATE ROLE regress_eo_nobody;
-- The grant an application needs to publish and read messages back.
GRANT USAGE ON SCHEMA eo TO regress_eo_publisher;
GRANT EXECUTE ON FUNCTION eo.publish(text, jsonb, text, jsonb),
  eo.publish(text, text, text, jsonb), eo.message(uuid) TO regress_eo_publisher;
SELECT eo.create_destination('orders', 'notify');
INSERT INTO ids VALUES (20, eo.publish('orders.created', '{"by": "superuser"}'::jsonb));

\set VERBOSITY sqlstate
-- Without the grant, nothing.
SET ROLE regress_eo_nobody;
SELECT eo.publish('t', '{}'::jsonb);
SELECT eo.publish('t', 'x'::text);
SELECT eo.message('00000000-0000-7000-8000-000000000000');
SELECT count(*) FROM eo.outbox;
RESET ROLE;

-- The application role publishes (both variants, with a key and headers)
-- and reads its own messages back by id, ...
SET ROLE regress_eo_publisher;
SELECT eo.publish('app.topic', '{"from": "app"}'::jsonb, 'app-key', '{"h": "v"}') AS app_msg \gset
SELECT eo.message(:'app_msg') -> 'payload' AS own_payload;
SELECT eo.publish('app.topic', 'from app'::text, 'app-key') IS NOT NULL AS published_text;
SELECT eo.publish('app.topic', 'untyped') IS NOT NULL AS published_untyped;
RESET ROLE;
SELECT id AS superuser_msg FROM ids WHERE step = 20 \gset
SET ROLE regress_eo_publisher;
-- ... but not a message another role published (42501), ...
SELECT eo.message(:'superuser_msg') -> 'payload' AS payload;
-- ... which that role reads, also once the message is routed; ...
RESET ROLE;
SELECT eo.message(:'app_msg') -> 'payload' AS superuser_reads_app_msg;
SELECT eo.relay_run() > 0 AS routed;
SELECT published_by FROM eo.message_log WHERE id = :'app_msg';
SET ROLE regress_eo_publisher;
SELECT eo.message(:'app_msg') -> 'payload' AS own_payload_routed;
SELECT eo.message(:'superuser_msg') -> 'payload' AS still_denied;
-- ... and cannot read or write the tables, ...
SELECT count(*) FROM eo.outbox;
SELECT count(*) FROM eo.message_log;
SELECT count(*) FROM eo.outbox_key;
SELECT count(*) FROM eo.delivery;
SELECT count(*) FROM eo.destination;
SELECT count(*) FROM eo.subscription;
SELECT count(*) FROM eo.destination_stats;
INSERT INTO eo.outbox VALUES (gen_random_uuid(), now(), 'forged', NULL, NULL, NULL, 'x');
DELETE FROM eo.outbox;
-- ... nor read the views, ...
SELECT count(*) FROM eo.stats;
SELECT count(*) FROM eo.unrouted;
SELECT count(*) FROM eo.relay_status;
-- ... nor administer destinations and subscriptions, nor run the relay's
-- functions.
SELECT eo.create_destination('mine', 'notify');
SELECT eo.alter_destination('orders', '{}');
SELECT eo.drop_destination('orders');
SELECT eo.subscribe('app.topic', 'orders');
SELECT eo.unsubscribe('orders.created', 'orders');
SELECT eo.redrive('orders');
SELECT eo.check_destination_options('notify', '{}');
SELECT eo.check_topic_pattern('x');
SELECT eo.purge_delivered();
SELECT eo.wake_relay();
SELECT * FROM eo.relay_status();
RESET ROLE;
\set VERBOSITY default
-- What the application published, with a key row for its key.
SELECT topic, key, headers, payload, payload_text
  FROM (SELECT * FROM eo.outbox UNION ALL
        SELECT id, published_at, topic, key, headers, payload, payload_text, published_by
          FROM eo.message_log) m
 WHERE topic = 'app.topic' ORDER BY id;
SELECT count(*) AS app_key_rows FROM eo.outbox_key WHERE key = 'app-key';
-- Full message once, for the record.
SET ROLE regress_eo_publisher;
SELECT count(*) FROM eo.outbox;
SELECT eo.subscribe('app.topic', 'orders');
RESET ROLE;

DROP EXTENSION eo_processing;
DROP ROLE regress_eo_publisher, regress_eo_nobody;
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'eo';
