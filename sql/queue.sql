-- Queue destinations: options, eo.read / eo.ack / eo.nack, per-key order,
-- attempts and dead messages, eo.redrive, eo.stats, privileges and bad
-- input.  The relay is off: eo.relay_run() routes in this session.  Lease
-- numbers depend on nothing but this file (a fresh database): a lease is
-- its message's qseq (1, 2, ... in the order routed) times 65,536 plus the
-- attempt (1, 2, ... for each message), as pg_temp.lease() computes them
-- below.
CREATE EXTENSION eo_processing;
CREATE FUNCTION pg_temp.lease(qseq bigint, attempt integer) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT (qseq << 16) + attempt $$;
CREATE ROLE regress_eo_q_reader;
CREATE ROLE regress_eo_q_member;
CREATE ROLE regress_eo_q_other;
GRANT regress_eo_q_reader TO regress_eo_q_member;
SELECT eo.grant_consumer('regress_eo_q_reader');
SELECT eo.grant_consumer('regress_eo_q_other');

-- Options.
SELECT eo.create_destination('q', 'queue',
    '{"channel": "q_wake", "visibility_timeout": "1min", "max_attempts": 2,
      "consumers": ["regress_eo_q_reader"]}');
SELECT eo.create_destination('n', 'notify');
SELECT eo.subscribe('jobs.*', 'q');
SELECT eo.subscribe('jobs.*', 'n');
\set VERBOSITY default
SELECT eo.create_destination('bad', 'queue', '{"channel": ""}');
SELECT eo.create_destination('bad', 'queue', '{"visibility_timeout": "-1s"}');
SELECT eo.create_destination('bad', 'queue', '{"visibility_timeout": "0"}');
SELECT eo.create_destination('bad', 'queue', '{"visibility_timeout": "400 days"}');
SELECT eo.create_destination('bad', 'queue', '{"visibility_timeout": 30}');
SELECT eo.create_destination('bad', 'queue', '{"consumers": "regress_eo_q_reader"}');
SELECT eo.create_destination('bad', 'queue', '{"consumers": [1]}');
SELECT eo.create_destination('bad', 'queue', '{"consumers": ["regress_eo_q_missing"]}');
SELECT eo.create_destination('bad', 'queue', '{"concurrency": 4}');
SELECT eo.alter_destination('q', '{"retry_delays": ["-1s"]}', replace => false);
SELECT count(*) AS bad_created FROM eo.destination WHERE name = 'bad';

-- Two keys, four messages each (k1: n = 1, 3, 5, 7; k0: n = 2, 4, 6, 8),
-- and two without a key.
SELECT count(eo.publish('jobs.run', jsonb_build_object('n', g), 'k' || (g % 2)))
  FROM generate_series(1, 8) AS g;
SELECT count(eo.publish('jobs.run', 'plain ' || g)) FROM generate_series(1, 2) AS g;
SELECT eo.relay_run() AS routed;
SELECT destination, ready, leased, retrying, dead, acked_total, delivered_total
  FROM eo.stats ORDER BY destination;

-- One message per key at a time (the first of each), and both without.
SELECT lease, topic, key, payload, payload_text, attempt FROM eo.read('q');
-- Nothing more while the heads are leased.
SELECT count(*) AS more FROM eo.read('q');
SELECT ready, leased FROM eo.stats WHERE destination = 'q';

-- Ack in the caller's transaction: rolled back, the lease is still
-- current; committed, the next message of the key becomes readable.
BEGIN;
SELECT eo.ack('q', ARRAY[pg_temp.lease(1, 1)]);
ROLLBACK;
SELECT eo.ack('q', ARRAY[pg_temp.lease(1, 1), pg_temp.lease(1, 1), pg_temp.lease(9, 1), pg_temp.lease(10, 1)]) AS acked;
SELECT lease, key, payload, attempt FROM eo.read('q');

