-- demo/inbox_demo.sql: at-least-once delivery made harmless by eo.process,
-- and what was applied relayed downstream through the transactional outbox.
--
-- A message broker delivers 300 transfer messages to 4 competing workers.
-- Like every real broker it delivers at least once: about 40% of the
-- messages arrive two or three times, often at two workers at the same
-- moment, and some deliveries fail half-way through the work (the worker
-- "crashes" after it started) and are delivered again later.
-- Each worker applies a message in one transaction:
--     IF eo.process(msg_id, 'ledger') THEN <apply the transfer> END IF
-- The report checks that every message took effect exactly once.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS demo CASCADE;
DROP EXTENSION IF EXISTS eo_processing CASCADE;
CREATE EXTENSION eo_processing;
CREATE SCHEMA demo;

CREATE TABLE demo.accounts (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO demo.accounts SELECT g, 0 FROM generate_series(1, 10) AS g;

-- What the producer sent: one row per message.
CREATE TABLE demo.sent (msg_id text PRIMARY KEY, account int, amount int);
INSERT INTO demo.sent
SELECT 'transfer-' || g, 1 + (g * 7) % 10, 1 + (g * 37) % 500
  FROM generate_series(1, 300) AS g;

-- What the broker delivered: every message once, ~40% of them again (some
-- twice more), in an order that spreads copies across the workers; ~5% of
-- the deliveries fail half-way.
CREATE TABLE demo.deliveries (
    n       serial PRIMARY KEY,
    msg_id  text NOT NULL,
    worker  int NOT NULL,
    fails   boolean NOT NULL,
    outcome text
);
SELECT setseed(0.42) \gset
INSERT INTO demo.deliveries (msg_id, worker, fails)
SELECT msg_id, 1 + floor(random() * 4)::int, random() < 0.05
  FROM (SELECT s.msg_id, copy
          FROM demo.sent s,
               generate_series(1, CASE WHEN random() < 0.4 AND s.msg_id IS NOT NULL
                                       THEN 2 + (random() < 0.3)::int ELSE 1 END) AS copy
         ORDER BY random()) AS d;
-- A failed delivery is always delivered again later (at least once).
INSERT INTO demo.deliveries (msg_id, worker, fails)
SELECT msg_id, 1 + (n % 4), false FROM demo.deliveries WHERE fails ORDER BY n;

-- The effect: a ledger line and a balance change, exactly once per message,
-- and an event for the services downstream, published in the same
-- transaction (eo.publish) and relayed after commit as a NOTIFY on channel
-- "ledger", keyed by account so that each account's events stay in order.
CREATE TABLE demo.ledger (msg_id text, account int, amount int);
SELECT eo.create_destination('ledger-feed', 'notify', '{"channel": "ledger"}') \gset
SELECT eo.subscribe('ledger.*', 'ledger-feed') \gset

-- One delivery, in the caller's transaction.
CREATE FUNCTION demo.apply(p_msg_id text, p_fails boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    m demo.sent;
BEGIN
    IF NOT eo.process(p_msg_id, 'ledger') THEN
        RETURN 'duplicate';
    END IF;
    SELECT * INTO m FROM demo.sent WHERE msg_id = p_msg_id;
    INSERT INTO demo.ledger VALUES (m.msg_id, m.account, m.amount);
    UPDATE demo.accounts SET balance = balance + m.amount WHERE id = m.account;
    PERFORM eo.publish('ledger.credited',
                       jsonb_build_object('transfer', m.msg_id, 'account', m.account,
                                          'amount', m.amount),
                       key => 'account-' || m.account);
    IF p_fails THEN
        RAISE EXCEPTION 'worker crashed while applying %', p_msg_id;
    END IF;
    RETURN 'applied';
END $$;

-- A worker: one transaction per delivery, as a consumer of a queue does.
CREATE PROCEDURE demo.run_worker(p_worker int)
LANGUAGE plpgsql AS $$
DECLARE
    d record;
    v_outcome text;
BEGIN
    FOR d IN SELECT n, msg_id, fails FROM demo.deliveries
              WHERE worker = p_worker ORDER BY n
    LOOP
        BEGIN
            v_outcome := demo.apply(d.msg_id, d.fails);
        EXCEPTION WHEN raise_exception THEN
            v_outcome := 'failed, rolled back';
        END;
        UPDATE demo.deliveries SET outcome = v_outcome WHERE n = d.n;
        COMMIT;
    END LOOP;
END $$;
