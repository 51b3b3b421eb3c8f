-- eo_processing 0.5.0 -> 0.6.0.
--
-- Each change below has a section of its own, headed by the issue it
-- belongs to.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.6.0'" to load this file. \quit

-- Start (or wake) this database's relay once this transaction commits.
SELECT eo.wake_relay();