-- A lease that is no longer current raises QL001 and changes nothing,
-- even when the other leases of the call are current.
\set VERBOSITY sqlstate
SELECT eo.ack('q', ARRAY[pg_temp.lease(1, 1)]);
SELECT eo.ack('q', ARRAY[pg_temp.lease(2, 1), pg_temp.lease(1, 1)]);
SELECT eo.nack('q', ARRAY[pg_temp.lease(9, 1)]);
\set VERBOSITY default
SELECT eo.ack('q', ARRAY[pg_temp.lease(1, 1)]);
-- The error names the stale lease, not a current one of the same call.
SELECT eo.nack('q', ARRAY[pg_temp.lease(2, 1), pg_temp.lease(1, 1)]);
SELECT eo.ack('q', ARRAY[pg_temp.lease(2, 1), pg_temp.lease(1, 1)]);
SELECT ready, leased, acked_total FROM eo.stats WHERE destination = 'q';

-- Read and nack rolled back: the lease is still the current one.
BEGIN;
SELECT eo.nack('q', ARRAY[pg_temp.lease(2, 1)]) AS given_back;
SELECT lease, key, payload, attempt FROM eo.read('q');
ROLLBACK;
SELECT ready, leased FROM eo.stats WHERE destination = 'q';

-- Nack for later: k0's next message waits behind its first, retrying.
SELECT eo.nack('q', ARRAY[pg_temp.lease(2, 1)], '1 hour') AS back_later;
SELECT count(*) AS readable FROM eo.read('q');
SELECT ready, leased, retrying FROM eo.stats WHERE destination = 'q';
-- Nack with the default schedule (0): readable again at once.
SELECT eo.nack('q', ARRAY[pg_temp.lease(3, 1)]) AS back_now;

-- An expired lease whose message nobody took since may still be acked;
-- once the message was read again it is stale.  (A lease of one
-- microsecond has expired by the next statement.)
SELECT lease, key, payload, attempt FROM eo.read('q', 10, '1 microsecond');
SELECT eo.ack('q', ARRAY[pg_temp.lease(3, 2)]) AS expired_but_untouched;
SELECT lease, key, payload, attempt FROM eo.read('q', 10, '1 microsecond');
SELECT lease, key, payload, attempt FROM eo.read('q');
\set VERBOSITY sqlstate
SELECT eo.ack('q', ARRAY[pg_temp.lease(5, 1)]);
\set VERBOSITY default

-- max_attempts 2: given back after its second attempt, a message is dead;
-- it no longer holds its key, and eo.redrive() enqueues it again, at the
-- back of the queue: a new qseq (11), so leases of its own, and its
-- attempts start again at 1.
SELECT eo.nack('q', ARRAY[pg_temp.lease(5, 2)]) AS nacked;
SELECT destination, ready, leased, retrying, dead FROM eo.stats WHERE destination = 'q';
SELECT lease, key, payload, attempt FROM eo.read('q');
SELECT eo.ack('q', ARRAY[pg_temp.lease(7, 1)]) AS acked;
SELECT eo.redrive('q') AS redriven;
SELECT destination, ready, leased, retrying, dead FROM eo.stats WHERE destination = 'q';
SELECT lease, key, payload, attempt FROM eo.read('q');
SELECT eo.ack('q', ARRAY[pg_temp.lease(11, 1)]) AS acked;

-- Privileges: a consumer (or a member of one) reads; another role gets
-- 42501 and sees nothing; the tables stay out of reach.
SELECT count(eo.publish('jobs.run', jsonb_build_object('n', g))) FROM generate_series(9, 10) AS g;
SELECT eo.relay_run() AS routed;
\set VERBOSITY sqlstate
SET ROLE regress_eo_q_other;
SELECT * FROM eo.read('q');
SELECT eo.ack('q', '{12}');
SELECT eo.nack('q', '{12}');
SELECT * FROM eo.queue_message;
SELECT * FROM eo.queue_ack;
SELECT nextval('eo.queue_message_qseq_seq');
RESET ROLE;
SET ROLE regress_eo_q_member;
SELECT lease AS member_lease, payload FROM eo.read('q', 1) \gset
SELECT :'payload' AS member_read;
SELECT * FROM eo.queue_message;
SELECT eo.ack('q', ARRAY[:member_lease]) AS member_acked;
RESET ROLE;
SET ROLE regress_eo_q_other;
SELECT * FROM eo.read('q');
RESET ROLE;
SELECT eo.alter_destination('q', '{"consumers": ["regress_eo_q_reader", "regress_eo_q_other"]}',
                            replace => false);
