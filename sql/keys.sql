-- Idempotency keys: every answer of eo.key_begin(), the holder's calls
-- and every error (with its SQLSTATE), fences, lease expiry and takeover,
-- retention, privileges, and keys made of awkward characters.
-- Leases are expired by moving lease_expires_at into the past (as
-- superuser), except once with a real 10 ms lease.
CREATE EXTENSION eo_processing;
\set VERBOSITY sqlstate
\set ON_ERROR_STOP 0

-- What a key looks like in the table (superuser only).
CREATE FUNCTION pg_temp.key_row(k text, s text DEFAULT 'default')
RETURNS TABLE (state text, recovery_point text, response jsonb, fence bigint,
               lease interval, lease_live boolean, completed boolean)
LANGUAGE sql AS $$
    SELECT x.state, x.recovery_point, x.response, x.fence, x.lease,
           x.lease_expires_at > clock_timestamp(), x.completed_at IS NOT NULL
      FROM eo.idempotency_key x WHERE x.key = k AND x.scope = s
$$;
-- Expire the lease of a key.
CREATE FUNCTION pg_temp.expire(k text, s text DEFAULT 'default')
RETURNS void LANGUAGE sql AS $$
    UPDATE eo.idempotency_key SET lease_expires_at = clock_timestamp() - interval '1 second'
     WHERE key = k AND scope = s
$$;

