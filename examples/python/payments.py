"""payments.py: a payment API that charges exactly once, with eo_processing.

What an application does around an external call that must not happen
twice (here: charging a card at a payment gateway), with psycopg 3:

create_payment(conn, key, request, charge)
    The handler of POST /payments with an Idempotency-Key header.
    1. eo.key_begin(key, request) in its own short transaction.  Its state
       decides the answer:
         started, resumed  do the work (resumed: the previous holder's lease
                           expired, it is presumed dead; its recovery point
                           says how far it got)
         completed         replay the stored response, do nothing
         in_progress       409: another request with this key is running
       SQLSTATE IK001 (the key was used with another request) is a 422.
    2. eo.key_checkpoint(key, 'charging', fence) in its own transaction:
       from now on a charge may exist at the gateway.
    3. The gateway call, with no transaction open, and the same key as the
       gateway's Idempotency-Key: a repeated call (a retry, or a resumed
       request) is answered with the first charge, never a second one.
    4. One transaction: eo.key_complete(key, response, fence) first (a
       holder whose lease was taken over gets IK002 -> 409 and writes
       nothing), the payment row, and eo.publish('payment.succeeded').
       They commit together: the event exists if and only if the payment
       does, and every retry gets the stored response.
    Failures of the gateway:
       ChargeDeclined  a definitive answer (card declined): stored with
                       key_complete as a 402, replayed to every retry.
       GatewayError    5xx, timeout, connection error: nothing is stored and
                       the key is released (eo.key_release), so that the
                       client's retry starts afresh.  That is safe because
                       the retry calls the gateway with the same key: a charge
                       the gateway made before its answer was lost is found
                       there, not made again.

receive_webhook(conn, secrets, headers, body, consumer, apply)
    The handler of an incoming webhook (from the gateway, or eo_processing's
    own relay): verify the Standard Webhooks signature (401 otherwise),
    then in one transaction eo.process(webhook-id, consumer) and the
    webhook's effect.  A duplicate delivery is answered 200 and changes
    nothing; an effect that cannot be applied yet rolls back (the
    eo.process record with it) and is answered 503, so the sender retries.

confirm_payment(conn, event)
    The effect of the gateway's charge.succeeded webhook: marks the payment
    confirmed and publishes payment.confirmed.

http_handler(handle)
    The HTTP side of a webhook endpoint, for http.server.

The SQL objects are in SCHEMA; every function runs in the connection's
search_path.  Connections must be in autocommit mode: each step opens its
own transaction with conn.transaction().
"""

import json
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import psycopg
from psycopg.types.json import Jsonb

import standard_webhooks

# The scope of the idempotency keys of this API (eo.key_begin's scope):
# keys of other APIs of the same database cannot collide with these.
SCOPE = "payments"

# SQLSTATEs of eo_processing's idempotency keys (src/schema/eo_processing--0.3.0--0.4.0.sql).
KEY_MISMATCH = "IK001"      # the key was used with a different request -> 422
LEASE_LOST = "IK002"        # another caller took the key over -> 409

SCHEMA = """
CREATE TABLE accounts (
    account    text PRIMARY KEY,
    balance    bigint NOT NULL DEFAULT 0,
    event_seq  bigint NOT NULL DEFAULT 0     -- numbers the account's events
);
CREATE TABLE payments (
    payment_id   text PRIMARY KEY,           -- the client's idempotency key
    account      text NOT NULL REFERENCES accounts,
    amount       integer NOT NULL CHECK (amount > 0),
    currency     text NOT NULL,
    charge_id    text NOT NULL UNIQUE,       -- the gateway's id of the charge
    status       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    confirmed_at timestamptz                 -- the gateway's webhook came
);
"""


@dataclass
class Answer:
    """An HTTP answer, and what happened (for logs and counters)."""
    status: int
    body: dict
    outcome: str            # created, replayed, in_progress, mismatch,
                            # lease_lost, declined, gateway_failed;
                            # webhooks: applied, duplicate, not_yet,
                            # bad_signature
    headers: dict = field(default_factory=dict)
    key_state: str = None   # what eo.key_begin said: started, resumed,
                            # completed, in_progress (None: not reached)