SET ROLE regress_eo_q_other;
SELECT lease AS other_lease, payload FROM eo.read('q', 1, '1 minute') \gset
SELECT :'payload' AS other_read;
SELECT eo.nack('q', ARRAY[:other_lease], '1 hour') AS other_nacked;
RESET ROLE;
SELECT destination, ready, leased, retrying, dead, acked_total FROM eo.stats WHERE destination = 'q';

-- Bad input: a clear error, nothing changes.
\set VERBOSITY default
CREATE TEMP TABLE before AS
    SELECT qseq, attempt, lease, visible_at, dead_at FROM eo.queue_message;
SELECT * FROM eo.read(NULL);
SELECT * FROM eo.read('nowhere');
SELECT * FROM eo.read('n');
SELECT * FROM eo.read('q', 0);
SELECT * FROM eo.read('q', 10001);
SELECT * FROM eo.read('q', NULL);
SELECT * FROM eo.read('q', 1, '-1s');
SELECT * FROM eo.read('q', 1, '0');
SELECT * FROM eo.read('q', 1, '366 days');
SELECT eo.ack('q', NULL);
SELECT eo.ack('q', '{1, NULL}');
SELECT eo.ack('q', '{{1}, {2}}');
SELECT eo.ack('nowhere', '{1}');
SELECT eo.ack('n', '{1}');
SELECT eo.nack('q', '{1}', '-1s');
SELECT eo.ack('q', '{}') AS nothing, eo.nack('q', '{}') AS nothing_either;
SELECT count(*) AS changed
  FROM (SELECT qseq, attempt, lease, visible_at, dead_at FROM eo.queue_message
        EXCEPT SELECT * FROM before) AS x;

-- A queue with unacknowledged messages is dropped only with force.
SELECT eo.unsubscribe('jobs.*', 'q');
SELECT eo.drop_destination('q');
SELECT eo.drop_destination('q', force => true);
SELECT count(*) AS left_behind FROM eo.queue_message;

-- DROP EXTENSION counts what waits in queues: of four messages, one is
-- leased, one given back after its only attempt (dead), two are ready.
SELECT eo.create_destination('last', 'queue', '{"max_attempts": 1, "visibility_timeout": "1h"}');
SELECT eo.subscribe('last.*', 'last');
SELECT count(eo.publish('last.job', jsonb_build_object('n', g))) FROM generate_series(1, 4) AS g;
SELECT eo.relay_run() AS routed;
SELECT count(*) AS read FROM eo.read('last', 1);
SELECT lease AS last_lease FROM eo.read('last', 1) \gset
SELECT eo.nack('last', ARRAY[:last_lease]::bigint[]) AS given_back;
SELECT ready, leased, dead FROM eo.stats WHERE destination = 'last';
DROP EXTENSION eo_processing;

-- With objects older than the library (before ALTER EXTENSION UPDATE) a
-- queue cannot be created: the relay could not enqueue into it.
\set VERBOSITY terse
CREATE EXTENSION eo_processing VERSION '0.5.0';
SELECT eo.create_destination('early', 'queue');
ALTER EXTENSION eo_processing UPDATE;
SELECT eo.create_destination('early', 'queue');
SELECT kind FROM eo.destination;
DROP EXTENSION eo_processing;

