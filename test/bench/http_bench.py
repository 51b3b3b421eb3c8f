#!/usr/bin/python3
"""http_bench.py: the clients of test/bench/http_bench.sh (psycopg 3).

  drain        Enable the relay (ALTER SYSTEM SET eo.relay_enabled = on +
               pg_reload_conf()) and poll eo.stats every --poll seconds
               until the destination has nothing pending, in flight or
               retrying and delivered_total >= --expect.  Prints key=value:
               t0 (the reload), t_done (the poll that saw it done), polls,
               the destination's final counters, lsn: the WAL insert
               position read by that last poll, and poll_cpu: the CPU
               seconds the polling took (this process and its backend).
               With --counter, most polls read only the relay's counter
               (delivered_since_start in eo.relay_status, shared memory:
               far cheaper than eo.stats, which counts deliveries), and
               eo.stats is read once that counter has reached --expect, or
               every half second in any case.
  publish-at   Publish one message per transaction (autocommit) at a steady
               --rate for --seconds from --clients connections (threads),
               on a fixed schedule (a late publish does not shift the ones
               after it), after one untimed message per connection; writes
               a TSV file of message id, then the time the COMMIT returned
               (epoch seconds).  Prints key=value: sent, achieved rate, how
               late the publishes started (p99, max).
  handwritten  The outbox relay a user writes by hand: in a loop,
                 BEGIN; SELECT id, payload FROM app_outbox ORDER BY id
                 LIMIT --batch FOR UPDATE SKIP LOCKED; POST each one to
                 --url (http.client, one keep-alive connection, the id as
                 Idempotency-Key); DELETE them; COMMIT
               until the table is empty.  Prints key=value: sent, seconds,
               and the CPU time of this process and of its backend.
  analyze      Read nginx's access log (see http_bench.sh: msec, then the
               Idempotency-Key, status, connection serial, request number
               on it) and print key=value: lines, distinct ids, extra
               lines, non-2xx, connections, first/last msec; with
               --commits (publish-at's file), commit -> request latency
               p50 / p99 / max in ms.
"""

import argparse
import http.client
import json
import os
import resource
import sys
import threading
import time
import urllib.parse

import psycopg

from outbox_listener import pct     # (the percentile of outbox_bench.sh)


def kv(**items):
    print(" ".join("%s=%s" % (k, v) for k, v in items.items()))


def cmd_drain(a):
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        cpu0 = (resource.getrusage(resource.RUSAGE_SELF), proc_cpu_seconds(backend))
        conn.execute("ALTER SYSTEM SET eo.relay_enabled = on")
        t0 = time.time()
        conn.execute("SELECT pg_reload_conf()")
        polls = 0
        row = None
        next_stats = 0.0
        while True:
            if a.counter and time.time() < next_stats:
                n = conn.execute(
                    "SELECT coalesce(sum(delivered_since_start), 0) FROM eo.relay_status"
                    " WHERE datname = current_database()").fetchone()[0]
                if n < a.expect:
                    time.sleep(a.poll)
                    continue
            next_stats = time.time() + 0.5
            row = conn.execute(
                "SELECT pending, in_flight, retrying, dead, delivered_total,"
                "       pg_current_wal_insert_lsn()::text"
                "  FROM eo.stats WHERE destination = %s", (a.destination,)).fetchone()
            polls += 1
            if row is None:
                sys.exit("destination %s is not in eo.stats" % a.destination)
            pending, in_flight, retrying, dead, delivered, lsn = row
            if pending == 0 and in_flight == 0 and retrying == 0 and delivered >= a.expect:
                break
            if time.time() - t0 > a.timeout:
                break
            time.sleep(a.poll)
        t_done = time.time()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        poll_cpu = (ru.ru_utime + ru.ru_stime - cpu0[0].ru_utime - cpu0[0].ru_stime
                    + proc_cpu_seconds(backend) - cpu0[1])
    pending, in_flight, retrying, dead, delivered, lsn = row
    kv(t0="%.6f" % t0, t_done="%.6f" % t_done, polls=polls, pending=pending,
       in_flight=in_flight, retrying=retrying, dead=dead, delivered=delivered,
       done=int(delivered >= a.expect and pending == 0 and in_flight == 0 and retrying == 0),
       lsn=lsn, poll_cpu="%.3f" % poll_cpu)


