-- eo_processing 0.3.0 -> 0.4.0: idempotency keys with stored responses,
-- and reconciliation.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.4.0'" to load this file. \quit

----------------------------------------------------------------------
-- Idempotency keys
----------------------------------------------------------------------
-- An HTTP API that accepts an Idempotency-Key header does its work in
-- several transactions around an external call (a payment provider, a
-- mail server): the key remembers how far the first attempt got (its
-- recovery point) and, once it is done, the response to send again to
-- every retry.  While a caller works on a key it holds a lease on it; a
-- caller whose lease has expired is presumed dead and the next retry takes
-- the key over and resumes from the recovery point.  Each holder gets a
-- fencing token, larger than the previous holder's: a holder that comes
-- back after being taken over is refused, whichever pooled connection it
-- uses.
--
-- The functions below run with the extension owner's rights (the
-- application needs EXECUTE only, no right on the table), with a pinned
-- search_path and every name and operator schema-qualified.
--
-- SQLSTATEs of the errors an application maps to HTTP answers (class IK,
-- in the range the SQL standard leaves to implementations):
--   IK001  the key was used with a different request            422
--   IK002  lease lost: the fence is no longer current           409
--   IK003  no such key in this scope                             404
--   IK004  the key is already completed                          409

-- Fencing tokens: one sequence for all keys, so that a new holder's fence
-- is larger than every fence handed out before (also after a key was
-- released and begun again).
CREATE SEQUENCE eo.idempotency_fence_seq AS bigint;
COMMENT ON SEQUENCE eo.idempotency_fence_seq IS
    'fencing tokens of idempotency key leases (eo.key_begin)';

-- One row per (key, scope) in use or remembered.  Column order is chosen
-- for a compact row (fixed-width first).  As in eo.inbox the primary key
-- starts with the nearly unique column, so that index comparisons usually
-- end at the first column.  Checkpoints update a row in place: leave room
-- for HOT updates.
CREATE TABLE eo.idempotency_key (
    fence            bigint NOT NULL,
    lease_expires_at timestamptz,            -- NULL once completed
    lease            interval NOT NULL,      -- renewed by each checkpoint
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    request_hash     bytea NOT NULL,         -- sha256 of request::text
    key              text COLLATE "C" NOT NULL,
    scope            text COLLATE "C" NOT NULL,
    state            text COLLATE "C" NOT NULL,
    recovery_point   text COLLATE "C" NOT NULL,
    response         jsonb,
    CONSTRAINT idempotency_key_pkey PRIMARY KEY (key, scope),
    CONSTRAINT idempotency_key_state_check
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['in_progress', 'completed'])),
    CONSTRAINT idempotency_key_completed_check
        CHECK ((state OPERATOR(pg_catalog.=) 'completed') OPERATOR(pg_catalog.=) (completed_at IS NOT NULL)
               AND (state OPERATOR(pg_catalog.=) 'completed') OPERATOR(pg_catalog.=) (lease_expires_at IS NULL))
) WITH (fillfactor = 70);
-- eo.purge_keys() deletes the oldest completed keys first.
CREATE INDEX idempotency_key_completed ON eo.idempotency_key (completed_at)
    WHERE completed_at IS NOT NULL;
COMMENT ON TABLE eo.idempotency_key IS
    'Idempotency keys: lease, fence and recovery point while in progress, stored response once completed';

