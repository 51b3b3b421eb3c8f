#!/usr/bin/python3
"""kafka_consumer.py: a Kafka consumer that applies records to PostgreSQL
exactly once, the last leg of PostgreSQL -> Kafka -> PostgreSQL.

    kafka_consumer.py --bootstrap HOST:PORT[,...] --topic TOPIC
                      [--group GROUP] [--conninfo "host=... dbname=..."]
                      [--setup] [--batch N] [--idle-exit SECONDS]
                      [--no-offset-commit] [--crash-after N]
                      [--property NAME=VALUE ...]

The records are what a kafka destination of eo_processing sends (see the
README's Kafka section): the message's key as the record key, its payload
as the value, and the headers eo-id, eo-topic and eo-published-at.  Each
record here is a deposit, {"amount": N}, for the account named by the key.

The work (apply_batch below) and eo.process_seq share one transaction:
eo.process_seq(producer => '<topic>-<partition>', seq => <offset>,
consumer => <group>) returns true only for an offset above the highest one
this group has committed for that partition, so a record that comes again
-- after a crash, a rebalance, offsets committed late or never -- is
skipped, and its deposit is counted once.  Kafka's committed offsets only
save re-reading: they are committed after the database commit, and with
--no-offset-commit never (a group without committed offsets reads the
topic from its beginning at every start, and applies nothing twice).  A
topic deleted and created again numbers its offsets from 0 again: give
the consumer a new group then.

The program connects with --conninfo or the PG* environment variables.
--setup creates the schema kafka_example_py, when missing, with the tables
account (balances) and deposit (one row per applied record); they belong
with the marks eo.process_seq keeps for the group, so drop them together
or not at all.
--property passes a librdkafka consumer setting (security.protocol,
sasl.*, ssl.*, session.timeout.ms, ...; repeat it for more).  The program
stops after --idle-exit seconds without a record (default: never) and
prints "applied N skipped M".  --crash-after N is a fault to try it with:
the process exits abruptly (status 9) right after the database commit
that brings it to N applied records, before it commits the offsets to
Kafka; the next run gets those records again and skips them.

Needs confluent_kafka (Debian: python3-confluent-kafka) and psycopg 3
(python3-psycopg).
"""

import argparse
import json
import os
import sys
import time

import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition

SCHEMA = "kafka_example_py"


def setup(conn):
    """Create the application's tables if they do not exist."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.account (name text PRIMARY KEY,"
                 " balance bigint NOT NULL, deposits integer NOT NULL)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.deposit (seq bigserial PRIMARY KEY,"
                 " eo_id uuid, topic text NOT NULL, part integer NOT NULL,"
                 " kafka_offset bigint NOT NULL, account text, amount bigint NOT NULL)")


def header(record, name):
    """The value of a record's header as text, or None."""
    for key, value in record.headers() or []:
        if key == name:
            return None if value is None else value.decode()
    return None


def apply_batch(conn, group, records):
    """Apply records in one transaction: each one only if eo.process_seq
    says its offset is new for this group and partition.  Returns (applied,
    skipped)."""
    applied = skipped = 0
    with conn.transaction():
        for r in records:
            producer = "%s-%d" % (r.topic(), r.partition())
            new = conn.execute("SELECT eo.process_seq(%s, %s, %s)",
                               (producer, r.offset(), group)).fetchone()[0]
            if not new:
                skipped += 1
                continue
            account = None if r.key() is None else r.key().decode()
            amount = int(json.loads(r.value())["amount"])
            conn.execute(f"INSERT INTO {SCHEMA}.account AS a (name, balance, deposits)"
                         " VALUES (%s, %s, 1) ON CONFLICT (name) DO UPDATE"
                         " SET balance = a.balance + excluded.balance,"
                         "     deposits = a.deposits + 1",
                         (account, amount))
            conn.execute(f"INSERT INTO {SCHEMA}.deposit"
                         " (eo_id, topic, part, kafka_offset, account, amount)"
                         " VALUES (%s, %s, %s, %s, %s, %s)",
                         (header(r, "eo-id"), r.topic(), r.partition(), r.offset(),
                          account, amount))
            applied += 1
    return applied, skipped


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", default="kafka_example_py")
    p.add_argument("--conninfo", default="")
    p.add_argument("--setup", action="store_true")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--idle-exit", type=float, default=None)
    p.add_argument("--no-offset-commit", action="store_true")
    p.add_argument("--crash-after", type=int, default=None)
    p.add_argument("--property", action="append", default=[])
    args = p.parse_args()

    conn = psycopg.connect(args.conninfo, autocommit=True)
    if args.setup:
        setup(conn)

    settings = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        # Without a committed offset, from the beginning.
        "auto.offset.reset": "earliest",
        # Offsets are committed by hand, after the database commit.
        "enable.auto.commit": False,
        # Only records of committed Kafka transactions (exactly_once
        # destinations write in transactions).
        "isolation.level": "read_committed",
    }
    for prop in args.property:
        name, sep, value = prop.partition("=")
        if not sep:
            p.error("--property takes NAME=VALUE")
        settings[name] = value
    consumer = Consumer(settings)
    # The idle time counts from the group's assignment (joining takes a
    # few seconds), then from the last record.
    last_record = None

    def assigned(consumer, partitions):
        nonlocal last_record
        last_record = time.monotonic()

    consumer.subscribe([args.topic], on_assign=assigned)

    applied = skipped = 0
    try:
        while True:
            records = consumer.consume(args.batch, 1.0)
            good = []
            for r in records:
                if r.error() is None:
                    good.append(r)
                elif r.error().code() != KafkaError._PARTITION_EOF:
                    print("consumer error: %s" % r.error(), file=sys.stderr)
            if not good:
                if args.idle_exit is not None and last_record is not None \
                        and time.monotonic() - last_record > args.idle_exit:
                    break
                continue
            last_record = time.monotonic()
            a, s = apply_batch(conn, args.group, good)
            applied += a
            skipped += s
            if args.crash_after is not None and applied >= args.crash_after:
                print("applied %d skipped %d (crash before the offset commit)"
                      % (applied, skipped), flush=True)
                os._exit(9)
            if not args.no_offset_commit:
                # The next offset to read, per partition: the highest seen + 1.
                nxt = {}
                for r in good:
                    nxt[(r.topic(), r.partition())] = r.offset() + 1
                consumer.commit(offsets=[TopicPartition(t, part, off)
                                         for (t, part), off in nxt.items()],
                                asynchronous=False)
    finally:
        consumer.close()
        conn.close()
    print("applied %d skipped %d" % (applied, skipped), flush=True)


if __name__ == "__main__":
    main()
