#!/usr/bin/python3
"""outbox_listener.py: the LISTEN client of test/bench/outbox_bench.sh.

  listen   LISTEN on a channel and record (receive time, payload) of every
           notification; exits by itself (see below) and writes them to a
           TSV file: receive epoch seconds, then the payload.
  analyze  Read such a file and print key=value statistics: count, distinct
           ids, first/last receive time, latency publish -> receive from the
           envelope's "published_at" (or "published_at" of a hand-made
           payload), and optionally client commit ack -> receive by matching
           the payload's "c" (pgbench client id) and "n" (its transaction
           counter) with pgbench's per-transaction log (-l).

The listen loop does as little as possible (no JSON parsing): on a machine
with two CPUs the listener competes with the server and pgbench.

listen exits when
  - the file --expect-file exists and holds a number N, and N notifications
    have arrived;
  - or --expect-file exists and nothing arrived for --idle seconds;
  - or --max-seconds have passed since it started;
  - or it gets SIGTERM / SIGINT.
It writes its file in every case.  It creates --ready-file once LISTEN is in
effect.
"""

import argparse
import datetime
import json
import os
import select
import signal
import sys
import time


def cmd_listen(a):
    import psycopg2
    import psycopg2.extensions

    conn = psycopg2.connect(a.dsn)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    cur = conn.cursor()
    cur.execute('LISTEN "%s"' % a.channel.replace('"', '""'))
    with open(a.ready_file, "w") as f:
        f.write("%d\n" % os.getpid())

    stop = [False]

    def on_signal(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    received = []           # (receive time, payload)
    append = received.append
    start = time.time()
    last_arrival = start
    expected = None
    next_check = 0.0
    why = "max-seconds"
    while not stop[0]:
        now = time.time()
        if now - start >= a.max_seconds:
            why = "max-seconds"
            break
        if now >= next_check:
            next_check = now + 0.05
            if expected is None and os.path.exists(a.expect_file):
                try:
                    with open(a.expect_file) as f:
                        expected = int(f.read().strip())
                    last_arrival = max(last_arrival, now)
                except ValueError:
                    expected = None     # being written: read it again
            if expected is not None:
                if len(received) >= expected:
                    why = "expected"
                    break
                if now - last_arrival >= a.idle:
                    why = "idle"
                    break
        try:
            r, _, _ = select.select([conn], [], [], 0.05)
        except InterruptedError:
            continue
        if not r:
            continue
        conn.poll()
        if conn.notifies:
            t = time.time()
            last_arrival = t
            for n in conn.notifies:
                append((t, n.payload))
            conn.notifies.clear()
    if stop[0]:
        why = "signal"

    with open(a.out, "w") as f:
        for t, p in received:
            f.write("%.6f\t%s\n" % (t, p.replace("\t", " ").replace("\n", " ")))
    conn.close()
    print("received=%d expected=%s exit=%s" % (len(received), expected, why))


def parse_ts(s):
    # "2026-11-26T20:55:08.123456Z" (eo envelope) or what PostgreSQL's
    # to_json(timestamptz) gives ("2026-11-26T20:55:08.123456+00:00").
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(s).timestamp()


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def cmd_analyze(a):
    recs = []
    with open(a.file) as f:
        for line in f:
            t, _, p = line.rstrip("\n").partition("\t")
            recs.append((float(t), p))
    ids = set()
    lat = []
    keyed = {}
    bad = 0
    for t, p in recs:
        try:
            m = json.loads(p)
        except ValueError:
            bad += 1
            continue
        mid = m.get("id")
        ids.add(mid)
        pa = m.get("published_at")
        if pa is not None:
            lat.append((t - parse_ts(pa)) * 1000.0)
        body = m.get("payload")
        if isinstance(body, dict) and "c" in body and "n" in body:
            keyed[(int(body["c"]), int(body["n"]))] = t
    out = {
        "count": len(recs),
        "distinct": len(ids),
        "unparsable": bad,
        "first": "%.6f" % recs[0][0] if recs else "nan",
        "last": "%.6f" % recs[-1][0] if recs else "nan",
    }
    lat.sort()
    if lat:
        out.update(pub_p50="%.2f" % pct(lat, 50), pub_p99="%.2f" % pct(lat, 99),
                   pub_max="%.2f" % lat[-1], pub_n=len(lat))
    if a.pgbench_log:
        # pgbench -l lines: client_id transaction_no latency_us script_no
        # epoch_s epoch_us [lag_us]; transaction_no is the number of transactions
        # the client has finished including this one, like the workload's n (-D n=0, \set n :n + 1).
        ack = []
        matched = 0
        for path in a.pgbench_log:
            with open(path) as f:
                for line in f:
                    v = line.split()
                    if len(v) < 6 or v[2] == "skipped":
                        continue
                    key = (int(v[0]), int(v[1]) + a.n_offset)
                    t_recv = keyed.get(key)
                    if t_recv is None:
                        continue
                    matched += 1
                    ack.append((t_recv - (int(v[4]) + int(v[5]) / 1e6)) * 1000.0)
        ack.sort()
        out["ack_matched"] = matched
        if ack:
            out.update(ack_p50="%.2f" % pct(ack, 50), ack_p99="%.2f" % pct(ack, 99),
                       ack_max="%.2f" % ack[-1], ack_min="%.2f" % ack[0])
    print(" ".join("%s=%s" % kv for kv in out.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("listen")
    l.add_argument("--dsn", required=True)
    l.add_argument("--channel", default="bench")
    l.add_argument("--out", required=True)
    l.add_argument("--ready-file", required=True)
    l.add_argument("--expect-file", required=True)
    l.add_argument("--idle", type=float, default=10.0)
    l.add_argument("--max-seconds", type=float, default=600.0)
    z = sub.add_parser("analyze")
    z.add_argument("--file", required=True)
    z.add_argument("--pgbench-log", nargs="*")
    z.add_argument("--n-offset", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "listen":
        cmd_listen(a)
    else:
        cmd_analyze(a)


if __name__ == "__main__":
    sys.exit(main())
