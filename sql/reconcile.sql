-- eo.reconcile(): every kind of problem, the columns compared, NULLs,
-- duplicates, types without a usable equality, identifiers that need
-- quoting, errors (with SQLSTATEs) and privileges.
CREATE EXTENSION eo_processing;
\set VERBOSITY sqlstate
\set ON_ERROR_STOP 0

-- Our payments (no unique key: duplicates are possible) and the
-- provider's settlement report (bigint key, a column of its own).
CREATE TABLE payments (id integer, amount numeric(10,2), currency text, status text, note text);
CREATE TABLE settlement (id bigint, amount numeric(12,4), currency text, status text, fee numeric);
INSERT INTO payments VALUES
    (1, 10.00, 'EUR', 'paid', 'same on both sides'),
    (2, 20.00, 'EUR', 'paid', 'only here'),
    (4, 40.00, 'EUR', 'paid', 'amount differs'),
    (5, 50.00, 'EUR', NULL, 'NULL status on both sides: equal'),
    (6, 60.00, 'EUR', NULL, 'NULL here, a status there'),
    (7, 70.00, 'EUR', 'paid', 'currency differs'),
    (8, 80.00, 'EUR', 'paid', 'duplicated there'),
    (9, 90.00, 'EUR', 'paid', 'duplicated there, and differs'),
    (11, 110.00, 'EUR', 'paid', 'duplicated here'),
    (11, 110.00, 'EUR', 'paid', 'duplicated here'),
    (12, 120.00, 'EUR', 'paid', 'duplicated here, absent there'),
    (12, 121.00, 'EUR', 'paid', 'duplicated here, absent there'),
    (13, 130.00, 'EUR', 'paid', 'duplicated on both sides'),
    (13, 130.00, 'EUR', 'paid', 'duplicated on both sides'),
    (14, 140.00, 'EUR', 'paid', 'only note differs (not compared)'),
    (NULL, 1.00, 'EUR', 'paid', 'NULL key here');
INSERT INTO settlement VALUES
    (1, 10, 'EUR', 'paid', 0.1),
    (3, 30, 'EUR', 'paid', 0.3),
    (4, 40.01, 'EUR', 'paid', 0.4),
    (5, 50.0000, 'EUR', NULL, 0.5),
    (6, 60, 'EUR', 'paid', 0.6),
    (7, 70, 'USD', 'paid', 0.7),
    (8, 80, 'EUR', 'paid', 0.8),
    (8, 80, 'EUR', 'paid', 0.8),
    (9, 90, 'EUR', 'paid', 0.9),
    (9, 99, 'EUR', 'refunded', 0.9),
    (10, 100, 'EUR', 'paid', 1.0),
    (10, 100, 'EUR', 'paid', 1.0),
    (11, 110, 'EUR', 'paid', 1.1),
    (13, 130, 'EUR', 'paid', 1.3),
    (13, 130, 'EUR', 'paid', 1.3),
    (13, 130, 'EUR', 'paid', 1.3),
    (14, 140, 'EUR', 'paid', 1.4),
    (NULL, 1, 'EUR', 'paid', 0),
    (NULL, 1, 'EUR', 'paid', 0);

-- Every column of both but the key (amount, currency, status): numeric
-- 10.00 and 10 are equal, NULL equals NULL.  A NULL key matches nothing:
-- each such row is reported on its own.  A duplicated key is reported
-- once per side that duplicates it, with all rows of that key on both
-- sides (and never also as a mismatch).
SELECT * FROM eo.reconcile('payments', 'settlement', 'id');
-- Only the columns given.
SELECT key, problem FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['amount']);
SELECT key, problem FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['status', 'currency']);
-- None: only keys (missing, duplicated) are compared.
SELECT key, problem FROM eo.reconcile('payments', 'settlement', 'id', '{}');
-- Named arguments; a column listed twice, or the key listed, is compared
-- once (the key is matched, never compared).
SELECT key, problem
  FROM eo.reconcile(local => 'payments', remote => 'settlement', key_column => 'id',
                    compare_columns => ARRAY['currency', 'id', 'currency']);
-- The other way round: local and remote swap.
SELECT key, problem FROM eo.reconcile('settlement', 'payments', 'id', ARRAY['amount', 'currency', 'status']);
-- A relation against itself: only its duplicates.
SELECT key, problem FROM eo.reconcile('settlement', 'settlement', 'id');
-- Empty relations.
CREATE TABLE empty_payments (LIKE payments);
SELECT key, problem FROM eo.reconcile('empty_payments', 'empty_payments', 'id');
SELECT problem, count(*) FROM eo.reconcile('empty_payments', 'settlement', 'id') GROUP BY 1 ORDER BY 1;
SELECT problem, count(*) FROM eo.reconcile('payments', 'empty_payments', 'id') GROUP BY 1 ORDER BY 1;

