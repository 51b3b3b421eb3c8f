-- The grant helpers (eo.grant_consumer, eo.grant_application,
-- eo.grant_operator): what each lets a role do, and what it still refuses;
-- and who may read a message with eo.message().
CREATE EXTENSION eo_processing;
CREATE ROLE regress_eo_g_consumer;
CREATE ROLE regress_eo_g_app;
CREATE ROLE regress_eo_g_ops;
CREATE ROLE regress_eo_g_member IN ROLE regress_eo_g_app;
CREATE ROLE regress_eo_g_other;

-- Bad input: nothing granted.
SELECT eo.grant_application(NULL);
SELECT eo.grant_operator(NULL);
SELECT eo.grant_consumer(NULL);
SELECT eo.grant_application('regress_eo_no_such_role');

SELECT eo.grant_consumer('regress_eo_g_consumer');
SELECT eo.grant_application('regress_eo_g_app');
SELECT eo.grant_application('regress_eo_g_other');
SELECT eo.grant_operator('regress_eo_g_ops');
-- Granting twice is harmless.
SELECT eo.grant_operator('regress_eo_g_ops');

-- What each role may do, object by object (the helpers grant nothing else).
SELECT r.rolname, p.oid::regprocedure::text AS function
  FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'eo'
  CROSS JOIN pg_roles r
 WHERE r.rolname IN ('regress_eo_g_consumer', 'regress_eo_g_app', 'regress_eo_g_ops')
   AND has_function_privilege(r.oid, p.oid, 'EXECUTE')
 ORDER BY 1, 2;
SELECT r.rolname, c.oid::regclass::text AS relation
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'eo'
  CROSS JOIN pg_roles r
 WHERE r.rolname IN ('regress_eo_g_consumer', 'regress_eo_g_app', 'regress_eo_g_ops')
   AND c.relkind IN ('r', 'p', 'v')
   AND has_table_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
 ORDER BY 1, 2;

----------------------------------------------------------------------
-- A consumer deduplicates and stores results; it does not publish.
----------------------------------------------------------------------
SET ROLE regress_eo_g_consumer;
SELECT eo.process('g-1') AS first, eo.process('g-1') AS again;
SELECT eo.process('g-2', retain => 'infinity') AS forever;
SELECT eo.process('g-3', retain => interval '2 days') AS two_days;
SELECT eo.process_seq('producer', 1) AS seq_1;
SELECT eo.set_result('g-1', '{"ok": true}');
SELECT eo.result('g-1');
\set VERBOSITY sqlstate
SELECT eo.publish('t', '{}'::jsonb);
SELECT eo.forget('g-1');
SELECT count(*) FROM eo.inbox;
\set VERBOSITY default
RESET ROLE;

----------------------------------------------------------------------
-- An application also publishes, reads its messages, uses keys.
----------------------------------------------------------------------
SET ROLE regress_eo_g_app;
SELECT eo.process('a-1') AS processed;
SELECT eo.publish('orders.created', '{"n": 1}'::jsonb, 'order-1') AS app_msg \gset
SELECT eo.message(:'app_msg') -> 'payload' AS own_message;
SELECT (eo.key_begin('key-1', '{"amount": 5}')).state AS key_state;
\set VERBOSITY sqlstate
SELECT eo.purge_expired();
SELECT count(*) FROM eo.stats;
SELECT eo.create_destination('mine', 'notify');
SELECT count(*) FROM eo.message_log;
\set VERBOSITY default
RESET ROLE;

----------------------------------------------------------------------
-- Who reads a message: its publisher's role and members, operators.
----------------------------------------------------------------------
SET ROLE regress_eo_g_member;
SELECT eo.message(:'app_msg') -> 'payload' AS member_reads;
RESET ROLE;
-- (The error names the message id: only its SQLSTATE is shown here.)
\set VERBOSITY sqlstate
SET ROLE regress_eo_g_other;
SELECT eo.message(:'app_msg') -> 'payload' AS other_app_reads;
RESET ROLE;
\set VERBOSITY default
SET ROLE regress_eo_g_ops;
SELECT eo.message(:'app_msg') -> 'payload' AS operator_reads;
RESET ROLE;
-- Still so once the relay has moved it to the message log.
SELECT eo.relay_run() AS routed;
\set VERBOSITY sqlstate
SET ROLE regress_eo_g_other;
SELECT eo.message(:'app_msg') -> 'payload' AS other_app_reads_routed;
RESET ROLE;
\set VERBOSITY default
SET ROLE regress_eo_g_ops;
SELECT eo.message(:'app_msg') -> 'payload' AS operator_reads_routed;
RESET ROLE;
-- An unknown id is NULL for everybody (nothing to protect).
SET ROLE regress_eo_g_other;
SELECT eo.message('00000000-0000-7000-8000-000000000000') IS NULL AS unknown_is_null;
RESET ROLE;

----------------------------------------------------------------------
-- An operator watches and purges; it neither processes nor publishes.
----------------------------------------------------------------------
SET ROLE regress_eo_g_ops;
SELECT count(*) >= 0 AS sees_stats FROM eo.stats;
SELECT count(*) AS unrouted FROM eo.unrouted;
SELECT count(*) AS attempts FROM eo.http_attempt;
SELECT eo.purge_expired() >= 0 AS purges;
SELECT eo.forget('g-1') AS forgot;
\set VERBOSITY sqlstate
SELECT eo.process('o-1');
SELECT eo.publish('t', '{}'::jsonb);
SELECT eo.create_destination('ops', 'notify');
SELECT eo.redrive('nope');
DELETE FROM eo.message_log;
SELECT count(*) FROM eo.delivery;
\set VERBOSITY default
RESET ROLE;

-- The helpers themselves are for the extension's owner.
SET ROLE regress_eo_g_app;
\set VERBOSITY sqlstate
SELECT eo.grant_operator('regress_eo_g_app');
\set VERBOSITY default
RESET ROLE;

DROP EXTENSION eo_processing;
DROP ROLE regress_eo_g_consumer, regress_eo_g_member, regress_eo_g_app,
    regress_eo_g_ops, regress_eo_g_other;
