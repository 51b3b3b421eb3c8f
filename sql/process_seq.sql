-- eo.process_seq: deduplication by producer sequence number.
CREATE EXTENSION eo_processing;

SELECT eo.process_seq('p1', 1) AS s1, eo.process_seq('p1', 1) AS s1_again,
       eo.process_seq('p1', 2) AS s2;
-- Gaps are allowed; anything at or below the mark is a duplicate.
SELECT eo.process_seq('p1', 10) AS s10, eo.process_seq('p1', 5) AS late_s5,
       eo.process_seq('p1', 11) AS s11;
-- Sequence 0 is a valid first number.
SELECT eo.process_seq('p0', 0) AS zero, eo.process_seq('p0', 0) AS zero_again;
-- Producers and consumers are independent.
SELECT eo.process_seq('p2', 1) AS other_producer,
       eo.process_seq('p1', 1, 'other') AS other_consumer;
SELECT consumer, producer, last_seq FROM eo.producer_seq
 ORDER BY consumer, producer;

-- The mark moves with the caller's transaction.
BEGIN;
SELECT eo.process_seq('p1', 12);
ROLLBACK;
SELECT last_seq AS after_rollback FROM eo.producer_seq
 WHERE consumer = 'default' AND producer = 'p1';
BEGIN;
SAVEPOINT a;
SELECT eo.process_seq('p1', 12);
ROLLBACK TO SAVEPOINT a;
SELECT eo.process_seq('p1', 12) AS after_savepoint_rollback;
COMMIT;

-- One row per producer however many messages.
SELECT count(*) FILTER (WHERE eo.process_seq('bulk', g)) AS accepted
  FROM generate_series(1, 1000) AS g;
SELECT count(*) AS rows_for_bulk FROM eo.producer_seq WHERE producer = 'bulk';
SELECT last_seq FROM eo.producer_seq WHERE producer = 'bulk';

-- Largest bigint.
SELECT eo.process_seq('big', 9223372036854775807) AS max,
       eo.process_seq('big', 9223372036854775807) AS max_again;

-- Duplicates write nothing.
BEGIN;
SELECT eo.process_seq('p1', 3) AS duplicate;
SELECT pg_current_xact_id_if_assigned() IS NULL AS no_xid;
COMMIT;

DROP EXTENSION eo_processing;
