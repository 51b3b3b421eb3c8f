-- Schema for test/bench/inbox_bench.sh (run once in the throwaway cluster).
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

-- What a user writes by hand to deduplicate messages.
CREATE TABLE processed (
    msg_id       text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

VACUUM ANALYZE accounts;
