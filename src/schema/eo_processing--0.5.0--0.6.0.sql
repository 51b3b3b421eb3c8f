-- eo_processing 0.5.0 -> 0.6.0.
--
-- Each change below has a section of its own, headed by the issue it
-- belongs to.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.6.0'" to load this file. \quit

-- Issue #11: nats destinations.
--
-- A new kind of destination, 'nats' (the library's sink; the option checker
-- already accepts every kind it has).  eo.destinations hides its secrets:
-- the options credentials, token and password.
CREATE OR REPLACE VIEW eo.destinations AS
    SELECT d.name, d.kind, d.enabled, d.disabled_reason,
           CASE WHEN d.kind OPERATOR(pg_catalog.=) 'http' THEN
               (d.options OPERATOR(pg_catalog.-) ARRAY['signing_secret', 'headers'])
               OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                   'signing_secret', CASE WHEN d.options OPERATOR(pg_catalog.?) 'signing_secret'
                                          THEN '(hidden)' END,
                   'headers', (SELECT pg_catalog.jsonb_object_agg(h.key, '(hidden)')
                                 FROM pg_catalog.jsonb_each(d.options OPERATOR(pg_catalog.->) 'headers') AS h)))
                WHEN d.kind OPERATOR(pg_catalog.=) 'nats' THEN
               (d.options OPERATOR(pg_catalog.-) ARRAY['credentials', 'token', 'password'])
               OPERATOR(pg_catalog.||) (SELECT pg_catalog.jsonb_object_agg(s.key, '(hidden)')
                                          FROM pg_catalog.jsonb_each(d.options) AS s
                                         WHERE s.key OPERATOR(pg_catalog.=) ANY (ARRAY['credentials', 'token', 'password']))
           ELSE d.options END AS options,
           d.created_at
      FROM eo.destination d;
COMMENT ON VIEW eo.destinations IS
    'destinations and their options, with signing secrets, header values, credentials, tokens and passwords hidden';

-- Start (or wake) this database's relay once this transaction commits.
SELECT eo.wake_relay();
