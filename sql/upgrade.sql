-- Upgrade from 0.1.0 one version at a time: the data of each version
-- survives, grants on existing objects are kept, and the objects of each
-- new version appear and work.  That the upgraded extension has exactly the
-- catalog of a fresh installation is checked by the TAP test
-- test/t/070_upgrade_catalog.pl.
CREATE EXTENSION eo_processing VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';
SELECT to_regclass('eo.outbox') IS NULL AS no_outbox_yet,
       to_regprocedure('eo.publish(text,jsonb,text,jsonb)') IS NULL AS no_publish_yet;

-- Use 0.1.0.
SELECT eo.process('m-1') AS first, eo.process('m-1') AS again;
SELECT eo.process('m-2', 'billing', 'infinity');
SELECT eo.set_result('m-1', '{"charged": 100}');
SELECT eo.process_seq('producer-1', 7) AS seq_7;
CREATE ROLE regress_eo_upgrade_app;
GRANT USAGE ON SCHEMA eo TO regress_eo_upgrade_app;
GRANT EXECUTE ON FUNCTION eo.process(text, text, interval) TO regress_eo_upgrade_app;

-- Walk the versions one at a time; after each step the data of the steps
-- before survive and the new objects work.  The library is the newest
-- throughout: it must work with the objects of every older version.
ALTER EXTENSION eo_processing UPDATE TO '0.2.0';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';

-- The inbox's data survived, and the inbox works as before.
SELECT consumer, msg_id, result, expires_at = 'infinity' AS forever
  FROM eo.inbox ORDER BY consumer, msg_id;
SELECT consumer, producer, last_seq FROM eo.producer_seq;
SELECT eo.process('m-1') AS m1_again, eo.result('m-1') AS m1_result;
SELECT eo.process_seq('producer-1', 7) AS seq_7_again,
       eo.process_seq('producer-1', 8) AS seq_8;
-- Grants made on 0.1.0 objects are kept.
SET ROLE regress_eo_upgrade_app;
SELECT eo.process('m-3') AS app_processes;
RESET ROLE;

-- The outbox of 0.2.0 works.
SELECT eo.publish('upgraded', '{"ok": true}'::jsonb, 'k') AS id \gset
SELECT eo.message(:'id') - 'id' - 'published_at' AS envelope;
SELECT topic, key, payload FROM eo.outbox;
SELECT eo.create_destination('d', 'notify');
SELECT eo.subscribe('upgraded', 'd');
SELECT destination, pending, dead, delivered_total FROM eo.stats;
SELECT count(*) AS relay_rows FROM eo.relay_status WHERE datname = current_database();

-- 0.3.0: http destinations and owned results.  A result stored before has
-- no owner and stays readable by the application role.
ALTER EXTENSION eo_processing UPDATE TO '0.3.0';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';
SELECT topic, key, payload FROM eo.outbox;
SELECT name, kind FROM eo.destination;
SELECT msg_id, result, result_owner FROM eo.inbox WHERE msg_id = 'm-1';
GRANT EXECUTE ON FUNCTION eo.result(text, text) TO regress_eo_upgrade_app;
SET ROLE regress_eo_upgrade_app;
SELECT eo.result('m-1') AS old_result_readable;
RESET ROLE;
SELECT eo.create_destination('h', 'http', '{"url": "http://127.0.0.1:9/hook"}');
SELECT destination, kind, enabled, disabled_reason FROM eo.stats ORDER BY destination;

-- 0.4.0: idempotency keys and reconciliation.
ALTER EXTENSION eo_processing UPDATE TO '0.4.0';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';
SELECT count(*) AS inbox_rows, (SELECT count(*) FROM eo.outbox) AS queued,
       (SELECT count(*) FROM eo.destination) AS destinations FROM eo.inbox;
SELECT state, recovery_point, response FROM eo.key_begin('upgrade-key', '{"amount": 1}');
SELECT eo.publish('before.0.4.1', '{"old": true}'::jsonb) AS old_msg \gset

-- 0.4.1: the eo.process overloads, who published a message, destination
-- operations, grant helpers.
ALTER EXTENSION eo_processing UPDATE TO '0.4.1';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';
-- A role granted the interval overload keeps every call it could make,
-- and may now write retain => 'infinity' ...
SET ROLE regress_eo_upgrade_app;
SELECT eo.process('m-10') AS plain, eo.process('m-11', 'billing') AS with_consumer,
       eo.process('m-12', retain => interval '1 day') AS named_interval,
       eo.process('m-13', retain => 'infinity') AS named_infinity;
