-- eo.process, eo.set_result, eo.result, eo.forget, eo.purge_expired:
-- behaviour within one session.
CREATE EXTENSION eo_processing;

-- First time true, then false; consumers are independent namespaces.
SELECT eo.process('m-1') AS first, eo.process('m-1') AS again;
SELECT eo.process('m-1', 'billing') AS other_consumer;
SELECT consumer, msg_id, result IS NULL AS no_result
  FROM eo.inbox ORDER BY consumer, msg_id;

-- The record belongs to the caller's transaction.
BEGIN;
SELECT eo.process('m-2');
ROLLBACK;
SELECT count(*) AS after_rollback FROM eo.inbox WHERE msg_id = 'm-2';
SELECT eo.process('m-2') AS processed_after_rollback;

-- Savepoints: the record goes away with the savepoint.
BEGIN;
SAVEPOINT s1;
SELECT eo.process('m-3') AS in_savepoint;
ROLLBACK TO SAVEPOINT s1;
SELECT eo.process('m-3') AS after_rollback_to_savepoint;
SAVEPOINT s2;
SELECT eo.process('m-3') AS same_txn_again;
RELEASE SAVEPOINT s2;
COMMIT;
SELECT eo.process('m-3') AS committed;

-- Calling it twice in one statement, and over many rows of a query.
SELECT eo.process('m-4') AS a, eo.process('m-4') AS b;
SELECT g % 3 AS id, eo.process('row-' || (g % 3)) AS first
  FROM generate_series(0, 5) AS g ORDER BY g;

-- Typical use: work only when new, and remember the answer.
CREATE TABLE payments (msg_id text PRIMARY KEY, amount int);
CREATE FUNCTION handle(id text, amount int) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF eo.process(id, 'payments') THEN
        INSERT INTO payments VALUES (id, amount);
        PERFORM eo.set_result(id, jsonb_build_object('charged', amount), 'payments');
    END IF;
    RETURN eo.result(id, 'payments');
END $$;
SELECT handle('pay-1', 100) AS first_call;
SELECT handle('pay-1', 100) AS duplicate_returns_first_result;
SELECT handle('pay-1', 999) AS still_first_result;
SELECT * FROM payments;

-- set_result replaces, NULL clears; result of unknown ids is NULL.
SELECT eo.set_result('m-1', '{"v": 2}');
SELECT eo.result('m-1');
SELECT eo.set_result('m-1', NULL);
SELECT eo.result('m-1') IS NULL AS cleared;
SELECT eo.result('never-seen') IS NULL AS unknown;
SELECT eo.result('m-1', 'nobody') IS NULL AS unknown_consumer;

-- Retention: explicit interval, 'infinity', and the GUC default.
SELECT eo.process('r-1', 'ret', interval '2 hours');
SELECT eo.process('r-2', 'ret', 'infinity');
SELECT eo.process('r-3', 'ret', '90 minutes');
SET eo.dedup_retention = '1d';
SELECT eo.process('r-4', 'ret');
SET eo.dedup_retention = -1;
SELECT eo.process('r-5', 'ret');
RESET eo.dedup_retention;
SELECT eo.process('r-6', 'ret');
SELECT msg_id, CASE WHEN expires_at = 'infinity' THEN 'forever'
            ELSE (expires_at - processed_at)::text END AS remembered_for
  FROM eo.inbox WHERE consumer = 'ret' ORDER BY msg_id;
SHOW eo.dedup_retention;

-- Every spelling of the call finds the right overload: named arguments
-- with or without consumer, untyped literals (text: 'infinity' works),
-- typed intervals, NULL (the default retention), prepared parameters.
SELECT eo.process('n-1', retain => 'infinity') AS named_infinity,
       eo.process('n-2', retain => '2 days') AS named_text,
       eo.process('n-3', retain => interval '3 hours') AS named_interval,
       eo.process('n-4', retain => NULL) AS named_null,
       eo.process('n-5', consumer => 'named', retain => 'infinity') AS both_named,
       eo.process('n-6', retain => interval '1 hour', consumer => 'named') AS both_named_interval,
       eo.process('n-7', consumer => 'named') AS consumer_only,
       eo.process('n-8', 'named', NULL) AS positional_null;
PREPARE by_interval(text, text, interval) AS SELECT eo.process($1, $2, $3);
PREPARE by_text(text, text, text) AS SELECT eo.process($1, $2, $3);
PREPARE by_unknown AS SELECT eo.process($1, $2, $3);
EXECUTE by_interval('n-9', 'named', '5 hours');
EXECUTE by_text('n-10', 'named', 'infinity');
EXECUTE by_unknown('n-11', 'named', '6 hours');
SELECT consumer, msg_id, CASE WHEN expires_at = 'infinity' THEN 'forever'
            ELSE (expires_at - processed_at)::text END AS remembered_for
  FROM eo.inbox WHERE msg_id LIKE 'n-%' ORDER BY consumer, length(msg_id), msg_id;
-- Duplicates through another overload are duplicates.
SELECT eo.process('n-1', 'default', interval '1 hour') AS n1_again,
       eo.process('n-3') AS n3_again;
