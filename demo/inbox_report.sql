-- demo/inbox_report.sql: what happened, and whether it was exactly once.
\set ON_ERROR_STOP 1
\pset footer off
\echo
\echo 'Deliveries (at least once):'
SELECT count(*) AS deliveries,
       count(DISTINCT msg_id) AS distinct_messages,
       count(*) - count(DISTINCT msg_id) AS extra_copies,
       count(*) FILTER (WHERE outcome = 'duplicate') AS duplicates_absorbed,
       count(*) FILTER (WHERE outcome LIKE 'failed%') AS failed_and_rolled_back,
       count(*) FILTER (WHERE outcome = 'applied') AS applied
  FROM demo.deliveries;
\echo 'Effects (exactly once):'
SELECT (SELECT count(*) FROM demo.sent) AS messages_sent,
       count(DISTINCT l.msg_id) AS messages_applied,
       count(*) - count(DISTINCT l.msg_id) AS double_effects,
       (SELECT count(*) FROM demo.sent s
         WHERE NOT EXISTS (SELECT 1 FROM demo.ledger x WHERE x.msg_id = s.msg_id)) AS lost_effects,
       (SELECT sum(balance) FROM demo.accounts) = (SELECT sum(amount) FROM demo.sent) AS balances_match
  FROM demo.ledger l;
\echo 'Idempotent producer (eo.process_seq): sequence numbers 1..50 sent with resends:'
SELECT count(*) AS sent,
       count(*) FILTER (WHERE eo.process_seq('sensor-7', seq, 'demo')) AS accepted,
       count(DISTINCT seq) AS distinct_sequence_numbers
  FROM (SELECT g AS seq FROM generate_series(1, 50) AS g
        UNION ALL SELECT g FROM generate_series(1, 50, 3) AS g
        ORDER BY 1) AS s;
-- Fail (psql exits non-zero) if any message took effect twice or never.
DO $$
DECLARE
    doubles bigint := (SELECT count(*) - count(DISTINCT msg_id) FROM demo.ledger);
    lost bigint := (SELECT count(*) FROM demo.sent s
                     WHERE NOT EXISTS (SELECT 1 FROM demo.ledger l WHERE l.msg_id = s.msg_id));
BEGIN
    IF doubles <> 0 OR lost <> 0 THEN
        RAISE EXCEPTION 'exactly-once violated: % double effects, % lost effects', doubles, lost;
    END IF;
END $$;
\echo 'verdict: every message took effect exactly once'