RESET ROLE;
-- ... while those grants stay the user's (pg_dump dumps them), not the
-- extension's initial privileges.
SELECT count(*) AS init_privs_naming_the_app
  FROM pg_init_privs
 WHERE objoid IN ('eo.process(text,text,text)'::regprocedure, 'eo.process(text,interval)'::regprocedure)
   AND initprivs::text LIKE '%regress_eo_upgrade_app%';
-- A message published before has no publisher and stays readable.
SELECT published_by IS NULL AS no_publisher, eo.message(:'old_msg') -> 'payload' AS payload
  FROM eo.outbox WHERE id = :'old_msg';
SELECT eo.publish('after.0.4.1', '{"new": true}'::jsonb) AS new_msg \gset
SELECT published_by = current_user::regrole AS published_by_current_user FROM eo.outbox WHERE id = :'new_msg';

-- 0.5.0: the log with a cursor per destination.  Deliveries made by a 0.4.1
-- relay (the library here is newer, so they are written directly, as that
-- relay wrote them): a retry due now, a message held behind it, a dead one,
-- and an http request that was in flight.
INSERT INTO eo.message_log (id, published_at, topic, key, payload, routed_at, destinations)
VALUES ('00000000-0000-7000-8000-000000000001', now(), 'upgraded', 'k2', '{"n": 1}', now(), 1),
       ('00000000-0000-7000-8000-000000000002', now(), 'upgraded', 'k2', '{"n": 2}', now(), 1),
       ('00000000-0000-7000-8000-000000000003', now(), 'upgraded', NULL, '{"n": 3}', now(), 1),
       ('00000000-0000-7000-8000-000000000004', now(), 'hooked', NULL, '{"n": 4}', now(), 1);
INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts, next_attempt_at,
                         created_at, last_attempt_at, last_error)
SELECT d.id, v.m::uuid, v.k, v.s, v.a, now() - interval '1 second', now(), now(), v.e
  FROM (VALUES ('d', '00000000-0000-7000-8000-000000000001', 'k2', 'retrying', 1, 'full queue'),
               ('d', '00000000-0000-7000-8000-000000000002', 'k2', 'pending', 0, NULL),
               ('d', '00000000-0000-7000-8000-000000000003', NULL, 'dead', 5, 'given up'),
               ('h', '00000000-0000-7000-8000-000000000004', NULL, 'in_flight', 1, NULL))
       AS v(dest, m, k, s, a, e)
  JOIN eo.destination d ON d.name = v.dest;
SELECT count(*) AS queued FROM eo.outbox;
ALTER EXTENSION eo_processing UPDATE TO '0.5.0';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';
-- Every delivery is still there, in its state; cursors start at 0 and the
-- old log has no positions, so nothing routed before is routed again.
SELECT destination, pending, in_flight, retrying, dead, delivered_total
  FROM eo.stats ORDER BY destination;
SELECT destination_id IS NOT NULL AS has_cursor, delivered_seq, sending_seq
  FROM eo.destination_stats ORDER BY destination_id;
SELECT count(*) AS old_log_rows, count(seq) AS with_position FROM eo.message_log;
-- The new matcher, in SQL.
SELECT eo.topic_matches('upgr*', 'upgraded') AS prefix, eo.topic_matches('upgraded', 'upgraded.x') AS exact;
-- 0.6.0: the log rotates over three slots.  The log of 0.5.0 becomes slot
-- 0, rows and all; the relay of this library needs it (before the update
-- eo.relay_run() refuses).
-- A role that may read the log keeps that right, as its own grant (which
-- pg_dump keeps), on the new parent.
SELECT eo.relay_run() AS routed;
GRANT SELECT ON eo.message_log TO regress_eo_upgrade_app;
ALTER EXTENSION eo_processing UPDATE TO '0.6.0';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';
SELECT has_table_privilege('regress_eo_upgrade_app', 'eo.message_log', 'SELECT') AS reads_log,
       has_table_privilege('regress_eo_upgrade_app', 'eo.message_log_0', 'SELECT') AS reads_slot_0,
       EXISTS (SELECT 1 FROM pg_init_privs i, aclexplode(i.initprivs) a
                WHERE i.objoid = 'eo.message_log'::regclass
                  AND a.grantee = 'regress_eo_upgrade_app'::regrole) AS extension_grant;