def cmd_publish_at(a):
    n = int(round(a.rate * a.seconds))
    interval = 1.0 / a.rate
    sql = "SELECT eo.publish(%s, bench_payload(%s))"
    conns = [psycopg.connect(a.dsn, autocommit=True) for _ in range(a.clients)]
    for c in conns:
        c.execute(sql, (a.topic, 0), prepare=True)      # warm up, untimed
    results = [[] for _ in conns]       # per client: (id, commit time, late by)
    start = time.time() + 0.2

    def client(k):
        # Client k publishes messages k, k + clients, ... on the common
        # schedule, so that one slow commit delays only its own client.
        cur = conns[k].cursor()
        for i in range(k, n, a.clients):
            due = start + i * interval
            now = time.time()
            if now < due:
                time.sleep(due - now)
                now = time.time()
            cur.execute(sql, (a.topic, i + 1), prepare=True)
            msg_id = cur.fetchone()[0]
            results[k].append((msg_id, time.time(), max(0.0, now - due)))  # COMMIT has returned

    threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.time()
    for c in conns:
        c.close()
    rows = [r for rs in results for r in rs]
    if len(rows) != n:
        sys.exit("published %d of %d messages" % (len(rows), n))
    with open(a.out, "w") as out:
        for msg_id, t, _ in rows:
            out.write("%s\t%.6f\n" % (msg_id, t))
    late = sorted(r[2] for r in rows)
    kv(sent=n + a.clients, timed=n, rate="%.1f" % (n / (end - start)),
       late_p99_ms="%.2f" % (pct(late, 99) * 1000), late_max_ms="%.2f" % (late[-1] * 1000))


def proc_cpu_seconds(pid):
    """utime + stime of a process (ours or our backend's), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmd_handwritten(a):
    u = urllib.parse.urlsplit(a.url)
    web = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    sent = 0
    with psycopg.connect(a.dsn) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.commit()
        cpu0 = (resource.getrusage(resource.RUSAGE_SELF), proc_cpu_seconds(backend))
        t0 = time.time()
        while True:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT id, payload FROM app_outbox ORDER BY id LIMIT %s"
                    " FOR UPDATE SKIP LOCKED", (a.batch,)).fetchall()
                if not rows:
                    break
                for msg_id, payload in rows:
                    web.request("POST", u.path, body=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Idempotency-Key": str(msg_id)})
                    resp = web.getresponse()
                    resp.read()
                    if not 200 <= resp.status < 300:
                        raise RuntimeError("HTTP %d for id %s" % (resp.status, msg_id))
                conn.execute("DELETE FROM app_outbox WHERE id = ANY(%s)",
                             ([r[0] for r in rows],))
            sent += len(rows)
        seconds = time.time() - t0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        backend_cpu = proc_cpu_seconds(backend) - cpu0[1]
    web.close()
    client_cpu = (ru.ru_utime + ru.ru_stime) - (cpu0[0].ru_utime + cpu0[0].ru_stime)
    kv(sent=sent, seconds="%.3f" % seconds, t0="%.6f" % t0,
       client_cpu="%.3f" % client_cpu, backend_cpu="%.3f" % backend_cpu)


def cmd_analyze(a):
    first = {}                  # id -> msec of its first request
    lines = non2xx = 0
    conns = set()
    t_first = t_last = None
    with open(a.log) as f:
        for line in f:
            v = line.split()
            if len(v) < 5:
                continue
            lines += 1
            t, key, status, conn = float(v[0]), v[1], v[2], v[3]
            if not status.startswith("2"):
                non2xx += 1
            conns.add(conn)
            first.setdefault(key, t)
            t_first = t if t_first is None else min(t_first, t)
            t_last = t if t_last is None else max(t_last, t)
    out = dict(lines=lines, distinct=len(first), extra=lines - len(first), non2xx=non2xx,
               connections=len(conns),
               first="%.3f" % (t_first or 0), last="%.3f" % (t_last or 0))
    if a.commits:
        lat = []
        missing = 0
        with open(a.commits) as f:
            for line in f:
                msg_id, t = line.split()
                t_req = first.get(msg_id)
                if t_req is None:
                    missing += 1
                else:
                    lat.append((t_req - float(t)) * 1000.0)
        lat.sort()
        out.update(matched=len(lat), missing=missing)
        if lat:
            out.update(p50="%.1f" % pct(lat, 50), p99="%.1f" % pct(lat, 99),
                       max="%.1f" % lat[-1], min="%.1f" % lat[0])
    kv(**out)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drain")
    d.add_argument("--dsn", required=True)
    d.add_argument("--destination", required=True)
    d.add_argument("--expect", type=int, required=True)
    d.add_argument("--poll", type=float, default=0.05)
    d.add_argument("--timeout", type=float, default=600.0)
    d.add_argument("--counter", action="store_true")
    p = sub.add_parser("publish-at")
    p.add_argument("--dsn", required=True)
    p.add_argument("--topic", default="bench.latency")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--out", required=True)
    h = sub.add_parser("handwritten")
    h.add_argument("--dsn", required=True)
    h.add_argument("--url", required=True)
    h.add_argument("--batch", type=int, default=100)
    z = sub.add_parser("analyze")
    z.add_argument("--log", required=True)
    z.add_argument("--commits")
    a = ap.parse_args()
    {"drain": cmd_drain, "publish-at": cmd_publish_at, "handwritten": cmd_handwritten,
     "analyze": cmd_analyze}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