-- A unique index on the key (no duplicates possible) gives the same
-- answer, without counting keys on that side.
CREATE TABLE payments_pk (LIKE payments);
INSERT INTO payments_pk SELECT DISTINCT ON (id) * FROM payments WHERE id IS NOT NULL ORDER BY id, amount;
ALTER TABLE payments_pk ADD PRIMARY KEY (id);
CREATE TABLE payments_nopk AS SELECT * FROM payments_pk;
(SELECT * FROM eo.reconcile('payments_pk', 'settlement', 'id')
 EXCEPT ALL SELECT * FROM eo.reconcile('payments_nopk', 'settlement', 'id'))
UNION ALL
(SELECT * FROM eo.reconcile('payments_nopk', 'settlement', 'id')
 EXCEPT ALL SELECT * FROM eo.reconcile('payments_pk', 'settlement', 'id'));
SELECT count(*) AS problems FROM eo.reconcile('payments_pk', 'settlement', 'id');
-- A deferrable unique constraint may hold duplicates inside a
-- transaction: that side is still counted.
CREATE TABLE payments_deferred (LIKE payments_pk, UNIQUE (id) DEFERRABLE INITIALLY DEFERRED);
BEGIN;
INSERT INTO payments_deferred SELECT * FROM payments_pk;
INSERT INTO payments_deferred SELECT * FROM payments_pk WHERE id = 1;
SELECT key, problem FROM eo.reconcile('payments_deferred', 'payments_pk', 'id', '{}');
ROLLBACK;

----------------------------------------------------------------------
-- Views, dropped columns, types
----------------------------------------------------------------------
-- A view on one side; a dropped column on the other.
CREATE VIEW settlement_eur AS SELECT id, amount, currency FROM settlement WHERE currency = 'EUR';
ALTER TABLE payments_nopk DROP COLUMN note;
SELECT * FROM eo.reconcile('payments_nopk', 'settlement_eur', 'id') WHERE key IN ('1', '4', '7', '14');
-- Keys of different types with no equality between them (integer and
-- text) are matched by their text forms; so are json values, which have
-- no equality operator at all.
CREATE TABLE ext_orders (ref text, total integer, meta json);
CREATE TABLE int_orders (ref integer, total integer, meta json);
INSERT INTO ext_orders VALUES ('1', 10, '{"a": 1}'), ('2', 20, '{"a": 2}'), ('03', 30, '{"a":3}'), ('4', 40, '{"b": 1}');
INSERT INTO int_orders VALUES (1, 10, '{"a": 1}'), (2, 21, '{"a": 2}'), (3, 30, '{"a":3}'), (4, 40, '{"b":  1}');
SELECT * FROM eo.reconcile('ext_orders', 'int_orders', 'ref');
-- A type whose equality lives outside pg_catalog (citext: case-blind)
-- is compared with that equality, keys included; a domain over it too.
CREATE SCHEMA regress_types;
CREATE EXTENSION citext SCHEMA regress_types;
CREATE DOMAIN regress_types.code AS regress_types.citext CHECK (VALUE <> '');
CREATE TABLE ci_local (code regress_types.citext, label regress_types.code, plain text);
CREATE TABLE ci_remote (code regress_types.citext, label regress_types.code, plain text);
INSERT INTO ci_local VALUES ('A', 'Alpha', 'x'), ('b', 'beta', 'y'), ('C', 'gamma', 'z');
INSERT INTO ci_remote VALUES ('a', 'ALPHA', 'x'), ('B', 'Beta', 'Y'), ('c', 'gamma', 'z'), ('C', 'gamma', 'z');
SELECT * FROM eo.reconcile('ci_local', 'ci_remote', 'code');

----------------------------------------------------------------------
-- Identifiers that need quoting: schema, tables and columns with
-- spaces, quotes, semicolons, upper case
----------------------------------------------------------------------
CREATE SCHEMA "my ""odd"" schema";
CREATE TABLE "my ""odd"" schema"."Local; DROP TABLE payments; --" (
    "the key" text, "amount (€)" numeric, "a""b" text, "Mixed" int);
CREATE TABLE "my ""odd"" schema"."remote ""table""" (
    "Mixed" int, "a""b" text, "amount (€)" numeric, "the key" text);
INSERT INTO "my ""odd"" schema"."Local; DROP TABLE payments; --" VALUES
    ('k 1', 1, 'x', 1), (E'k''2', 2, 'y', 2), ('k;3', 3, 'z', 3);
INSERT INTO "my ""odd"" schema"."remote ""table""" VALUES
    (1, 'x', 1, 'k 1'), (2, 'Y', 2, E'k''2'), (3, 'z', 3, 'k"4');
SELECT * FROM eo.reconcile('"my ""odd"" schema"."Local; DROP TABLE payments; --"',
                           '"my ""odd"" schema"."remote ""table"""', 'the key');
SELECT key, problem FROM eo.reconcile('"my ""odd"" schema"."Local; DROP TABLE payments; --"',
                                      '"my ""odd"" schema"."remote ""table"""', 'the key',
                                      ARRAY['amount (€)', 'Mixed']);