class ChargeDeclined(Exception):
    """The gateway refused the charge for good (nothing was charged)."""


class GatewayError(Exception):
    """The gateway failed or did not answer: a charge may or may not exist.
    Calling it again with the same idempotency key is safe."""


def create_schema(conn):
    """Create the application's tables (in the first schema of the
    search_path)."""
    with conn.transaction():
        conn.execute(SCHEMA)


def _sqlstate(err):
    return getattr(err, "sqlstate", None)


def _retry_later(seconds, outcome, message):
    return Answer(409, {"error": message}, outcome, {"Retry-After": str(seconds)})


def create_payment(conn, key, request, charge, lease="5 minutes"):
    """Handle POST /payments: request = {"account", "amount", "currency"}.

    charge(key, request) calls the gateway with key as its idempotency key
    (and as the payment's reference, which the gateway's webhooks carry
    back as "payment_id") and returns the charge as a dict with at least
    "id" and "status"; it raises ChargeDeclined or GatewayError.
    Returns an Answer; other database errors propagate (and leave the key
    to expire, as a crash would)."""
    # 1. Begin, or find, the key: its own transaction, committed at once, so
    #    that a concurrent retry sees it.
    try:
        with conn.transaction():
            state, _point, response, fence = conn.execute(
                "SELECT state, recovery_point, response, fence"
                "  FROM eo.key_begin(%s, %s, scope => %s, lease => %s::interval)",
                (key, Jsonb(request), SCOPE, lease)).fetchone()
    except psycopg.Error as e:
        if _sqlstate(e) == KEY_MISMATCH:
            return Answer(422, {"error": "this idempotency key was used with another request"},
                          "mismatch")
        raise
    answer = _handle_key(conn, key, request, charge, state, response, fence)
    answer.key_state = state
    return answer


def _handle_key(conn, key, request, charge, state, response, fence):
    """create_payment() after eo.key_begin answered state."""
    if state == "completed":
        return Answer(response["status"], response["body"], "replayed",
                      {"Idempotent-Replayed": "true"})
    if state == "in_progress":
        return _retry_later(1, "in_progress", "a request with this idempotency key is in progress")

    # 2. started or resumed: a charge may exist at the gateway from here on.
    try:
        with conn.transaction():
            conn.execute("SELECT eo.key_checkpoint(%s, 'charging', scope => %s, fence => %s)",
                         (key, SCOPE, fence))
    except psycopg.Error as e:
        if _sqlstate(e) == LEASE_LOST:
            return _retry_later(1, "lease_lost", "this request was taken over by a retry")
        raise

    # 3. The external call, no transaction open.
    try:
        charged = charge(key, request)
    except ChargeDeclined as e:
        stored = {"status": 402, "body": {"payment_id": key, "status": "declined",
                                          "reason": str(e)}}
        return _finish(conn, key, fence, stored, "declined")
    except GatewayError as e:
        _release(conn, key, fence)
        return Answer(502, {"error": "payment gateway unavailable, retry with the same key",
                            "detail": str(e)}, "gateway_failed", {"Retry-After": "1"})

    # 4. Record the payment, its event and the response together.
    body = {"payment_id": key, "account": request["account"], "amount": request["amount"],
            "currency": request["currency"], "charge_id": charged["id"],
            "status": charged["status"]}
    return _finish(conn, key, fence, {"status": 201, "body": body}, "created",
                   record=lambda: _record_payment(conn, body))


def _finish(conn, key, fence, stored, outcome, record=None):
    """Complete the key with the stored response, and run record() in the
    same transaction."""
    try:
        with conn.transaction():
            conn.execute("SELECT eo.key_complete(%s, %s, scope => %s, fence => %s)",
                         (key, Jsonb(stored), SCOPE, fence))
            if record is not None:
                record()
    except psycopg.Error as e:
        if _sqlstate(e) == LEASE_LOST:
            return _retry_later(1, "lease_lost", "this request was taken over by a retry")
        raise
    return Answer(stored["status"], stored["body"], outcome)


