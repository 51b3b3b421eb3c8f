#!/usr/bin/python3
"""payment_flow.py: the payment flow of payments.py, run and checked.

    payment_flow.py ["host=... port=... dbname=..."]

Connects with the connection string given, or with the PG* environment
variables (PGHOST, PGPORT, PGDATABASE, PGUSER, ...), to a database where
eo_processing is installed, creates the schema payment_flow_py (dropping an
old one) and runs the flow with a fake in-process gateway that, like a
real one, deduplicates charges by Idempotency-Key.  Each expectation prints
"ok N - ..." or "not ok N - ..."; the exit status is 1 if any failed.

When the caller may create destinations and a relay runs (superuser,
library preloaded), it also receives the relay's own webhooks on
127.0.0.1 and checks their signatures; otherwise it says it skips that.
"""

import http.server
import json
import sys
import threading
import time

import psycopg
from psycopg.types.json import Jsonb

import payments
import standard_webhooks
from payments import ChargeDeclined, GatewayError

SCHEMA = "payment_flow_py"


class FakeGateway:
    """A payment gateway that charges each idempotency key at most once."""

    def __init__(self):
        self.ledger = {}            # idempotency key -> charge
        self.replays = 0
        self.fail_next = 0          # GatewayError before charging
        self.decline_next = 0

    def charge(self, key, request):
        if key in self.ledger:
            self.replays += 1
            return self.ledger[key]
        if self.fail_next:
            self.fail_next -= 1
            raise GatewayError("503 from the gateway")
        if self.decline_next:
            self.decline_next -= 1
            raise ChargeDeclined("insufficient funds")
        charge = {"id": "ch_%d" % (len(self.ledger) + 1), "status": "succeeded",
                  "amount": request["amount"], "payment_id": key}
        self.ledger[key] = charge
        return charge


class Checks:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, what, detail=None):
        self.n += 1
        if cond:
            print("ok %d - %s" % (self.n, what))
        else:
            self.failed += 1
            print("not ok %d - %s%s" % (self.n, what, "" if detail is None else ": %r" % (detail,)))
        sys.stdout.flush()
        return cond


def connect(conninfo):
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute("SET search_path = %s, public" % SCHEMA)
    return conn


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


def events_of(conn, topic, payment_id):
    """How many messages of a topic were published for a payment (in the
    outbox, or already routed by the relay)."""
    return one(conn, "SELECT count(*) FROM (SELECT topic, payload FROM eo.outbox"
                     " UNION ALL SELECT topic, payload FROM eo.message_log) m"
                     " WHERE m.topic = %s AND m.payload->>'payment_id' = %s",
               topic, payment_id)


def gateway_webhook(secret, event_id, charge, timestamp=None):
    """A charge.succeeded webhook as the gateway would sign it."""
    body = json.dumps({"type": "charge.succeeded", "data": charge}).encode()
    return standard_webhooks.sign(secret, event_id, body, timestamp), body


