-- The extension's objects, their signatures and their security settings.
CREATE EXTENSION eo_processing;

\dx+ eo_processing
\df eo.*
\d eo.inbox
\d eo.producer_seq

-- No function is executable by PUBLIC (an ACL of NULL would mean it is).
SELECT p.oid::regprocedure AS function,
       p.proacl IS NOT NULL AS has_acl,
       EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public_can_execute
  FROM pg_proc p
 WHERE p.pronamespace = 'eo'::regnamespace
 ORDER BY p.oid::regprocedure::text;

-- Only the purge functions and the four idempotency key functions run
-- with the owner's rights; they pin search_path.
SELECT p.oid::regprocedure AS function, p.proconfig
  FROM pg_proc p
 WHERE p.pronamespace = 'eo'::regnamespace AND p.prosecdef
 ORDER BY p.oid::regprocedure::text;
-- Every function not written in C pins search_path (none is missing).
SELECT p.oid::regprocedure AS unpinned_function
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'eo'::regnamespace AND l.lanname <> 'c'
   AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false);

-- No privileges on the schema or the tables for PUBLIC.
SELECT n.nspname,
       EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = 0) AS public_has_rights
  FROM pg_namespace n WHERE n.nspname = 'eo';
SELECT c.relname,
       EXISTS (SELECT 1 FROM aclexplode(c.relacl) a
                WHERE a.grantee <> c.relowner) AS others_have_rights
  FROM pg_class c
 WHERE c.relnamespace = 'eo'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY c.relname;

-- pg_dump keeps the users' data: every table but none of the views (the
-- log's data is in its slots).
SELECT c.relname
  FROM pg_extension e, unnest(e.extconfig) AS t(oid)
  JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'eo_processing' ORDER BY 1;

-- The settings and their documented defaults.
SELECT name, boot_val AS default, unit, context, short_desc
  FROM pg_settings WHERE name LIKE 'eo.%' ORDER BY name;

DROP EXTENSION eo_processing;
