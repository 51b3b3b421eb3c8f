-- eo_processing 0.6.0 -> 0.7.0.
--
-- Each change below has a section of its own, headed by the issue it
-- belongs to.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.7.0'" to load this file. \quit

----------------------------------------------------------------------
-- #15 Kafka sink
----------------------------------------------------------------------

-- Destinations of kind 'kafka' (sink_kafka.c): records produced with
-- librdkafka, idempotent by default, transactional with exactly_once.
-- The kind itself comes with the library; the schema only learns to hide
-- the secret librdkafka properties (passwords, client secrets, private
-- keys) from operators, as it hides the other kinds' secrets.
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
                WHEN d.kind OPERATOR(pg_catalog.=) 'kafka'
                     AND pg_catalog.jsonb_typeof(d.options OPERATOR(pg_catalog.->) 'properties') OPERATOR(pg_catalog.=) 'object' THEN
               d.options OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('properties', coalesce(
                   (SELECT pg_catalog.jsonb_object_agg(p.key,
                               CASE WHEN pg_catalog.strpos(p.key, 'password') OPERATOR(pg_catalog.>) 0
                                         OR pg_catalog.strpos(p.key, 'secret') OPERATOR(pg_catalog.>) 0
                                         OR p.key OPERATOR(pg_catalog.=) ANY (ARRAY['ssl.key.pem', 'ssl_key', 'sasl.oauthbearer.config'])
                                    THEN '"(hidden)"'::jsonb ELSE p.value END)
                      FROM pg_catalog.jsonb_each(d.options OPERATOR(pg_catalog.->) 'properties') AS p),
                   '{}'::jsonb))
           ELSE d.options END AS options,
           d.created_at
      FROM eo.destination d;
COMMENT ON VIEW eo.destinations IS
    'destinations and their options, with signing secrets, header values, credentials, tokens, passwords and secret Kafka properties hidden';

COMMENT ON FUNCTION eo.create_destination(text, text, jsonb) IS
    'creates a destination the relay delivers to (kind ''notify'', ''http'', ''nats'', ''queue'' or ''kafka'')';
