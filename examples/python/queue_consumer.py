#!/usr/bin/python3
"""queue_consumer.py: a consumer of an eo_processing queue destination, run
and checked.

    queue_consumer.py ["host=... port=... dbname=..."]

Connects with the connection string given, or with the PG* environment
variables, to a database where eo_processing is installed and the relay
runs, as a role that may create destinations (the extension's owner).  It
creates the schema queue_example_py (dropping an old one) and a queue
destination "queue_example_py" with the wake-up channel
"queue_example_py_ready", publishes keyed messages and consumes them with
two competing consumers (the loop of consume() below: LISTEN for the
wake-up, eo.read, work, eo.ack, COMMIT).  Each expectation prints
"ok N - ..." or "not ok N - ..."; the exit status is 1 if any failed.

consume() is the part to copy: the work and the ack share one transaction,
so each message is applied exactly once; a lease that ran out before the
ack (SQLSTATE QL001) rolls the work back, and the message is applied by
whoever holds it now.
"""

import select
import sys
import threading
import time

import psycopg
from psycopg import sql

SCHEMA = "queue_example_py"
QUEUE = "queue_example_py"
CHANNEL = "queue_example_py_ready"
STALE_LEASE = "QL001"


def wait_for_wakeup(conn, timeout):
    """Wait until a notification arrives on the connection (it LISTENs) or
    the timeout passes; returns whether one came."""
    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    while True:
        pgconn.consume_input()
        got = False
        while pgconn.notifies() is not None:
            got = True
        if got:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([conn.fileno()], [], [], left)


def consume(conninfo, apply, stop, batch=100, wait=30.0):
    """Consume the queue until stop() is true.  apply(conn, row) does the
    work of one message inside the transaction that acks it.  Returns the
    number of messages acked and of batches whose lease was lost."""
    acked = lost = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        # A notification that arrives while a statement runs is handed to
        # this handler: note it, and read again before waiting.
        woken = threading.Event()
        conn.add_notify_handler(lambda notify: woken.set())
        while not stop():
            woken.clear()
            # Autocommit: the leases are out once eo.read returns.
            rows = conn.execute(
                "SELECT id, lease, key, payload, attempt FROM eo.read(%s, %s)",
                (QUEUE, batch)).fetchall()
            if not rows:
                # Nothing readable: sleep until the relay (or an ack that
                # frees the next message of a key) sends the wake-up.  The
                # timeout covers leases that expire, which notify nobody.
                if not woken.is_set():
                    wait_for_wakeup(conn, wait)
                continue
            try:
                with conn.transaction():
                    for row in rows:
                        apply(conn, row)
                    conn.execute("SELECT eo.ack(%s, %s)", (QUEUE, [r[1] for r in rows]))
                acked += len(rows)
            except psycopg.Error as e:
                if e.sqlstate != STALE_LEASE:
                    raise
                lost += 1       # the work was rolled back with the ack
    return acked, lost


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


def one(conn, query, *args):
    return conn.execute(query, args).fetchone()[0]


def setup(conn):
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("CREATE TABLE {}.applied (seq bigserial PRIMARY KEY, id uuid NOT NULL,"
                         " key text NOT NULL, n integer NOT NULL)").format(sql.Identifier(SCHEMA)))
    if one(conn, "SELECT count(*) FROM eo.destination WHERE name = %s", QUEUE):
        conn.execute("SELECT eo.drop_destination(%s, force => true)", (QUEUE,))
    conn.execute("SELECT eo.create_destination(%s, 'queue', %s)",
                 (QUEUE, '{"channel": "%s", "visibility_timeout": "30s"}' % CHANNEL))
    conn.execute("SELECT eo.subscribe(%s, %s)", (QUEUE + ".job", QUEUE))


def publish(conn, first, count, keys):
    with conn.transaction():
        conn.execute("SELECT eo.publish(%s, jsonb_build_object('n', g), 'key-' || (g %% %s::int))"
                     " FROM generate_series(%s::int, %s::int) AS g",
                     (QUEUE + ".job", keys, first, first + count - 1))


def apply_row(conn, row):
    conn.execute(sql.SQL("INSERT INTO {}.applied (id, key, n) VALUES (%s, %s, %s)")
                 .format(sql.Identifier(SCHEMA)), (row[0], row[2], row[3]["n"]))


