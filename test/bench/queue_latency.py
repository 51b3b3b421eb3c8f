#!/usr/bin/python3
"""queue_latency.py: the LISTEN-woken consumer of test/bench/queue_bench.sh.

    queue_latency.py CONNINFO QUEUE CHANNEL SECONDS [TIMELINE [RECORDS]]

Consumes the queue for SECONDS: waits for a notification on CHANNEL,
reads (eo.read, up to 100), acks, and records for every message the time
from its publishing (published_at, taken inside the publishing
transaction: an upper bound of the time since its commit) to the moment
eo.read returned it (clock_timestamp() in the same statement).  Says
"listening" on stderr once it listens.  Prints key=value statistics:
count, p50_ms, p99_ms, max_ms, over10_ms (messages slower than 10 ms).  With TIMELINE (a
file name, or "-" for none), also writes one line per message to that
file: seconds since the first message was published, and its latency in
ms (to see whether a tail is one stall or spread over the run).  With
RECORDS, writes one line per message in the format of outbox_listener.py
listen -- the moment eo.read returned it (epoch seconds), a tab, and an
envelope with its id, published_at and payload -- so that
"outbox_listener.py analyze --pgbench-log" can time it from the commit
pgbench logged for it (the payload's "c" and "n").
"""

import json
import select
import sys
import time

import psycopg


def main():
    conninfo, queue, channel, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    timeline = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    records_file = sys.argv[6] if len(sys.argv) > 6 else None
    lat = []
    published = []
    records = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("LISTEN %s" % channel)
        # queue_bench.sh starts publishing only now: a message published
        # before its consumer listens would time the consumer's start-up.
        print("listening", file=sys.stderr, flush=True)
        woken = [False]
        conn.add_notify_handler(lambda n: woken.__setitem__(0, True))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            woken[0] = False
            rows = conn.execute(
                "SELECT lease, extract(epoch FROM clock_timestamp() - published_at) * 1000,"
                " extract(epoch FROM published_at), extract(epoch FROM clock_timestamp()),"
                " id::text, to_json(published_at) #>> '{}', payload::text"
                " FROM eo.read(%s, 100)", (queue,)).fetchall()
            if rows:
                conn.execute("SELECT eo.ack(%s, %s)", (queue, [r[0] for r in rows]))
                lat.extend(float(r[1]) for r in rows)
                published.extend(float(r[2]) for r in rows)
                if records_file:
                    records.extend(rows)
                continue
            if woken[0]:
                continue
            select.select([conn.fileno()], [], [], max(0.0, min(1.0, end - time.monotonic())))
            conn.pgconn.consume_input()
            while conn.pgconn.notifies() is not None:
                pass
    if timeline and published:
        t0 = min(published)
        with open(timeline, "w") as f:
            for p, l in sorted(zip(published, lat)):
                f.write("%.3f %.2f\n" % (p - t0, l))
    if records_file:
        with open(records_file, "w") as f:
            for r in records:
                envelope = {"id": r[4], "published_at": r[5], "payload": json.loads(r[6])}
                f.write("%.6f\t%s\n" % (float(r[3]), json.dumps(envelope)))
    lat.sort()
    n = len(lat)

    def pct(p):
        return lat[min(n - 1, int(p * n))] if n else 0.0
    print("count=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f over10_ms=%d"
          % (n, pct(0.50), pct(0.99), lat[-1] if n else 0.0, sum(1 for x in lat if x > 10.0)))


if __name__ == "__main__":
    main()
