-- eo_processing 0.2.0 -> 0.3.0: the HTTP sink, and stored results owned by roles.
--
-- Destinations of kind 'http' deliver messages as signed webhooks (POST,
-- Standard Webhooks headers, Idempotency-Key = message id).  The relay
-- sends them with libcurl outside any transaction: it marks a delivery
-- 'in_flight' (and counts the attempt) before the request and records the
-- outcome after it, so a crash in between sends the message again with the
-- same id, never loses it.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.3.0'" to load this file. \quit

-- Stored results belong to the role that stored them (eo.set_result): only
-- it, its members and superusers read or replace them.  regrole, so that
-- pg_dump writes the role's name and a restore maps it to the right role.
-- Results stored before 0.3.0 have no owner and stay readable as before.
ALTER TABLE eo.inbox ADD COLUMN result_owner regrole;

ALTER TABLE eo.destination DROP CONSTRAINT destination_kind_check;
ALTER TABLE eo.destination ADD CONSTRAINT destination_kind_check
    CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['notify', 'http']));
-- Why the relay disabled a destination by itself (HTTP 410 Gone); cleared
-- by eo.alter_destination().
ALTER TABLE eo.destination ADD COLUMN disabled_reason text;

-- The relay claims an http destination's due deliveries in this order, and
-- stops reading at the first one not yet due.
CREATE INDEX delivery_claim ON eo.delivery (destination_id, next_attempt_at, message_id)
    WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying']);

-- When is the next retry due?  (The relay asks after every retry step; the
-- older delivery_due index also holds every pending http delivery.)
CREATE INDEX delivery_retrying ON eo.delivery (next_attempt_at)
    WHERE state OPERATOR(pg_catalog.=) 'retrying';

-- Every HTTP request the relay made, kept for eo.outbox_retention.
CREATE TABLE eo.http_attempt (
    attempted_at   timestamptz NOT NULL,
    destination_id integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    message_id     uuid NOT NULL,
    attempt        integer NOT NULL,
    status_code    integer,             -- NULL: no HTTP answer (see error)
    error          text,                -- NULL: a 2xx answer
    latency_ms     double precision NOT NULL,
    response_body  text                 -- the first bytes, printable ASCII
);
CREATE INDEX http_attempt_message ON eo.http_attempt (destination_id, message_id);
CREATE INDEX http_attempt_time ON eo.http_attempt (attempted_at);
COMMENT ON TABLE eo.http_attempt IS
    'every HTTP request of the relay: when, status code or error, latency, start of the response body';
REVOKE ALL ON TABLE eo.http_attempt FROM PUBLIC;
-- Like eo.message_log, the attempts go into pg_dump (an audit trail).
SELECT pg_catalog.pg_extension_config_dump('eo.http_attempt', '');

-- Options now depend on the caller (http destinations are for the
-- extension owner and superusers) and on eo.http_allowed_hosts.
ALTER FUNCTION eo.check_destination_options(text, jsonb) STABLE;

-- Options are checked (and the http privilege rule applied) also when
-- eo.destination is written directly, by a role the owner gave rights on it.
CREATE FUNCTION eo.destination_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.kind IS DISTINCT FROM OLD.kind
       OR NEW.options IS DISTINCT FROM OLD.options THEN
        PERFORM eo.check_destination_options(NEW.kind, NEW.options);
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION eo.destination_check() FROM PUBLIC;
CREATE TRIGGER destination_check
    BEFORE INSERT OR UPDATE ON eo.destination
    FOR EACH ROW EXECUTE FUNCTION eo.destination_check();

CREATE OR REPLACE FUNCTION eo.alter_destination(name text, options jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
BEGIN
    d := eo.find_destination(name);
    UPDATE eo.destination x
       SET options = eo.check_destination_options(d.kind, coalesce(alter_destination.options, '{}')),
           enabled = true,
           disabled_reason = NULL
     WHERE x.id = d.id;
    PERFORM eo.wake_relay();
END $$;

COMMENT ON FUNCTION eo.create_destination(text, text, jsonb) IS
    'creates a destination the relay delivers to (kind ''notify'' or ''http'')';

-- Destinations with their options, secrets and header values hidden: what
-- operators may see.
CREATE VIEW eo.destinations AS
    SELECT d.name, d.kind, d.enabled, d.disabled_reason,
           CASE WHEN d.kind OPERATOR(pg_catalog.=) 'http' THEN
               (d.options OPERATOR(pg_catalog.-) ARRAY['signing_secret', 'headers'])
               OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                   'signing_secret', CASE WHEN d.options OPERATOR(pg_catalog.?) 'signing_secret'
                                          THEN '(hidden)' END,
                   'headers', (SELECT pg_catalog.jsonb_object_agg(h.key, '(hidden)')
                                 FROM pg_catalog.jsonb_each(d.options OPERATOR(pg_catalog.->) 'headers') AS h)))
           ELSE d.options END AS options,
           d.created_at
      FROM eo.destination d;
