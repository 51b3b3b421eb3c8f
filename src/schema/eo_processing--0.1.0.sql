/* eo_processing--0.1.0.sql: install script of version 0.1.0 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION eo_processing" to load this file. \quit

-- The schema "eo" is created here, so that it is a member of the extension
-- (DROP EXTENSION removes it) and CREATE EXTENSION fails cleanly if a schema
-- of that name already exists.  Every name below is schema-qualified.  Only
-- eo.purge_expired() runs with elevated rights (with a pinned search_path):
-- the C functions access the extension's tables directly, so application
-- roles need EXECUTE on the functions and no privilege on any table.

CREATE SCHEMA eo;
COMMENT ON SCHEMA eo IS 'eo_processing: exactly-once processing';

----------------------------------------------------------------------
-- Inbox: one record per (consumer, msg_id) processed.
----------------------------------------------------------------------
-- Column order is chosen for a compact row (fixed-width first) and is
-- checked by the library at every call; do not reorder.  The key starts
-- with msg_id: it is nearly unique, so index comparisons usually end at the
-- first column, which also sits at a fixed offset in every index tuple.
CREATE TABLE eo.inbox (
    expires_at   timestamptz NOT NULL,
    processed_at timestamptz NOT NULL,
    consumer     text COLLATE "C" NOT NULL,
    msg_id       text COLLATE "C" NOT NULL,
    result       jsonb,
    CONSTRAINT inbox_pkey PRIMARY KEY (msg_id, consumer)
);
COMMENT ON TABLE eo.inbox IS
    'Messages processed by each consumer (eo.process); expired rows are removed by eo.purge_expired()';

----------------------------------------------------------------------
-- Producer sequence marks: one row per (consumer, producer).
----------------------------------------------------------------------
-- Updated in place on every new message of a producer, so leave room
-- on each page for HOT updates.
CREATE TABLE eo.producer_seq (
    last_seq   bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    consumer   text COLLATE "C" NOT NULL,
    producer   text COLLATE "C" NOT NULL,
    CONSTRAINT producer_seq_pkey PRIMARY KEY (producer, consumer)
) WITH (fillfactor = 50);
COMMENT ON TABLE eo.producer_seq IS
    'Highest committed sequence number per producer and consumer (eo.process_seq)';

-- Both tables hold users' data: pg_dump must dump their rows.
SELECT pg_catalog.pg_extension_config_dump('eo.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('eo.producer_seq', '');

----------------------------------------------------------------------
-- Application functions
----------------------------------------------------------------------
CREATE FUNCTION eo.process(msg_id text,
                           consumer text DEFAULT 'default',
                           retain interval DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process(text, text, interval) IS
    'true the first time (consumer, msg_id) is processed; records it in the caller''s transaction';

-- 'infinity' is not an interval before PostgreSQL 17: this overload takes
-- the retention as text ('infinity', or anything interval accepts).
CREATE FUNCTION eo.process(msg_id text, consumer text, retain text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process_retain_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process(text, text, text) IS
    'eo.process with the retention as text, so that ''infinity'' can be given';

CREATE FUNCTION eo.process_seq(producer text, seq bigint,
                               consumer text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process_seq'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process_seq(text, bigint, text) IS
    'true when seq is above the highest committed sequence of (consumer, producer)';

CREATE FUNCTION eo.set_result(msg_id text, result jsonb,
                              consumer text DEFAULT 'default')
RETURNS void
AS 'MODULE_PATHNAME', 'eo_set_result'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.set_result(text, jsonb, text) IS
    'stores the result of processing a message, for eo.result()';

CREATE FUNCTION eo.result(msg_id text, consumer text DEFAULT 'default')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'eo_result'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION eo.result(text, text) IS
    'the result stored for a processed message, or NULL';

----------------------------------------------------------------------
-- Operator functions
----------------------------------------------------------------------
CREATE FUNCTION eo.forget(msg_id text, consumer text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_forget'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.forget(text, text) IS
    'deletes the record of a processed message so that it is processed again';

-- Deletes expired inbox records, at most max_rows of them (all when NULL),
-- and returns how many it deleted.  SECURITY DEFINER so that an operator
-- role granted EXECUTE needs no privilege on eo.inbox.
CREATE FUNCTION eo.purge_expired(max_rows bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH doomed AS (
        SELECT i.ctid AS tid
          FROM eo.inbox AS i
         WHERE i.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
         LIMIT max_rows
    ), deleted AS (
        DELETE FROM eo.inbox AS i
         USING doomed
         WHERE i.ctid OPERATOR(pg_catalog.=) doomed.tid
           AND i.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
        RETURNING 1
    )
    SELECT pg_catalog.count(*) FROM deleted
$$;
COMMENT ON FUNCTION eo.purge_expired(bigint) IS
    'deletes expired inbox records (at most max_rows) and returns how many';

----------------------------------------------------------------------
-- Privileges: nothing is usable by PUBLIC.  Grant an application role
-- what it needs with (see README):
--   GRANT USAGE ON SCHEMA eo TO app;
--   GRANT EXECUTE ON FUNCTION eo.process(text, text, interval),
--     eo.process(text, text, text), eo.process_seq(text, bigint, text),
--     eo.set_result(text, jsonb, text), eo.result(text, text) TO app;
----------------------------------------------------------------------
REVOKE ALL ON SCHEMA eo FROM PUBLIC;
REVOKE ALL ON TABLE eo.inbox, eo.producer_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION
    eo.process(text, text, interval),
    eo.process(text, text, text),
    eo.process_seq(text, bigint, text),
    eo.set_result(text, jsonb, text),
    eo.result(text, text),
    eo.forget(text, text),
    eo.purge_expired(bigint)
FROM PUBLIC;
