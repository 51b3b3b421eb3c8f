-- Operating destinations: merging options, disabling and enabling,
-- dropping with dead deliveries, delivering the unrouted backlog, and the
-- warning of DROP EXTENSION.  The relay is off (test/test.conf):
-- eo.relay_run() does its work in this session.
CREATE EXTENSION eo_processing;

----------------------------------------------------------------------
-- eo.alter_destination(name, options, replace => false) merges
----------------------------------------------------------------------
SELECT eo.create_destination('d1', 'notify', '{"channel": "ch1", "max_attempts": 3}');
SELECT eo.alter_destination('d1', '{"max_attempts": 5}', replace => false);
SELECT options FROM eo.destinations WHERE name = 'd1';
-- A JSON null removes a key.
SELECT eo.alter_destination('d1', '{"max_attempts": null, "retry_delays": ["1s"]}', replace => false);
SELECT options FROM eo.destinations WHERE name = 'd1';
-- NULL options merge nothing (and still re-enable).
SELECT eo.alter_destination('d1', NULL, replace => false);
SELECT options FROM eo.destinations WHERE name = 'd1';
-- replace => true (and the two-argument form) replace them all.
SELECT eo.alter_destination('d1', '{"channel": "ch2"}', replace => true);
SELECT options FROM eo.destinations WHERE name = 'd1';
SELECT eo.alter_destination('d1', '{"channel": "ch3"}');
SELECT options FROM eo.destinations WHERE name = 'd1';
-- Errors change nothing.
SELECT eo.alter_destination('d1', '{"bogus": 1}', replace => false);
SELECT eo.alter_destination('d1', '[1]', replace => false);
SELECT eo.alter_destination('d1', '{}', replace => NULL);
SELECT eo.alter_destination('nope', '{}', replace => false);
SELECT options FROM eo.destinations WHERE name = 'd1';

-- An http destination the relay disabled (410 Gone) comes back with its
-- options, secrets included, without re-sending them.
SELECT eo.create_destination('hook', 'http',
    '{"url": "http://127.0.0.1:9/hook", "signing_secret": "whsec_a2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="}');
CREATE TEMP TABLE saved AS SELECT options FROM eo.destination WHERE name = 'hook';
UPDATE eo.destination SET enabled = false, disabled_reason = 'HTTP 410 Gone' WHERE name = 'hook';
SELECT enabled, disabled_reason FROM eo.destinations WHERE name = 'hook';
SELECT eo.enable_destination('hook');
SELECT d.enabled, d.disabled_reason, d.options = s.options AS options_kept
  FROM eo.destination d, saved s WHERE d.name = 'hook';
-- Merging one option keeps the secret too.
SELECT eo.alter_destination('hook', '{"timeout_ms": 5000}', replace => false);
SELECT d.options - 'timeout_ms' = s.options AS secret_kept, d.options ->> 'timeout_ms' AS timeout_ms
  FROM eo.destination d, saved s WHERE d.name = 'hook';

----------------------------------------------------------------------
-- eo.disable_destination / eo.enable_destination
----------------------------------------------------------------------
SELECT eo.disable_destination('d1', 'maintenance window');
SELECT enabled, disabled_reason FROM eo.stats WHERE destination = 'd1';
SELECT eo.disable_destination('d1');
SELECT disabled_reason LIKE 'disabled by %' AS default_reason FROM eo.destinations WHERE name = 'd1';
-- A disabled destination's deliveries wait.
SELECT eo.subscribe('waits.*', 'd1');
SELECT eo.publish('waits.here', '{"n": 1}'::jsonb) IS NOT NULL AS published;
SELECT eo.relay_run() AS routed;
SELECT destination, enabled, pending, delivered_total FROM eo.stats WHERE destination = 'd1';
SELECT eo.enable_destination('d1');
-- Enabling an enabled destination is harmless.
SELECT eo.enable_destination('d1');
SELECT eo.relay_run() AS routed;
SELECT destination, enabled, pending, delivered_total, disabled_reason FROM eo.stats
 WHERE destination = 'd1';
SELECT eo.enable_destination('nope');
SELECT eo.enable_destination(NULL);
SELECT eo.disable_destination('nope');

----------------------------------------------------------------------
-- Dead deliveries hold eo.drop_destination back
----------------------------------------------------------------------
SELECT eo.create_destination('d2', 'notify');
SELECT eo.subscribe('dead.letters', 'd2');
SELECT eo.publish('dead.letters', '{"n": 1}'::jsonb) AS dead_id \gset
SELECT eo.relay_run() AS routed;
-- The relay's work by hand: a second delivery of it that failed for good.
INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts, next_attempt_at,
                         created_at, last_attempt_at, last_error)
SELECT id, :'dead_id', NULL, 'dead', 3, 'infinity', now(), now(), 'gave up'
  FROM eo.destination WHERE name = 'd2';
SELECT destination, pending, dead FROM eo.stats WHERE destination = 'd2';
SELECT eo.drop_destination('d2');
SELECT count(*) AS still_there FROM eo.destination WHERE name = 'd2';
-- Redriven, it is pending (and still holds the drop back) ...
SELECT eo.redrive('d2') AS redriven;
SELECT eo.drop_destination('d2');
-- ... until the relay delivers it.
SELECT eo.relay_run() AS routed;
SELECT destination, pending, dead, delivered_total FROM eo.stats WHERE destination = 'd2';
SELECT eo.drop_destination('d2');

----------------------------------------------------------------------
-- eo.route_unrouted(destination)
----------------------------------------------------------------------
SELECT eo.create_destination('late', 'notify', '{"channel": "late"}');
SELECT eo.publish('late.a', '{"n": 1}'::jsonb) IS NOT NULL AS p1,
       eo.publish('late.b', '{"n": 2}'::jsonb, 'k1') IS NOT NULL AS p2,
       eo.publish('late.b', '{"n": 3}'::jsonb, 'k1') IS NOT NULL AS p3,
       eo.publish('other.topic', '{"n": 4}'::jsonb) IS NOT NULL AS p4;
