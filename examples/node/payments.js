'use strict';
// payments.js: a payment API that charges exactly once, with eo_processing
// and node-postgres ("pg").  The same flow as examples/python/payments.py.
//
// createPayment(client, key, request, charge)
//   The handler of POST /payments with an Idempotency-Key header.
//   1. eo.key_begin(key, request) in its own short transaction; its state
//      decides:
//        started, resumed  do the work (resumed: the previous holder's lease
//                          expired; it is presumed dead)
//        completed         replay the stored response, do nothing
//        in_progress       409: another request with this key is running
//      SQLSTATE IK001 (key used with another request) is a 422.
//   2. eo.key_checkpoint(key, 'charging', fence): a charge may exist from
//      here on.
//   3. The gateway call, no transaction open, with the same key as the
//      gateway's Idempotency-Key (a repeated call finds the first charge).
//   4. One transaction: eo.key_complete(key, response, fence) first (a
//      holder whose lease was taken over gets IK002 -> 409 and writes
//      nothing), the payment row and eo.publish('payment.succeeded').
//   Gateway failures: ChargeDeclined is definitive and stored (402,
//   replayed to retries); GatewayError (5xx, timeout) releases the key, so
//   the retry starts afresh and calls the gateway with the same key.
//
// receiveWebhook(client, secrets, headers, body, consumer, apply)
//   An incoming signed webhook: verify (401), then in one transaction
//   eo.process(webhook-id, consumer) and apply(); a duplicate is answered
//   200 and changes nothing; apply() returning false rolls back (the
//   eo.process record too) and answers 503 so that the sender retries.

const crypto = require('crypto');
const webhooks = require('./standard_webhooks');

const SCOPE = 'payments';
const KEY_MISMATCH = 'IK001';   // SQLSTATEs of eo_processing's idempotency keys
const LEASE_LOST = 'IK002';

const SCHEMA = `
CREATE TABLE accounts (
    account    text PRIMARY KEY,
    balance    bigint NOT NULL DEFAULT 0,
    event_seq  bigint NOT NULL DEFAULT 0
);
CREATE TABLE payments (
    payment_id   text PRIMARY KEY,           -- the client's idempotency key
    account      text NOT NULL REFERENCES accounts,
    amount       integer NOT NULL CHECK (amount > 0),
    currency     text NOT NULL,
    charge_id    text NOT NULL UNIQUE,
    status       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    confirmed_at timestamptz
);`;

class Answer {
  constructor(status, body, outcome, headers = {}) {
    this.status = status;
    this.body = body;
    this.outcome = outcome;     // created, replayed, in_progress, mismatch, lease_lost,
                                // declined, gateway_failed; webhooks: applied,
                                // duplicate, not_yet, bad_signature, bad_request
    this.headers = headers;
    this.keyState = null;       // what eo.key_begin said
  }
}

class ChargeDeclined extends Error {}
class GatewayError extends Error {}

// Run fn(client) in a transaction: COMMIT if it returns, ROLLBACK if it throws.
async function inTransaction(client, fn) {
  await client.query('BEGIN');
  try {
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  }
}

function retryLater(outcome, message) {
  return new Answer(409, { error: message }, outcome, { 'Retry-After': '1' });
}

async function createSchema(client) {
  await client.query(SCHEMA);
}

// POST /payments: request = {account, amount, currency}.  charge(key, request)
// resolves to the gateway's charge ({id, status, ...}) or rejects with
// ChargeDeclined or GatewayError.
async function createPayment(client, key, request, charge, lease = '5 minutes') {
  let begun;
  try {
    begun = await inTransaction(client, async (c) => (await c.query(
      'SELECT state, recovery_point, response, fence' +
      '  FROM eo.key_begin($1, $2::jsonb, scope => $3, lease => $4::interval)',
      [key, JSON.stringify(request), SCOPE, lease])).rows[0]);
  } catch (err) {
    if (err.code === KEY_MISMATCH) {
      return new Answer(422, { error: 'this idempotency key was used with another request' },
        'mismatch');
    }
    throw err;
  }
  const answer = await handleKey(client, key, request, charge, begun);
  answer.keyState = begun.state;
  return answer;
}

async function handleKey(client, key, request, charge, { state, response, fence }) {
  if (state === 'completed') {
    return new Answer(response.status, response.body, 'replayed', { 'Idempotent-Replayed': 'true' });
  }
  if (state === 'in_progress') {
    return retryLater('in_progress', 'a request with this idempotency key is in progress');
  }
  try {
    await inTransaction(client, (c) => c.query(
      "SELECT eo.key_checkpoint($1, 'charging', scope => $2, fence => $3)", [key, SCOPE, fence]));
  } catch (err) {
    if (err.code === LEASE_LOST) return retryLater('lease_lost', 'this request was taken over by a retry');
    throw err;
  }

  let charged;
  try {
    charged = await charge(key, request);           // no transaction open
  } catch (err) {
    if (err instanceof ChargeDeclined) {
      const stored = { status: 402, body: { payment_id: key, status: 'declined', reason: err.message } };
      return finish(client, key, fence, stored, 'declined');
    }
    if (err instanceof GatewayError) {
      await release(client, key, fence);
      return new Answer(502, { error: 'payment gateway unavailable, retry with the same key' },
        'gateway_failed', { 'Retry-After': '1' });
    }
    throw err;
  }

  const body = {
    payment_id: key, account: request.account, amount: request.amount,
    currency: request.currency, charge_id: charged.id, status: charged.status,
  };
  return finish(client, key, fence, { status: 201, body }, 'created', (c) => recordPayment(c, body));
}

