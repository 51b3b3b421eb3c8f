-- Privileges: nothing for PUBLIC; the documented grant is enough for an
-- application; the tables stay out of reach of application roles.
CREATE EXTENSION eo_processing;
CREATE ROLE regress_eo_app;
CREATE ROLE regress_eo_nobody;
CREATE ROLE regress_eo_operator;

-- The grant the README documents for application roles (Privileges),
-- idempotency keys included.
SELECT eo.grant_application('regress_eo_app');
-- An operator role that purges without any table privilege.
GRANT USAGE ON SCHEMA eo TO regress_eo_operator;
GRANT EXECUTE ON FUNCTION eo.purge_expired(bigint) TO regress_eo_operator;

\set VERBOSITY sqlstate
-- A role without the grant can do nothing.
SET ROLE regress_eo_nobody;
SELECT eo.process('n-1');
SELECT eo.process_seq('p', 1);
SELECT eo.result('n-1');
SELECT * FROM eo.inbox;
RESET ROLE;

-- The application role processes messages and stores results ...
SET ROLE regress_eo_app;
SELECT eo.process('a-1') AS first, eo.process('a-1') AS duplicate;
SELECT eo.process('a-2', 'c', 'infinity');
SELECT eo.set_result('a-1', '{"ok": true}');
SELECT eo.result('a-1');
SELECT eo.process_seq('p', 1);
-- ... but cannot touch the tables directly ...
SELECT * FROM eo.inbox;
INSERT INTO eo.inbox VALUES (now(), now(), 'default', 'forged', NULL);
UPDATE eo.inbox SET result = '1';
DELETE FROM eo.inbox;
TRUNCATE eo.inbox;
SELECT * FROM eo.producer_seq;
UPDATE eo.producer_seq SET last_seq = 0;
-- ... nor see destinations (with their secrets), HTTP attempts or keys ...
SELECT * FROM eo.destination;
SELECT * FROM eo.destinations;
SELECT * FROM eo.http_attempt;
SELECT * FROM eo.idempotency_key;
-- ... nor decide where messages go, nor probe http options ...
SELECT eo.create_destination('app-hooks', 'http', '{"url": "http://169.254.169.254/"}');
SELECT eo.create_destination('app-notify', 'notify');
SELECT eo.alter_destination('any', '{"url": "http://10.0.0.1/"}');
SELECT eo.check_destination_options('http', '{"url": "http://169.254.169.254/"}');
SELECT eo.subscribe('*', 'any');
-- ... nor use the operator functions, nor create objects in schema eo.
SELECT eo.forget('a-1');
SELECT eo.purge_expired();
CREATE TABLE eo.mine (i int);
CREATE FUNCTION eo.process(text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
RESET ROLE;

-- Objects an attacker leaves in public do not change what eo.* does.
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql
  AS $$ SELECT timestamptz '2000-01-01' $$;
CREATE OPERATOR public.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz,
  FUNCTION = pg_catalog.timestamptz_ne);
UPDATE eo.inbox SET expires_at = now() - interval '1 hour' WHERE msg_id = 'a-1';

-- The operator purges through the SECURITY DEFINER function only.
SET ROLE regress_eo_operator;
SET search_path = public, pg_catalog;
SELECT eo.purge_expired() AS purged;
SELECT * FROM eo.inbox;
RESET search_path;
RESET ROLE;
SELECT msg_id FROM eo.inbox ORDER BY msg_id;
DROP OPERATOR public.<= (timestamptz, timestamptz);
DROP FUNCTION public.now();

-- Stored results belong to the role that stored them: another application
-- role sees the message as processed but cannot read or replace the result;
-- members of the owning role can.
CREATE ROLE regress_eo_app2;
CREATE ROLE regress_eo_app_member IN ROLE regress_eo_app;
SELECT eo.grant_consumer('regress_eo_app2');
SET ROLE regress_eo_app;
SELECT eo.process('owned-1', 'payments') AS first;
SELECT eo.set_result('owned-1', '{"charge": "ch_1"}', 'payments');
SET ROLE regress_eo_app2;
SELECT eo.process('owned-1', 'payments') AS duplicate_for_app2;
SELECT eo.result('owned-1', 'payments');
SELECT eo.set_result('owned-1', '{"charge": "forged"}', 'payments');
SET ROLE regress_eo_app_member;
SELECT eo.result('owned-1', 'payments') AS member_reads;
RESET ROLE;
SELECT eo.result('owned-1', 'payments') AS superuser_reads,
       result_owner FROM eo.inbox WHERE msg_id = 'owned-1';
DROP OWNED BY regress_eo_app2;
DROP ROLE regress_eo_app2, regress_eo_app_member;

\set VERBOSITY default
-- Full message once, for the record.
SET ROLE regress_eo_app;
SELECT * FROM eo.inbox;
RESET ROLE;

DROP EXTENSION eo_processing;
DROP ROLE regress_eo_app, regress_eo_nobody, regress_eo_operator;
