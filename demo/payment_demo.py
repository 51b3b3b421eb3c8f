#!/usr/bin/python3
"""demo/payment_demo.py: card payments charged exactly once, end to end.

    payment_demo.py --dsn DSN --workdir DIR [--payments N] [--clients N]
                    [--workers N] [--seed N]

Run by scripts/demo against a throwaway cluster with eo_processing
preloaded.  Everything talks over real connections on this machine:

  clients --(in process)--> payment service --HTTP--> gateway (demo/gateway.py)
                            |  worker threads,        |  deduplicates charges by
                            |  one connection each    |  Idempotency-Key, keeps
                            v                         |  a ledger, fails, answers
                         PostgreSQL  <--HTTP webhooks-+  too late, sends its
                         eo.key_*, eo.process,           charge.succeeded webhooks
                         eo.publish                      (some twice)
                            |
                            | relay (background worker), signed HTTP webhooks
                            v
                         merchant (test/webhook_receiver.py: verifies signatures,
                                   deduplicates, fails ~20% of requests)

The payment service is examples/python/payments.py: create_payment() for
each request (eo.key_begin, the gateway call with the same key, then
key_complete + payment row + eo.publish in one transaction) and
receive_webhook() for the gateway's webhooks (eo.process in the
transaction that confirms the payment).

Faults, all on purpose: clients lose answers (the service did the work,
the client never heard: it retries with the same key); workers crash after
the gateway charged (the key stays in progress until its lease expires;
the client's retry then resumes it); the gateway fails before charging or
charges and answers too late; the gateway sends webhooks twice; the
merchant fails or drops its answers, so the relay sends again.

At the end the gateway's ledger is loaded into gateway_ledger and compared
with payments by eo.reconcile().  The report says what each stage absorbed;
the exit status is 1 if a payment was charged twice, never charged, charged
but not recorded, or reconciliation found anything.
"""

import argparse
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))

import psycopg  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

import payments  # noqa: E402
import standard_webhooks  # noqa: E402
from payments import ChargeDeclined, GatewayError  # noqa: E402

ACCOUNTS = 12
LEASE = "2 seconds"             # eo.key_begin lease: a crashed worker's key
                                # is taken over this long after its last step
LOST_ANSWER_RATE = 0.12         # answers the client never gets
CRASH_RATE = 0.03               # workers dying right after the gateway charged
CLIENT_TIMEOUT = 0.8            # seconds a client waits for an answer
CLIENT_PAUSE = 0.2              # before retrying after 409 / 502 (sooner than
                                # their Retry-After: 1, to keep the demo short)
GATEWAY_TIMEOUT = 0.4           # the service's timeout for the gateway
PAYMENT_DEADLINE = 30           # a client gives a payment up after this
MERCHANT_FAULTS = {"fail_500": 0.10, "drop_after_apply": 0.05, "too_many": 0.05,
                   "retry_after": 1}
SETTLE_SECONDS = 30             # waiting for webhooks and the relay at the end


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}

    def add(self, name, n=1):
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def __getitem__(self, name):
        with self.lock:
            return self.values.get(name, 0)


class WorkerCrash(Exception):
    """Injected: the worker process dies (no answer, nothing recorded)."""


class Reply:
    """The answer slot of one request; a lost answer is never filled."""

    def __init__(self, lost=False):
        self.lost = lost
        self.answer = None
        self.done = threading.Event()

    def fill(self, answer):
        if not self.lost:
            self.answer = answer
            self.done.set()


