-- Bad input: a clear error with a SQLSTATE, and nothing written.
CREATE EXTENSION eo_processing;
\set VERBOSITY sqlstate
\set ON_ERROR_STOP 0

-- NULL and empty ids and names
SELECT eo.process(NULL);
SELECT eo.process('');
SELECT eo.process('m', NULL);
SELECT eo.process('m', '');
SELECT eo.process_seq(NULL, 1);
SELECT eo.process_seq('', 1);
SELECT eo.process_seq('p', NULL);
SELECT eo.process_seq('p', 1, NULL);
SELECT eo.set_result(NULL, '{}');
SELECT eo.set_result('m', '{}', NULL);
SELECT eo.result(NULL);
SELECT eo.result('m', '');
SELECT eo.forget(NULL);
SELECT eo.forget('m', NULL);

-- Over-long values (limits: msg_id 1024 bytes, names 256 bytes)
SELECT eo.process(repeat('x', 1025));
SELECT eo.process(repeat('é', 513));
SELECT eo.process('m', repeat('c', 257));
SELECT eo.process_seq(repeat('p', 257), 1);

-- Negative sequence, bad retention
SELECT eo.process_seq('p', -1);
SELECT eo.process('m', 'default', interval '-1 day');
SELECT eo.process('m', 'default', interval '0');
SELECT eo.process('m', 'default', interval '1 month -40 days');
SELECT eo.process('m', 'default', '-infinity');
SELECT eo.process('m', 'default', 'forever');
SELECT eo.process('m', 'default', interval '300000 years');
SET eo.dedup_retention = 0;
SET eo.dedup_retention = -2;
SET eo.dedup_retention = 'soon';
SET eo.dedup_retention = '-1 day';
SET eo.dedup_retention = '1001 years';

-- set_result on a message that was never processed
SELECT eo.set_result('never', '{}');

-- Writers refuse read-only transactions (as on a hot standby); readers work.
BEGIN READ ONLY;
SELECT eo.process('ro');
ROLLBACK;
BEGIN READ ONLY;
SELECT eo.process('ro', 'c', 'infinity');
ROLLBACK;
BEGIN READ ONLY;
SELECT eo.process_seq('ro', 1);
ROLLBACK;
BEGIN READ ONLY;
SELECT eo.set_result('ro', '{}');
ROLLBACK;
BEGIN READ ONLY;
SELECT eo.forget('ro');
ROLLBACK;
BEGIN READ ONLY;
SELECT eo.result('ro') IS NULL AS result_readable;
ROLLBACK;

-- Nothing above was written.
\set VERBOSITY default
SELECT count(*) AS inbox_rows FROM eo.inbox;
SELECT count(*) AS seq_rows FROM eo.producer_seq;

-- Full messages for the documented errors.
SELECT eo.process(repeat('x', 1025));
SELECT eo.process_seq('p', -5);
SELECT eo.process('m', retain => interval '-1 hour');
SELECT eo.set_result('never', '{}', 'billing');
SELECT eo.process(NULL);
BEGIN READ ONLY;
SELECT eo.process('ro');
ROLLBACK;

DROP EXTENSION eo_processing;
