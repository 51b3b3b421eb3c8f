'use strict';
// standard_webhooks.js: sign and verify Standard Webhooks signatures
// (https://www.standardwebhooks.com/), Node's crypto module only.
//
// The relay of eo_processing signs each webhook of an http destination that
// has a "signing_secret":
//   webhook-id         the message id (also sent as Idempotency-Key)
//   webhook-timestamp  Unix time of the attempt, in seconds
//   webhook-signature  "v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>",
//                      one per secret, separated by spaces
// The HMAC key is the base64-decoded part of the secret after "whsec_".
// A receiver recomputes the signature over the raw body bytes, compares in
// constant time, refuses timestamps far from its clock (replays), then
// deduplicates by webhook-id (eo.process, see payments.js).

const crypto = require('crypto');

const DEFAULT_TOLERANCE = 300;      // seconds between webhook-timestamp and now

class InvalidSignature extends Error {}

// A fresh secret: whsec_ and 32 random bytes in base64.
function newSecret() {
  return 'whsec_' + crypto.randomBytes(32).toString('base64');
}

function secretKey(secret) {
  const encoded = secret.startsWith('whsec_') ? secret.slice(6) : secret;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(encoded)) {
    throw new Error('a signing secret is whsec_ followed by base64');
  }
  return Buffer.from(encoded, 'base64');
}

// The "v1,<base64>" signature of one request (body: Buffer or string).
function signature(secret, msgId, timestamp, body) {
  const hmac = crypto.createHmac('sha256', secretKey(secret));
  hmac.update(`${msgId}.${timestamp}.`);
  hmac.update(body);
  return 'v1,' + hmac.digest('base64');
}

// The three headers of a signed request; secrets: one or an array.
function sign(secrets, msgId, body, timestamp = Math.floor(Date.now() / 1000)) {
  const list = Array.isArray(secrets) ? secrets : [secrets];
  return {
    'webhook-id': msgId,
    'webhook-timestamp': String(timestamp),
    'webhook-signature': list.map((s) => signature(s, msgId, timestamp, body)).join(' '),
  };
}

// Check a received webhook and return its webhook-id, or throw
// InvalidSignature.  headers: Node's req.headers (lower-case names).
function verify(secrets, headers, body, tolerance = DEFAULT_TOLERANCE, now = Date.now() / 1000) {
  const list = Array.isArray(secrets) ? secrets : [secrets];
  const msgId = headers['webhook-id'];
  const ts = headers['webhook-timestamp'];
  const given = headers['webhook-signature'];
  if (!msgId || !ts || !given) {
    throw new InvalidSignature('webhook-id, webhook-timestamp and webhook-signature are required');
  }
  if (!/^\d+$/.test(ts)) {
    throw new InvalidSignature('webhook-timestamp is not a number');
  }
  if (Math.abs(now - Number(ts)) > tolerance) {
    throw new InvalidSignature(`webhook-timestamp is ${Math.round(now - Number(ts))} s away from now`);
  }
  const candidates = given.split(' ').filter((g) => g.startsWith('v1,')).map((g) => Buffer.from(g));
  for (const secret of list) {
    const expected = Buffer.from(signature(secret, msgId, ts, body));
    for (const g of candidates) {
      if (g.length === expected.length && crypto.timingSafeEqual(g, expected)) {
        return msgId;
      }
    }
  }
  throw new InvalidSignature('no signature matches');
}

module.exports = { DEFAULT_TOLERANCE, InvalidSignature, newSecret, signature, sign, verify };
