-- Schema for test/bench/outbox_bench.sh (run once in the throwaway cluster).
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

-- What a user writes by hand for a transactional outbox.
CREATE TABLE my_outbox (
    id         bigserial PRIMARY KEY,
    topic      text,
    payload    jsonb,
    created_at timestamptz DEFAULT now()
);

-- The relay delivers every bench.* message as a NOTIFY on channel "bench".
SELECT eo.create_destination('n', 'notify', '{"channel": "bench"}');
SELECT eo.subscribe('bench.*', 'n');

VACUUM ANALYZE accounts;

-- The LISTEN client's own role (no privileges needed to LISTEN).
CREATE ROLE bench_listener LOGIN;
