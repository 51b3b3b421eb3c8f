#!/usr/bin/python3
"""demo/gateway.py: the payment gateway of the demo (a simulation).

    gateway.py --webhook-url URL --webhook-secret whsec_... [--port-file PATH]
               [--seed N] [--fail-rate P] [--slow-rate P] [--slow-seconds S]
               [--duplicate-rate P]

An HTTP server on 127.0.0.1 (a free port, written to --port-file) that
behaves like a card payment provider with idempotency keys:

POST /v1/charges   Idempotency-Key header, JSON {"account", "amount", "currency",
                   "payment_id"} (payment_id: the merchant's reference)
    A key seen before is answered with its first result (200, header
    Idempotent-Replayed: true) and never charged again; the same key with
    other parameters is a 422.  A new key draws a fault:
      fail  (--fail-rate)  500 before charging: nothing happened
      slow  (--slow-rate)  charges, then answers only after --slow-seconds,
                           when the client has long given up (the lost ack)
    otherwise it charges after a few milliseconds and answers 200.
    Each charge is a row of the ledger: charge id, idempotency key,
    payment id, account, amount, currency, status.

Webhooks: every charge is announced to --webhook-url as a signed (Standard
Webhooks, --webhook-secret) charge.succeeded event, a little later than the
answer, retried with backoff until a 2xx; with --duplicate-rate the same
event (same webhook-id) is sent a second time on purpose.

GET /_ledger  the ledger (JSON array)    GET /_stats  counters
POST /_shutdown  stops the server (so does SIGTERM)
"""

import argparse
import heapq
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "examples", "python"))
import standard_webhooks  # noqa: E402

WEBHOOK_SENDERS = 4
WEBHOOK_MAX_ATTEMPTS = 15