-- pg_dump keeps the keys (a restored database must still answer retries
-- with the stored responses) and the fence sequence (so that a restored
-- key's old fence is never handed out again).
SELECT pg_catalog.pg_extension_config_dump('eo.idempotency_key', '');
SELECT pg_catalog.pg_extension_config_dump('eo.idempotency_fence_seq', '');

-- Validates a key and its scope: not NULL, not empty, a key of at most
-- 255 characters, a scope of at most 256 bytes.
CREATE FUNCTION eo.check_key(key text, scope text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF key IS NULL THEN
        RAISE EXCEPTION 'idempotency key must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF key OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'idempotency key must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.char_length(key) OPERATOR(pg_catalog.>) 255 THEN
        RAISE EXCEPTION 'idempotency key is too long'
            USING ERRCODE = 'string_data_right_truncation',
                  DETAIL = pg_catalog.format('It is %s characters long; the limit is 255 characters.',
                                             pg_catalog.char_length(key));
    END IF;
    IF scope IS NULL THEN
        RAISE EXCEPTION 'idempotency key scope must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF scope OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'idempotency key scope must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.octet_length(scope) OPERATOR(pg_catalog.>) 256 THEN
        RAISE EXCEPTION 'idempotency key scope is too long'
            USING ERRCODE = 'string_data_right_truncation',
                  DETAIL = pg_catalog.format('It is %s bytes long; the limit is 256 bytes.',
                                             pg_catalog.octet_length(scope));
    END IF;
END $$;
COMMENT ON FUNCTION eo.check_key(text, text) IS
    'validates an idempotency key and its scope; raises an error naming the problem';

-- The row of (key, scope), locked until the end of the transaction, for a
-- holder's call (checkpoint, complete, release); raises "not found"
-- (IK003), "lease lost" (IK002, fence given and not current) or "already
-- completed" (IK004), in that order.  Under REPEATABLE READ or
-- SERIALIZABLE a row changed by a transaction the snapshot cannot see
-- raises a serialization failure (40001).
CREATE FUNCTION eo.lock_key(key text, scope text, fence bigint)
RETURNS eo.idempotency_key
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k eo.idempotency_key;
BEGIN
    PERFORM eo.check_key(lock_key.key, lock_key.scope);
    SELECT * INTO k
      FROM eo.idempotency_key AS x
     WHERE x.key OPERATOR(pg_catalog.=) lock_key.key
       AND x.scope OPERATOR(pg_catalog.=) lock_key.scope
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idempotency key "%" does not exist', lock_key.key
            USING ERRCODE = 'IK003',
                  DETAIL = pg_catalog.format('No key of that name is in progress or remembered in scope "%s".',
                                             lock_key.scope),
                  HINT = 'Call eo.key_begin() first.  A released key, or a completed key older than eo.key_retention, is forgotten.';
    END IF;
    IF lock_key.fence IS NOT NULL AND k.fence OPERATOR(pg_catalog.<>) lock_key.fence THEN
        RAISE EXCEPTION 'lease on idempotency key "%" was lost', lock_key.key
            USING ERRCODE = 'IK002',
                  DETAIL = pg_catalog.format('Fence %s is no longer current: another caller took the key over after the lease expired, or the key was released.',
                                             lock_key.fence),
                  HINT = 'Stop working on this request and roll back; the current holder finishes it.';
    END IF;
    IF k.state OPERATOR(pg_catalog.=) 'completed' THEN
        RAISE EXCEPTION 'idempotency key "%" is already completed', lock_key.key
            USING ERRCODE = 'IK004',
                  DETAIL = pg_catalog.format('Its response is stored (scope "%s").', lock_key.scope),
                  HINT = 'Answer with the stored response, which eo.key_begin() returns.';
    END IF;
    RETURN k;
END $$;
COMMENT ON FUNCTION eo.lock_key(text, text, bigint) IS
    'locks the in-progress idempotency key of a holder; raises IK003, IK002 or IK004';

CREATE FUNCTION eo.key_begin(key text, request jsonb,
                             scope text DEFAULT 'default',
                             lease interval DEFAULT '5 minutes',
                             OUT state text, OUT recovery_point text,
                             OUT response jsonb, OUT fence bigint)
RETURNS record
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hash bytea;
    k eo.idempotency_key;
    ts timestamptz;
    attempt integer := 0;
BEGIN
    PERFORM eo.check_key(key_begin.key, key_begin.scope);
    IF key_begin.request IS NULL THEN
        RAISE EXCEPTION 'request must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass the parameters of the request as jsonb; ''{}'' when it has none.';
    END IF;
    IF key_begin.lease IS NULL THEN
        RAISE EXCEPTION 'lease must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF key_begin.lease OPERATOR(pg_catalog.<=) '0'::pg_catalog.interval THEN
        RAISE EXCEPTION 'lease must be positive'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('The lease given is %s.', key_begin.lease);
    END IF;
    IF key_begin.lease OPERATOR(pg_catalog.>) '1 day'::pg_catalog.interval THEN
        RAISE EXCEPTION 'lease is too long'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('The lease given is %s; the limit is 1 day.', key_begin.lease),
                  HINT = 'Renew a short lease with eo.key_checkpoint() while the work goes on.';
    END IF;
    -- jsonb's text form is canonical (keys sorted, no insignificant
    -- white space), so equal requests have equal fingerprints.
    hash := pg_catalog.sha256(pg_catalog.convert_to(key_begin.request::pg_catalog.text, 'UTF8'));

    LOOP
        attempt := attempt OPERATOR(pg_catalog.+) 1;
        ts := pg_catalog.clock_timestamp();
        -- A new key.  A concurrent transaction that inserted the same key
        -- and has not ended makes this wait: for nothing if it commits,
        -- for the key if it rolls back.
        INSERT INTO eo.idempotency_key AS x
               (fence, lease_expires_at, lease, created_at, updated_at, completed_at,
                request_hash, key, scope, state, recovery_point, response)
        VALUES (pg_catalog.nextval('eo.idempotency_fence_seq'::pg_catalog.regclass),
                ts OPERATOR(pg_catalog.+) key_begin.lease, key_begin.lease,
                pg_catalog.now(), pg_catalog.now(), NULL,
                hash, key_begin.key, key_begin.scope, 'in_progress', 'started', NULL)
        ON CONFLICT DO NOTHING
        RETURNING x.fence INTO key_begin.fence;
        IF FOUND THEN
            key_begin.state := 'started';
            key_begin.recovery_point := 'started';
            RETURN;
        END IF;

        -- The key exists.  (Under REPEATABLE READ and SERIALIZABLE, a key
        -- committed by a transaction this snapshot cannot see has already
        -- raised a serialization failure in the INSERT.)
        SELECT * INTO k
          FROM eo.idempotency_key AS x
         WHERE x.key OPERATOR(pg_catalog.=) key_begin.key
           AND x.scope OPERATOR(pg_catalog.=) key_begin.scope;
        IF FOUND THEN
            IF k.request_hash OPERATOR(pg_catalog.<>) hash THEN
                RAISE EXCEPTION 'idempotency key "%" was already used with a different request', key_begin.key
                    USING ERRCODE = 'IK001',
                          DETAIL = pg_catalog.format('Scope "%s": the request differs from the one the key was first used with.',
                                                     key_begin.scope),
                          HINT = 'Use a new idempotency key for a different request.';
            END IF;
            IF k.state OPERATOR(pg_catalog.=) 'completed' THEN
                key_begin.state := 'completed';
                key_begin.recovery_point := k.recovery_point;
                key_begin.response := k.response;
                RETURN;
            END IF;
            IF k.lease_expires_at OPERATOR(pg_catalog.>) ts THEN
                -- Another caller holds the lease: nothing changes, and its
                -- fence is not given away.
                key_begin.state := 'in_progress';
                RETURN;
            END IF;
            -- The lease expired: take the key over, unless its holder (or
            -- another caller) changed it first.
            UPDATE eo.idempotency_key AS x
               SET fence = pg_catalog.int8larger(
                               pg_catalog.nextval('eo.idempotency_fence_seq'::pg_catalog.regclass),
                               k.fence OPERATOR(pg_catalog.+) 1),
                   lease_expires_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) key_begin.lease,
                   lease = key_begin.lease,
                   updated_at = pg_catalog.now()
             WHERE x.key OPERATOR(pg_catalog.=) key_begin.key
               AND x.scope OPERATOR(pg_catalog.=) key_begin.scope
               AND x.fence OPERATOR(pg_catalog.=) k.fence
               AND x.state OPERATOR(pg_catalog.=) 'in_progress'
               AND x.lease_expires_at OPERATOR(pg_catalog.<=) ts
            RETURNING x.fence, x.recovery_point INTO key_begin.fence, key_begin.recovery_point;
            IF FOUND THEN
                key_begin.state := 'resumed';
                RETURN;
            END IF;
        END IF;

        -- The key was released, purged, renewed or taken over meanwhile:
        -- look again (READ COMMITTED sees the new state at once).
        IF attempt OPERATOR(pg_catalog.>=) 10
           OR pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' THEN
            RAISE EXCEPTION 'could not serialize access to idempotency key "%"', key_begin.key
                USING ERRCODE = 'serialization_failure',
                      DETAIL = 'The key was changed by a concurrent transaction.',
                      HINT = 'Retry the transaction.';
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION eo.key_begin(text, jsonb, text, interval) IS
    'starts, resumes or answers a request with an idempotency key: state started, resumed, in_progress or completed';

