#!/usr/bin/env node
'use strict';
// payment_flow.js: the payment flow of payments.js, run and checked.
//
//   npm ci && node payment_flow.js ["postgresql://user@host:port/db"]
//
// Connects with the connection string given, or with the PG* environment
// variables (PGHOST, PGPORT, PGDATABASE, PGUSER, ...), to a database where
// eo_processing is installed, creates the schema payment_flow_node
// (dropping an old one) and runs the flow with a fake in-process gateway
// that deduplicates charges by Idempotency-Key, as real ones do.  Each
// expectation prints "ok N - ..." or "not ok N - ..."; the exit status is 1
// if any failed.  With a superuser and a running relay it also receives
// the relay's own signed webhooks on 127.0.0.1.

const http = require('http');
const { isDeepStrictEqual } = require('util');
const { Client } = require('pg');
const payments = require('./payments');
const webhooks = require('./standard_webhooks');
const { ChargeDeclined, GatewayError } = payments;

const SCHEMA = 'payment_flow_node';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A payment gateway that charges each idempotency key at most once.
class FakeGateway {
  constructor() {
    this.ledger = new Map();        // idempotency key -> charge
    this.replays = 0;
    this.failNext = 0;
    this.declineNext = 0;
    this.charge = this.charge.bind(this);
  }

