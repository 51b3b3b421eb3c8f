"""standard_webhooks.py: sign and verify Standard Webhooks signatures.

The relay of eo_processing signs every webhook it sends to an http
destination that has a "signing_secret" (https://www.standardwebhooks.com/):

    webhook-id:        the message id (also sent as Idempotency-Key)
    webhook-timestamp: Unix time of the attempt, in seconds
    webhook-signature: "v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>"
                       one per secret, separated by spaces

The key of the HMAC is the base64-decoded part of the secret after
"whsec_".  A receiver recomputes the signature over the raw body bytes (as
received, before any JSON parsing), compares it in constant time, and
refuses timestamps far from its own clock so that a captured request
cannot be replayed later.  Then it deduplicates by webhook-id, for example
with eo.process() in the transaction that applies the webhook (see
payments.py).

Python standard library only.
"""

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time

# How far webhook-timestamp may be from the receiver's clock.
DEFAULT_TOLERANCE = 300


class InvalidSignature(Exception):
    """The request is not a correctly signed, recent webhook."""


def new_secret():
    """A fresh signing secret: whsec_ and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(32)).decode()


def secret_key(secret):
    """The HMAC key of a "whsec_<base64>" secret."""
    encoded = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a signing secret is whsec_ followed by base64") from None


def signature(secret, msg_id, timestamp, body):
    """The "v1,<base64>" signature of one request (body: bytes)."""
    signed = b"%s.%d.%s" % (msg_id.encode(), int(timestamp), body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign(secrets, msg_id, body, timestamp=None):
    """The three Standard Webhooks headers of a request, as a dict.

    secrets: one secret or a list of them (while a secret is rotated, each
    request is signed with the old and the new one)."""
    if isinstance(secrets, str):
        secrets = [secrets]
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(signature(s, msg_id, ts, body) for s in secrets),
    }


def verify(secrets, headers, body, tolerance=DEFAULT_TOLERANCE, now=None):
    """Check a received webhook; return its webhook-id.

    headers: a case-insensitive mapping (http.server's self.headers) or a
    dict with lower-case names.  body: the raw request body (bytes).
    Raises InvalidSignature when a header is missing, the timestamp is more
    than `tolerance` seconds away from `now`, or no signature matches one
    of the secrets."""
    if isinstance(secrets, str):
        secrets = [secrets]
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    given = headers.get("webhook-signature")
    if not msg_id or not ts or not given:
        raise InvalidSignature("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        ts = int(ts)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number") from None
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance:
        raise InvalidSignature("webhook-timestamp is %d s away from now" % (now - ts))
    candidates = [g for g in given.split(" ") if g.startswith("v1,")]
    for secret in secrets:
        expected = signature(secret, msg_id, ts, body)
        for g in candidates:
            if hmac.compare_digest(expected.encode(), g.encode()):
                return msg_id
    raise InvalidSignature("no signature matches")