SELECT count(*) AS payments_still_there FROM payments;

----------------------------------------------------------------------
-- Errors
----------------------------------------------------------------------
-- NULL arguments (22004).
SELECT * FROM eo.reconcile(NULL, 'settlement', 'id');
SELECT * FROM eo.reconcile('payments', NULL, 'id');
SELECT * FROM eo.reconcile('payments', 'settlement', NULL);
SELECT * FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['amount', NULL]);
-- Columns that do not exist in one of the relations (42703): the key,
-- a compared column, a column of one side only, names are exact.
SELECT * FROM eo.reconcile('payments', 'settlement', 'nope');
SELECT * FROM eo.reconcile('payments', 'settlement', 'ID');
SELECT * FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['amount', 'nope']);
SELECT * FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['note']);
SELECT * FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['fee']);
SELECT * FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['ctid']);
SELECT * FROM eo.reconcile('payments_nopk', 'settlement', 'id', ARRAY['note']);
-- Relations that do not exist (42P01) or are not tables (42809).
SELECT * FROM eo.reconcile('nope', 'settlement', 'id');
SELECT * FROM eo.reconcile(999999::oid::regclass, 'settlement', 'id');
SELECT * FROM eo.reconcile('payments_pk_pkey', 'settlement', 'id');
CREATE SEQUENCE some_seq;
SELECT * FROM eo.reconcile('payments', 'some_seq', 'id');

----------------------------------------------------------------------
-- Privileges: the caller's own (42501 without SELECT on either side)
----------------------------------------------------------------------
CREATE ROLE regress_eo_recon;
GRANT USAGE ON SCHEMA eo TO regress_eo_recon;
SET ROLE regress_eo_recon;
SELECT * FROM eo.reconcile('payments', 'settlement', 'id');
RESET ROLE;
GRANT EXECUTE ON FUNCTION eo.reconcile(regclass, regclass, text, text[]) TO regress_eo_recon;
SET ROLE regress_eo_recon;
SELECT * FROM eo.reconcile('payments', 'settlement', 'id');
RESET ROLE;
GRANT SELECT ON payments TO regress_eo_recon;
SET ROLE regress_eo_recon;
SELECT * FROM eo.reconcile('payments', 'settlement', 'id');
SELECT * FROM eo.reconcile('settlement', 'payments', 'id');
RESET ROLE;
-- SELECT on some columns only is not enough: the rows are returned whole.
GRANT SELECT (id, amount) ON settlement TO regress_eo_recon;
SET ROLE regress_eo_recon;
SELECT * FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['amount']);
RESET ROLE;
GRANT SELECT ON settlement TO regress_eo_recon;
SET ROLE regress_eo_recon;
SELECT count(*) AS problems FROM eo.reconcile('payments', 'settlement', 'id');
RESET ROLE;
-- Row-level security applies: the caller sees its rows only.
ALTER TABLE settlement ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_eur ON settlement TO regress_eo_recon USING (currency = 'EUR' AND id < 5);
SET ROLE regress_eo_recon;
SELECT key, problem FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['amount']);
RESET ROLE;
ALTER TABLE settlement DISABLE ROW LEVEL SECURITY;

-- Objects an attacker leaves in public change nothing: an equality that
-- is always true would hide every mismatch.
CREATE FUNCTION public.always(numeric, numeric) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR public.= (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = public.always);
CREATE FUNCTION public.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ SELECT '"forged"'::jsonb $$;
SET search_path = public, pg_catalog;
SELECT key, problem, local FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['amount']) WHERE key = '4';
RESET search_path;
DROP OPERATOR public.= (numeric, numeric);
DROP FUNCTION public.always(numeric, numeric), public.to_jsonb(anyelement);

-- The full messages, once.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT * FROM eo.reconcile('payments', 'settlement', 'id', ARRAY['note']);
SELECT * FROM eo.reconcile('payments', 'settlement', 'nope');
SELECT * FROM eo.reconcile('"my ""odd"" schema"."Local; DROP TABLE payments; --"',
                           '"my ""odd"" schema"."remote ""table"""', 'the key', ARRAY['a"b ']);
SELECT * FROM eo.reconcile('payments_pk_pkey', 'settlement', 'id');
SELECT * FROM eo.reconcile(999999::oid::regclass, 'settlement', 'id');
SELECT * FROM eo.reconcile('payments', NULL, 'id');
REVOKE SELECT ON settlement FROM regress_eo_recon;
SET ROLE regress_eo_recon;
SELECT * FROM eo.reconcile('payments', 'settlement', 'id');
RESET ROLE;

DROP SCHEMA "my ""odd"" schema" CASCADE;
DROP SCHEMA regress_types CASCADE;
DROP TABLE payments, settlement, empty_payments, payments_pk, payments_nopk,
    payments_deferred, ext_orders, int_orders CASCADE;
DROP SEQUENCE some_seq;
DROP OWNED BY regress_eo_recon;
DROP ROLE regress_eo_recon;
DROP EXTENSION eo_processing;