----------------------------------------------------------------------
-- started, in_progress, completed
----------------------------------------------------------------------
-- A new key: the caller holds the lease, with a fence, at recovery point
-- 'started'.
SELECT * FROM eo.key_begin('pay-1', '{"amount": 100, "currency": "EUR"}');
SELECT * FROM pg_temp.key_row('pay-1');
-- A retry while the lease is live: in_progress, nothing else given (not
-- the holder's fence), nothing changed.  The request is compared by its
-- canonical form: key order and white space do not matter.
SELECT * FROM eo.key_begin('pay-1', '{"currency":"EUR",   "amount":100}');
SELECT * FROM pg_temp.key_row('pay-1');
-- The holder records progress (renewing the lease) and completes.
SELECT eo.key_checkpoint('pay-1', 'charge_created', fence => 1);
SELECT * FROM pg_temp.key_row('pay-1');
SELECT eo.key_complete('pay-1', '{"status": 201, "body": {"charge": "ch_1"}}', fence => 1);
SELECT * FROM pg_temp.key_row('pay-1');
-- Every retry now gets the stored response, unchanged.
SELECT * FROM eo.key_begin('pay-1', '{"amount": 100, "currency": "EUR"}');
SELECT * FROM eo.key_begin('pay-1', '{"amount": 100, "currency": "EUR"}', lease => '1 hour');
-- A failure is stored and returned the same way.
SELECT fence AS f FROM eo.key_begin('pay-2', '{"amount": -5}') \gset
SELECT eo.key_complete('pay-2', '{"status": 400, "error": "amount must be positive"}', fence => :f);
SELECT * FROM eo.key_begin('pay-2', '{"amount": -5}');

----------------------------------------------------------------------
-- The same key with another request (422): IK001, in every state
----------------------------------------------------------------------
SELECT * FROM eo.key_begin('pay-1', '{"amount": 101, "currency": "EUR"}');
SELECT * FROM eo.key_begin('pay-1', '{"amount": 100.0, "currency": "EUR"}');
SELECT * FROM eo.key_begin('pay-1', '{}');
SELECT fence AS f FROM eo.key_begin('pay-3', '[1, 2]') \gset
SELECT * FROM eo.key_begin('pay-3', '[2, 1]');
SELECT pg_temp.expire('pay-3');
SELECT * FROM eo.key_begin('pay-3', '"other"');
-- Nothing changed: pay-3 is still at its first fence, lease expired.
SELECT state, recovery_point, fence = :f AS same_fence, lease_live FROM pg_temp.key_row('pay-3');

----------------------------------------------------------------------
-- Lease expiry: resumed, with a larger fence; the old fence is refused
----------------------------------------------------------------------
SELECT fence AS f_old FROM eo.key_begin('ship-1', '{"order": 7}') \gset
SELECT eo.key_checkpoint('ship-1', 'label_bought', fence => :f_old);
-- An expired lease nobody has taken over can still be renewed by its
-- holder (its fence is still current).
SELECT pg_temp.expire('ship-1');
SELECT eo.key_checkpoint('ship-1', 'label_bought', fence => :f_old);
SELECT lease_live FROM pg_temp.key_row('ship-1');
-- Once it has expired, the next caller takes it over, at the last
-- recovery point, with a larger fence.
SELECT pg_temp.expire('ship-1');
SELECT state, recovery_point, response, fence > :f_old AS larger_fence
  FROM eo.key_begin('ship-1', '{"order": 7}');
SELECT fence AS f_new FROM pg_temp.key_row('ship-1') \gset
-- The new holder has a live lease: others get in_progress.
SELECT * FROM eo.key_begin('ship-1', '{"order": 7}');
-- The old holder is refused everything (409: lease lost), and nothing
-- changes.
SELECT eo.key_checkpoint('ship-1', 'shipped', fence => :f_old);
SELECT eo.key_complete('ship-1', '{"status": 200}', fence => :f_old);
SELECT eo.key_release('ship-1', fence => :f_old);
SELECT state, recovery_point, fence = :f_new AS new_fence FROM pg_temp.key_row('ship-1');
-- The new holder finishes; the old fence then still gets "lease lost",
-- the new one "already completed".
SELECT eo.key_checkpoint('ship-1', 'shipped', fence => :f_new);
SELECT eo.key_complete('ship-1', '{"status": 200, "tracking": "T-1"}', fence => :f_new);
SELECT eo.key_complete('ship-1', '{"status": 200}', fence => :f_old);
SELECT eo.key_complete('ship-1', '{"status": 200}', fence => :f_new);
SELECT * FROM eo.key_begin('ship-1', '{"order": 7}');
-- A takeover of a takeover: the fence grows each time; the lease given
-- by the new holder is the one checkpoints renew.
SELECT fence AS g1 FROM eo.key_begin('ship-2', '{}', lease => '1 minute') \gset
SELECT pg_temp.expire('ship-2');
SELECT fence AS g2 FROM eo.key_begin('ship-2', '{}', lease => '2 minutes') \gset
SELECT pg_temp.expire('ship-2');
SELECT fence AS g3 FROM eo.key_begin('ship-2', '{}', lease => '3 minutes') \gset
SELECT :g1 < :g2 AND :g2 < :g3 AS fences_grow;
SELECT state, recovery_point, lease FROM pg_temp.key_row('ship-2');
SELECT eo.key_checkpoint('ship-2', 'step', fence => :g2);
-- A real (10 ms) lease, expired by waiting.
SELECT state FROM eo.key_begin('short-1', '{}', lease => '10 ms');
SELECT pg_sleep(0.05);
SELECT state, recovery_point FROM eo.key_begin('short-1', '{}', lease => '10 ms');
-- A completed key never expires, whatever its lease was.
SELECT fence AS f FROM eo.key_begin('short-2', '{}', lease => '10 ms') \gset
SELECT eo.key_complete('short-2', '"done"', fence => :f);
SELECT pg_sleep(0.05);
SELECT * FROM eo.key_begin('short-2', '{}');

----------------------------------------------------------------------
-- Calls without a fence (not recommended) skip the fence check only
----------------------------------------------------------------------
SELECT state FROM eo.key_begin('nofence-1', '{}');
SELECT eo.key_checkpoint('nofence-1', 'a');
SELECT eo.key_complete('nofence-1', '{"ok": true}');
SELECT eo.key_complete('nofence-1', '{"ok": true}');
SELECT eo.key_checkpoint('nofence-1', 'b');
SELECT eo.key_release('nofence-1');

----------------------------------------------------------------------
-- Release: a retry starts afresh, with a new fence
----------------------------------------------------------------------
SELECT fence AS f FROM eo.key_begin('mail-1', '{"to": "a@example.com"}') \gset
SELECT eo.key_release('mail-1', fence => :f);
SELECT count(*) AS rows_left FROM eo.idempotency_key WHERE key = 'mail-1';
SELECT state, recovery_point, fence > :f AS larger_fence
  FROM eo.key_begin('mail-1', '{"to": "b@example.com"}');
SELECT eo.key_release('mail-1', fence => :f);
SELECT eo.key_release('mail-1');
SELECT eo.key_release('mail-1');

----------------------------------------------------------------------
-- Unknown keys (404): IK003; scopes are separate
----------------------------------------------------------------------
SELECT eo.key_checkpoint('nope', 'x');
SELECT eo.key_complete('nope', '{}');
SELECT eo.key_release('nope');
SELECT eo.key_checkpoint('nope', 'x', fence => 1);
SELECT eo.key_complete('pay-1', '{}', scope => 'other');
-- The same key in another scope is another key, with its own request.
SELECT state FROM eo.key_begin('pay-1', '{"something": "else"}', scope => 'tenant-2');
SELECT * FROM eo.key_begin('pay-1', '{"amount": 100, "currency": "EUR"}');
SELECT scope, state FROM eo.idempotency_key WHERE key = 'pay-1' ORDER BY scope;
-- Keys and scopes are compared exactly (case, white space).
SELECT state FROM eo.key_begin('PAY-1', '{}');
SELECT state FROM eo.key_begin('pay-1 ', '{}');
SELECT state FROM eo.key_begin('pay-1', '{}', scope => 'Default');

----------------------------------------------------------------------
-- Bad input (400): a clear error, nothing written
----------------------------------------------------------------------
CREATE TEMP TABLE before_bad AS SELECT key, scope, state, fence FROM eo.idempotency_key;
-- key: not NULL, not empty, at most 255 characters.
SELECT * FROM eo.key_begin(NULL, '{}');
SELECT * FROM eo.key_begin('', '{}');
SELECT * FROM eo.key_begin(repeat('k', 256), '{}');
SELECT * FROM eo.key_begin(repeat('é', 256), '{}');
SELECT eo.key_checkpoint(NULL, 'x');
SELECT eo.key_checkpoint('', 'x');
SELECT eo.key_complete(NULL, '{}');
SELECT eo.key_complete(repeat('k', 256), '{}');
SELECT eo.key_release(NULL);
SELECT eo.key_release('');
-- scope: not NULL, not empty, at most 256 bytes.
SELECT * FROM eo.key_begin('k', '{}', NULL);
SELECT * FROM eo.key_begin('k', '{}', '');
SELECT * FROM eo.key_begin('k', '{}', repeat('s', 257));
SELECT * FROM eo.key_begin('k', '{}', repeat('é', 129));
SELECT eo.key_checkpoint('k', 'x', NULL);
SELECT eo.key_complete('k', '{}', '');
SELECT eo.key_release('k', repeat('s', 257));
-- request: not NULL (SQL NULL; the JSON null is a request like any other).
SELECT * FROM eo.key_begin('k', NULL);
-- lease: more than 0, at most 1 day.
SELECT * FROM eo.key_begin('k', '{}', lease => NULL);
SELECT * FROM eo.key_begin('k', '{}', lease => '0');
SELECT * FROM eo.key_begin('k', '{}', lease => '-1 second');
SELECT * FROM eo.key_begin('k', '{}', lease => '1 day 1 second');
SELECT * FROM eo.key_begin('k', '{}', lease => '1 mon');
SELECT * FROM eo.key_begin('k', '{}', lease => '1 mon -29 days 1 second');
-- recovery point: not NULL, not empty, at most 256 bytes; response: not
-- NULL.  (Checked before the key is looked up.)
SELECT eo.key_checkpoint('pay-3', NULL);
SELECT eo.key_checkpoint('pay-3', '');
SELECT eo.key_checkpoint('pay-3', repeat('r', 257));
SELECT eo.key_complete('pay-3', NULL);
-- Writes are refused in a read-only transaction (as on a standby).
BEGIN READ ONLY;
SELECT * FROM eo.key_begin('k', '{}');
ROLLBACK;
-- Nothing was written.
SELECT count(*) AS new_rows FROM eo.idempotency_key x
 WHERE NOT EXISTS (SELECT 1 FROM before_bad b
                    WHERE (b.key, b.scope, b.state, b.fence) = (x.key, x.scope, x.state, x.fence));
SELECT count(*) AS lost_rows FROM before_bad b
 WHERE NOT EXISTS (SELECT 1 FROM eo.idempotency_key x WHERE (x.key, x.scope) = (b.key, b.scope));
-- The limits themselves are accepted.
SELECT state FROM eo.key_begin(repeat('k', 255), 'null', repeat('s', 256), '1 day');
SELECT state FROM eo.key_begin(repeat('é', 255), '{}', repeat('é', 128), '1 microsecond');
SELECT state FROM eo.key_begin('k', '{}', lease => '1 mon -29 days');
-- The lease kept is the length of time checked (months of 30 days, days
-- of 24 hours), not what the calendar would make of it.
SELECT lease FROM pg_temp.key_row('k');
SELECT eo.key_checkpoint(repeat('k', 255), repeat('r', 256), repeat('s', 256));
SELECT eo.key_complete(repeat('k', 255), 'null', repeat('s', 256));
SELECT * FROM eo.key_begin(repeat('k', 255), 'null', repeat('s', 256));

----------------------------------------------------------------------
-- Transactions: key_begin's row is the caller's until it commits
----------------------------------------------------------------------
BEGIN;
SELECT state FROM eo.key_begin('tx-1', '{}');
ROLLBACK;
SELECT count(*) AS after_rollback FROM eo.idempotency_key WHERE key = 'tx-1';
-- A checkpoint rolled back with the work it belongs to leaves the
-- previous recovery point.
SELECT fence AS f FROM eo.key_begin('tx-2', '{}') \gset
SELECT eo.key_checkpoint('tx-2', 'one', fence => :f);
BEGIN;
SELECT eo.key_checkpoint('tx-2', 'two', fence => :f);
ROLLBACK;
SELECT recovery_point FROM pg_temp.key_row('tx-2');

----------------------------------------------------------------------
-- Awkward characters in keys, scopes and recovery points: stored and
-- matched exactly, never interpreted
----------------------------------------------------------------------
SELECT state, recovery_point FROM eo.key_begin(E'it''s; DROP TABLE eo.idempotency_key; --', '{}', E'tenant "a"\nline 2');
SELECT eo.key_checkpoint(E'it''s; DROP TABLE eo.idempotency_key; --', E'step ''1''; \\x', E'tenant "a"\nline 2');
SELECT state, recovery_point FROM eo.key_begin(E'it''s; DROP TABLE eo.idempotency_key; --', '{}', E'tenant "a"\nline 2');
SELECT state FROM eo.key_begin(E'it''s; DROP TABLE eo.idempotency_key; --', '{}', E'tenant "a"\nline 3');
SELECT state FROM eo.key_begin(E'\\', '{}', '%s');
SELECT state FROM eo.key_begin(E'line\nbreak\ttab', '{}', E'\'');
SELECT state FROM eo.key_begin('😀 ключ', '{"é": "ü"}', '🔑');
SELECT * FROM eo.key_begin('😀 ключ', '{"é": "ü"}', '🔑');
SELECT key, scope, recovery_point FROM eo.idempotency_key
 WHERE key !~ '^[a-zA-Z0-9 -]*$' OR scope !~ '^[a-zA-Z0-9 -]*$' ORDER BY key COLLATE "C", scope COLLATE "C";

----------------------------------------------------------------------
-- Retention: eo.purge_keys() deletes completed keys older than
-- eo.key_retention (24 hours unless set), the oldest first
----------------------------------------------------------------------
SELECT current_setting('eo.key_retention') AS retention;
SELECT count(*) FILTER (WHERE state = 'completed') AS completed,
       count(*) FILTER (WHERE state = 'in_progress') AS in_progress
  FROM eo.idempotency_key;
-- Nothing is old enough yet.
SELECT eo.purge_keys();
-- A negative max_rows is refused, as by the other purges.
SELECT eo.purge_keys(-1);
-- Age some keys: two completed ones past the retention, one within it,
-- and an abandoned in-progress key (never purged).
UPDATE eo.idempotency_key SET completed_at = now() - interval '25 hours' WHERE key IN ('pay-1', 'pay-2') AND scope = 'default';
UPDATE eo.idempotency_key SET completed_at = now() - interval '23 hours' WHERE key = 'ship-1';
UPDATE eo.idempotency_key SET created_at = now() - interval '30 days',
                              lease_expires_at = now() - interval '30 days' WHERE key = 'pay-3';
-- At most max_rows, oldest first.
UPDATE eo.idempotency_key SET completed_at = completed_at - interval '1 hour' WHERE key = 'pay-2';
SELECT eo.purge_keys(1);
SELECT key FROM eo.idempotency_key WHERE key IN ('pay-1', 'pay-2', 'ship-1', 'pay-3') AND scope = 'default' ORDER BY key;
SELECT eo.purge_keys();
SELECT eo.purge_keys();
SELECT key FROM eo.idempotency_key WHERE key IN ('pay-1', 'pay-2', 'ship-1', 'pay-3') AND scope = 'default' ORDER BY key;
-- A purged key is forgotten: the same key starts afresh, with any
-- request.
SELECT state FROM eo.key_begin('pay-1', '{"a": "new request"}');

----------------------------------------------------------------------
-- Privileges: EXECUTE on the four key functions is all an application
-- needs; the table, the sequence and the helpers stay out of its reach
----------------------------------------------------------------------
CREATE ROLE regress_eo_key_app;
CREATE ROLE regress_eo_key_nobody;
CREATE ROLE regress_eo_key_operator;
-- The grant docs/keys.md documents.
GRANT USAGE ON SCHEMA eo TO regress_eo_key_app;
GRANT EXECUTE ON FUNCTION eo.key_begin(text, jsonb, text, interval),
  eo.key_checkpoint(text, text, text, bigint), eo.key_complete(text, jsonb, text, bigint),
  eo.key_release(text, text, bigint) TO regress_eo_key_app;
GRANT USAGE ON SCHEMA eo TO regress_eo_key_operator;
GRANT EXECUTE ON FUNCTION eo.purge_keys(bigint) TO regress_eo_key_operator;

SET ROLE regress_eo_key_nobody;
SELECT * FROM eo.key_begin('app-1', '{}');
SELECT eo.key_release('pay-1');
RESET ROLE;

SET ROLE regress_eo_key_app;
SELECT state, recovery_point FROM eo.key_begin('app-1', '{"n": 1}');
SELECT * FROM eo.key_begin('app-1', '{"n": 1}');
RESET ROLE;
SELECT fence AS f FROM pg_temp.key_row('app-1') \gset
SET ROLE regress_eo_key_app;
SELECT eo.key_checkpoint('app-1', 'halfway', fence => :f);
SELECT eo.key_complete('app-1', '{"status": 200}', fence => :f);
SELECT * FROM eo.key_begin('app-1', '{"n": 1}');
SELECT * FROM eo.key_begin('app-1', '{"n": 2}');
-- ... but it cannot read or write the table, use the sequence, call the
-- helpers or purge.
SELECT * FROM eo.idempotency_key;
SELECT response FROM eo.idempotency_key WHERE key = 'pay-2';
UPDATE eo.idempotency_key SET fence = 0;
DELETE FROM eo.idempotency_key;
SELECT nextval('eo.idempotency_fence_seq');
SELECT eo.lock_key('app-1', 'default', NULL);
SELECT eo.check_key('app-1', 'default');
SELECT eo.purge_keys();
RESET ROLE;

-- Objects an attacker leaves in public do not change what the key
-- functions do (they run as the extension owner with a pinned
-- search_path): a clock stuck in 2000 would expire every lease, an
-- inequality that is always false would hide any request mismatch.
CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE sql
  AS $$ SELECT timestamptz '2000-01-01' $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql
  AS $$ SELECT timestamptz '2000-01-01' $$;
CREATE FUNCTION public.sha256(bytea) RETURNS bytea LANGUAGE sql
  AS $$ SELECT '\x00'::bytea $$;
CREATE FUNCTION public.bytea_never_ne(bytea, bytea) RETURNS boolean LANGUAGE sql
  AS $$ SELECT false $$;
CREATE OPERATOR public.<> (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = public.bytea_never_ne);
GRANT EXECUTE ON FUNCTION eo.purge_keys(bigint) TO regress_eo_key_app;
SET ROLE regress_eo_key_app;
SET search_path = public, pg_catalog;
SELECT state FROM eo.key_begin('hijack-1', '{"n": 1}');
SELECT state FROM eo.key_begin('hijack-1', '{"n": 1}');
SELECT state FROM eo.key_begin('hijack-1', '{"n": 2}');
SELECT eo.purge_keys();
RESET search_path;
RESET ROLE;
SELECT state, lease_live FROM pg_temp.key_row('hijack-1');
DROP OPERATOR public.<> (bytea, bytea);
DROP FUNCTION public.bytea_never_ne(bytea, bytea), public.sha256(bytea),
  public.now(), public.clock_timestamp();

----------------------------------------------------------------------
-- The documented messages in full
----------------------------------------------------------------------
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT fence AS f FROM eo.key_begin('msg-1', '{"a": 1}') \gset
SELECT * FROM eo.key_begin('msg-1', '{"a": 2}');
SELECT pg_temp.expire('msg-1');
SELECT state FROM eo.key_begin('msg-1', '{"a": 1}');
SELECT eo.key_checkpoint('msg-1', 'x', fence => :f);
SELECT eo.key_checkpoint('msg-404', 'x');
SELECT eo.key_complete('pay-2', '{}', scope => 'tenant-2');
SELECT eo.key_complete(E'it''s; DROP TABLE eo.idempotency_key; --', '{}', E'tenant "a"\nline 2');
SELECT fence AS f FROM pg_temp.key_row('ship-2') \gset
SELECT eo.key_complete('ship-2', '{}', fence => :f);
SELECT eo.key_complete('ship-2', '{}', fence => :f);
SELECT * FROM eo.key_begin(repeat('k', 300), '{}');
SELECT * FROM eo.key_begin('k', '{}', repeat('s', 300));
SELECT * FROM eo.key_begin('k', '{}', lease => '2 days');
SELECT * FROM eo.key_begin('k', '{}', lease => '0');
SELECT * FROM eo.key_begin('k', NULL);
SELECT eo.key_complete('k', NULL);
SET ROLE regress_eo_key_app;
SELECT * FROM eo.idempotency_key;
RESET ROLE;

DROP EXTENSION eo_processing;
DROP ROLE regress_eo_key_app, regress_eo_key_nobody, regress_eo_key_operator;
