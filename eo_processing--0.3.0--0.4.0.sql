-- eo_processing 0.3.0 -> 0.4.0: idempotency keys with stored responses,
-- and reconciliation.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.4.0'" to load this file. \quit
