# A description of the catalog of the eo_processing extension in one
# database, for comparing two databases (test/t/070_upgrade_catalog.pl
# compares one upgraded step by step from the oldest version with one
# created fresh).
#
# eo_catalog_description($node, $dbname) runs the one query below and
# returns a hash ref: "object :: property" => value.  The objects are the
# extension's members (pg_depend, deptype 'e') and what belongs to them:
# columns, constraints, indexes, triggers, the attributes of composite
# types; plus the extension itself (version, configuration tables) and the
# eo.* configuration variables.  Every object is named, never numbered (the
# query runs with search_path = pg_catalog, so that every name of ours is
# schema-qualified), so two databases can be compared key by key.  A
# property without a value (no comment, no default) is left out.
#
# eo_catalog_diff($desc_a, $desc_b, $label_a, $label_b) returns readable
# lines, one block per key that is missing on one side or has different
# values (a line diff for values of several lines, such as function
# definitions); none when the descriptions are equal.

package EOCatalog;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use JSON::PP ();

our @EXPORT = qw(eo_catalog_description eo_catalog_diff);

# One row per (object, property, value).  Sections:
#   extension    version, schema, relocatable, configuration tables
#   member       every member object (whatever its kind) with its comment
#   schema       owner and privileges of the member schemas
#   relation     kind, owner, privileges, options, persistence, row security
#   column       position among the live columns, type with typmod, NOT NULL,
#                default, identity, generated, collation, privileges, comment
#                (also the attributes of composite types)
#   sequence     its parameters, and the column that owns it
#   view         definition
#   constraint   definition, comment
#   index        definition, comment
#   trigger      definition, enabled state, comment (internal triggers of
#                foreign keys are named by OID: they are left out, their
#                constraint is compared)
#   function     full definition, owner, privileges
#   type         kind, owner, privileges; enum labels; domain base type
#   initial privileges  pg_init_privs (what pg_dump takes as the
#                extension's own privileges)
#   setting      eo.* configuration variables
my $description_sql = <<'SQL';
WITH ext AS (
    SELECT e.* FROM pg_extension e WHERE e.extname = 'eo_processing'
), member AS (
    SELECT d.classid, d.objid, d.objsubid
      FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass
       AND d.refobjid = ext.oid AND d.deptype = 'e'
), rel AS (
    -- Member relations, and the row types of member composite types.
    SELECT c.*,
           CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table'
                          WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                          WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table'
                          WHEN 'c' THEN 'type' ELSE c.relkind::text END
           || ' ' || format('%I.%I', c.relnamespace::regnamespace::text, c.relname) AS obj,
           format('%I.%I', c.relnamespace::regnamespace::text, c.relname) AS qname
      FROM pg_class c
     WHERE c.oid IN (SELECT objid FROM member WHERE classid = 'pg_class'::regclass)
        OR c.oid IN (SELECT t.typrelid FROM pg_type t
                      WHERE t.oid IN (SELECT objid FROM member WHERE classid = 'pg_type'::regclass))
), col AS (
    SELECT r.oid AS relid, r.relkind, a.*,
           CASE WHEN r.relkind = 'c' THEN 'attribute ' ELSE 'column ' END
           || r.qname || '.' || quote_ident(a.attname) AS obj,
           row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum) AS position
      FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid
     WHERE a.attnum > 0 AND NOT a.attisdropped
), idx AS (
    SELECT i.indexrelid, i.indrelid, format('index %I.%I', c.relnamespace::regnamespace::text, c.relname) AS obj
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid IN (SELECT oid FROM rel)
), con AS (
    SELECT k.oid, format('constraint %I on %s', k.conname, r.qname) AS obj
      FROM pg_constraint k JOIN rel r ON r.oid = k.conrelid
), trg AS (
    SELECT t.oid, t.tgenabled, format('trigger %I on %s', t.tgname, r.qname) AS obj
      FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid
     WHERE NOT t.tgisinternal
), fn AS (
    SELECT p.*, 'function ' || p.oid::regprocedure::text AS obj
      FROM pg_proc p
     WHERE p.oid IN (SELECT objid FROM member WHERE classid = 'pg_proc'::regclass)
), typ AS (
    SELECT t.*, 'type ' || t.oid::regtype::text AS obj
      FROM pg_type t
     WHERE t.oid IN (SELECT objid FROM member WHERE classid = 'pg_type'::regclass)
), rows (object, property, value) AS (
    -- extension
    SELECT 'extension eo_processing', 'version', ext.extversion FROM ext
    UNION ALL
    SELECT 'extension eo_processing', 'schema', ext.extnamespace::regnamespace::text FROM ext
    UNION ALL
    SELECT 'extension eo_processing', 'relocatable', ext.extrelocatable::text FROM ext
    UNION ALL
    SELECT 'extension eo_processing', 'configuration table ' || t.oid::regclass::text,
           'condition: ' || quote_literal(coalesce(ext.extcondition[t.n], ''))
      FROM ext, unnest(ext.extconfig) WITH ORDINALITY AS t(oid, n)
    -- member, with its comment
    UNION ALL
    SELECT pg_describe_object(m.classid, m.objid, m.objsubid), 'member', 'yes' FROM member m
    UNION ALL
    SELECT pg_describe_object(m.classid, m.objid, m.objsubid), 'comment',
           obj_description(m.objid, m.classid::regclass::name)
      FROM member m
    -- schema
    UNION ALL
    SELECT 'schema ' || quote_ident(n.nspname), 'owner', pg_get_userbyid(n.nspowner)::text
      FROM pg_namespace n
     WHERE n.oid IN (SELECT objid FROM member WHERE classid = 'pg_namespace'::regclass)
    UNION ALL
    SELECT 'schema ' || quote_ident(n.nspname), 'privileges', n.nspacl::text
      FROM pg_namespace n
     WHERE n.oid IN (SELECT objid FROM member WHERE classid = 'pg_namespace'::regclass)
    -- relation
    UNION ALL
    SELECT r.obj, 'owner', pg_get_userbyid(r.relowner)::text FROM rel r WHERE r.relkind <> 'c'
    UNION ALL
    SELECT r.obj, 'privileges', r.relacl::text FROM rel r WHERE r.relkind <> 'c'
    UNION ALL
    SELECT r.obj, 'options', r.reloptions::text FROM rel r WHERE r.relkind <> 'c'
    UNION ALL
    SELECT r.obj, 'persistence', r.relpersistence::text FROM rel r WHERE r.relkind <> 'c'
    UNION ALL
    SELECT r.obj, 'row security', format('enabled %s, forced %s', r.relrowsecurity, r.relforcerowsecurity)
      FROM rel r WHERE r.relkind IN ('r', 'p')
    -- column
    UNION ALL
    SELECT c.obj, 'position', c.position::text FROM col c
    UNION ALL
    SELECT c.obj, 'type', format_type(c.atttypid, c.atttypmod) FROM col c
    UNION ALL
    SELECT c.obj, 'not null', 'yes' FROM col c WHERE c.attnotnull
    UNION ALL
    SELECT c.obj, 'default', pg_get_expr(d.adbin, d.adrelid)
      FROM col c JOIN pg_attrdef d ON d.adrelid = c.relid AND d.adnum = c.attnum
    UNION ALL
    SELECT c.obj, 'identity', c.attidentity::text FROM col c WHERE c.attidentity <> ''
    UNION ALL
    SELECT c.obj, 'generated', c.attgenerated::text FROM col c WHERE c.attgenerated <> ''
    UNION ALL
    SELECT c.obj, 'collation', c.attcollation::regcollation::text FROM col c WHERE c.attcollation <> 0
    UNION ALL
    SELECT c.obj, 'privileges', c.attacl::text FROM col c
    UNION ALL
    SELECT c.obj, 'comment', col_description(c.relid, c.attnum) FROM col c
    -- sequence
    UNION ALL
    SELECT r.obj, 'parameters',
           format('as %s start %s increment %s min %s max %s cache %s cycle %s',
                  s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
      FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid
    UNION ALL
    SELECT r.obj, 'owned by', format('%s.%I (%s)', d.refobjid::regclass, a.attname, d.deptype)
      FROM rel r
      JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = r.oid
                      AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
     WHERE r.relkind = 'S'
    -- view
    UNION ALL
    SELECT r.obj, 'definition', pg_get_viewdef(r.oid) FROM rel r WHERE r.relkind IN ('v', 'm')
    -- constraint
    UNION ALL
    SELECT k.obj, 'definition', pg_get_constraintdef(k.oid) FROM con k
    UNION ALL
    SELECT k.obj, 'comment', obj_description(k.oid, 'pg_constraint') FROM con k
    -- index
    UNION ALL
    SELECT i.obj, 'definition', pg_get_indexdef(i.indexrelid) FROM idx i
    UNION ALL
    SELECT i.obj, 'comment', obj_description(i.indexrelid, 'pg_class') FROM idx i
    -- trigger
    UNION ALL
    SELECT t.obj, 'definition', pg_get_triggerdef(t.oid) FROM trg t
    UNION ALL
    SELECT t.obj, 'enabled', t.tgenabled::text FROM trg t
    UNION ALL
    SELECT t.obj, 'comment', obj_description(t.oid, 'pg_trigger') FROM trg t
    -- function
    UNION ALL
    SELECT f.obj, 'definition', pg_get_functiondef(f.oid) FROM fn f WHERE f.prokind <> 'a'
    UNION ALL
    SELECT f.obj, 'owner', pg_get_userbyid(f.proowner)::text FROM fn f
    UNION ALL
    SELECT f.obj, 'privileges', f.proacl::text FROM fn f
    -- type
    UNION ALL
    SELECT t.obj, 'kind', t.typtype::text FROM typ t
    UNION ALL
    SELECT t.obj, 'owner', pg_get_userbyid(t.typowner)::text FROM typ t
    UNION ALL
    SELECT t.obj, 'privileges', t.typacl::text FROM typ t
    UNION ALL
    SELECT t.obj, 'domain of', format_type(t.typbasetype, t.typtypmod) || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
      FROM typ t WHERE t.typtype = 'd'
    UNION ALL
    SELECT t.obj, 'labels', (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                               FROM pg_enum e WHERE e.enumtypid = t.oid)
      FROM typ t WHERE t.typtype = 'e'
    -- initial privileges
    UNION ALL
    SELECT pg_describe_object(ip.classoid, ip.objoid, ip.objsubid), 'initial privileges',
           ip.privtype::text || ' ' || ip.initprivs::text
      FROM pg_init_privs ip
     WHERE (ip.classoid, ip.objoid) IN (SELECT classid, objid FROM member)
        OR (ip.classoid = 'pg_class'::regclass AND ip.objoid IN (SELECT oid FROM rel))
    -- setting
    UNION ALL
    SELECT 'setting ' || s.name, 'definition',
           format('%s, context %s, default %s, unit %s, min %s, max %s, values %s: %s',
                  s.vartype, s.context, s.boot_val, coalesce(s.unit, '-'),
                  coalesce(s.min_val, '-'), coalesce(s.max_val, '-'),
                  coalesce(s.enumvals::text, '-'), s.short_desc)
      FROM pg_settings s WHERE s.name LIKE 'eo.%'
)
SELECT jsonb_build_object(
           'rows', count(*),
           'duplicates', coalesce(jsonb_agg(DISTINCT x.key) FILTER (WHERE x.n > 1), '[]'),
           'description', coalesce(jsonb_object_agg(x.key, x.value), '{}'))
  FROM (SELECT r.object || ' :: ' || r.property AS key, r.value,
               count(*) OVER (PARTITION BY r.object, r.property) AS n
          FROM rows r
         WHERE r.value IS NOT NULL) AS x
SQL

# eo_catalog_description($node, $dbname): the hash ref described above.
# Dies when a key comes out twice (two objects described by one name).
sub eo_catalog_description
{
	my ($node, $dbname) = @_;
	my $json = $node->safe_psql($dbname, "SET search_path = pg_catalog;\n$description_sql");
	my $result = JSON::PP->new->decode($json);

	die "eo_catalog_description: keys described twice: "
	  . join(', ', @{ $result->{duplicates} })
	  if @{ $result->{duplicates} };
	die "eo_catalog_description: nothing described in database $dbname"
	  unless $result->{rows} > 0;
	return $result->{description};
}

# The lines of $left and $right as a unified-style diff ("-" only in $left,
# "+" only in $right, " " in both), from their longest common subsequence.
sub _line_diff
{
	my ($left, $right) = @_;
	my @x = split /\n/, $left, -1;
	my @y = split /\n/, $right, -1;
	my @lcs;
	for (my $i = $#x; $i >= 0; $i--)
	{
		for (my $j = $#y; $j >= 0; $j--)
		{
			$lcs[$i][$j] =
			  $x[$i] eq $y[$j]
			  ? 1 + ($lcs[ $i + 1 ][ $j + 1 ] // 0)
			  : _max($lcs[ $i + 1 ][$j] // 0, $lcs[$i][ $j + 1 ] // 0);
		}
	}
	my ($i, $j, @out) = (0, 0);
	while ($i < @x || $j < @y)
	{
		if ($i < @x && $j < @y && $x[$i] eq $y[$j])
		{
			push @out, "      $x[$i]";
			$i++;
			$j++;
		}
		elsif ($j < @y && ($i >= @x || ($lcs[$i][ $j + 1 ] // 0) >= ($lcs[ $i + 1 ][$j] // 0)))
		{
			push @out, "    + $y[$j]";
			$j++;
		}
		else
		{
			push @out, "    - $x[$i]";
			$i++;
		}
	}
	return @out;
}

sub _max { return $_[0] > $_[1] ? $_[0] : $_[1]; }

# eo_catalog_diff($desc_a, $desc_b, $label_a, $label_b): the differences
# between two descriptions, as lines; empty when they are equal.
sub eo_catalog_diff
{
	my ($desc_a, $desc_b, $label_a, $label_b) = @_;
	my @out;
	my %keys = map { ($_ => 1) } (keys %$desc_a, keys %$desc_b);

	for my $key (sort keys %keys)
	{
		if (!exists $desc_b->{$key})
		{
			push @out, "only in $label_a: $key = $desc_a->{$key}";
		}
		elsif (!exists $desc_a->{$key})
		{
			push @out, "only in $label_b: $key = $desc_b->{$key}";
		}
		elsif ($desc_a->{$key} ne $desc_b->{$key})
		{
			if ($desc_a->{$key} =~ /\n/ || $desc_b->{$key} =~ /\n/)
			{
				push @out, "differs: $key (- $label_a, + $label_b):",
				  _line_diff($desc_a->{$key}, $desc_b->{$key});
			}
			else
			{
				push @out, "differs: $key",
				  "    $label_a: $desc_a->{$key}",
				  "    $label_b: $desc_b->{$key}";
			}
		}
	}
	return @out;
}

1;
