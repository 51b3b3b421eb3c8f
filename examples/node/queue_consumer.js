#!/usr/bin/env node
'use strict';
// queue_consumer.js: a consumer of an eo_processing queue destination, run
// and checked.
//
//   npm ci && node queue_consumer.js ["postgresql://user@host:port/db"]
//
// Connects with the connection string given, or with the PG* environment
// variables, to a database where eo_processing is installed and the relay
// runs, as a role that may create destinations (the extension's owner).
// It creates the schema queue_example_node (dropping an old one) and a
// queue destination "queue_example_node" with the wake-up channel
// "queue_example_node_ready", publishes keyed messages and consumes them
// with two competing consumers (the loop of consume() below: LISTEN for
// the wake-up, eo.read, work, eo.ack, COMMIT).  Each expectation prints
// "ok N - ..." or "not ok N - ..."; the exit status is 1 if any failed.
//
// consume() is the part to copy: the work and the ack share one
// transaction, so each message is applied exactly once; a lease that ran
// out before the ack (SQLSTATE QL001) rolls the work back, and the message
// is applied by whoever holds it now.

const { Client } = require('pg');

const SCHEMA = 'queue_example_node';
const QUEUE = 'queue_example_node';
const CHANNEL = 'queue_example_node_ready';
const STALE_LEASE = 'QL001';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Resolves when a notification arrives on the client (it LISTENs) or after
// timeoutMs, whichever comes first; true if one came.
function waitForWakeup(client, timeoutMs) {
  return new Promise((resolve) => {
    const done = (got) => {
      clearTimeout(timer);
      client.removeListener('notification', onNotification);
      resolve(got);
    };
    const onNotification = () => done(true);
    const timer = setTimeout(() => done(false), timeoutMs);
    client.on('notification', onNotification);
  });
}

// Consume the queue until stop() is true.  apply(client, row) does the work
// of one message inside the transaction that acks it.  Returns the number
// of messages acked and of batches whose lease was lost.
async function consume(connection, apply, stop, { batch = 100, waitMs = 30000 } = {}) {
  const client = new Client(connection);
  await client.connect();
  let acked = 0;
  let lost = 0;
  try {
    await client.query(`LISTEN ${client.escapeIdentifier(CHANNEL)}`);
    // A notification that arrives while a batch is being worked on must
    // not be missed: note it, and read again before waiting.
    let woken = false;
    client.on('notification', () => { woken = true; });
    while (!stop()) {
      // Autocommit: the leases are out once eo.read returns.
      woken = false;
      const { rows } = await client.query(
        'SELECT id, lease, key, payload, attempt FROM eo.read($1, $2)', [QUEUE, batch]);
      if (rows.length === 0) {
        // Nothing readable: sleep until the relay (or an ack that frees the
        // next message of a key) sends the wake-up.  The timeout covers
        // leases that expire, which notify nobody.
        if (!woken) await waitForWakeup(client, waitMs);
        continue;
      }
      try {
        await client.query('BEGIN');
        for (const row of rows) await apply(client, row);
        await client.query('SELECT eo.ack($1, $2)', [QUEUE, rows.map((r) => r.lease)]);
        await client.query('COMMIT');
        acked += rows.length;
      } catch (e) {
        await client.query('ROLLBACK');
        if (e.code !== STALE_LEASE) throw e;
        lost += 1; // the work was rolled back with the ack
      }
    }
  } finally {
    await client.end();
  }
  return { acked, lost };
}

class Checks {
  constructor() {
    this.n = 0;
    this.failed = 0;
  }