class Gateway:
    """The ledger, the idempotency keys and the counters; one lock."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.rng = random.Random(args.seed)
        self.by_key = {}            # idempotency key -> charge
        self.ledger = []
        self.key_locks = {}         # idempotency key -> lock of its requests
        self.stats = dict.fromkeys((
            "requests", "charges", "replays", "mismatches", "failed_500",
            "slow_answers", "webhook_events", "webhook_duplicates_sent",
            "webhook_requests", "webhook_retries", "webhook_given_up"), 0)
        self.webhooks = Webhooks(self)

    def count(self, name, n=1):
        with self.lock:
            self.stats[name] += n

    def key_lock(self, key):
        with self.lock:
            return self.key_locks.setdefault(key, threading.Lock())

    def charge(self, key, params):
        """(status, body, delay before answering, replayed)."""
        self.count("requests")
        # Requests with one key run one at a time, as at a real provider.
        with self.key_lock(key):
            with self.lock:
                first = self.by_key.get(key)
                fault = self.draw_fault() if first is None else None
            if first is not None:
                if any(first[k] != params.get(k) for k in ("account", "amount", "currency")):
                    self.count("mismatches")
                    return 422, {"error": "idempotency key reused with other parameters"}, 0, False
                self.count("replays")
                return 200, first, 0, True
            if fault == "fail":
                self.count("failed_500")
                return 500, {"error": "internal error, nothing was charged"}, 0, False
            time.sleep(self.rng.uniform(0.002, 0.015))     # the card network
            with self.lock:
                charge = {"id": "ch_%06d" % (len(self.ledger) + 1), "idempotency_key": key,
                          "payment_id": params.get("payment_id"),
                          "account": params["account"], "amount": params["amount"],
                          "currency": params["currency"], "status": "succeeded",
                          "created": time.time()}
                self.ledger.append(charge)
                self.by_key[key] = charge
                self.stats["charges"] += 1
            self.webhooks.announce(charge)
        if fault == "slow":
            self.count("slow_answers")
            return 200, charge, self.args.slow_seconds, False
        return 200, charge, 0, False

    def draw_fault(self):
        u = self.rng.random()
        if u < self.args.fail_rate:
            return "fail"
        if u < self.args.fail_rate + self.args.slow_rate:
            return "slow"
        return None

    def snapshot(self):
        with self.lock:
            return dict(self.stats, webhooks_pending=self.webhooks.pending)


class Webhooks:
    """charge.succeeded events to the payment service: a schedule (heap of
    due times) and a few sender threads."""

    def __init__(self, gateway):
        self.gw = gateway
        self.cond = threading.Condition(gateway.lock)
        self.heap = []
        self.seq = 0
        self.pending = 0            # scheduled or being sent (under the lock)
        self.stopping = False

    def announce(self, charge):
        with self.cond:
            rng = self.gw.rng
            event_id = "evt_%06d" % (self.gw.stats["webhook_events"] + 1)
            self.gw.stats["webhook_events"] += 1
            body = json.dumps({"id": event_id, "type": "charge.succeeded",
                               "data": charge}).encode()
            self._schedule(time.time() + rng.uniform(0.02, 0.3), event_id, body, 1)
            if rng.random() < self.gw.args.duplicate_rate:
                self.gw.stats["webhook_duplicates_sent"] += 1
                self._schedule(time.time() + rng.uniform(0.1, 1.0), event_id, body, 1)

    def _schedule(self, due, event_id, body, attempt):
        """Caller holds the lock."""
        self.seq += 1
        self.pending += 1
        heapq.heappush(self.heap, (due, self.seq, event_id, body, attempt))
        self.cond.notify()

    def sender(self):
        while True:
            with self.cond:
                while not self.stopping and (not self.heap or self.heap[0][0] > time.time()):
                    self.cond.wait(None if not self.heap else self.heap[0][0] - time.time())
                if self.stopping:
                    return
                _due, _seq, event_id, body, attempt = heapq.heappop(self.heap)
                self.gw.stats["webhook_requests"] += 1
            delivered = self.post(event_id, body)
            with self.cond:
                self.pending -= 1
                if delivered:
                    continue
                if attempt >= WEBHOOK_MAX_ATTEMPTS:
                    self.gw.stats["webhook_given_up"] += 1
                    continue
                self.gw.stats["webhook_retries"] += 1
                self._schedule(time.time() + min(0.1 * 2 ** attempt, 2.0), event_id, body,
                               attempt + 1)

    def post(self, event_id, body):
        """One attempt; True on a 2xx answer."""
        headers = standard_webhooks.sign(self.gw.args.webhook_secret, event_id, body)
        headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.gw.args.webhook_url, data=body, headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return 200 <= resp.status < 300
        except (urllib.error.URLError, OSError):
            return False            # HTTPError (non-2xx) is a URLError

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, obj, headers=()):
        out = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        gw = self.server.gateway
        if self.path == "/_ledger":
            with gw.lock:
                ledger = list(gw.ledger)
            self.answer(200, ledger)
        elif self.path == "/_stats":
            self.answer(200, gw.snapshot())
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        gw = self.server.gateway
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/_shutdown":
            self.answer(200, {"ok": True})
            self.server.stop.set()
            return
        if self.path != "/v1/charges":
            self.answer(404, {"error": "not found"})
            return
        key = self.headers.get("Idempotency-Key")
        try:
            params = json.loads(body)
            valid = (key and isinstance(params, dict) and isinstance(params.get("amount"), int)
                     and params["amount"] > 0)
        except ValueError:
            valid = False
        if not valid:
            self.answer(400, {"error": "an Idempotency-Key and a positive amount are required"})
            return
        status, result, delay, replayed = gw.charge(key, params)
        if delay:
            time.sleep(delay)       # the client has stopped waiting by now
        try:
            self.answer(status, result, [("Idempotent-Replayed", "true")] if replayed else [])
        except OSError:
            pass                    # the client hung up: the answer is lost


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--webhook-url", required=True)
    ap.add_argument("--webhook-secret", required=True)
    ap.add_argument("--port-file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fail-rate", type=float, default=0.08)
    ap.add_argument("--slow-rate", type=float, default=0.08)
    ap.add_argument("--slow-seconds", type=float, default=1.0)
    ap.add_argument("--duplicate-rate", type=float, default=0.3)
    args = ap.parse_args()

    gateway = Gateway(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.gateway = gateway
    server.stop = threading.Event()
    senders = [threading.Thread(target=gateway.webhooks.sender, daemon=True)
               for _ in range(WEBHOOK_SENDERS)]
    for t in senders:
        t.start()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                     daemon=True).start()
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    print("listening on 127.0.0.1:%d" % port, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    signal.signal(signal.SIGINT, lambda *_: server.stop.set())
    while not server.stop.wait(0.5):
        pass
    gateway.webhooks.stop()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