def _release(conn, key, fence):
    """Forget the key after a failed external call, unless another caller
    holds it by now (then that caller finishes the request)."""
    try:
        with conn.transaction():
            conn.execute("SELECT eo.key_release(%s, scope => %s, fence => %s)",
                         (key, SCOPE, fence))
    except psycopg.Error as e:
        if _sqlstate(e) != LEASE_LOST:
            raise


def _next_event_seq(conn, account, amount):
    """Add amount to the account's balance and return the number of its next
    event.  The row lock orders the account's events in commit order."""
    return conn.execute(
        "INSERT INTO accounts AS a (account, balance, event_seq) VALUES (%s, %s, 1)"
        " ON CONFLICT (account) DO UPDATE"
        "   SET balance = a.balance + excluded.balance, event_seq = a.event_seq + 1"
        " RETURNING event_seq", (account, amount)).fetchone()[0]


def _publish(conn, topic, payload):
    """eo.publish() keyed by account: the relay delivers one account's events
    in publish order.  Returns the message id."""
    return conn.execute("SELECT eo.publish(%s, %s, key => %s)",
                        (topic, Jsonb(payload), payload["account"])).fetchone()[0]


def _record_payment(conn, body):
    seq = _next_event_seq(conn, body["account"], body["amount"])
    conn.execute(
        "INSERT INTO payments (payment_id, account, amount, currency, charge_id, status)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (body["payment_id"], body["account"], body["amount"], body["currency"],
         body["charge_id"], body["status"]))
    _publish(conn, "payment.succeeded", dict(body, type="payment.succeeded", seq=seq))


def receive_webhook(conn, secrets, headers, body, consumer, apply,
                    tolerance=standard_webhooks.DEFAULT_TOLERANCE):
    """Handle an incoming signed webhook exactly once.

    apply(conn, event) runs inside the transaction of eo.process() for the
    first delivery only; it returns False when the event cannot be applied
    yet (the transaction then rolls back and the sender is asked to retry)."""
    try:
        webhook_id = standard_webhooks.verify(secrets, headers, body, tolerance)
    except standard_webhooks.InvalidSignature as e:
        return Answer(401, {"error": "invalid signature", "detail": str(e)}, "bad_signature")
    try:
        event = json.loads(body)
    except ValueError:
        return Answer(400, {"error": "the body is not JSON"}, "bad_request")
    outcome = "applied"
    with conn.transaction() as tx:
        first = conn.execute("SELECT eo.process(%s, %s)", (webhook_id, consumer)).fetchone()[0]
        if not first:
            outcome = "duplicate"
        elif not apply(conn, event):
            outcome = "not_yet"
            raise psycopg.Rollback(tx)
    if outcome == "not_yet":
        return Answer(503, {"error": "not ready, retry later"}, outcome, {"Retry-After": "1"})
    return Answer(200, {"id": webhook_id, "outcome": outcome}, outcome)


def confirm_payment(conn, event):
    """Effect of the gateway's charge.succeeded webhook.  False when the
    payment is not recorded yet (the gateway may be faster than we are)."""
    if event.get("type") != "charge.succeeded":
        return True                     # not ours to act on: acknowledged
    charge = event["data"]
    row = conn.execute(
        "UPDATE payments SET confirmed_at = coalesce(confirmed_at, now())"
        " WHERE payment_id = %s AND charge_id = %s"
        " RETURNING account, amount, currency",
        (charge["payment_id"], charge["id"])).fetchone()
    if row is None:
        return False
    account, amount, currency = row
    seq = _next_event_seq(conn, account, 0)
    _publish(conn, "payment.confirmed", {
        "type": "payment.confirmed", "payment_id": charge["payment_id"],
        "account": account, "amount": amount, "currency": currency,
        "charge_id": charge["id"], "seq": seq})
    return True


def http_handler(handle):
    """A request handler class for http.server whose POST requests are
    answered by handle(headers, body) -> Answer, as JSON."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = handle(self.headers, body)
            out = json.dumps(answer.body).encode()
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    return Handler


def new_key():
    """An idempotency key as a client makes one."""
    return str(uuid.uuid4())
