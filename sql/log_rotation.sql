-- The log rotates over three slots (eo.message_log_0..2), emptied with
-- TRUNCATE by eo.purge_delivered() once everything in a slot is older than
-- eo.outbox_retention and every cursor has passed it.  The relay is off
-- (test/test.conf): eo.relay_run() routes and delivers in this session.
-- eo.outbox_retention is a server setting: changed with ALTER SYSTEM,
-- pg_reload_conf() and a new session (\c).
CREATE EXTENSION IF NOT EXISTS eo_processing;
\set VERBOSITY terse

-- The log is partitioned by slot; routing writes into the current one.
SELECT c.relname, c.relkind, pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound
  FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'eo.message_log'::regclass ORDER BY 1;
SELECT current_slot FROM eo.message_log_rotation;

SELECT eo.create_destination('rot_fast', 'notify', '{"channel": "rot_fast"}');
SELECT eo.subscribe('rot.*', 'rot_fast');
SELECT eo.create_destination('rot_slow', 'notify', '{"channel": "rot_slow"}');
SELECT eo.subscribe('rot.slow', 'rot_slow');
SELECT count(eo.publish('rot.a', jsonb_build_object('n', n))) AS published FROM generate_series(1, 3) AS n;
SELECT eo.relay_run() AS routed;
SELECT slot, count(*) FROM eo.message_log GROUP BY slot ORDER BY slot;

-- With the default retention (a day) the current slot is young: nothing
-- rotates, nothing is removed.
SELECT eo.purge_delivered() AS removed;
SELECT current_slot, count(*) AS kept FROM eo.message_log_rotation, eo.message_log GROUP BY 1;

-- Retention 0: one call turns the three slots; the messages (delivered
-- and older than the retention) leave with their slot.
ALTER SYSTEM SET eo.outbox_retention = 0;
SELECT pg_reload_conf();
\c
\set VERBOSITY terse
SHOW eo.outbox_retention;
SELECT eo.purge_delivered() AS removed;
SELECT current_slot, (SELECT count(*) FROM eo.message_log) AS kept FROM eo.message_log_rotation;

-- A destination that has not passed a message holds the rotation back at
-- the slot the message is in (rot_slow is disabled: its cursor stays).
SELECT eo.disable_destination('rot_slow');
SELECT eo.publish('rot.slow', '{"held": true}'::jsonb) AS held_id \gset
SELECT eo.relay_run() AS routed;
SELECT eo.purge_delivered() AS removed;
SELECT current_slot FROM eo.message_log_rotation;
SELECT slot, count(*) FROM eo.message_log GROUP BY slot ORDER BY slot;
-- New messages go to the current slot meanwhile and stay too.
SELECT eo.publish('rot.a', '{"after": true}'::jsonb) AS after_id \gset
SELECT eo.relay_run() AS routed;
SELECT eo.purge_delivered() AS removed;
SELECT slot, count(*) FROM eo.message_log GROUP BY slot ORDER BY slot;
SELECT destination, pending, dead FROM eo.stats ORDER BY destination;

-- Once the destination has delivered it, the slot goes.
SELECT eo.enable_destination('rot_slow');
SELECT eo.relay_run() AS routed;
SELECT destination, pending, dead, delivered_total FROM eo.stats ORDER BY destination;
SELECT eo.purge_delivered() AS removed;
SELECT count(*) AS kept FROM eo.message_log;
SELECT eo.message(:'held_id') IS NULL AS held_message_gone;

-- A message a delivery still needs (here: dead, so that eo.redrive() can
-- send it again) is copied to the current slot before its slot is emptied,
-- and stays readable; the other message of that slot goes.
SELECT eo.publish('rot.a', '{"dead": true}'::jsonb) AS dead_id \gset
SELECT eo.publish('rot.a', '{"fine": true}'::jsonb) AS fine_id \gset
SELECT eo.relay_run() AS routed;
INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts, next_attempt_at,
                         created_at, last_attempt_at, last_error)
SELECT d.id, :'dead_id', NULL, 'dead', 10, 'infinity', now(), now(), 'given up (test)'
  FROM eo.destination d WHERE d.name = 'rot_fast';
SELECT slot AS dead_slot FROM eo.message_log WHERE id = :'dead_id' \gset
SELECT eo.purge_delivered() AS removed;
SELECT id = :'dead_id' AS is_dead_one, slot <> :dead_slot AS moved, seq IS NOT NULL AS has_position
  FROM eo.message_log;
SELECT eo.message(:'dead_id')->'payload' AS dead_payload, eo.message(:'fine_id') AS fine_message;
-- Redriven and delivered, it goes with the next turn.
SELECT eo.redrive('rot_fast') AS redriven;
SELECT eo.relay_run() AS routed;
SELECT destination, pending, dead FROM eo.stats ORDER BY destination;
SELECT eo.purge_delivered() AS removed;
SELECT count(*) AS kept FROM eo.message_log;

-- Bad input changes nothing.
SELECT eo.purge_delivered(-1);

-- Routing writes straight into the partition of the current slot, and
-- only into a partition of the log: a slot table detached by hand is an
-- error, and the routing transaction writes nothing.
BEGIN;
SELECT pg_catalog.format('ALTER TABLE eo.message_log DETACH PARTITION eo.message_log_%s', current_slot)
  FROM eo.message_log_rotation \gexec
SELECT eo.publish('rot.a', '{"detached": true}'::jsonb) IS NOT NULL AS published;
SELECT eo.relay_run() AS routed;
ROLLBACK;
SELECT count(*) AS waiting FROM eo.outbox;

-- Clean up.
SELECT eo.drop_destination('rot_fast');
SELECT eo.drop_destination('rot_slow');
ALTER SYSTEM RESET eo.outbox_retention;
SELECT pg_reload_conf();
\c
SHOW eo.outbox_retention;
DROP EXTENSION eo_processing;