  async charge(key, request) {
    if (this.ledger.has(key)) {
      this.replays += 1;
      return this.ledger.get(key);
    }
    if (this.failNext) {
      this.failNext -= 1;
      throw new GatewayError('503 from the gateway');
    }
    if (this.declineNext) {
      this.declineNext -= 1;
      throw new ChargeDeclined('insufficient funds');
    }
    const charge = {
      id: `ch_${this.ledger.size + 1}`, status: 'succeeded', amount: request.amount, payment_id: key,
    };
    this.ledger.set(key, charge);
    return charge;
  }
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
      console.log(`not ok ${this.n} - ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
    }
    return cond;
  }
}

async function connect(conninfo) {
  const client = new Client(conninfo ? { connectionString: conninfo } : {});
  await client.connect();
  await client.query(`SET search_path = ${SCHEMA}, public`);
  return client;
}

async function one(client, sql, params = []) {
  const r = await client.query({ text: sql, values: params, rowMode: 'array' });
  return r.rows[0][0];
}

// Messages of a topic published for a payment (in the outbox, or routed).
async function eventsOf(client, topic, paymentId) {
  return Number(await one(client,
    'SELECT count(*) FROM (SELECT topic, payload FROM eo.outbox' +
    ' UNION ALL SELECT topic, payload FROM eo.message_log) m' +
    " WHERE m.topic = $1 AND m.payload->>'payment_id' = $2", [topic, paymentId]));
}

async function paymentRows(client, paymentId) {
  return Number(await one(client, 'SELECT count(*) FROM payments WHERE payment_id = $1', [paymentId]));
}

function gatewayWebhook(secret, eventId, charge, timestamp) {
  const body = Buffer.from(JSON.stringify({ type: 'charge.succeeded', data: charge }));
  return { headers: webhooks.sign(secret, eventId, body, timestamp), body };
}

async function checkKeys(c, client, client2, gw) {
  const req = { account: 'acct-1', amount: 1250, currency: 'EUR' };
  const k1 = payments.newKey();
  const a = await payments.createPayment(client, k1, req, gw.charge);
  c.ok(a.status === 201 && a.outcome === 'created' && gw.ledger.size === 1,
    'a new idempotency key: charged once, answered 201', a);
  const b = await payments.createPayment(client, k1, req, gw.charge);
  c.ok(b.status === 201 && isDeepStrictEqual(b.body, a.body) && b.outcome === 'replayed'
    && b.headers['Idempotent-Replayed'] === 'true' && gw.ledger.size === 1 && gw.replays === 0,
  'the same key again: the stored response replayed, the gateway not called', b);
  const d = await payments.createPayment(client, k1, { ...req, amount: 999 }, gw.charge);
  c.ok(d.status === 422 && d.outcome === 'mismatch',
    'the same key with another request: 422 (SQLSTATE IK001)', d);
  c.ok(await eventsOf(client, 'payment.succeeded', k1) === 1 && await paymentRows(client, k1) === 1,
    'one payment row and one payment.succeeded event, committed together');

  // Another caller holds a key (its transaction committed, its work goes on).
  const k2 = payments.newKey();
  await client2.query('SELECT * FROM eo.key_begin($1, $2::jsonb, scope => $3)',
    [k2, JSON.stringify(req), payments.SCOPE]);
  const e = await payments.createPayment(client, k2, req, gw.charge);
  c.ok(e.status === 409 && e.outcome === 'in_progress' && 'Retry-After' in e.headers,
    'a key another request is working on: 409 with Retry-After', e);

  // A gateway failure releases the key: the retry starts afresh.
  const k3 = payments.newKey();
  gw.failNext = 1;
  const f = await payments.createPayment(client, k3, req, gw.charge);
  const g = await payments.createPayment(client, k3, req, gw.charge);
  c.ok(f.status === 502 && f.outcome === 'gateway_failed' && g.status === 201
    && g.outcome === 'created' && g.keyState === 'started' && gw.ledger.has(k3),
  'a gateway failure: 502, key released, the retry charges (201)', [f, g]);

  // A decline is a definitive answer: stored and replayed.
  const k4 = payments.newKey();
  gw.declineNext = 1;
  const h = await payments.createPayment(client, k4, req, gw.charge);
  const i = await payments.createPayment(client, k4, req, gw.charge);
  c.ok(h.status === 402 && i.status === 402 && i.outcome === 'replayed' && !gw.ledger.has(k4)
    && await eventsOf(client, 'payment.succeeded', k4) === 0,
  'a declined charge: 402 stored and replayed, nothing charged or published', [h, i]);

  // Lease lost: the first holder stalls past its lease, a retry takes the
  // key over (resumed) and finishes; the stalled holder must write nothing.
  const k5 = payments.newKey();
  let takenOver = null;
  const stallingCharge = async (key, request) => {
    const charge = await gw.charge(key, request);  // charged, then stalls
    await sleep(400);                              // lease: 200 ms
    takenOver = await payments.createPayment(client2, key, request, gw.charge);
    return charge;
  };
  const replays = gw.replays;
  const j = await payments.createPayment(client, k5, req, stallingCharge, '200 milliseconds');
  c.ok(j.status === 409 && j.outcome === 'lease_lost' && takenOver && takenOver.status === 201
    && takenOver.keyState === 'resumed' && gw.replays === replays + 1
    && await paymentRows(client, k5) === 1 && await eventsOf(client, 'payment.succeeded', k5) === 1,
  'a holder whose lease was taken over: 409 (SQLSTATE IK002); the retry resumed, '
    + 'got the same charge from the gateway and recorded it once', [j, takenOver]);
  return k1;
}

async function checkWebhooks(c, client, gw, k1) {
  const secret = webhooks.newSecret();
  const deliver = ({ headers, body }) => payments.receiveWebhook(client, secret, headers, body,
    'gateway-webhooks', payments.confirmPayment);

  const hook = gatewayWebhook(secret, `evt_${k1}`, gw.ledger.get(k1));
  const a = await deliver(hook);
  c.ok(a.status === 200 && a.outcome === 'applied'
    && await one(client, 'SELECT confirmed_at IS NOT NULL FROM payments WHERE payment_id = $1', [k1])
    && await eventsOf(client, 'payment.confirmed', k1) === 1,
  'a correctly signed webhook: verified, applied, payment.confirmed published', a);
  const b = await deliver(hook);
  c.ok(b.status === 200 && b.outcome === 'duplicate' && await eventsOf(client, 'payment.confirmed', k1) === 1,
    'the same webhook again: absorbed by eo.process, nothing applied twice', b);
  const tampered = {
    headers: hook.headers, body: Buffer.from(hook.body.toString().replace('succeeded', 'refunded')),
  };
  const d = await deliver(tampered);
  c.ok(d.status === 401 && d.outcome === 'bad_signature', 'a tampered body: 401', d);
  const old = gatewayWebhook(secret, 'evt_old', gw.ledger.get(k1), Math.floor(Date.now() / 1000) - 3600);
  const e = await deliver(old);
  c.ok(e.status === 401, 'a correctly signed webhook an hour old: 401', e);

  // A webhook ahead of its payment is refused (503) and its eo.process
  // record rolls back, so the gateway's retry is applied.
  const req = { account: 'acct-2', amount: 700, currency: 'EUR' };
  const k6 = payments.newKey();
  const early = gatewayWebhook(secret, `evt_${k6}`, await gw.charge(k6, req));
  const f = await deliver(early);
  const p = await payments.createPayment(client, k6, req, gw.charge);
  const g = await deliver(early);
  c.ok(f.status === 503 && f.outcome === 'not_yet' && p.status === 201 && g.status === 200
    && g.outcome === 'applied',
  'a webhook ahead of its payment: 503, then applied when the gateway retries', [f, p, g]);
}

// A webhook endpoint: the raw body, then receive(headers, body) -> Answer.
function webhookServer(receive) {
  return http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', async () => {
      let answer;
      try {
        answer = await receive(req.headers, Buffer.concat(chunks));
      } catch (err) {
        answer = new payments.Answer(500, { error: err.message }, 'error');
      }
      res.writeHead(answer.status, { 'Content-Type': 'application/json', ...answer.headers });
      res.end(JSON.stringify(answer.body));
    });
  });
}

// The relay's own signed webhooks, received as a merchant would.
async function checkRelay(c, conninfo, client, gw) {
  const can = await one(client, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user')
    && await one(client, 'SELECT count(*) > 0 FROM eo.relay_status WHERE pid IS NOT NULL'
      + ' AND datname = current_database()');
  if (!can) {
    console.log("skip - the relay's webhooks (needs a superuser and a running relay)");
    return;
  }
  const secret = webhooks.newSecret();
  const rclient = await connect(conninfo);
  await rclient.query('CREATE TABLE merchant_events (payment_id text, topic text)');
  const outcomes = [];
  let queue = Promise.resolve();    // one connection: one webhook at a time
  const apply = async (cn, event) => {
    await cn.query('INSERT INTO merchant_events VALUES ($1, $2)', [event.payment_id, event.type]);
    return true;
  };
  const server = webhookServer((headers, body) => {
    const done = queue.then(() => payments.receiveWebhook(rclient, secret, headers, body, 'merchant', apply));
    queue = done.catch(() => {});
    return done.then((answer) => { outcomes.push(answer.outcome); return answer; });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const dest = `${SCHEMA}_merchant`;
  await client.query("SELECT eo.create_destination($1, 'http', $2::jsonb)", [dest, JSON.stringify({
    url: `http://127.0.0.1:${server.address().port}/events`, signing_secret: secret, retry_delays: ['100ms'],
  })]);
  await client.query("SELECT eo.subscribe('payment.*', $1)", [dest]);
  try {
    const keys = [payments.newKey(), payments.newKey(), payments.newKey()];
    for (const key of keys) {
      const req = { account: 'acct-3', amount: 100, currency: 'EUR' };
      await payments.createPayment(client, key, req, gw.charge);
    }
    let got = 0;
    for (const deadline = Date.now() + 30000; Date.now() < deadline; await sleep(100)) {
      got = Number(await one(client,
        'SELECT count(*) FROM merchant_events WHERE payment_id = ANY($1)', [keys]));
      if (got >= keys.length) break;
    }
    c.ok(got === keys.length && !outcomes.includes('bad_signature'),
      "the relay's webhooks: signatures verified, each payment.succeeded applied once", [got, outcomes]);
  } finally {
    await client.query('SELECT eo.drop_destination($1, force => true)', [dest]);
    server.closeAllConnections();
    server.close();
    await rclient.end();
  }
}

async function main() {
  const conninfo = process.argv[2] || '';
  const admin = new Client(conninfo ? { connectionString: conninfo } : {});
  await admin.connect();
  await admin.query('SET client_min_messages = warning');
  await admin.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
  await admin.query(`CREATE SCHEMA ${SCHEMA}`);
  await admin.end();
  const client = await connect(conninfo);
  const client2 = await connect(conninfo);
  await payments.createSchema(client);

  const c = new Checks();
  const gw = new FakeGateway();
  try {
    const k1 = await checkKeys(c, client, client2, gw);
    await checkWebhooks(c, client, gw, k1);
    await checkRelay(c, conninfo, client, gw);
  } finally {
    await client.end();
    await client2.end();
  }
  if (c.failed) {
    console.log(`payment_flow.js: ${c.failed} of ${c.n} checks failed`);
    return 1;
  }
  console.log(`payment_flow.js: all ${c.n} checks passed`);
  return 0;
}

main().then((status) => { process.exitCode = status; }, (err) => {
  console.error(err);
  process.exitCode = 1;
});
