#!/usr/bin/python3
"""webhook_receiver.py: a test HTTP receiver for the relay's webhook deliveries.

Python 3.11 standard library only.  It listens on 127.0.0.1 (nothing else),
verifies Standard Webhooks signatures, deduplicates by message id, checks the
per-key ordering of "seq", injects faults on demand and lets a test inspect
what arrived.

Usage:
  webhook_receiver.py --port N [--host 127.0.0.1] [--secret whsec_...]...
                      [--port-file PATH] [--seed N] [--log PATH]
                      [--tolerance SECONDS] [--idle-timeout SECONDS]
                      [--keep-requests N] [--journal PATH] [--verbose]
                      [--tls-cert PEM --tls-key PEM [--tls-port-file PATH]]

  --port 0 picks a free port.  Once listening it writes the port to
  --port-file (tmp file + rename) and prints exactly one line to stdout:
  "listening on 127.0.0.1:<port>".  It serves until SIGTERM / SIGINT or
  POST /_shutdown, then exits 0.  With --tls-cert, webhooks are also served
  over TLS on a second port of its own choosing (written to
  --tls-port-file before --port-file), sharing everything else.

Webhooks: any path that does not start with "/_".  Only POST (else 405).
Each request goes through, in this order:
  1. body: at most 1 MiB (else 413); Content-Length or chunked.
  2. signature (only when --secret is given): webhook-id, webhook-timestamp
     and webhook-signature must be present, the timestamp within --tolerance
     (300 s) of now, and one "v1,<base64>" of the space-separated list must
     equal base64(HMAC-SHA256(secret, "<id>.<timestamp>.<body>")) for one of
     the secrets (the key is the base64-decoded part after "whsec_").
     Otherwise: 401, counted as bad_signature, not applied.
     Without --secret nothing is checked.  The message id is webhook-id, or
     Idempotency-Key when webhook-id is missing; no id at all: 400.
  3. forced status (POST /_status): answer it, not applied.
  4. fault, drawn with random.Random(seed) under the lock (one draw per
     request; the probabilities are stacked in the order below, so their
     sum should stay <= 1):
       fail_500          500, not applied
       drop_after_apply  applied (or counted as duplicate), then the
                         connection is shut down without any response
       sleep             waits sleep_seconds, then 503; never applied
       too_many          429 with Retry-After: retry_after, not applied
       unavailable       503 with Retry-After: retry_after, not applied
       gone              410, not applied
     With only_first_attempt, faults are only drawn for the first arrival of
     a message id (so every retry succeeds).
  5. apply: first arrival of an id records it (id, topic from eo-topic, key
     from eo-key, seq, webhook-timestamp, application order); a later one
     counts as duplicate.  Both answer 200.  For keyed messages whose JSON
     body (Content-Type application/json) is an object with an integer
     "seq", the seq must be greater than the last applied seq of the key,
     else order_violations is counted (the message is applied anyway and
     marked "order_violation": true).

Restarts: with --journal PATH every applied message (the /_applied entry) is
appended to PATH, one JSON line, before the answer is sent, and the journal
is read back at start.  A receiver stopped (even by SIGKILL) and started
again with the same journal therefore still deduplicates what it applied
before and still checks the key order against it; the counters of /_stats
start from zero in each run ("restored" says how many entries were read
back).  POST /_reset empties the journal too.

Control endpoints (JSON; wrong method 405, unknown path 404):
  GET  /_health              {"ok": true}
  GET  /_stats               counters, see State.stats()
  GET  /_applied             applied messages in application order
  GET  /_requests?limit=N    last N (default 100, 0 = all kept) webhook-path
                             requests: method, path, headers, body, outcome
  GET  /_faults              current fault configuration
  POST /_faults              replace it, e.g. {"fail_500": 0.1, "sleep": 0.05,
                             "sleep_seconds": 3, "too_many": 0.05,
                             "retry_after": 1, "only_first_attempt": false};
                             {} = no faults; "seed": N reseeds the generator
  GET  /_status              {"status": forced status or null}
  POST /_status              {"status": 410} forces that status (200..599) on
                             every following webhook; {"status": null} ends it
  POST /_reset               clears everything: counters, applied messages,
                             requests, faults, forced status; reseeds --seed
  POST /_shutdown            answers, then stops the server
"""