-- eo.read() starts where this session saw the first alive message of a
-- queue (src/queue_scan.c).  A queue of an extension created again has
-- the same id and its qseq starts at 1 again: nothing may be skipped.
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('f', 'queue');
SELECT eo.subscribe('f.*', 'f');
SELECT count(eo.publish('f.job', jsonb_build_object('n', g))) FROM generate_series(1, 5) AS g;
SELECT eo.relay_run() AS routed;
SELECT eo.ack('f', ARRAY(SELECT lease FROM eo.read('f', 5))) AS acked;
SELECT count(*) AS none_left FROM eo.read('f');
SELECT eo.publish('f.job', '{"n": 6}') IS NOT NULL AS published, eo.relay_run() AS routed;
SELECT eo.ack('f', ARRAY(SELECT lease FROM eo.read('f'))) AS acked;
SELECT count(*) AS none_left FROM eo.read('f');
DROP EXTENSION eo_processing;
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('f', 'queue');
SELECT eo.subscribe('f.*', 'f');
SELECT count(eo.publish('f.job', jsonb_build_object('n', g))) FROM generate_series(1, 3) AS g;
SELECT eo.relay_run() AS routed;
SELECT (SELECT id FROM eo.destination WHERE name = 'f') AS same_id,
       count(*) AS read_again FROM eo.read('f');
DROP EXTENSION eo_processing;

-- A reader's own acknowledgement hides its message from its own scan; if
-- the transaction (or a savepoint) rolls back, the message is alive again
-- and its key held: a later read of this session must still see it.  (k1
-- is leased; its acknowledgement and a read are rolled back twice, which
-- would have moved the floor past k1 and let k2 out while k1's lease is
-- current.)
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('g', 'queue', '{"visibility_timeout": "1h"}');
SELECT eo.subscribe('g.*', 'g');
SELECT eo.publish('g.job', '{"n": 1}'::jsonb, key => 'k') IS NOT NULL AS k1,
       eo.publish('g.job', '{"n": 2}'::jsonb, key => 'k') IS NOT NULL AS k2;
SELECT eo.relay_run() AS routed;
SELECT lease AS g_lease, payload FROM eo.read('g', 1) \gset
SELECT :'payload' AS leased, count(*) AS held_back FROM eo.read('g');
BEGIN;
SELECT eo.ack('g', ARRAY[:g_lease]::bigint[]) AS acked;
SELECT payload AS next_in_this_transaction FROM eo.read('g');
ROLLBACK;
BEGIN;
SELECT eo.ack('g', ARRAY[:g_lease]::bigint[]) AS acked;
SELECT count(*) AS read FROM eo.read('g');
ROLLBACK;
SELECT count(*) AS still_held_back FROM eo.read('g');
BEGIN;
SAVEPOINT s;
SELECT eo.ack('g', ARRAY[:g_lease]::bigint[]) AS acked;
SELECT count(*) AS read FROM eo.read('g');
ROLLBACK TO s;
SAVEPOINT s;
SELECT eo.ack('g', ARRAY[:g_lease]::bigint[]) AS acked;
SELECT count(*) AS read FROM eo.read('g');
ROLLBACK TO s;
COMMIT;
SELECT count(*) AS still_held_back FROM eo.read('g');
SELECT eo.ack('g', ARRAY[:g_lease]::bigint[]) AS acked;
SELECT payload AS now_readable FROM eo.read('g');

-- One call returns its messages oldest first, also when a message dying
-- in it frees the next of its key, older than one already leased (o1 dies
-- at its second hand-out, which lets o2 out in a second round, after o3).
SELECT eo.create_destination('o', 'queue', '{"max_attempts": 1}');
SELECT eo.subscribe('o.*', 'o');
SELECT eo.publish('o.job', '{"n": 1}'::jsonb, key => 'k') IS NOT NULL AS o1,
       eo.publish('o.job', '{"n": 2}'::jsonb, key => 'k') IS NOT NULL AS o2,
       eo.publish('o.job', '{"n": 3}'::jsonb) IS NOT NULL AS o3;
SELECT eo.relay_run() AS routed;
SELECT payload FROM eo.read('o', 1, '1 microsecond');
SELECT payload, attempt FROM eo.read('o');
SELECT dead FROM eo.stats WHERE destination = 'o';
DROP EXTENSION eo_processing;
\set VERBOSITY default
DROP ROLE regress_eo_q_member;
DROP ROLE regress_eo_q_reader;
DROP ROLE regress_eo_q_other;