  ok(cond, what, detail) {
    this.n += 1;
    if (cond) {
      console.log(`ok ${this.n} - ${what}`);
    } else {
      this.failed += 1;
      console.log(`not ok ${this.n} - ${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
    }
    return cond;
  }
}

async function one(client, sql, args = []) {
  const { rows } = await client.query({ text: sql, values: args, rowMode: 'array' });
  return rows[0][0];
}

async function setup(client) {
  await client.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
  await client.query(`CREATE SCHEMA ${SCHEMA}`);
  await client.query(`CREATE TABLE ${SCHEMA}.applied (seq bigserial PRIMARY KEY, id uuid NOT NULL,
                        key text NOT NULL, n integer NOT NULL)`);
  if (Number(await one(client, 'SELECT count(*) FROM eo.destination WHERE name = $1', [QUEUE]))) {
    await client.query('SELECT eo.drop_destination($1, force => true)', [QUEUE]);
  }
  await client.query("SELECT eo.create_destination($1, 'queue', $2)",
    [QUEUE, JSON.stringify({ channel: CHANNEL, visibility_timeout: '30s' })]);
  await client.query('SELECT eo.subscribe($1, $2)', [`${QUEUE}.job`, QUEUE]);
}

async function publish(client, first, count, keys) {
  await client.query(`SELECT eo.publish($1, jsonb_build_object('n', g), 'key-' || (g % $2::int))
                        FROM generate_series($3::int, $4::int) AS g`,
  [`${QUEUE}.job`, keys, first, first + count - 1]);
}

async function applyRow(client, row) {
  await client.query(`INSERT INTO ${SCHEMA}.applied (id, key, n) VALUES ($1, $2, $3)`,
    [row.id, row.key, row.payload.n]);
}

// Poll a number until it reaches a value or the time runs out.
async function until(client, sql, args, value, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let v = Number(await one(client, sql, args));
  while (v < value && Date.now() < deadline) {
    await sleep(20);
    v = Number(await one(client, sql, args));
  }
  return v;
}

async function main() {
  const connection = process.argv[2];
  const c = new Checks();
  const client = new Client(connection);
  await client.connect();
  await setup(client);
  const applied = `SELECT count(*) FROM ${SCHEMA}.applied`;
  const ready = 'SELECT coalesce(ready, 0) FROM eo.stats WHERE destination = $1';

  // Messages published while no consumer runs wait in the queue.
  const total = 400;
  await publish(client, 1, total, 10);
  c.ok(await until(client, ready, [QUEUE], total, 60000) === total,
    'messages published with no consumer running wait in the queue');

  // Two consumers compete until everything (and one late message) is applied.
  let done = false;
  const consumers = [1, 2].map(() => consume(connection, applyRow, () => done,
    { batch: 50, waitMs: 30000 }));
  c.ok(await until(client, applied, [], total, 60000) === total,
    'two consumers applied the backlog');

  // Idle consumers wait on LISTEN; a new message wakes one well before its
  // 30-second timeout.
  const started = Date.now();
  await publish(client, total + 1, 1, 10);
  const n = await until(client, applied, [], total + 1, 20000);
  const waited = Date.now() - started;
  c.ok(n === total + 1 && waited < 10000,
    `a message published later wakes an idle consumer (${waited} ms)`);

  done = true;
  await client.query('SELECT pg_notify($1, $2)', [CHANNEL, 'stop']);
  const results = await Promise.all(consumers);
  c.ok(results.reduce((sum, r) => sum + r.acked, 0) === total + 1,
    'the consumers acked every message', results);

  const dup = Number(await one(client, `SELECT count(*) - count(DISTINCT id) FROM ${SCHEMA}.applied`));
  c.ok(dup === 0, 'each message applied exactly once', dup);
  const disorder = Number(await one(client, `SELECT count(*) FROM (
      SELECT n, lag(n) OVER (PARTITION BY key ORDER BY seq) AS prev FROM ${SCHEMA}.applied) x
     WHERE n < prev`));
  c.ok(disorder === 0, 'per key, messages applied in publishing order', disorder);

  // A lease that runs out before the ack: the ack fails with QL001 and the
  // work rolls back with it; the new holder applies the message.
  await publish(client, total + 2, 1, 10);
  await until(client, ready, [QUEUE], 1, 60000);
  const slow = (await client.query('SELECT id, lease, key, payload, attempt FROM eo.read($1, 1, $2)',
    [QUEUE, '1 millisecond'])).rows;
  let fast = [];
  const deadline = Date.now() + 60000;
  while (fast.length === 0 && Date.now() < deadline) {
    // Readable again once the first lease has expired.
    fast = (await client.query('SELECT id, lease, key, payload, attempt FROM eo.read($1, 1)',
      [QUEUE])).rows;
  }
  let state = null;
  try {
    await client.query('BEGIN');
    await applyRow(client, slow[0]);
    await client.query('SELECT eo.ack($1, $2)', [QUEUE, [slow[0].lease]]);
    await client.query('COMMIT');
  } catch (e) {
    await client.query('ROLLBACK');
    state = e.code;
  }
  await client.query('BEGIN');
  await applyRow(client, fast[0]);
  await client.query('SELECT eo.ack($1, $2)', [QUEUE, [fast[0].lease]]);
  await client.query('COMMIT');
  const copies = Number(await one(client, `SELECT count(*) FROM ${SCHEMA}.applied WHERE id = $1`,
    [fast[0].id]));
  c.ok(slow.length === 1 && fast.length === 1 && slow[0].id === fast[0].id && fast[0].attempt === 2
       && state === STALE_LEASE && copies === 1,
  'a lease that ran out: the ack fails with QL001, the work rolls back', state);

  c.ok(Number(await one(client, `SELECT ready + leased + retrying + dead FROM eo.stats
                                  WHERE destination = $1`, [QUEUE])) === 0,
  'the queue is empty');
  await client.end();
  if (c.failed) {
    console.log(`queue_consumer.js: ${c.failed} of ${c.n} checks failed`);
    return 1;
  }
  console.log(`queue_consumer.js: all ${c.n} checks passed`);
  return 0;
}

main().then((code) => { process.exitCode = code; }, (e) => {
  console.error(e);
  process.exitCode = 1;
});