def check_keys(c, conn, conn2, gw):
    req = {"account": "acct-1", "amount": 1250, "currency": "EUR"}
    k1 = payments.new_key()
    a = payments.create_payment(conn, k1, req, gw.charge)
    c.ok(a.status == 201 and a.outcome == "created" and len(gw.ledger) == 1,
         "a new idempotency key: charged once, answered 201", a)
    b = payments.create_payment(conn, k1, req, gw.charge)
    c.ok(b.status == 201 and b.body == a.body and b.outcome == "replayed"
         and b.headers.get("Idempotent-Replayed") == "true" and len(gw.ledger) == 1
         and gw.replays == 0,
         "the same key again: the stored response replayed, the gateway not called", b)
    d = payments.create_payment(conn, k1, dict(req, amount=999), gw.charge)
    c.ok(d.status == 422 and d.outcome == "mismatch",
         "the same key with another request: 422 (SQLSTATE IK001)", d)
    c.ok(events_of(conn, "payment.succeeded", k1) == 1
         and one(conn, "SELECT count(*) FROM payments WHERE payment_id = %s", k1) == 1,
         "one payment row and one payment.succeeded event, committed together")

    # Another caller holds a key (its transaction committed, its work goes on).
    k2 = payments.new_key()
    with conn2.transaction():
        conn2.execute("SELECT * FROM eo.key_begin(%s, %s, scope => %s)",
                      (k2, Jsonb(req), payments.SCOPE))
    e = payments.create_payment(conn, k2, req, gw.charge)
    c.ok(e.status == 409 and e.outcome == "in_progress" and "Retry-After" in e.headers,
         "a key another request is working on: 409 with Retry-After", e)

    # A gateway failure releases the key: the retry starts afresh.
    k3 = payments.new_key()
    gw.fail_next = 1
    f = payments.create_payment(conn, k3, req, gw.charge)
    g = payments.create_payment(conn, k3, req, gw.charge)
    c.ok(f.status == 502 and f.outcome == "gateway_failed" and g.status == 201
         and g.outcome == "created" and k3 in gw.ledger,
         "a gateway failure: 502, key released, the retry charges (201)", (f, g))

    # A decline is a definitive answer: stored and replayed.
    k4 = payments.new_key()
    gw.decline_next = 1
    h = payments.create_payment(conn, k4, req, gw.charge)
    i = payments.create_payment(conn, k4, req, gw.charge)
    c.ok(h.status == 402 and i.status == 402 and i.outcome == "replayed"
         and k4 not in gw.ledger and events_of(conn, "payment.succeeded", k4) == 0,
         "a declined charge: 402 stored and replayed, nothing charged or published", (h, i))

    # Lease lost: the first holder stalls past its lease, a retry takes the
    # key over (resumed) and finishes; the stalled holder must write nothing.
    k5 = payments.new_key()
    taken_over = {}

    def stalling_charge(key, request):
        charge = gw.charge(key, request)            # charged, then stalls
        time.sleep(0.4)                             # lease: 200 ms
        taken_over["answer"] = payments.create_payment(conn2, key, request, gw.charge)
        return charge

    replays = gw.replays
    j = payments.create_payment(conn, k5, req, stalling_charge, lease="200 milliseconds")
    k = taken_over.get("answer")
    c.ok(j.status == 409 and j.outcome == "lease_lost" and k is not None and k.status == 201
         and gw.replays == replays + 1
         and one(conn, "SELECT count(*) FROM payments WHERE payment_id = %s", k5) == 1
         and events_of(conn, "payment.succeeded", k5) == 1,
         "a holder whose lease was taken over: 409 (SQLSTATE IK002); the retry resumed, "
         "got the same charge from the gateway and recorded it once", (j, k))
    return k1


def check_webhooks(c, conn, gw, k1):
    secret = standard_webhooks.new_secret()

    def deliver(headers, body):
        return payments.receive_webhook(conn, secret, headers, body, "gateway-webhooks",
                                        payments.confirm_payment)

    headers, body = gateway_webhook(secret, "evt_" + k1, gw.ledger[k1])
    a = deliver(headers, body)
    c.ok(a.status == 200 and a.outcome == "applied"
         and one(conn, "SELECT confirmed_at IS NOT NULL FROM payments WHERE payment_id = %s", k1)
         and events_of(conn, "payment.confirmed", k1) == 1,
         "a correctly signed webhook: verified, applied, payment.confirmed published", a)
    b = deliver(headers, body)
    c.ok(b.status == 200 and b.outcome == "duplicate"
         and events_of(conn, "payment.confirmed", k1) == 1,
         "the same webhook again: absorbed by eo.process, nothing applied twice", b)
    d = deliver(headers, body.replace(b"succeeded", b"refunded"))
    c.ok(d.status == 401 and d.outcome == "bad_signature",
         "a tampered body: 401", d)
    old_headers, old_body = gateway_webhook(secret, "evt_old", gw.ledger[k1],
                                            timestamp=time.time() - 3600)
    e = deliver(old_headers, old_body)
    c.ok(e.status == 401, "a correctly signed webhook an hour old: 401", e)

    # The gateway's webhook may come before the payment is recorded: it is
    # refused (503) and the eo.process record rolls back with it, so the
    # gateway's retry is applied.
    req = {"account": "acct-2", "amount": 700, "currency": "EUR"}
    k6 = payments.new_key()
    charge = gw.charge(k6, req)
    headers, body = gateway_webhook(secret, "evt_" + k6, charge)
    f = deliver(headers, body)
    p = payments.create_payment(conn, k6, req, gw.charge)
    g = deliver(headers, body)
    c.ok(f.status == 503 and f.outcome == "not_yet" and p.status == 201
         and g.status == 200 and g.outcome == "applied",
         "a webhook ahead of its payment: 503, then applied when the gateway retries", (f, p, g))