DEALLOCATE by_interval;
DEALLOCATE by_text;
DEALLOCATE by_unknown;

-- eo.dedup_retention takes what retain takes: any interval, and 'infinity';
-- and still every value it took as a number of seconds: a plain number
-- (seconds), a number with a unit ('7d', '3600s', '90min'), -1 (forever).
-- Day and month parts are calendar arithmetic, as for retain (UTC here, so
-- that a day is always 24 hours).
SET TIME ZONE 'UTC';
SET eo.dedup_retention = '2 days';
SHOW eo.dedup_retention;
SET eo.dedup_retention = '1 week';
SHOW eo.dedup_retention;
SET eo.dedup_retention = 'infinity';
SHOW eo.dedup_retention;
RESET eo.dedup_retention;
CREATE FUNCTION process_with_retention(setting text)
RETURNS TABLE (processed_at timestamptz, expires_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('eo.dedup_retention', setting, true);
    PERFORM eo.process('guc: ' || setting, 'guc');
    RETURN QUERY SELECT i.processed_at, i.expires_at FROM eo.inbox AS i
                  WHERE i.consumer = 'guc' AND i.msg_id = 'guc: ' || setting;
END $$;
SELECT v.setting,
       CASE WHEN r.expires_at = 'infinity' THEN 'forever'
            ELSE (r.expires_at - r.processed_at)::text END AS remembered_for,
       r.expires_at = r.processed_at + v.expected AS as_retain_would
  FROM (VALUES ('2 days', interval '2 days'), ('1 week', '7 days'),
               ('36 hours', '36 hours'), ('1 day 2 hours', '1 day 2 hours'),
               ('P1DT12H', '1 day 12 hours'),
               ('7d', '168 hours'), ('3600s', '1 hour'), ('90min', '90 minutes'),
               ('5400', '90 minutes'), ('-1', NULL), ('infinity', NULL),
               (' INFINITY ', NULL))
       AS v(setting, expected),
       LATERAL process_with_retention(v.setting) AS r
 ORDER BY v.setting;
SHOW eo.dedup_retention;
SELECT expires_at = processed_at + interval '1 month' AS a_calendar_month
  FROM process_with_retention('1 month');
SELECT expires_at = processed_at + interval '1000 years' AS longest
  FROM process_with_retention('1000 years');
DROP FUNCTION process_with_retention(text);
RESET TIME ZONE;

-- Bad values: a clear error, and the setting keeps its value.
SET eo.dedup_retention = '36h';
SET eo.dedup_retention = 'soon';
SET eo.dedup_retention = '';
SET eo.dedup_retention = 0;
SET eo.dedup_retention = '0 days';
SET eo.dedup_retention = -2;
SET eo.dedup_retention = '-1 day';
SET eo.dedup_retention = '1 day -2 hours';
SET eo.dedup_retention = '-infinity';
SET eo.dedup_retention = '1001 years';
SHOW eo.dedup_retention;
RESET eo.dedup_retention;

-- Expired records stop deduplicating and are taken over; their result
-- is gone.  (Records are aged by rewriting expires_at.)
SELECT eo.process('old', 'exp');
SELECT eo.set_result('old', '"first run"', 'exp');
UPDATE eo.inbox SET expires_at = now() - interval '1 second'
 WHERE consumer = 'exp';
SELECT eo.result('old', 'exp') IS NULL AS expired_result_hidden;
SELECT eo.process('old', 'exp') AS expired_processes_again;
SELECT eo.process('old', 'exp') AS then_deduplicates;
SELECT eo.result('old', 'exp') IS NULL AS fresh_record_has_no_result;

-- purge_expired removes only expired records, optionally in batches.
SELECT eo.process('p-' || g, 'purge') FROM generate_series(1, 5) AS g \g /dev/null
UPDATE eo.inbox SET expires_at = now() - interval '1 day'
 WHERE consumer = 'purge' AND msg_id <> 'p-5';
SELECT eo.purge_expired(3) AS first_batch;
SELECT eo.purge_expired() AS rest;
SELECT eo.purge_expired() AS nothing_left;
SELECT msg_id FROM eo.inbox WHERE consumer = 'purge';

-- forget: true when a record was deleted; the message is then new again.
SELECT eo.forget('m-1') AS forgotten, eo.forget('m-1') AS already_gone;
SELECT eo.process('m-1') AS processed_again;
BEGIN;
SELECT eo.forget('m-3');
ROLLBACK;
SELECT eo.process('m-3') AS forget_rolled_back;

-- Any text is a valid id: byte-exact, case-sensitive, no trimming.
SELECT eo.process('Case'), eo.process('case'), eo.process(' case'),
       eo.process(E'line\nbreak'), eo.process('ünïcødé ✓'), eo.process(repeat('x', 1024));

-- Duplicates write nothing: no transaction id is assigned.
BEGIN;
SELECT eo.process('m-4') AS duplicate;
SELECT pg_current_xact_id_if_assigned() IS NULL AS no_xid;
COMMIT;

DROP FUNCTION handle(text, int);
DROP TABLE payments;
DROP EXTENSION eo_processing;
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'eo';
