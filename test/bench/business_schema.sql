-- The part of the schema that test/bench/setup.sql and outbox_setup.sql
-- share (included by both with \ir).
CREATE EXTENSION eo_processing;

-- The "business transaction": move money on an account, write a ledger line.
CREATE TABLE accounts (
    id      int PRIMARY KEY,
    balance bigint NOT NULL DEFAULT 0
);
INSERT INTO accounts(id) SELECT g FROM generate_series(1, 100000) AS g;

CREATE TABLE ledger (
    account_id int NOT NULL,
    delta      int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