CREATE FUNCTION eo.key_checkpoint(key text, recovery_point text,
                                  scope text DEFAULT 'default',
                                  fence bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k eo.idempotency_key;
BEGIN
    IF key_checkpoint.recovery_point IS NULL THEN
        RAISE EXCEPTION 'recovery point must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF key_checkpoint.recovery_point OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'recovery point must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.octet_length(key_checkpoint.recovery_point) OPERATOR(pg_catalog.>) 256 THEN
        RAISE EXCEPTION 'recovery point is too long'
            USING ERRCODE = 'string_data_right_truncation',
                  DETAIL = pg_catalog.format('It is %s bytes long; the limit is 256 bytes.',
                                             pg_catalog.octet_length(key_checkpoint.recovery_point));
    END IF;
    k := eo.lock_key(key_checkpoint.key, key_checkpoint.scope, key_checkpoint.fence);
    UPDATE eo.idempotency_key AS x
       SET recovery_point = key_checkpoint.recovery_point,
           lease_expires_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) k.lease,
           updated_at = pg_catalog.now()
     WHERE x.key OPERATOR(pg_catalog.=) k.key
       AND x.scope OPERATOR(pg_catalog.=) k.scope;
END $$;
COMMENT ON FUNCTION eo.key_checkpoint(text, text, text, bigint) IS
    'records the recovery point of an idempotency key in the caller''s transaction and renews its lease';