// Complete the key with the stored response; record() in the same transaction.
async function finish(client, key, fence, stored, outcome, record = null) {
  try {
    await inTransaction(client, async (c) => {
      await c.query('SELECT eo.key_complete($1, $2::jsonb, scope => $3, fence => $4)',
        [key, JSON.stringify(stored), SCOPE, fence]);
      if (record) await record(c);
    });
  } catch (err) {
    if (err.code === LEASE_LOST) return retryLater('lease_lost', 'this request was taken over by a retry');
    throw err;
  }
  return new Answer(stored.status, stored.body, outcome);
}

async function release(client, key, fence) {
  try {
    await inTransaction(client, (c) => c.query(
      'SELECT eo.key_release($1, scope => $2, fence => $3)', [key, SCOPE, fence]));
  } catch (err) {
    if (err.code !== LEASE_LOST) throw err;     // taken over: the new holder finishes
  }
}

// Add amount to the account and number its next event (the row lock orders
// the account's events in commit order).
async function nextEventSeq(c, account, amount) {
  const r = await c.query(
    'INSERT INTO accounts AS a (account, balance, event_seq) VALUES ($1, $2, 1)' +
    ' ON CONFLICT (account) DO UPDATE' +
    '   SET balance = a.balance + excluded.balance, event_seq = a.event_seq + 1' +
    ' RETURNING event_seq', [account, amount]);
  return Number(r.rows[0].event_seq);
}

// eo.publish keyed by account: one account's events are delivered in order.
async function publish(c, topic, payload) {
  const r = await c.query('SELECT eo.publish($1, $2::jsonb, key => $3) AS id',
    [topic, JSON.stringify(payload), payload.account]);
  return r.rows[0].id;
}

async function recordPayment(c, body) {
  const seq = await nextEventSeq(c, body.account, body.amount);
  await c.query(
    'INSERT INTO payments (payment_id, account, amount, currency, charge_id, status)' +
    ' VALUES ($1, $2, $3, $4, $5, $6)',
    [body.payment_id, body.account, body.amount, body.currency, body.charge_id, body.status]);
  await publish(c, 'payment.succeeded', { ...body, type: 'payment.succeeded', seq });
}

// An incoming signed webhook, applied exactly once.  body: the raw Buffer.
async function receiveWebhook(client, secrets, headers, body, consumer, apply,
  tolerance = webhooks.DEFAULT_TOLERANCE) {
  let webhookId;
  let event;
  try {
    webhookId = webhooks.verify(secrets, headers, body, tolerance);
  } catch (err) {
    if (err instanceof webhooks.InvalidSignature) {
      return new Answer(401, { error: 'invalid signature', detail: err.message }, 'bad_signature');
    }
    throw err;
  }
  try {
    event = JSON.parse(body.toString('utf8'));
  } catch (err) {
    return new Answer(400, { error: 'the body is not JSON' }, 'bad_request');
  }
  const NOT_YET = Symbol('not yet');
  let outcome;
  try {
    outcome = await inTransaction(client, async (c) => {
      const r = await c.query('SELECT eo.process($1, $2) AS first', [webhookId, consumer]);
      if (!r.rows[0].first) return 'duplicate';
      if (!(await apply(c, event))) throw NOT_YET;  // rolls back, eo.process record too
      return 'applied';
    });
  } catch (err) {
    if (err !== NOT_YET) throw err;
    return new Answer(503, { error: 'not ready, retry later' }, 'not_yet', { 'Retry-After': '1' });
  }
  return new Answer(200, { id: webhookId, outcome }, outcome);
}

// Effect of the gateway's charge.succeeded webhook; false when the payment
// is not recorded yet (the gateway may be faster than we are).
async function confirmPayment(c, event) {
  if (event.type !== 'charge.succeeded') return true;
  const charge = event.data;
  const r = await c.query(
    'UPDATE payments SET confirmed_at = coalesce(confirmed_at, now())' +
    ' WHERE payment_id = $1 AND charge_id = $2 RETURNING account, amount, currency',
    [charge.payment_id, charge.id]);
  if (r.rowCount === 0) return false;
  const { account, amount, currency } = r.rows[0];
  const seq = await nextEventSeq(c, account, 0);
  await publish(c, 'payment.confirmed', {
    type: 'payment.confirmed', payment_id: charge.payment_id, account, amount, currency,
    charge_id: charge.id, seq,
  });
  return true;
}

function newKey() {
  return crypto.randomUUID();
}

module.exports = {
  SCOPE, Answer, ChargeDeclined, GatewayError, createSchema, createPayment,
  receiveWebhook, confirmPayment, inTransaction, newKey,
};
