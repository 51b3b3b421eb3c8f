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
    -- A lease is a length of time, counted as the checks above count it
    -- (interval comparison: a month is 30 days, a day 24 hours), so that
    -- the lease kept is the lease checked whatever the calendar says:
    -- '1 year -359 days' is one day, not six or seven, and '1 day' is 24
    -- hours also across a change of daylight saving time.
    key_begin.lease := pg_catalog.make_interval(secs =>
        ((((pg_catalog.date_part('year', key_begin.lease) OPERATOR(pg_catalog.*) 12)
           OPERATOR(pg_catalog.+) pg_catalog.date_part('month', key_begin.lease)) OPERATOR(pg_catalog.*) 30
          OPERATOR(pg_catalog.+) pg_catalog.date_part('day', key_begin.lease)) OPERATOR(pg_catalog.*) 86400)
        OPERATOR(pg_catalog.+) (pg_catalog.date_part('hour', key_begin.lease) OPERATOR(pg_catalog.*) 3600)
        OPERATOR(pg_catalog.+) (pg_catalog.date_part('minute', key_begin.lease) OPERATOR(pg_catalog.*) 60)
        OPERATOR(pg_catalog.+) pg_catalog.date_part('second', key_begin.lease));
    -- jsonb's text form is canonical (keys sorted, no insignificant
    -- white space), so equal requests have equal fingerprints.
    hash := pg_catalog.sha256(pg_catalog.convert_to(key_begin.request::pg_catalog.text, 'UTF8'));

    LOOP
        attempt := attempt OPERATOR(pg_catalog.+) 1;
        ts := pg_catalog.clock_timestamp();
        -- The key as last committed: reading it never waits, so a retry
        -- that arrives while the holder's transaction is open is answered
        -- at once.
        SELECT * INTO k
          FROM eo.idempotency_key AS x
         WHERE x.key OPERATOR(pg_catalog.=) key_begin.key
           AND x.scope OPERATOR(pg_catalog.=) key_begin.scope;
        IF NOT FOUND THEN
            -- A new key.  A concurrent transaction that inserted the same
            -- key and has not ended makes this wait: for nothing if it
            -- commits (the key is then read again), for the key if it
            -- rolls back.  Under REPEATABLE READ and SERIALIZABLE a key
            -- committed by a transaction this snapshot cannot see raises
            -- a serialization failure here.
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
        ELSE
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
-- max_rows of them (all when NULL); returns how many it deleted.  A
-- negative max_rows is refused, as by the other purges.  Keys still in
-- progress are never deleted.  SECURITY DEFINER so that an operator role
-- granted EXECUTE needs no privilege on the table.
CREATE FUNCTION eo.purge_keys(max_rows bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF max_rows OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'max_rows must not be negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
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
    SELECT pg_catalog.count(*) INTO n FROM deleted;
    RETURN n;
END $$;
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

----------------------------------------------------------------------
-- Reconciliation
----------------------------------------------------------------------
-- eo.reconcile() compares two relations row by row on a key column: what
-- a payment provider's settlement report holds against the payments of
-- this database, say.  It runs with the caller's rights (the caller needs
-- SELECT on both relations) and reads both with one query: one scan and a
-- window count of the key per relation, one hash full join on the key.
-- Duplicated keys never match, so that each row of a duplicated key comes
-- out of the join once; the few rows that come out (missing, mismatched,
-- duplicated) are then grouped by key.  A relation with a unique index on
-- the key column alone cannot hold duplicates: its window count is left
-- out.
--
-- Values are compared with the equality operator of their types: the one
-- in the schema of the (base) type when it has its own there (citext,
-- say), else the one PostgreSQL resolves in pg_catalog (integer against
-- bigint, say).  Where there is none (json, or integer against text), the
-- text forms are compared, byte by byte.  A NULL key matches nothing.

CREATE TYPE eo.reconcile_problem AS (
    key     text,       -- the key, as text
    problem text,       -- missing_local, missing_remote, mismatch,
                        -- duplicate_local or duplicate_remote
    local   jsonb,      -- the local row (to_jsonb), or for duplicates an
                        -- array of all rows of that key (NULL: none)
    remote  jsonb       -- the same for the remote relation
);
COMMENT ON TYPE eo.reconcile_problem IS
    'a row of eo.reconcile(): a key, what is wrong with it, and the rows of each side';

CREATE FUNCTION eo.reconcile(local regclass, remote regclass, key_column text,
                             compare_columns text[] DEFAULT NULL)