def main():
    conninfo = sys.argv[1] if len(sys.argv) > 1 else ""
    c = Checks()
    conn = psycopg.connect(conninfo, autocommit=True)
    setup(conn)
    applied = sql.SQL("SELECT count(*) FROM {}.applied").format(sql.Identifier(SCHEMA))

    # Messages published while no consumer runs wait in the queue.
    total = 400
    publish(conn, 1, total, 10)
    deadline = time.monotonic() + 60
    while one(conn, "SELECT coalesce(ready, 0) FROM eo.stats WHERE destination = %s",
              QUEUE) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    c.ok(one(conn, "SELECT ready FROM eo.stats WHERE destination = %s", QUEUE) == total,
         "messages published with no consumer running wait in the queue")

    # Two consumers compete until everything (and one late message) is applied.
    done = threading.Event()
    results = []

    def run():
        results.append(consume(conninfo, apply_row, done.is_set, batch=50, wait=30.0))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while one(conn, applied) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    c.ok(one(conn, applied) == total, "two consumers applied the backlog")

    # Idle consumers wait on LISTEN; a new message wakes one well before
    # its 30-second timeout.
    started = time.monotonic()
    publish(conn, total + 1, 1, 10)
    while one(conn, applied) < total + 1 and time.monotonic() - started < 20:
        time.sleep(0.01)
    waited = time.monotonic() - started
    c.ok(one(conn, applied) == total + 1 and waited < 10,
         "a message published later wakes an idle consumer (%.0f ms)" % (waited * 1000))

    done.set()
    conn.execute("SELECT pg_notify(%s, 'stop')", (CHANNEL,))
    for t in threads:
        t.join(60)
    c.ok(not any(t.is_alive() for t in threads) and sum(r[0] for r in results) == total + 1,
         "the consumers acked every message", results)

    dup = one(conn, sql.SQL("SELECT count(*) - count(DISTINCT id) FROM {}.applied")
              .format(sql.Identifier(SCHEMA)))
    c.ok(dup == 0, "each message applied exactly once", dup)
    disorder = one(conn, sql.SQL(
        "SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY key ORDER BY seq) AS prev"
        " FROM {}.applied) x WHERE n < prev").format(sql.Identifier(SCHEMA)))
    c.ok(disorder == 0, "per key, messages applied in publishing order", disorder)

    # A lease that runs out before the ack: the ack fails with QL001 and the
    # work rolls back with it; the new holder applies the message.
    publish(conn, total + 2, 1, 10)
    deadline = time.monotonic() + 60
    while one(conn, "SELECT ready FROM eo.stats WHERE destination = %s", QUEUE) < 1 \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    slow = conn.execute("SELECT id, lease, key, payload, attempt FROM eo.read(%s, 1, %s)",
                        (QUEUE, "1 millisecond")).fetchall()
    fast = []
    deadline = time.monotonic() + 60
    while not fast and time.monotonic() < deadline:
        # Readable again once the first lease has expired.
        fast = conn.execute("SELECT id, lease, key, payload, attempt FROM eo.read(%s, 1)",
                            (QUEUE,)).fetchall()
    state = None
    try:
        with conn.transaction():
            apply_row(conn, slow[0])
            conn.execute("SELECT eo.ack(%s, %s)", (QUEUE, [slow[0][1]]))
    except psycopg.Error as e:
        state = e.sqlstate
    with conn.transaction():
        apply_row(conn, fast[0])
        conn.execute("SELECT eo.ack(%s, %s)", (QUEUE, [fast[0][1]]))
    c.ok(len(slow) == 1 and len(fast) == 1 and slow[0][0] == fast[0][0] and fast[0][4] == 2
         and state == STALE_LEASE
         and one(conn, sql.SQL("SELECT count(*) FROM {}.applied WHERE id = %s")
                 .format(sql.Identifier(SCHEMA)), fast[0][0]) == 1,
         "a lease that ran out: the ack fails with QL001, the work rolls back", state)

    c.ok(one(conn, "SELECT ready + leased + retrying + dead FROM eo.stats"
                   " WHERE destination = %s", QUEUE) == 0,
         "the queue is empty")
    conn.close()
    if c.failed:
        print("queue_consumer.py: %d of %d checks failed" % (c.failed, c.n))
        return 1
    print("queue_consumer.py: all %d checks passed" % c.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