import argparse
import base64
import binascii
import collections
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 1024 * 1024            # webhook and control bodies: 413 above this
DRAIN_LIMIT = 16 * 1024 * 1024    # unread oversized bodies up to this are drained
REQUEST_BODY_KEEP = 64 * 1024     # body text kept per /_requests entry
HOST = "127.0.0.1"

# The fault kinds, in the order their probabilities are stacked.
FAULT_KINDS = ("fail_500", "drop_after_apply", "sleep", "too_many",
               "unavailable", "gone")
FAULT_DEFAULTS = {"sleep_seconds": 3.0, "retry_after": 1,
                  "only_first_attempt": False}


class HttpFail(Exception):
    """An error answer decided while reading the request."""

    def __init__(self, status, message, close=False, outcome="bad_request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.outcome = outcome


def decode_secret(secret):
    """whsec_<base64> -> key bytes (the prefix is optional)."""
    s = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    s = s.strip()
    try:
        key = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("secret is not base64 after whsec_: %r" % secret)
    if not key:
        raise ValueError("empty secret")
    return key


def sign(key, msg_id, timestamp, body):
    """Standard Webhooks v1 signature (raw HMAC bytes)."""
    data = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(key, data, hashlib.sha256).digest()


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class State:
    """Everything the handlers share; all of it guarded by self.lock."""

    def __init__(self, seed, keep_requests, journal=None):
        self.lock = threading.Lock()
        self.seed = seed
        self.keep_requests = keep_requests
        self.journal = journal           # open file (append), or None
        self.restored = 0
        self.connections_open = 0
        self.connections_total = 0
        self.in_flight = 0
        self._clear()
        if journal is not None:
            self.restore()

    def reset(self):
        """POST /_reset: clear everything except open connections and
        in-flight requests, the journal included.  Caller holds the lock."""
        self._clear()
        if self.journal is not None:
            self.journal.seek(0)
            self.journal.truncate()
            self.restored = 0

    def _clear(self):
        self.rng = random.Random(self.seed)
        self.faults = {}                 # probabilities etc., as configured
        self.forced_status = None
        self.received = 0
        self.duplicates = 0
        self.bad_signature = 0
        self.order_violations = 0
        self.bad_requests = 0
        self.too_large = 0
        self.method_not_allowed = 0
        self.id_mismatch = 0
        self.fault_counts = dict.fromkeys(FAULT_KINDS + ("forced_status",), 0)
        self.applied = []                # entries in application order
        self.applied_ids = {}            # id -> entry
        self.received_by_id = collections.Counter()
        self.last_seq = {}               # key -> last applied seq
        self.requests = collections.deque(maxlen=self.keep_requests or None)
        self.request_no = 0

    def _index(self, entry):
        """Make an applied entry known: deduplication, key order."""
        self.applied.append(entry)
        self.applied_ids[entry["id"]] = entry
        if entry["key"] is not None and entry["seq"] is not None:
            self.last_seq[entry["key"]] = entry["seq"]

    def remember(self, entry):
        """Record an applied entry and journal it.  Caller holds the lock."""
        self._index(entry)
        if self.journal is not None:
            self.journal.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self.journal.flush()

    def restore(self):
        """Read the journal back (constructor only).  A last line cut short
        by a kill is skipped (its request was not answered, so it comes
        again) and terminated, so that the next entry starts a line."""
        self.journal.seek(0)
        text = self.journal.read()
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry["id"] not in self.applied_ids:
                self._index(entry)
                self.restored += 1
        if text and not text.endswith("\n"):
            self.journal.write("\n")
            self.journal.flush()

    def fault_config(self):
        cfg = {k: self.faults.get(k, 0.0) for k in FAULT_KINDS}
        for k, v in FAULT_DEFAULTS.items():
            cfg[k] = self.faults.get(k, v)
        cfg["seed"] = self.seed
        return cfg

    def draw_fault(self, attempt):
        """One draw per request; None or a FAULT_KINDS name."""
        u = self.rng.random()
        if self.faults.get("only_first_attempt") and attempt > 1:
            return None
        acc = 0.0
        for kind in FAULT_KINDS:
            p = self.faults.get(kind, 0.0)
            if p <= 0:
                continue
            acc += p
            if u < acc:
                return kind
        return None

    def stats(self):
        return {
            "received": self.received,
            "applied": len(self.applied),
            "duplicates": self.duplicates,
            "bad_signature": self.bad_signature,
            "order_violations": self.order_violations,
            "faults": dict(self.fault_counts),
            "in_flight": self.in_flight,
            "bad_requests": self.bad_requests,
            "too_large": self.too_large,
            "method_not_allowed": self.method_not_allowed,
            "id_mismatch": self.id_mismatch,
            "forced_status": self.forced_status,
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "seed": self.seed,
            "restored": self.restored,
        }


def parse_faults(obj):
    """Validate a POST /_faults body; returns (faults dict, new seed or None)."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    faults, seed = {}, None
    for k, v in obj.items():
        if k in FAULT_KINDS:
            if not is_number(v) or not 0.0 <= v <= 1.0:
                raise ValueError("%s must be a probability 0..1" % k)
            faults[k] = float(v)
        elif k == "sleep_seconds":
            if not is_number(v) or v < 0 or v > 3600:
                raise ValueError("sleep_seconds must be a number 0..3600")
            faults[k] = float(v)
        elif k == "retry_after":
            if not is_int(v) or v < 0:
                raise ValueError("retry_after must be an integer >= 0")
            faults[k] = v
        elif k == "only_first_attempt":
            if not isinstance(v, bool):
                raise ValueError("only_first_attempt must be true or false")
            faults[k] = v
        elif k == "seed":
            if not is_int(v):
                raise ValueError("seed must be an integer")
            seed = v
        else:
            raise ValueError("unknown fault setting %r (known: %s)" % (
                k, ", ".join(FAULT_KINDS + tuple(FAULT_DEFAULTS) + ("seed",))))
    return faults, seed


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 256      # a burst of ~64 connects must not overflow

    def __init__(self, addr, handler, state, keys, tolerance, log_file,
                 stop_event, verbose):
        self.state = state
        self.keys = keys
        self.tolerance = tolerance
        self.log_file = log_file
        self.log_lock = threading.Lock()
        self.stop_event = stop_event
        self.verbose = verbose
        super().__init__(addr, handler)

    def server_bind(self):
        # HTTPServer.server_bind would resolve the host name (getfqdn).
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = self.server_address[1]

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        if self.verbose or not isinstance(exc, OSError):
            sys.stderr.write("webhook_receiver: error with %s:\n%s" % (
                client_address, traceback.format_exc()))
            sys.stderr.flush()

    def log_line(self, obj):
        if self.log_file is None:
            return
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self.log_lock:
            try:
                self.log_file.write(line)
                self.log_file.flush()
            except (OSError, ValueError):
                pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "eo-webhook-receiver/1"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 600                  # idle keep-alive connections; see --idle-timeout

    # -- plumbing -----------------------------------------------------------

    def setup(self):
        super().setup()
        st = self.server.state
        with st.lock:
            st.connections_open += 1
            st.connections_total += 1
        self._counted = True

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self._uncount()

    def _uncount(self):
        """The connection no longer counts as open.  Called before an answer
        that ends it (Connection: close, a shutdown) is sent, too: once the
        sender has that answer it may open a new connection at once, before
        this thread has finished tearing the old one down."""
        if getattr(self, "_counted", False):
            st = self.server.state
            with st.lock:
                st.connections_open -= 1
            self._counted = False

    def log_message(self, format, *args):
        if self.server.verbose:
            sys.stderr.write("webhook_receiver: %s - %s\n" % (
                self.address_string(), format % args))
            sys.stderr.flush()

    def __getattr__(self, name):
        # Every method (GET, POST, PUT, HEAD, BREW, ...) goes to _dispatch,
        # so that a wrong one gets 405 rather than the base class's 501.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def handle_expect_100(self):
        # Refuse an oversized body before the client sends it.
        self._expect_too_large = False
        cl = self.headers.get("Content-Length")
        if cl is not None:
            try:
                if int(cl.strip()) > MAX_BODY:
                    self._expect_too_large = True
                    return True     # _dispatch answers 413 without reading
            except ValueError:
                return True         # _read_body answers 400
        return super().handle_expect_100()

    def _respond(self, status, obj=None, headers=(), close=False, raw=None):
        if raw is not None:
            body, ctype = raw, "text/plain; charset=utf-8"
        else:
            body = (json.dumps(obj) + "\n").encode() if obj is not None else b""
            ctype = "application/json"
        no_body = status in (204, 304) or status < 200
        self._leave_in_flight()
        self.send_response(status)
        if not no_body:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self._uncount()
            self.send_header("Connection", "close")   # sets close_connection
        self.end_headers()
        if body and not no_body and self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        """The request body as bytes (at most MAX_BODY), or HttpFail."""
        if getattr(self, "_expect_too_large", False):
            raise HttpFail(413, "body larger than %d bytes" % MAX_BODY,
                           close=True, outcome="too_large")
        te = self.headers.get("Transfer-Encoding")
        if te is not None and te.strip().lower() != "identity":
            if te.strip().lower() != "chunked":
                raise HttpFail(501, "unsupported Transfer-Encoding", close=True)
            return self._read_chunked()
        cl = self.headers.get_all("Content-Length")
        if not cl:
            return b""
        if len(set(v.strip() for v in cl)) != 1:
            raise HttpFail(400, "conflicting Content-Length", close=True)
        try:
            n = int(cl[0].strip())
            if n < 0:
                raise ValueError
        except ValueError:
            raise HttpFail(400, "bad Content-Length", close=True)
        if n > MAX_BODY:
            keep = n <= DRAIN_LIMIT and self._drain(n)
            raise HttpFail(413, "body larger than %d bytes" % MAX_BODY,
                           close=not keep, outcome="too_large")
        body = self._read_exact(n)
        if body is None:
            raise HttpFail(400, "body shorter than Content-Length", close=True)
        return body

    def _read_exact(self, n):
        parts, left = [], n
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                return None
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def _drain(self, n):
        while n > 0:
            chunk = self.rfile.read(min(n, 65536))
            if not chunk:
                return False
            n -= len(chunk)
        return True

    def _read_chunked(self):
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise HttpFail(400, "bad chunk size line", close=True)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError
            except ValueError:
                raise HttpFail(400, "bad chunk size", close=True)
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise HttpFail(413, "body larger than %d bytes" % MAX_BODY,
                               close=True, outcome="too_large")
            data = self._read_exact(size)
            if data is None or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise HttpFail(400, "bad chunk", close=True)
            parts.append(data)
        for _ in range(100):                # trailers up to the blank line
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
        return b"".join(parts)

    def _dispatch(self):
        url = urlsplit(self.path)
        path = url.path or "/"
        is_hook = not path.startswith("/_")
        st = self.server.state
        if is_hook:
            with st.lock:
                st.in_flight += 1
        self._in_flight_counted = is_hook
        try:
            try:
                body = self._read_body()
            except HttpFail as e:
                if is_hook:
                    with st.lock:
                        if self.command == "POST":
                            st.received += 1
                        if e.outcome == "too_large":
                            st.too_large += 1
                        else:
                            st.bad_requests += 1
                    self._finish_hook(None, e.outcome, e.status, b"", None,
                                      detail=e.message)
                self._respond(e.status, {"error": e.message}, close=e.close)
                return
            if is_hook:
                if self.command != "POST":
                    with st.lock:
                        st.method_not_allowed += 1
                    self._finish_hook(None, "method_not_allowed", 405, body,
                                      None)
                    self._respond(405, {"error": "use POST"},
                                  headers=[("Allow", "POST")])
                else:
                    self._webhook(body)
            else:
                self._control(path, url.query, body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except OSError:
            self.close_connection = True
        except Exception:
            sys.stderr.write("webhook_receiver: internal error:\n%s"
                             % traceback.format_exc())
            sys.stderr.flush()
            try:
                self._respond(500, {"error": "internal error"}, close=True)
            except OSError:
                pass
            self.close_connection = True
        finally:
            self._expect_too_large = False
            self._leave_in_flight()

    def _leave_in_flight(self):
        """A counted webhook request is no longer in flight: called just
        before its answer goes out (the sender may start its next request
        the moment it reads it, before this thread is done) or when it ends
        without one."""
        if getattr(self, "_in_flight_counted", False):
            self._in_flight_counted = False
            st = self.server.state
            with st.lock:
                st.in_flight -= 1

    # -- webhooks -----------------------------------------------------------

    def _verify(self, msg_id, body):
        """None when the signature is good, else the reason."""
        ts = self.headers.get("webhook-timestamp")
        sig = self.headers.get("webhook-signature")
        if not msg_id or self.headers.get("webhook-id") is None:
            return "missing webhook-id"
        if ts is None:
            return "missing webhook-timestamp"
        if sig is None:
            return "missing webhook-signature"
        ts = ts.strip()
        try:
            t = int(ts)
        except ValueError:
            return "bad webhook-timestamp"
        if abs(time.time() - t) > self.server.tolerance:
            return "webhook-timestamp outside tolerance"
        given = []
        for token in sig.split():
            version, _, value = token.partition(",")
            if version != "v1" or not value:
                continue
            try:
                given.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
        if not given:
            return "no v1 signature"
        ok = False
        for key in self.server.keys:
            expected = sign(key, msg_id, ts, body)
            for g in given:
                # no early exit: every comparison is made
                ok |= hmac.compare_digest(expected, g)
        return None if ok else "signature mismatch"

    def _webhook(self, body):
        srv, st, h = self.server, self.server.state, self.headers
        wid = h.get("webhook-id")
        ikey = h.get("Idempotency-Key")
        msg_id = (wid if wid is not None else ikey)
        msg_id = msg_id.strip() if msg_id is not None else None
        topic = h.get("eo-topic")
        key = h.get("eo-key")
        with st.lock:
            st.received += 1
            attempt = 0
            if msg_id:
                st.received_by_id[msg_id] += 1
                attempt = st.received_by_id[msg_id]
            if wid is not None and ikey is not None and wid.strip() != ikey.strip():
                st.id_mismatch += 1

        if srv.keys:
            reason = self._verify(msg_id, body)
            if reason is not None:
                with st.lock:
                    st.bad_signature += 1
                self._finish_hook(msg_id, "bad_signature", 401, body, None,
                                  detail=reason)
                self._respond(401, {"error": "bad signature", "detail": reason})
                return
        if not msg_id:
            with st.lock:
                st.bad_requests += 1
            self._finish_hook(None, "bad_request", 400, body, None,
                              detail="missing webhook-id / Idempotency-Key")
            self._respond(400, {"error": "missing webhook-id"})
            return

        with st.lock:
            forced = st.forced_status
            if forced is not None:
                st.fault_counts["forced_status"] += 1
                fault = None
            else:
                fault = st.draw_fault(attempt)
                if fault is not None:
                    st.fault_counts[fault] += 1
            retry_after = str(st.faults.get("retry_after",
                                            FAULT_DEFAULTS["retry_after"]))
            sleep_seconds = st.faults.get("sleep_seconds",
                                          FAULT_DEFAULTS["sleep_seconds"])

        if forced is not None:
            hdrs = [("Retry-After", retry_after)] if forced in (429, 503) else []
            self._finish_hook(msg_id, "forced_status", forced, body, None)
            self._respond(forced, {"forced_status": forced}, headers=hdrs)
            return
        if fault == "fail_500":
            self._finish_hook(msg_id, "rejected", 500, body, fault)
            self._respond(500, {"fault": fault})
            return
        if fault == "too_many":
            self._finish_hook(msg_id, "rejected", 429, body, fault)
            self._respond(429, {"fault": fault},
                          headers=[("Retry-After", retry_after)])
            return
        if fault == "unavailable":
            self._finish_hook(msg_id, "rejected", 503, body, fault)
            self._respond(503, {"fault": fault},
                          headers=[("Retry-After", retry_after)])
            return
        if fault == "gone":
            self._finish_hook(msg_id, "rejected", 410, body, fault)
            self._respond(410, {"fault": fault})
            return
        if fault == "sleep":
            # Never applied: the sender has most likely given up meanwhile.
            self._finish_hook(msg_id, "slept", 503, body, fault)
            srv.stop_event.wait(sleep_seconds)
            try:
                self._respond(503, {"fault": fault}, close=True)
            except OSError:
                self.close_connection = True
            return

        outcome, order_violation = self._apply(msg_id, topic, key, body)
        if fault == "drop_after_apply":
            self._finish_hook(msg_id, outcome, None, body, fault,
                              order_violation=order_violation)
            self.close_connection = True
            self._uncount()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                self.connection.close()
            except OSError:
                pass
            return
        self._finish_hook(msg_id, outcome, 200, body, None,
                          order_violation=order_violation)
        self._respond(200, {"outcome": outcome, "id": msg_id})

    def _apply(self, msg_id, topic, key, body):
        """Dedup and record; returns (outcome, order_violation)."""
        seq = None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0]
        if ctype.strip().lower() == "application/json":
            try:
                doc = json.loads(body)
                if isinstance(doc, dict) and is_int(doc.get("seq")):
                    seq = doc["seq"]
            except (ValueError, UnicodeDecodeError, RecursionError):
                pass
        ts = self.headers.get("webhook-timestamp")
        try:
            ts = int(ts.strip()) if ts is not None else None
        except ValueError:
            pass
        st = self.server.state
        with st.lock:
            if msg_id in st.applied_ids:
                st.duplicates += 1
                return "duplicate", False
            violation = False
            if key is not None and seq is not None:
                last = st.last_seq.get(key)
                if last is not None and seq <= last:
                    violation = True
                    st.order_violations += 1
            entry = {
                "id": msg_id,
                "topic": topic,
                "key": key,
                "seq": seq,
                "attempt_header_timestamp": ts,
                "order": len(st.applied) + 1,
                "order_violation": violation,
                "applied_at": time.time(),
                "body": body.decode("utf-8", "replace"),
            }
            st.remember(entry)
            return "applied", violation

    def _finish_hook(self, msg_id, outcome, status, body, fault,
                     detail=None, order_violation=False):
        """Record a webhook-path request in /_requests and the log."""
        st = self.server.state
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        text = body[:REQUEST_BODY_KEEP].decode("utf-8", "replace")
        with st.lock:
            st.request_no += 1
            rec = {
                "n": st.request_no,
                "time": time.time(),
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body": text,
                "body_truncated": len(body) > REQUEST_BODY_KEEP,
                "id": msg_id,
                "status": status,
                "outcome": outcome,
                "fault": fault,
            }
            if detail is not None:
                rec["detail"] = detail
            if order_violation:
                rec["order_violation"] = True
            st.requests.append(rec)
        self.server.log_line({
            "time": rec["time"], "id": msg_id, "topic": headers.get("eo-topic"),
            "key": headers.get("eo-key"), "method": self.command,
            "path": self.path, "status": status, "outcome": outcome,
            "fault": fault, "detail": detail,
        })

    # -- control ------------------------------------------------------------

    def _control(self, path, query, body):
        routes = {
            "/_health": ("GET",),
            "/_stats": ("GET",),
            "/_applied": ("GET",),
            "/_requests": ("GET",),
            "/_faults": ("GET", "POST"),
            "/_status": ("GET", "POST"),
            "/_reset": ("POST",),
            "/_shutdown": ("POST",),
        }
        path = path.rstrip("/") or path
        if path not in routes:
            self._respond(404, {"error": "unknown endpoint", "endpoints":
                                sorted(routes)})
            return
        allowed = routes[path]
        method = "GET" if self.command == "HEAD" and "GET" in allowed \
            else self.command
        if method not in allowed:
            self._respond(405, {"error": "method not allowed"},
                          headers=[("Allow", ", ".join(allowed))])
            return
        st = self.server.state
        if method == "POST" and path in ("/_faults", "/_status"):
            try:
                obj = json.loads(body.decode("utf-8")) if body.strip() else {}
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                self._respond(400, {"error": "malformed JSON: %s" % e})
                return

        if path == "/_health":
            self._respond(200, {"ok": True})
        elif path == "/_stats":
            with st.lock:
                out = st.stats()
            self._respond(200, out)
        elif path == "/_applied":
            with st.lock:
                out = [dict(e, received_count=st.received_by_id[e["id"]])
                       for e in st.applied]
            self._respond(200, out)
        elif path == "/_requests":
            qs = parse_qs(query)
            try:
                limit = int(qs.get("limit", ["100"])[-1])
                if limit < 0:
                    raise ValueError
            except ValueError:
                self._respond(400, {"error": "limit must be an integer >= 0"})
                return
            with st.lock:
                reqs = list(st.requests)
            if limit:
                reqs = reqs[-limit:]
            self._respond(200, reqs)
        elif path == "/_faults":
            if method == "POST":
                try:
                    faults, seed = parse_faults(obj)
                except ValueError as e:
                    self._respond(400, {"error": str(e)})
                    return
                with st.lock:
                    st.faults = faults
                    if seed is not None:
                        st.seed = seed
                        st.rng = random.Random(seed)
                    out = st.fault_config()
            else:
                with st.lock:
                    out = st.fault_config()
            self._respond(200, out)
        elif path == "/_status":
            if method == "POST":
                if not isinstance(obj, dict) or "status" not in obj:
                    self._respond(400, {"error": 'expected {"status": N|null}'})
                    return
                s = obj["status"]
                if s is not None and (not is_int(s) or not 200 <= s <= 599):
                    self._respond(400, {"error": "status must be 200..599 or null"})
                    return
                with st.lock:
                    st.forced_status = s
            with st.lock:
                out = {"status": st.forced_status}
            self._respond(200, out)
        elif path == "/_reset":
            with st.lock:
                st.reset()
            self._respond(200, {"ok": True})
        elif path == "/_shutdown":
            self._respond(200, {"ok": True, "shutting_down": True}, close=True)
            self.server.stop_event.set()


def write_port_file(path, port):
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Test receiver for eo_processing webhook deliveries.")
    ap.add_argument("--port", type=int, default=0,
                    help="port to listen on; 0 picks a free one (default)")
    ap.add_argument("--host", default=HOST,
                    help="must be 127.0.0.1 (anything else is refused)")
    ap.add_argument("--secret", action="append", default=[],
                    help="whsec_<base64> signing secret; repeatable; "
                         "without any, signatures are not checked")
    ap.add_argument("--port-file", help="write the bound port here")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the fault generator (default 0)")
    ap.add_argument("--log", help="append one JSON line per webhook request")
    ap.add_argument("--tolerance", type=float, default=300.0,
                    help="allowed webhook-timestamp skew in seconds (300)")
    ap.add_argument("--idle-timeout", type=float, default=600.0,
                    help="close a connection idle this long (600 s)")
    ap.add_argument("--keep-requests", type=int, default=10000,
                    help="requests kept for /_requests (0 = unlimited)")
    ap.add_argument("--journal",
                    help="append applied messages here and read them back "
                         "at start (deduplication survives a restart)")
    ap.add_argument("--verbose", action="store_true",
                    help="log every request to stderr")
    ap.add_argument("--tls-cert", help="also serve webhooks over TLS with this "
                    "certificate (PEM); the control endpoints stay on --port")
    ap.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    ap.add_argument("--tls-port-file", help="write the TLS listener's port here")
    a = ap.parse_args(argv)

    if a.host != HOST:
        ap.error("refusing to listen on %r: only %s is allowed" % (a.host, HOST))
    if not 0 <= a.port <= 65535:
        ap.error("--port must be 0..65535")
    if a.keep_requests < 0:
        ap.error("--keep-requests must be >= 0")
    keys = []
    for s in a.secret:
        try:
            keys.append(decode_secret(s))
        except ValueError as e:
            ap.error(str(e))

    log_file = open(a.log, "a", encoding="utf-8") if a.log else None
    journal = open(a.journal, "a+", encoding="utf-8") if a.journal else None
    Handler.timeout = a.idle_timeout if a.idle_timeout > 0 else None
    stop = threading.Event()
    state = State(a.seed, a.keep_requests, journal)
    try:
        server = Server((HOST, a.port), Handler, state, keys, a.tolerance,
                        log_file, stop, a.verbose)
    except OSError as e:
        sys.stderr.write("webhook_receiver: cannot listen on %s:%d: %s\n"
                         % (HOST, a.port, e))
        return 1
    port = server.server_address[1]

    # An optional second listener speaking TLS, sharing the same state.
    tls_server = None
    if a.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        try:
            tls_server = Server((HOST, 0), Handler, state, keys, a.tolerance,
                                log_file, stop, a.verbose)
        except OSError as e:
            sys.stderr.write("webhook_receiver: cannot listen for TLS: %s\n" % e)
            return 1
        tls_server.socket = ctx.wrap_socket(tls_server.socket, server_side=True)
        threading.Thread(target=tls_server.serve_forever,
                         kwargs={"poll_interval": 0.2},
                         name="serve_tls", daemon=True).start()
        if a.tls_port_file:
            write_port_file(a.tls_port_file, tls_server.server_address[1])

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    serving = threading.Thread(target=server.serve_forever,
                               kwargs={"poll_interval": 0.2},
                               name="serve_forever", daemon=True)
    serving.start()
    if a.port_file:
        write_port_file(a.port_file, port)
    sys.stdout.write("listening on %s:%d\n" % (HOST, port))
    sys.stdout.flush()

    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    if log_file is not None:
        with server.log_lock:
            log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