CREATE FUNCTION eo.key_complete(key text, response jsonb,
                                scope text DEFAULT 'default',
                                fence bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k eo.idempotency_key;
BEGIN
    IF key_complete.response IS NULL THEN
        RAISE EXCEPTION 'response must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Store the JSON value null (''null''::jsonb) for an empty response.';
    END IF;
    k := eo.lock_key(key_complete.key, key_complete.scope, key_complete.fence);
    UPDATE eo.idempotency_key AS x
       SET state = 'completed',
           recovery_point = 'finished',
           response = key_complete.response,
           lease_expires_at = NULL,
           completed_at = pg_catalog.now(),
           updated_at = pg_catalog.now()
     WHERE x.key OPERATOR(pg_catalog.=) k.key
       AND x.scope OPERATOR(pg_catalog.=) k.scope;
END $$;
COMMENT ON FUNCTION eo.key_complete(text, jsonb, text, bigint) IS
    'stores the final response of an idempotency key and ends its lease, in the caller''s transaction';

CREATE FUNCTION eo.key_release(key text, scope text DEFAULT 'default',
                               fence bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k eo.idempotency_key;
BEGIN
    k := eo.lock_key(key_release.key, key_release.scope, key_release.fence);
    DELETE FROM eo.idempotency_key AS x
     WHERE x.key OPERATOR(pg_catalog.=) k.key
       AND x.scope OPERATOR(pg_catalog.=) k.scope;
END $$;
COMMENT ON FUNCTION eo.key_release(text, text, bigint) IS
    'forgets an in-progress idempotency key (after a failure without side effects), so that a retry starts afresh';

-- Deletes completed keys older than eo.key_retention (default 24 hours;
-- a negative retention keeps them forever), the oldest first and at most
-- max_rows of them (all when NULL); returns how many it deleted.  Keys
-- still in progress are never deleted.  SECURITY DEFINER so that an
-- operator role granted EXECUTE needs no privilege on the table.
CREATE FUNCTION eo.purge_keys(max_rows bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH retention AS (
        SELECT coalesce(nullif(pg_catalog.current_setting('eo.key_retention', true), ''),
                        '24 hours')::pg_catalog.interval AS keep
    ), horizon AS (
        SELECT pg_catalog.now() OPERATOR(pg_catalog.-) r.keep AS before
          FROM retention AS r
         WHERE r.keep OPERATOR(pg_catalog.>=) '0'::pg_catalog.interval
    ), doomed AS (
        SELECT k.ctid AS tid
          FROM eo.idempotency_key AS k, horizon AS h
         WHERE k.completed_at OPERATOR(pg_catalog.<) h.before
         ORDER BY k.completed_at
         LIMIT max_rows
    ), deleted AS (
        DELETE FROM eo.idempotency_key AS k
         USING doomed, horizon AS h
         WHERE k.ctid OPERATOR(pg_catalog.=) doomed.tid
           AND k.completed_at OPERATOR(pg_catalog.<) h.before
        RETURNING 1
    )
    SELECT pg_catalog.count(*) FROM deleted
$$;
COMMENT ON FUNCTION eo.purge_keys(bigint) IS
    'deletes completed idempotency keys older than eo.key_retention (at most max_rows) and returns how many';

REVOKE ALL ON TABLE eo.idempotency_key FROM PUBLIC;
REVOKE ALL ON SEQUENCE eo.idempotency_fence_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION
    eo.check_key(text, text),
    eo.lock_key(text, text, bigint),
    eo.key_begin(text, jsonb, text, interval),
    eo.key_checkpoint(text, text, text, bigint),
    eo.key_complete(text, jsonb, text, bigint),
    eo.key_release(text, text, bigint),
    eo.purge_keys(bigint)
FROM PUBLIC;