SELECT c.relname, c.relkind, pg_get_expr(c.relpartbound, c.oid) AS bound
  FROM pg_class c
 WHERE c.relnamespace = 'eo'::regnamespace AND c.relname LIKE 'message\_log%'
   AND c.relkind IN ('r', 'p') ORDER BY 1;
SELECT slot, count(*) FROM eo.message_log GROUP BY slot ORDER BY slot;
SELECT current_slot FROM eo.message_log_rotation;
-- Now the relay routes what 0.4.1 left in the outbox (once each, with
-- positions), delivers the due retry, and then the message held behind it.
SELECT eo.relay_run() AS routed;
SELECT destination, pending, in_flight, retrying, dead, delivered_total
  FROM eo.stats ORDER BY destination;
SELECT eo.relay_run() AS routed;
SELECT destination, pending, in_flight, retrying, dead, delivered_total
  FROM eo.stats ORDER BY destination;
SELECT count(*) AS log_rows, count(DISTINCT id) AS distinct_ids, count(seq) AS with_position,
       (SELECT count(*) FROM eo.outbox) AS queued
  FROM eo.message_log;
SELECT m.topic, m.routes = ARRAY[d.id] AS routed_to_d
  FROM eo.message_log m, eo.destination d
 WHERE m.seq IS NOT NULL AND d.name = 'd' ORDER BY m.seq;
SELECT state, key FROM eo.delivery ORDER BY message_id;
SELECT slot, count(*) FROM eo.message_log GROUP BY slot ORDER BY slot;
-- 0.7.0: kafka destinations (#15); eo.destinations hides their secret
-- librdkafka properties.
ALTER EXTENSION eo_processing UPDATE TO '0.7.0';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';
-- 0.8.0: a queue's hand-out writes no index entry (#14); leases are made
-- of qseq and the attempt.  A queue of 0.7.0 with a ready, a
-- leased (lease 7, from the old sequence), a retrying and a dead message;
-- this library's consumer functions wait for the update.
SELECT eo.create_destination('qu', 'queue', '{"visibility_timeout": "1h", "max_attempts": 5}');
INSERT INTO eo.queue_message (destination_id, attempt, lease, visible_at, enqueued_at, dead_at,
                              published_at, id, topic, key)
SELECT d.id, v.attempt, v.lease, now() + v.wait, now(), CASE WHEN v.dead THEN now() END,
       now(), v.id::uuid, 'upgraded', v.key
  FROM eo.destination d,
       (VALUES (0, NULL::bigint, interval '0', false, '00000000-0000-7000-8000-0000000000a1', 'a'),
               (2, 7, interval '1 hour', false, '00000000-0000-7000-8000-0000000000a2', 'b'),
               (1, NULL, interval '1 hour', false, '00000000-0000-7000-8000-0000000000a3', 'c'),
               (5, NULL, interval '0', true, '00000000-0000-7000-8000-0000000000a4', NULL))
       AS v (attempt, lease, wait, dead, id, key)
 WHERE d.name = 'qu';
\set VERBOSITY terse
SELECT * FROM eo.read('qu');
\set VERBOSITY default
ALTER EXTENSION eo_processing UPDATE TO '0.8.0';
SELECT extversion FROM pg_extension WHERE extname = 'eo_processing';
SELECT key, attempt, lease IS NOT NULL AS leased,
       lease = (qseq << 16) + attempt AS lease_of_last_attempt, dead_at IS NOT NULL AS dead
  FROM eo.queue_message ORDER BY qseq;
SELECT destination, ready, leased, retrying, dead FROM eo.stats WHERE destination = 'qu';
-- The lease handed out before the update is no longer current; the ready
-- message is handed out with a lease of the new form, and acked.
\set VERBOSITY sqlstate
SELECT eo.ack('qu', '{7}');
\set VERBOSITY default
SELECT r.lease AS qu_lease, r.key, r.attempt,
       r.lease = ((SELECT qseq FROM eo.queue_message WHERE key = 'a') << 16) + 1 AS first_handout
  FROM eo.read('qu') AS r \gset
SELECT :'key' AS key, :'attempt' AS attempt, :'first_handout' AS first_handout;
SELECT eo.ack('qu', ARRAY[:qu_lease]) AS acked;
SELECT eo.drop_destination('qu', force => true);
\dx+ eo_processing

DROP EXTENSION eo_processing;
DROP ROLE regress_eo_upgrade_app;