RETURNS SETOF eo.reconcile_problem
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
-- The planner cannot know how few rows come out of the join, so the
-- query's estimated cost is that of sorting all of them: enough for JIT
-- to inline and optimise, which took longer than it saved (0.4-0.5 s of
-- 2.3 s on a million rows per side, test/bench/reconcile_bench.sh).
SET jit = off
AS $$
DECLARE
    rels regclass[];
    side text[] := ARRAY['local', 'remote'];
    kind "char";
    typename text;
    rowtype text[] := ARRAY[NULL, NULL];
    cols text[];            -- column names of one relation, in order
    typs oid[];
    l_cols text[];
    r_cols text[];
    l_types oid[];          -- their base types
    r_types oid[];
    unique_key boolean[] := ARRAY[false, false];
    cmp text[] := '{}';     -- columns to compare
    col text;
    i integer;
    li integer;
    ri integer;
    l_key integer;
    r_key integer;
    eq text;
    key_eq text;            -- the join condition on the keys
    key_as_text boolean := false;
    distinct_exprs text[] := '{}';
    distinct_sql text;
    side_sql text[] := ARRAY[NULL, NULL];
    q text;
BEGIN
    rels := ARRAY[$1, $2];
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION '% relation must not be null', CASE WHEN $1 IS NULL THEN 'local' ELSE 'remote' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'key column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF array_position(compare_columns, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'compare columns must not contain null' USING ERRCODE = 'null_value_not_allowed';
    END IF;

    -- Both relations: their kind, row type and columns.
    FOR s IN 1..2 LOOP
        SELECT c.relkind, format_type(c.reltype, NULL) INTO kind, typename
          FROM pg_class c WHERE c.oid = rels[s];
        IF NOT FOUND THEN
            RAISE EXCEPTION '% relation with OID % does not exist', side[s], rels[s]::oid
                USING ERRCODE = 'undefined_table';
        END IF;
        IF kind <> ALL (ARRAY['r', 'p', 'v', 'm', 'f']::"char"[]) THEN
            RAISE EXCEPTION '% is not a table, view, materialized view or foreign table', rels[s]
                USING ERRCODE = 'wrong_object_type';
        END IF;
        rowtype[s] := typename;
        -- Column names in order, and the base type of each (domains
        -- resolved).
        WITH RECURSIVE att AS (
            SELECT a.attnum, a.attname::text AS name, a.atttypid AS typ
              FROM pg_attribute a
             WHERE a.attrelid = rels[s] AND a.attnum > 0 AND NOT a.attisdropped
        ), bt AS (
            SELECT att.attnum, att.typ, t.typtype, t.typbasetype
              FROM att JOIN pg_type t ON t.oid = att.typ
            UNION ALL
            SELECT bt.attnum, t.oid, t.typtype, t.typbasetype
              FROM bt JOIN pg_type t ON t.oid = bt.typbasetype
             WHERE bt.typtype = 'd'
        )
        SELECT array_agg(att.name ORDER BY att.attnum), array_agg(bt.typ ORDER BY att.attnum)
          INTO cols, typs
          FROM att JOIN bt ON bt.attnum = att.attnum AND bt.typtype <> 'd';
        IF array_position(cols, key_column) IS NULL THEN
            RAISE EXCEPTION 'column "%" of relation % does not exist', key_column, rels[s]
                USING ERRCODE = 'undefined_column',
                      DETAIL = format('"%s" is the key column; it must exist in both relations.', key_column);
        END IF;
        IF s = 1 THEN
            l_cols := cols;
            l_types := typs;
        ELSE
            r_cols := cols;
            r_types := typs;
        END IF;
    END LOOP;
    l_key := array_position(l_cols, key_column);
    r_key := array_position(r_cols, key_column);

    -- The columns to compare: those given, each present in both
    -- relations, or by default every column of both but the key.
    IF compare_columns IS NULL THEN
        SELECT coalesce(array_agg(c ORDER BY n), '{}') INTO cmp
          FROM unnest(l_cols) WITH ORDINALITY AS u(c, n)
         WHERE c = ANY (r_cols) AND c <> key_column;
    ELSE
        FOREACH col IN ARRAY compare_columns LOOP
            FOR s IN 1..2 LOOP
                IF array_position(CASE s WHEN 1 THEN l_cols ELSE r_cols END, col) IS NULL THEN
                    RAISE EXCEPTION 'column "%" of relation % does not exist', col, rels[s]
                        USING ERRCODE = 'undefined_column',
                              DETAIL = format('"%s" is in compare_columns; it must exist in both relations.', col);
                END IF;
            END LOOP;
            IF col <> key_column AND array_position(cmp, col) IS NULL THEN
                cmp := cmp || col;
            END IF;
        END LOOP;
    END IF;

    -- A relation with a valid unique index on the key column alone (not
    -- partial, checked immediately) holds no duplicate key.
    FOR s IN 1..2 LOOP
        unique_key[s] := EXISTS (
            SELECT 1 FROM pg_index x
             WHERE x.indrelid = rels[s] AND x.indisunique AND x.indisvalid AND x.indimmediate
               AND x.indnkeyatts = 1 AND x.indpred IS NULL AND x.indexprs IS NULL
               AND x.indkey[0] = (SELECT a.attnum FROM pg_attribute a
                                   WHERE a.attrelid = rels[s] AND a.attname = key_column));
    END LOOP;

    -- The equality of two columns (base types lt and rt): an operator "="
    -- of exactly these types in the schema of one of them (outside
    -- pg_catalog), as OPERATOR(schema.=); NULL for the one PostgreSQL
    -- resolves in pg_catalog.
    -- Keys: try that first; if the query cannot be planned with it (no
    -- such operator, not hashable, a collation conflict), use text forms.
    SELECT format('OPERATOR(%I.=)', n.nspname) INTO eq
      FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
     WHERE o.oprname = '=' AND o.oprleft = l_types[l_key] AND o.oprright = r_types[r_key]
       AND o.oprresult = 'bool'::regtype AND n.nspname <> 'pg_catalog'
       AND o.oprnamespace IN (SELECT t.typnamespace FROM pg_type t
                               WHERE t.oid IN (l_types[l_key], r_types[r_key]))
     ORDER BY o.oprnamespace = (SELECT t.typnamespace FROM pg_type t WHERE t.oid = l_types[l_key]) DESC
     LIMIT 1;
    FOR attempt IN 1..2 LOOP
        -- Keys that are duplicated on a side never match.
        key_eq := format('a.k %s b.k', coalesce(eq, '='))
                  || CASE WHEN unique_key[1] AND NOT key_as_text THEN '' ELSE ' AND a.n = 1' END
                  || CASE WHEN unique_key[2] AND NOT key_as_text THEN '' ELSE ' AND b.n = 1' END;
        FOR s IN 1..2 LOOP
            cols := CASE s WHEN 1 THEN l_cols ELSE r_cols END;
            i := CASE s WHEN 1 THEN l_key ELSE r_key END;
            side_sql[s] := format('SELECT true AS p, %s AS k, %s AS n',
                CASE WHEN key_as_text THEN format('(t.%I)::text COLLATE "C"', cols[i])
                     ELSE format('t.%I', cols[i]) END,
                CASE WHEN unique_key[s] AND NOT key_as_text THEN '1::bigint'
                     WHEN key_as_text THEN format('count(*) OVER (PARTITION BY (t.%I)::text COLLATE "C")', cols[i])
                     ELSE format('count(*) OVER (PARTITION BY t.%I)', cols[i]) END);
            FOR j IN 1..array_length(cols, 1) LOOP
                side_sql[s] := side_sql[s] || format(', t.%I AS c%s', cols[j], j);
            END LOOP;
            side_sql[s] := side_sql[s] || format(' FROM %s AS t', rels[s]);
        END LOOP;
        EXIT WHEN attempt = 2;
        BEGIN
            EXECUTE format('SELECT coalesce(a.k, b.k) FROM (%s) AS a FULL JOIN (%s) AS b ON %s LIMIT 0',
                           side_sql[1], side_sql[2], key_eq);
            EXIT;
        EXCEPTION WHEN undefined_function OR datatype_mismatch OR feature_not_supported
                       OR collation_mismatch OR indeterminate_collation THEN
            key_as_text := true;
            eq := NULL;
        END;
    END LOOP;

    -- Compared columns: the same rule, column by column.
    FOREACH col IN ARRAY cmp LOOP
        li := array_position(l_cols, col);
        ri := array_position(r_cols, col);
        eq := NULL;
        SELECT format('OPERATOR(%I.=)', n.nspname) INTO eq
          FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
         WHERE o.oprname = '=' AND o.oprleft = l_types[li] AND o.oprright = r_types[ri]
           AND o.oprresult = 'bool'::regtype AND n.nspname <> 'pg_catalog'
           AND o.oprnamespace IN (SELECT t.typnamespace FROM pg_type t
                                   WHERE t.oid IN (l_types[li], r_types[ri]))
         ORDER BY o.oprnamespace = (SELECT t.typnamespace FROM pg_type t WHERE t.oid = l_types[li]) DESC
         LIMIT 1;
        IF eq IS NOT NULL THEN
            -- IS DISTINCT FROM, spelt out for an explicit operator.
            distinct_exprs := distinct_exprs || format(
                '((a.c%1$s IS NULL) <> (b.c%2$s IS NULL) OR (a.c%1$s %3$s b.c%2$s) IS FALSE)', li, ri, eq);
        ELSE
            BEGIN
                EXECUTE format('SELECT a.%1$I IS DISTINCT FROM b.%1$I FROM %2$s AS a, %3$s AS b LIMIT 0',
                               col, rels[1], rels[2]);
                distinct_exprs := distinct_exprs || format('(a.c%s IS DISTINCT FROM b.c%s)', li, ri);
            EXCEPTION WHEN undefined_function OR datatype_mismatch
                           OR collation_mismatch OR indeterminate_collation THEN
                distinct_exprs := distinct_exprs || format(
                    '((a.c%s)::text COLLATE "C" IS DISTINCT FROM (b.c%s)::text COLLATE "C")', li, ri);
            END;
        END IF;
    END LOOP;
    distinct_sql := coalesce(array_to_string(distinct_exprs, ' OR '), '');
    IF distinct_sql = '' THEN
        distinct_sql := 'false';
    END IF;

    -- The query.  c: the rows out of the join that show a problem; w:
    -- with the largest count of their key on each side (0 for a NULL
    -- key, which matches nothing and is reported row by row); d: the
    -- duplicated keys, with all their rows.
    q := format($q$
        WITH c AS (
            SELECT coalesce(a.k, b.k) AS k,
                   a.p IS NOT NULL AS lp, b.p IS NOT NULL AS rp,
                   coalesce(a.n, 0) AS ln, coalesce(b.n, 0) AS rn,
                   CASE WHEN a.p THEN to_jsonb(ROW(%1$s)::%2$s) END AS lrow,
                   CASE WHEN b.p THEN to_jsonb(ROW(%3$s)::%4$s) END AS rrow
              FROM (%5$s) AS a
              FULL JOIN (%6$s) AS b ON %7$s
             WHERE a.p IS NULL OR b.p IS NULL OR %8$s
        ), w AS (
            SELECT c.*,
                   CASE WHEN c.k IS NULL THEN 0 ELSE max(c.ln) OVER (PARTITION BY c.k) END AS kl,
                   CASE WHEN c.k IS NULL THEN 0 ELSE max(c.rn) OVER (PARTITION BY c.k) END AS kr
              FROM c
        ), d AS (
            SELECT w.k, max(w.kl) AS kl, max(w.kr) AS kr,
                   jsonb_agg(w.lrow ORDER BY w.lrow) FILTER (WHERE w.lp) AS lrows,
                   jsonb_agg(w.rrow ORDER BY w.rrow) FILTER (WHERE w.rp) AS rrows
              FROM w
             WHERE w.kl > 1 OR w.kr > 1
             GROUP BY w.k
        )
        SELECT x.key, x.problem, x.l, x.r FROM (
            SELECT w.k::text AS key,
                   CASE WHEN w.lp AND w.rp THEN 'mismatch'
                        WHEN w.lp THEN 'missing_remote'
                        ELSE 'missing_local' END AS problem,
                   w.lrow AS l, w.rrow AS r
              FROM w
             WHERE w.kl <= 1 AND w.kr <= 1
            UNION ALL
            SELECT d.k::text, 'duplicate_local', d.lrows, d.rrows FROM d WHERE d.kl > 1
            UNION ALL
            SELECT d.k::text, 'duplicate_remote', d.lrows, d.rrows FROM d WHERE d.kr > 1
        ) AS x
        ORDER BY x.key COLLATE "C", x.problem, x.l, x.r
        $q$,
        (SELECT string_agg('a.c' || n, ', ' ORDER BY n) FROM generate_series(1, array_length(l_cols, 1)) AS n),
        rowtype[1],
        (SELECT string_agg('b.c' || n, ', ' ORDER BY n) FROM generate_series(1, array_length(r_cols, 1)) AS n),
        rowtype[2],
        side_sql[1], side_sql[2], key_eq, distinct_sql);
    RETURN QUERY EXECUTE q;
END $$;
COMMENT ON FUNCTION eo.reconcile(regclass, regclass, text, text[]) IS
    'compares two relations on a key column: keys missing on either side, mismatched rows, duplicated keys';

REVOKE ALL ON FUNCTION eo.reconcile(regclass, regclass, text, text[]) FROM PUBLIC;
