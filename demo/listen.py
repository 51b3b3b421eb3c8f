#!/usr/bin/python3
"""demo/listen.py: the downstream service of the demo.

LISTENs on one channel of the demo cluster (unix socket only) and, like a
consumer of an at-least-once feed, deduplicates by the envelope's "id".
Stops when --expect notifications with distinct ids have arrived, after
--idle seconds without one, or after --max-seconds; then prints one line of
key=value results: received, distinct, duplicates, per-key order, and the
publish -> receive latency computed from the envelope's "published_at".
"""

import argparse
import datetime
import json
import select
import time

import psycopg2
import psycopg2.extensions


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--ready-file", required=True)
    a = p.parse_args()

    conn = psycopg2.connect(a.dsn)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    conn.cursor().execute('LISTEN "%s"' % a.channel.replace('"', '""'))
    open(a.ready_file, "w").close()

    seen = {}
    received = 0
    out_of_order = 0
    last_id_per_key = {}
    latencies = []
    start = last = time.time()
    while len(seen) < a.expect:
        now = time.time()
        if now - start > a.max_seconds or now - last > a.idle:
            break
        if select.select([conn], [], [], 0.5) == ([], [], []):
            continue
        conn.poll()
        while conn.notifies:
            n = conn.notifies.pop(0)
            t = time.time()
            last = t
            received += 1
            env = json.loads(n.payload)
            if env["id"] in seen:
                continue            # a duplicate delivery: absorbed
            seen[env["id"]] = True
            key = env.get("key")
            if key is not None:
                if key in last_id_per_key and env["id"] < last_id_per_key[key]:
                    out_of_order += 1
                last_id_per_key[key] = env["id"]
            published = datetime.datetime.strptime(
                env["published_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            latencies.append((t - published) * 1000.0)

    latencies.sort()

    def pct(q):
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    print("received=%d distinct=%d duplicates=%d keys=%d out_of_order=%d "
          "latency_p50_ms=%.1f latency_p99_ms=%.1f"
          % (received, len(seen), received - len(seen), len(last_id_per_key),
             out_of_order, pct(0.50), pct(0.99)))


if __name__ == "__main__":
    main()
