-- Data for test/bench/reconcile_bench.sh (run once in the throwaway
-- cluster, with psql variables rows and every).
--
-- payments: our side, in id order.  settlement: the provider's report of
-- the same payments, in random order (as a file loaded from elsewhere
-- is), with a column of its own.  Neither has a unique index on the key:
-- both may hold duplicates.  Every :every-th id carries one planted
-- problem, in turn:
--   id % (5 * every) = 1 * every   missing_remote   (deleted from settlement)
--                      2 * every   missing_local    (deleted from payments)
--                      3 * every   mismatch         (amount differs)
--                      4 * every   duplicate_local  (a second payments row)
--                      0           duplicate_remote (a second settlement row)
-- so each kind occurs rows / (5 * every) times.
-- payments_pk and settlement_pk: the same rows without the duplicates,
-- each with a primary key on id.
CREATE EXTENSION eo_processing;

CREATE TABLE payments (
    id         bigint,
    amount     numeric(12,2),
    currency   text,
    status     text,
    customer   text,
    created_at timestamptz
);
CREATE TABLE settlement (
    id         bigint,
    amount     numeric(12,2),
    currency   text,
    status     text,
    customer   text,
    created_at timestamptz,
    fee        numeric(12,2)
);

INSERT INTO payments
SELECT g, (g % 100000) / 100.0, CASE WHEN g % 7 = 0 THEN 'USD' ELSE 'EUR' END, 'paid',
       'customer-' || (g % 50000), timestamptz '2024-01-01' + g * interval '1 second'
  FROM generate_series(1, :rows) AS g;
INSERT INTO settlement
SELECT id, amount, currency, status, customer, created_at, round(amount * 0.015, 2)
  FROM payments ORDER BY random();

DELETE FROM settlement WHERE id % (5 * :every) = 1 * :every;
DELETE FROM payments WHERE id % (5 * :every) = 2 * :every;
UPDATE settlement SET amount = amount + 0.01 WHERE id % (5 * :every) = 3 * :every;
INSERT INTO payments SELECT * FROM payments WHERE id % (5 * :every) = 4 * :every;
INSERT INTO settlement SELECT * FROM settlement WHERE id % (5 * :every) = 0;

CREATE TABLE payments_pk AS SELECT DISTINCT ON (id) * FROM payments ORDER BY id;
ALTER TABLE payments_pk ADD PRIMARY KEY (id);
CREATE TABLE settlement_pk AS SELECT DISTINCT ON (id) * FROM settlement ORDER BY id, random();
ALTER TABLE settlement_pk ADD PRIMARY KEY (id);

VACUUM (FREEZE, ANALYZE) payments, settlement, payments_pk, settlement_pk;