COMMENT ON VIEW eo.destinations IS
    'destinations and their options, with signing secrets and header values hidden';
REVOKE ALL ON TABLE eo.destinations FROM PUBLIC;

-- eo.stats gains the reason a destination was disabled.
CREATE OR REPLACE VIEW eo.stats AS
    SELECT d.name AS destination,
           d.kind,
           d.enabled,
           coalesce(q.pending, 0) AS pending,
           coalesce(q.in_flight, 0) AS in_flight,
           coalesce(q.retrying, 0) AS retrying,
           coalesce(q.dead, 0) AS dead,
           s.delivered_total,
           pg_catalog.now() OPERATOR(pg_catalog.-) q.oldest_pending AS oldest_pending_age,
           s.last_error,
           s.last_error_at,
           s.last_success_at,
           d.disabled_reason
      FROM eo.destination d
      JOIN eo.destination_stats s ON s.destination_id OPERATOR(pg_catalog.=) d.id
      LEFT JOIN LATERAL (
          SELECT pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'pending') AS pending,
                 pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'in_flight') AS in_flight,
                 pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'retrying') AS retrying,
                 pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'dead') AS dead,
                 pg_catalog.min(x.created_at) FILTER (WHERE x.state OPERATOR(pg_catalog.<>) 'dead') AS oldest_pending
            FROM eo.delivery x
           WHERE x.destination_id OPERATOR(pg_catalog.=) d.id
      ) q ON true;

-- Housekeeping also forgets HTTP attempts older than eo.outbox_retention.
-- Both purges refuse a negative max_rows (before 0.3.0 that depended on
-- whether there was anything to delete).
CREATE OR REPLACE FUNCTION eo.purge_delivered(max_rows bigint DEFAULT NULL)
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
    WITH horizon AS (
        SELECT pg_catalog.now() OPERATOR(pg_catalog.-)
                   pg_catalog.current_setting('eo.outbox_retention')::pg_catalog.interval AS before
    ), doomed AS (
        SELECT m.ctid AS tid
          FROM eo.message_log AS m, horizon AS h
         WHERE m.routed_at OPERATOR(pg_catalog.<) h.before
           AND NOT EXISTS (SELECT 1 FROM eo.delivery AS d
                            WHERE d.message_id OPERATOR(pg_catalog.=) m.id)
         ORDER BY m.routed_at
         LIMIT max_rows
    ), deleted AS (
        DELETE FROM eo.message_log AS m
         USING doomed
         WHERE m.ctid OPERATOR(pg_catalog.=) doomed.tid
        RETURNING 1
    ), keys AS (
        DELETE FROM eo.outbox_key AS k
         USING horizon AS h
         WHERE k.last_used OPERATOR(pg_catalog.<) h.before
           AND NOT EXISTS (SELECT 1 FROM eo.outbox AS o
                            WHERE o.key OPERATOR(pg_catalog.=) k.key)
        RETURNING 1
    ), old_attempts AS (
        SELECT a.ctid AS tid
          FROM eo.http_attempt AS a, horizon AS h
         WHERE a.attempted_at OPERATOR(pg_catalog.<) h.before
         ORDER BY a.attempted_at
         LIMIT max_rows
    ), attempts AS (
        DELETE FROM eo.http_attempt AS a
         USING old_attempts
         WHERE a.ctid OPERATOR(pg_catalog.=) old_attempts.tid
        RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO n FROM deleted;
    RETURN n;
END $$;
COMMENT ON FUNCTION eo.purge_delivered(bigint) IS
    'deletes routed messages and HTTP attempts older than eo.outbox_retention (at most max_rows each) and idle key rows';

CREATE OR REPLACE FUNCTION eo.purge_expired(max_rows bigint DEFAULT NULL)
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
    SELECT pg_catalog.count(*) INTO n FROM deleted;
    RETURN n;
END $$;