def check_relay(c, conninfo, conn, gw):
    """The relay's own signed webhooks, received like a merchant would."""
    can = one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") and \
        one(conn, "SELECT count(*) > 0 FROM eo.relay_status WHERE pid IS NOT NULL"
                  " AND datname = current_database()")
    if not can:
        print("skip - the relay's webhooks (needs a superuser and a running relay)")
        return
    secret = standard_webhooks.new_secret()
    rconn = connect(conninfo)
    rconn.execute("CREATE TABLE merchant_events (payment_id text, topic text)")
    lock, outcomes = threading.Lock(), []

    def apply(cn, event):
        cn.execute("INSERT INTO merchant_events VALUES (%s, %s)",
                   (event["payment_id"], event["type"]))
        return True

    def receive(headers, body):             # one connection: one at a time
        with lock:
            answer = payments.receive_webhook(rconn, secret, headers, body, "merchant", apply)
            outcomes.append(answer.outcome)
        return answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), payments.http_handler(receive))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest = SCHEMA + "_merchant"
    conn.execute("SELECT eo.create_destination(%s, 'http', %s)",
                 (dest, Jsonb({
                     "url": "http://127.0.0.1:%d/events" % server.server_address[1],
                     "signing_secret": secret, "retry_delays": ["100ms"]})))
    conn.execute("SELECT eo.subscribe('payment.*', %s)", (dest,))
    try:
        keys = [payments.new_key() for _ in range(3)]
        for key in keys:
            payments.create_payment(conn, key, {"account": "acct-3", "amount": 100,
                                                "currency": "EUR"}, gw.charge)
        deadline = time.time() + 30
        while time.time() < deadline:
            got = one(conn, "SELECT count(*) FROM merchant_events WHERE payment_id = ANY(%s)", keys)
            if got >= len(keys):
                break
            time.sleep(0.1)
        c.ok(got == len(keys) and "bad_signature" not in outcomes,
             "the relay's webhooks: signatures verified, each payment.succeeded applied once",
             (got, outcomes))
    finally:
        conn.execute("SELECT eo.drop_destination(%s, force => true)", (dest,))
        server.shutdown()
        rconn.close()


def main():
    conninfo = sys.argv[1] if len(sys.argv) > 1 else ""
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute("SET client_min_messages = warning")
    conn.execute("DROP SCHEMA IF EXISTS %s CASCADE" % SCHEMA)
    conn.execute("CREATE SCHEMA %s" % SCHEMA)
    conn.close()
    conn, conn2 = connect(conninfo), connect(conninfo)
    payments.create_schema(conn)

    c = Checks()
    gw = FakeGateway()
    k1 = check_keys(c, conn, conn2, gw)
    check_webhooks(c, conn, gw, k1)
    check_relay(c, conninfo, conn, gw)
    if c.failed:
        print("payment_flow.py: %d of %d checks failed" % (c.failed, c.n))
        return 1
    print("payment_flow.py: all %d checks passed" % c.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