SELECT eo.relay_run() AS routed;
SELECT topic, key FROM eo.unrouted ORDER BY id;
-- Nothing to route without a matching subscription.
SELECT eo.route_unrouted('late') AS routed_without_subscription;
SELECT eo.subscribe('late.*', 'late');
SELECT eo.route_unrouted('late') AS routed;
SELECT topic, key FROM eo.unrouted ORDER BY id;
SELECT d.state, d.key, d.attempts, m.topic, m.destinations
  FROM eo.delivery d JOIN eo.message_log m ON m.id = d.message_id
 WHERE d.destination_id = (SELECT id FROM eo.destination WHERE name = 'late')
 ORDER BY d.message_id;
-- Once only.
SELECT eo.route_unrouted('late') AS routed_again;
-- The relay delivers them.
SELECT eo.relay_run() AS routed;
SELECT eo.relay_run() AS routed;
SELECT destination, pending, dead, delivered_total FROM eo.stats WHERE destination = 'late';
SELECT eo.route_unrouted('nope');
-- Without a destination (or NULL): every destination whose subscriptions
-- match now gets a delivery, and the message counts them all.
SELECT eo.create_destination('late2', 'notify', '{"channel": "late2"}');
SELECT eo.create_destination('late3', 'notify', '{"channel": "late3"}');
SELECT eo.publish('fan.out', '{"n": 5}'::jsonb) IS NOT NULL AS before_subscribing;
SELECT eo.relay_run() AS routed;
SELECT topic FROM eo.unrouted ORDER BY id;
-- late3 matches through two subscriptions: still one delivery.
SELECT eo.subscribe('fan.*', 'late2'), eo.subscribe('fan.out', 'late3'),
       eo.subscribe('fan.*', 'late3');
SELECT eo.route_unrouted() AS deliveries;
SELECT t.name, m.topic, m.destinations
  FROM eo.delivery d JOIN eo.destination t ON t.id = d.destination_id
  JOIN eo.message_log m ON m.id = d.message_id
 WHERE m.topic = 'fan.out' ORDER BY t.name;
SELECT topic FROM eo.unrouted ORDER BY id;
SELECT eo.route_unrouted(NULL) AS nothing_left;
SELECT eo.relay_run() AS routed;
SELECT destination, pending, delivered_total FROM eo.stats
 WHERE destination IN ('late2', 'late3') ORDER BY 1;

----------------------------------------------------------------------
-- Privileges: the new functions are the owner's.
----------------------------------------------------------------------
CREATE ROLE regress_eo_d_app;
SELECT eo.grant_application('regress_eo_d_app');
SET ROLE regress_eo_d_app;
\set VERBOSITY sqlstate
SELECT eo.route_unrouted('late');
SELECT eo.enable_destination('d1');
SELECT eo.disable_destination('d1');
SELECT eo.alter_destination('d1', '{}', replace => false);
\set VERBOSITY default
RESET ROLE;

----------------------------------------------------------------------
-- DROP EXTENSION warns about what it discards
----------------------------------------------------------------------
SELECT eo.publish('waits.now', '{"n": 1}'::jsonb) IS NOT NULL AS unrouted_yet;
SELECT eo.disable_destination('d1');
SELECT eo.publish('waits.now', '{"n": 2}'::jsonb) IS NOT NULL AS published;
SELECT eo.relay_run() AS routed;
SELECT eo.publish('waits.now', '{"n": 3}'::jsonb) IS NOT NULL AS not_routed;
SELECT destination, pending, dead FROM eo.stats WHERE destination = 'd1';
INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts, next_attempt_at,
                         created_at, last_attempt_at, last_error)
SELECT d.id, m.id, NULL, 'dead', 3, 'infinity', now(), now(), 'gave up'
  FROM eo.destination d, eo.message_log m
 WHERE d.name = 'late' AND m.topic = 'late.a';
-- Rolled back, nothing is lost.
BEGIN;
DROP EXTENSION eo_processing;
ROLLBACK;
SELECT count(*) AS outbox FROM eo.outbox;
DROP EXTENSION eo_processing;
-- Nothing to warn about: no warning.
CREATE EXTENSION eo_processing;
-- eo.topic_matches(): the relay's matcher, in SQL.  Exact topics match
-- only themselves; a trailing * matches the prefix (and the prefix alone);
-- elsewhere a * is an ordinary character (eo.subscribe refuses such
-- patterns); strict.
SELECT p, t, eo.topic_matches(p, t) AS matches
  FROM (VALUES ('orders.created', 'orders.created'), ('orders.created', 'orders.created.x'),
               ('orders.*', 'orders.paid'), ('orders.*', 'orders.'), ('orders.*', 'orders'),
               ('*', 'anything'), ('*', ''), ('a*b', 'a*b'), ('a*b', 'axb'),
               ('orders.*', NULL), (NULL, 'orders.paid')) AS v(p, t);
-- The relay routes with the same rule: a message to 'orders' (no dot)
-- is unrouted for a subscription to 'orders.*'.
SELECT eo.create_destination('m', 'notify');
SELECT eo.subscribe('orders.*', 'm');
SELECT eo.publish('orders', '{}'::jsonb) IS NOT NULL AS published,
       eo.publish('orders.x', '{}'::jsonb) IS NOT NULL AS published;
SELECT eo.relay_run() AS routed;
SELECT topic, destinations FROM eo.message_log ORDER BY seq;
DROP EXTENSION eo_processing;
DROP ROLE regress_eo_d_app;