def http_json(url, obj=None, timeout=5):
    """GET (obj None) or POST JSON; the decoded answer."""
    data = None if obj is None else json.dumps(obj).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def start_program(args, workdir, name):
    """Start a helper program; wait for its port file; (process, base URL)."""
    port_file = os.path.join(workdir, name + ".port")
    if os.path.exists(port_file):
        os.unlink(port_file)
    log = open(os.path.join(workdir, name + ".log"), "w")
    proc = subprocess.Popen([sys.executable] + args + ["--port-file", port_file],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while not os.path.exists(port_file):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("%s did not start (see %s.log)" % (name, name))
        time.sleep(0.02)
    with open(port_file) as f:
        return proc, "http://127.0.0.1:%d" % int(f.read())


class PaymentService:
    """Worker threads, each with its own connection: payment requests and
    the gateway's webhooks, handled with examples/python/payments.py."""

    def __init__(self, dsn, gateway_url, gateway_secret, counters, seed):
        self.dsn = dsn
        self.gateway_url = gateway_url
        self.gateway_secret = gateway_secret
        self.counters = counters
        self.rng = random.Random(seed)
        self.jobs = queue.Queue()
        self.webhook_jobs = queue.Queue()
        self.threads = []
        self.committed = {}         # (topic, payment id) -> when it committed

    def start(self, workers, webhook_workers):
        for n in range(workers):
            self.threads.append(threading.Thread(target=self.worker, args=(self.jobs, self.pay),
                                                 name="payments-%d" % n, daemon=True))
        for n in range(webhook_workers):
            self.threads.append(threading.Thread(target=self.worker,
                                                 args=(self.webhook_jobs, self.webhook),
                                                 name="webhooks-%d" % n, daemon=True))
        for t in self.threads:
            t.start()

    def stop(self):
        for t in self.threads:
            (self.jobs if t.name.startswith("payments") else self.webhook_jobs).put(None)
        for t in self.threads:
            t.join(10)

    def submit(self, key, request, lose_answer):
        reply = Reply(lost=lose_answer)
        self.jobs.put((key, request, reply))
        return reply

    def receive_webhook(self, headers, body):
        """POST /webhooks/gateway: handed to a webhook worker."""
        reply = Reply()
        self.webhook_jobs.put((headers, body, reply))
        if reply.done.wait(10):
            return reply.answer
        return payments.Answer(503, {"error": "busy"}, "busy")

    def worker(self, jobs, handle):
        conn = psycopg.connect(self.dsn, autocommit=True)
        while True:
            job = jobs.get()
            if job is None:
                break
            try:
                if conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True)
                handle(conn, *job)
            except WorkerCrash:
                self.counters.add("worker_crashes")
            except Exception:
                self.counters.add("service_errors")
                sys.stderr.write("payment service: %s" % traceback.format_exc())
                job[-1].fill(payments.Answer(500, {"error": "internal error"}, "error"))
        conn.close()

    def pay(self, conn, key, request, reply):
        answer = payments.create_payment(conn, key, request, self.charge, lease=LEASE)
        if answer.outcome == "created":
            self.committed[("payment.succeeded", key)] = time.time()
        self.counters.add("outcome_" + answer.outcome)
        if answer.key_state is not None:
            self.counters.add("key_" + answer.key_state)
        reply.fill(answer)

    def webhook(self, conn, headers, body, reply):
        answer = payments.receive_webhook(conn, self.gateway_secret, headers, body,
                                          "gateway-webhooks", payments.confirm_payment)
        if answer.outcome == "applied":
            key = json.loads(body)["data"]["payment_id"]
            self.committed[("payment.confirmed", key)] = time.time()
        self.counters.add("webhook_" + answer.outcome)
        reply.fill(answer)

    def charge(self, key, request):
        """The gateway call: the payment's idempotency key goes along."""
        body = dict(request, payment_id=key)        # our reference, in its webhooks
        req = urllib.request.Request(
            self.gateway_url + "/v1/charges", data=json.dumps(body).encode(),
            headers={"Idempotency-Key": key, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=GATEWAY_TIMEOUT) as resp:
                charge = json.load(resp)
        except urllib.error.HTTPError as e:
            if e.code == 402:
                raise ChargeDeclined(e.read().decode(errors="replace")) from None
            self.counters.add("gateway_errors")
            raise GatewayError("gateway answered %d" % e.code) from None
        except (urllib.error.URLError, OSError) as e:
            self.counters.add("gateway_timeouts")
            raise GatewayError("no answer from the gateway: %s" % e) from None
        if self.rng.random() < CRASH_RATE:
            raise WorkerCrash()
        return charge


class Clients:
    """Client threads: each pays, and retries with the same key until it
    has an answer."""

    def __init__(self, service, counters, seed):
        self.service = service
        self.counters = counters
        self.rng = random.Random(seed)
        self.todo = queue.Queue()
        self.answers = {}           # payment id -> body of the 201 answer
        self.first_answer = {}      # payment id -> body of the first 2xx
        self.replay_mismatches = 0
        self.failed = []            # (payment id, last answer or None)

    def run(self, requests, threads):
        for r in requests:
            self.todo.put(r)
        workers = [threading.Thread(target=self.client, daemon=True) for _ in range(threads)]
        for t in workers:
            t.start()
        return workers

    def client(self):
        while True:
            try:
                key, request = self.todo.get_nowait()
            except queue.Empty:
                return
            self.pay(key, request)
            self.counters.add("payments_done")

    def pay(self, key, request):
        deadline = time.time() + PAYMENT_DEADLINE
        answer = None
        attempt = 0
        while time.time() < deadline:
            attempt += 1
            self.counters.add("requests")
            if attempt > 1:
                self.counters.add("client_retries")
            lose = self.rng.random() < LOST_ANSWER_RATE
            if lose:
                self.counters.add("answers_lost")
            reply = self.service.submit(key, request, lose)
            if not reply.done.wait(CLIENT_TIMEOUT):
                self.counters.add("client_timeouts")
                continue
            answer = reply.answer
            if answer.status == 201:
                self.answers[key] = answer.body
                return
            if answer.status in (409, 502, 503):
                time.sleep(CLIENT_PAUSE)
                continue
            break
        self.failed.append((key, answer))


class Progress:
    """One status line, rewritten in place on a terminal (a line per
    second otherwise)."""

    def __init__(self, counters, total, gateway_url, merchant_url):
        self.counters = counters
        self.total = total
        self.gateway_url = gateway_url
        self.merchant_url = merchant_url
        self.phase = "paying"
        self.start = time.time()
        self.tty = sys.stdout.isatty()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def line(self):
        try:
            g = http_json(self.gateway_url + "/_stats", timeout=1)
            m = http_json(self.merchant_url + "/_stats", timeout=1)
        except (OSError, ValueError):
            return None
        return ("  %5.1f s  %-22s payments %d/%d, requests %d, charges %d, "
                "gateway webhooks %d, merchant events %d"
                % (time.time() - self.start, self.phase, self.counters["payments_done"],
                   self.total, self.counters["requests"], g["charges"],
                   self.counters["webhook_applied"], m["applied"]))

    def loop(self):
        while not self.stopped.wait(0.25 if self.tty else 1.0):
            text = self.line()
            if text is None:
                continue
            if self.tty:
                sys.stdout.write("\r" + text + "\033[K")
            else:
                sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def stop(self):
        self.stopped.set()
        self.thread.join()
        text = self.line()
        if self.tty:
            sys.stdout.write("\r" + (text or "") + "\033[K\n")
        elif text:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()


def wait_until(what, condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    print("  gave up waiting for %s after %d s" % (what, seconds))
    return False


def setup_database(conn, merchant_url, merchant_secret):
    conn.execute("SET client_min_messages = warning")
    conn.execute("DROP TABLE IF EXISTS gateway_ledger, payments, accounts")
    conn.execute("DROP EXTENSION IF EXISTS eo_processing CASCADE")
    conn.execute("CREATE EXTENSION eo_processing")
    payments.create_schema(conn)
    conn.execute("SELECT eo.create_destination('merchant', 'http', %s)", (Jsonb({
        "url": merchant_url + "/merchant/events", "signing_secret": merchant_secret,
        "timeout_ms": 2000, "concurrency": 8, "max_attempts": 30,
        "retry_delays": ["100ms", "200ms", "500ms", "1s"]}),))
    conn.execute("SELECT eo.subscribe('payment.*', 'merchant')")
    if not wait_until("the relay to start", lambda: conn.execute(
            "SELECT count(*) > 0 FROM eo.relay_status WHERE pid IS NOT NULL"
            " AND datname = current_database()").fetchone()[0], 10):
        raise RuntimeError("no relay runs: is eo_processing in shared_preload_libraries?")


def relay_finished(conn, merchant_url):
    """Every event routed and delivered: nothing in the outbox, no delivery
    left, and the merchant applied as many events as were published."""
    published, unfinished = conn.execute(
        "SELECT (SELECT count(*) FROM eo.message_log WHERE topic LIKE 'payment.%')"
        "     + (SELECT count(*) FROM eo.outbox),"
        "       (SELECT count(*) FROM eo.outbox)"
        "     + (SELECT pending + in_flight + retrying FROM eo.stats"
        "         WHERE destination = 'merchant')").fetchone()
    return unfinished == 0 and http_json(merchant_url + "/_stats")["applied"] == published


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


def relay_latencies(service, merchant_url):
    """Milliseconds from the commit of each event to its first application
    at the merchant."""
    out = []
    for entry in http_json(merchant_url + "/_applied"):
        event = json.loads(entry["body"])
        committed = service.committed.get((event["type"], event["payment_id"]))
        if committed is not None:
            out.append(max(0.0, entry["applied_at"] - committed) * 1000.0)
    return out


def load_ledger(conn, gateway_url):
    ledger = http_json(gateway_url + "/_ledger")
    with conn.transaction():
        conn.execute("CREATE TABLE gateway_ledger (charge_id text, idempotency_key text,"
                     " payment_id text, account text, amount integer, currency text,"
                     " status text)")
        with conn.cursor().copy("COPY gateway_ledger FROM STDIN") as copy:
            for c in ledger:
                copy.write_row((c["id"], c["idempotency_key"], c["payment_id"], c["account"],
                                c["amount"], c["currency"], c["status"]))
    return ledger


def main():
    ap = argparse.ArgumentParser(description="the eo_processing payment demo")
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--payments", type=int, default=300)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    counters = Counters()
    merchant_secret = standard_webhooks.new_secret()
    gateway_secret = standard_webhooks.new_secret()
    procs = []
    try:
        merchant, merchant_url = start_program(
            [os.path.join(ROOT, "test", "webhook_receiver.py"), "--port", "0",
             "--secret", merchant_secret, "--seed", str(a.seed)], a.workdir, "merchant")
        procs.append(merchant)
        http_json(merchant_url + "/_faults", dict(MERCHANT_FAULTS, seed=a.seed))

        service = None
        endpoint = ThreadingHTTPServer(("127.0.0.1", 0), payments.http_handler(
            lambda headers, body: service.receive_webhook(headers, body)))
        endpoint.daemon_threads = True
        threading.Thread(target=endpoint.serve_forever, daemon=True).start()
        gateway, gateway_url = start_program(
            [os.path.join(HERE, "gateway.py"), "--seed", str(a.seed),
             "--webhook-url", "http://127.0.0.1:%d/webhooks/gateway" % endpoint.server_address[1],
             "--webhook-secret", gateway_secret], a.workdir, "gateway")
        procs.append(gateway)

        conn = psycopg.connect(a.dsn, autocommit=True)
        setup_database(conn, merchant_url, merchant_secret)
        service = PaymentService(a.dsn, gateway_url, gateway_secret, counters, a.seed)
        service.start(a.workers, 2)

        requests = [(payments.new_key(),
                     {"account": "acct-%02d" % rng.randint(1, ACCOUNTS),
                      "amount": rng.randint(100, 50000), "currency": "EUR"})
                    for _ in range(a.payments)]
        print("%d payments from %d clients to %d workers; the gateway's webhooks go to "
              "the service, the relay's to the merchant" % (a.payments, a.clients, a.workers))
        started = time.time()
        progress = Progress(counters, a.payments, gateway_url, merchant_url)
        progress.thread.start()
        clients = Clients(service, counters, a.seed)
        for t in clients.run(requests, a.clients):
            t.join()
        progress.phase = "gateway webhooks"
        wait_until("the gateway's webhooks", lambda: http_json(
            gateway_url + "/_stats")["webhooks_pending"] == 0, SETTLE_SECONDS)
        progress.phase = "relay to merchant"
        wait_until("the relay", lambda: relay_finished(conn, merchant_url), SETTLE_SECONDS)
        progress.stop()
        elapsed = time.time() - started
        service.stop()
        endpoint.shutdown()

        ledger = load_ledger(conn, gateway_url)
        problems = conn.execute(
            "SELECT key, problem FROM eo.reconcile('payments', 'gateway_ledger', 'payment_id',"
            " ARRAY['account', 'amount', 'currency', 'charge_id', 'status'])").fetchall()
        return report(a, conn, counters, clients, service, requests, ledger, problems,
                      http_json(gateway_url + "/_stats"), http_json(merchant_url + "/_stats"),
                      relay_latencies(service, merchant_url), elapsed)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def report(a, conn, counters, clients, service, requests, ledger, problems, gw, merchant,
           latencies, elapsed):
    requested = {key for key, _ in requests}
    charged = {}
    for c in ledger:
        charged.setdefault(c["payment_id"], []).append(c)
    recorded = {row[0]: row[1] for row in conn.execute(
        "SELECT payment_id, confirmed_at IS NOT NULL FROM payments")}
    double = sum(len(cs) - 1 for cs in charged.values())
    lost = len({k for k in requested if k not in charged or k not in recorded}
               | {k for k in charged if k not in recorded})
    unconfirmed = sum(1 for ok in recorded.values() if not ok)
    wrong_answers = sum(1 for k, body in clients.answers.items()
                        if k not in charged or body["charge_id"] != charged[k][0]["id"])
    published = dict(conn.execute(
        "SELECT topic, count(*) FROM eo.message_log GROUP BY topic").fetchall())
    events = sum(published.values())
    merchant_faults = merchant["faults"]

    print()
    print("Payment demo: %d payments, %d client threads, %d workers, %.1f s"
          % (a.payments, a.clients, a.workers, elapsed))
    print("  requests sent by clients          %5d  (%d client retries: %d answers lost on purpose,"
          " %d timeouts in all, %d workers crashed after charging)"
          % (counters["requests"], counters["client_retries"], counters["answers_lost"],
             counters["client_timeouts"], counters["worker_crashes"]))
    print("  gateway faults                    %5d  (%d answered 500 before charging, %d charged"
          " but answered too late)" % (gw["failed_500"] + gw["slow_answers"], gw["failed_500"],
                                       gw["slow_answers"]))
    print("Duplicates absorbed")
    print("  idempotency keys (eo.key_begin)   %5d  (%d completed: stored response replayed,"
          " %d in_progress: 409; %d resumed after a lease expired)"
          % (counters["key_completed"] + counters["key_in_progress"], counters["key_completed"],
             counters["key_in_progress"], counters["key_resumed"]))
    print("  gateway (Idempotency-Key)         %5d  repeated charges answered with the first one"
          % gw["replays"])
    print("  gateway webhooks (eo.process)     %5d  of %d deliveries (%d sent twice on purpose;"
          " %d refused until the payment was recorded)"
          % (counters["webhook_duplicate"], gw["webhook_requests"],
             gw["webhook_duplicates_sent"], counters["webhook_not_yet"]))
    print("  merchant receiver (webhook-id)    %5d  of %d deliveries (relay retries after"
          " dropped answers)" % (merchant["duplicates"], merchant["received"]))
    print("Money")
    print("  charges made                      %5d  for %d payments"
          % (len(ledger), len(requested)))
    print("  double charges                    %5d" % double)
    print("  lost charges                      %5d  (not charged, or charged but not recorded)"
          % lost)
    print("  reconciliation problems           %5d  (eo.reconcile: payments vs gateway_ledger)"
          % len(problems))
    for key, problem in problems[:10]:
        print("      %s %s" % (key, problem))
    print("  wrong answers to clients          %5d" % wrong_answers)
    print("  payments not confirmed by webhook %5d" % unconfirmed)
    print("Merchant webhooks (eo.publish + relay, http destination)")
    print("  events published                  %5d  (%s)" % (events, ", ".join(
        "%s %d" % kv for kv in sorted(published.items()))))
    print("  applied by the merchant           %5d  of %d requests received (faults injected:"
          " %d 500, %d 429, %d answers dropped after applying)"
          % (merchant["applied"], merchant["received"], merchant_faults["fail_500"],
             merchant_faults["too_many"], merchant_faults["drop_after_apply"]))
    print("  bad signatures, order violations  %5d, %d"
          % (merchant["bad_signature"], merchant["order_violations"]))
    print("  relay latency, commit -> merchant p50 %.1f ms, p99 %.1f ms (retries after injected"
          " faults included)" % (percentile(latencies, 0.50), percentile(latencies, 0.99)))
    failures = []
    if double:
        failures.append("%d double charges" % double)
    if lost:
        failures.append("%d lost charges" % lost)
    if problems:
        failures.append("%d reconciliation problems" % len(problems))
    if wrong_answers or clients.failed:
        failures.append("%d wrong and %d missing answers" % (wrong_answers, len(clients.failed)))
    if unconfirmed:
        failures.append("%d payments never confirmed" % unconfirmed)
    if merchant["applied"] != events or merchant["bad_signature"] or merchant["order_violations"]:
        failures.append("the merchant did not get every event once, signed, in order")
    if counters["service_errors"]:
        failures.append("%d errors in the payment service" % counters["service_errors"])
    print()
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("Every payment was charged exactly once, recorded once, confirmed once and "
          "announced to the merchant once.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
