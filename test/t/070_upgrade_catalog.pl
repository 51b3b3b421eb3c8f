# Upgrade path against fresh installation: the two ways of reaching the
# current version must give the same catalog.
#
# In one cluster, database "upgraded" is created with the oldest version
# that has an install script and updated one version at a time along the
# path PostgreSQL itself chooses (pg_extension_update_paths) to
# default_version, with data loaded into every table of the extension at
# each version; database "fresh" runs CREATE EXTENSION of default_version
# (src/schema/eo_processing.sql).  Then:
#   - every step keeps the rows (and sequence positions) of the step before,
#     column by column;
#   - the descriptions of the extension's catalog in both databases
#     (test/perl/EOCatalog.pm: members, columns, defaults, constraints,
#     indexes, views, triggers, functions, privileges, initial privileges,
#     comments, configuration tables, types, eo.* settings) are equal, and
#     any difference is printed;
#   - the comparison can fail: a changed column default, and then a dropped
#     member function, in "upgraded" are reported by name.
#
# No version is written here except in %load, which says what data to add
# at each version: a version whose new table gets no rows fails the test
# until %load says how to fill it; and in %dropped, the members an update
# removes on purpose.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EOCatalog;

# Data for the tables of each version, run once the upgraded database has
# reached it.  The relay is off, so nothing moves by itself; messages are
# routed by hand as the relay of their version did.  Rows that the API makes only on failures
# (deliveries, HTTP attempts) are inserted directly.
my %load = (
	'0.1.0' => q{
		SELECT eo.process('m-1'), eo.process('m-2', 'billing', 'infinity');
		SELECT eo.set_result('m-1', '{"charged": 100}');
		SELECT eo.process_seq('producer-1', 7);
	},
	'0.2.0' => q{
		SELECT eo.create_destination('n1', 'notify');
		SELECT eo.subscribe('orders.*', 'n1');
		SELECT eo.publish('orders.created', '{"n": 1}'::jsonb, 'k1');
		SELECT eo.publish('nobody.listens', 'text payload');
		-- Routed as a 0.2.0 relay did (this library's relay needs 0.5.0).
		WITH m AS (DELETE FROM eo.outbox RETURNING *)
		INSERT INTO eo.message_log (id, published_at, topic, key, headers, payload,
		                            payload_text, routed_at, destinations)
		SELECT id, published_at, topic, key, headers, payload, payload_text, now(),
		       CASE WHEN topic LIKE 'orders.%' THEN 1 ELSE 0 END
		  FROM m;
		-- Waits in eo.outbox.
		SELECT eo.publish('orders.created', '{"n": 2}'::jsonb, 'k1');
		INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts,
		                         next_attempt_at, created_at, last_attempt_at, last_error)
		SELECT d.id, m.id, m.key, 'dead', 3, now(), now(), now(), 'given up'
		  FROM eo.destination d, eo.message_log m
		 WHERE d.name = 'n1' AND m.topic = 'orders.created';
	},
	'0.3.0' => q{
		SELECT eo.process('m-3');
		SELECT eo.set_result('m-3', '{"owned": true}');
		SELECT eo.create_destination('h1', 'http', '{"url": "http://127.0.0.1:9/hook"}');
		UPDATE eo.destination SET enabled = false, disabled_reason = 'HTTP 410 Gone'
		 WHERE name = 'h1';
		INSERT INTO eo.http_attempt (attempted_at, destination_id, message_id, attempt,
		                             status_code, error, latency_ms, response_body)
		SELECT now(), d.id, m.id, 1, 410, 'gone', 1.5, 'Gone'
		  FROM eo.destination d, eo.message_log m
		 WHERE d.name = 'h1' AND m.topic = 'orders.created';
	},
	'0.4.0' => q{
		SELECT fence FROM eo.key_begin('key-1', '{"amount": 1}');
		SELECT eo.key_complete('key-1', '{"status": 201}');
		SELECT fence FROM eo.key_begin('key-2', '{"amount": 2}', 'payments');
		SELECT eo.key_checkpoint('key-2', 'charged', 'payments');
	},
	'0.6.0' => q{
		-- Routed by hand into slots 1 and 2 of the log, as after two turns
		-- of its rotation.
		SELECT eo.publish('orders.created', '{"n": 3}'::jsonb, 'k2');
		SELECT eo.publish('orders.created', '{"n": 4}'::jsonb, 'k3');
		WITH m AS (DELETE FROM eo.outbox WHERE key IN ('k2', 'k3') RETURNING *)
		INSERT INTO eo.message_log (id, published_at, topic, key, headers, payload,
		                            payload_text, routed_at, destinations, published_by,
		                            seq, routes, slot)
		SELECT m.id, m.published_at, m.topic, m.key, m.headers, m.payload, m.payload_text,
		       now(), 1, m.published_by, nextval('eo.message_seq'),
		       ARRAY[(SELECT id FROM eo.destination WHERE name = 'n1')],
		       CASE m.key WHEN 'k2' THEN 1 ELSE 2 END
		  FROM m ORDER BY m.id;
		INSERT INTO eo.message_log_rotation (current_slot, switched_at) VALUES (2, now());
		-- A queue holding the logged messages (enqueued as the relay
		-- does), one of them read and acknowledged as eo.read() and
		-- eo.ack() of 0.6.0 did (this library's consumer functions need
		-- the objects of its own version).
		SELECT eo.create_destination('q1', 'queue', '{"channel": "q1_ready"}');
		INSERT INTO eo.queue_message (destination_id, visible_at, enqueued_at, published_at,
		                              id, topic, key, headers, payload, payload_text)
		SELECT d.id, now(), now(), m.published_at, m.id, m.topic, m.key, m.headers,
		       m.payload, m.payload_text
		  FROM eo.destination d, eo.message_log m
		 WHERE d.name = 'q1';
		SELECT nextval('eo.queue_lease_seq');
		DELETE FROM eo.queue_message
		 WHERE qseq = (SELECT min(qseq) FROM eo.queue_message);
		INSERT INTO eo.queue_ack (destination_id, acked)
		SELECT id, 1 FROM eo.destination WHERE name = 'q1';
	},);

# Members an update drops on purpose, by the version that drops them: they
# must be gone after it, and the rows of the others must stay.
my %dropped = ('0.8.0' => ['eo.queue_lease_seq']);

my $node = eo_new_node('upgrade');
eo_set_relay_enabled($node, 'off');
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');

# The versions: the oldest installable one, default_version, and the path
# between them.
my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'eo_processing'});
my $oldest = $node->safe_psql(
	'postgres', q{
	SELECT version FROM pg_available_extension_versions
	 WHERE name = 'eo_processing'
	 ORDER BY string_to_array(version, '.')::int[] LIMIT 1});
my $path = $node->safe_psql(
	'postgres', qq{
	SELECT path FROM pg_extension_update_paths('eo_processing')
	 WHERE source = '$oldest' AND target = '$current'});
isnt($oldest, $current, "an older version ($oldest) than default_version ($current) is installable");
isnt($path, '', "an update path leads from $oldest to $current: $path");
my @versions = split /--/, $path;
is($versions[0], $oldest, 'the path starts at the oldest version');
is($versions[-1], $current, 'the path ends at default_version');

# The extension's tables and sequences in database "upgraded".
sub member_relations
{
	my ($kind) = @_;
	return split /\n/, $node->safe_psql(
		'upgraded', qq{
		SELECT c.oid::regclass FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
		 WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
		   AND d.refclassid = 'pg_extension'::regclass
		   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'eo_processing')
		   AND c.relkind = '$kind'
		 ORDER BY 1});
}

# The rows of every table (their columns at this version, in a fixed
# order) and the position of every sequence, to compare after an update.
sub snapshot
{
	my %snap;
	for my $table (member_relations('r'))
	{
		my $columns = $node->safe_psql(
			'upgraded', qq{
			SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
			  FROM pg_attribute
			 WHERE attrelid = '$table'::regclass AND attnum > 0 AND NOT attisdropped});
		$snap{$table} = {
			columns => $columns,
			rows => $node->safe_psql(
				'upgraded', qq{
				SELECT string_agg(x::text, E'\\n' ORDER BY x::text)
				  FROM (SELECT $columns FROM $table) AS x}) };
	}
	for my $seq (member_relations('S'))
	{
		$snap{$seq} = {
			rows => $node->safe_psql('upgraded', "SELECT last_value, is_called FROM $seq") };
	}
	return \%snap;
}

# The same rows, read now with the columns of the snapshot.
sub rows_now
{
	my ($snap) = @_;
	my %now;
	for my $rel (keys %$snap)
	{
		my $sql =
		  defined $snap->{$rel}{columns}
		  ? qq{SELECT string_agg(x::text, E'\\n' ORDER BY x::text)
		         FROM (SELECT $snap->{$rel}{columns} FROM $rel) AS x}
		  : "SELECT last_value, is_called FROM $rel";
		$now{$rel} = { %{ $snap->{$rel} }, rows => $node->safe_psql('upgraded', $sql) };
	}
	return \%now;
}

######################################################################
# The upgrade path, with data at every version
######################################################################

for my $i (0 .. $#versions)
{
	my $version = $versions[$i];
	if ($i == 0)
	{
		$node->safe_psql('upgraded', "CREATE EXTENSION eo_processing VERSION '$version'");
	}
	else
	{
		my $before = snapshot();
		$node->safe_psql('upgraded', "ALTER EXTENSION eo_processing UPDATE TO '$version'");
		for my $rel (@{ $dropped{$version} // [] })
		{
			is($node->safe_psql('upgraded', "SELECT to_regclass('$rel') IS NULL"),
				't', "update to $version drops $rel");
			delete $before->{$rel};
		}
		is_deeply(rows_now($before), $before,
			"update to $version keeps the rows of every table and the sequence positions");
	}
	is($node->safe_psql('upgraded',
			q{SELECT extversion FROM pg_extension WHERE extname = 'eo_processing'}),
		$version, "upgraded database is at $version");

	$node->safe_psql('upgraded', $load{$version}) if defined $load{$version};
	my @empty = grep {
		$node->safe_psql('upgraded', "SELECT NOT EXISTS (SELECT FROM $_)") eq 't'
	} member_relations('r');
	is_deeply(\@empty, [],
		"at $version every table of the extension holds rows (else add them to \%load)");
}

# The data works as data of the current version.
is( $node->safe_psql(
		'upgraded', q{
		SELECT eo.process('m-1'), eo.result('m-1'), eo.process_seq('producer-1', 7),
		       (SELECT count(*) FROM eo.outbox), (SELECT count(*) FROM eo.message_log)}),
	'f|{"charged": 100}|f|1|4',
	'upgraded: inbox, producer marks, outbox and message log answer as before');
is( $node->safe_psql(
		'upgraded', q{
		SELECT state || ' ' || response::text FROM eo.key_begin('key-1', '{"amount": 1}')}),
	'completed {"status": 201}',
	'upgraded: a completed idempotency key answers with its stored response');
is( $node->safe_psql(
		'upgraded', q{SELECT destination, dead, disabled_reason FROM eo.stats ORDER BY 1}),
	"h1|0|HTTP 410 Gone\nn1|1|\nq1|0|",
	'upgraded: eo.stats shows the destinations with their deliveries');

######################################################################
# Fresh installation, and the comparison
######################################################################

$node->safe_psql('fresh', 'CREATE EXTENSION eo_processing');
is($node->safe_psql('fresh', q{SELECT extversion FROM pg_extension WHERE extname = 'eo_processing'}),
	$current, "fresh database is at $current");

my $fresh = eo_catalog_description($node, 'fresh');
my $upgraded = eo_catalog_description($node, 'upgraded');

# The description is not vacuous: it holds what a reader expects of it.
for my $key (
	'extension eo_processing :: configuration table eo.inbox',
	'column eo.inbox.result_owner :: type',
	'index eo.delivery_claim :: definition',
	'constraint delivery_state_check on eo.delivery :: definition',
	'trigger destination_check on eo.destination :: definition',
	'view eo.stats :: definition',
	'function eo.reconcile(regclass,regclass,text,text[]) :: definition',
	'function eo.process(text,text,interval) :: privileges',
	'schema eo :: privileges',
	'type eo.reconcile_problem :: comment',
	'setting eo.relay_enabled :: definition')
{
	ok(exists $fresh->{$key}, "the description has $key");
}

my @diff = eo_catalog_diff($upgraded, $fresh, 'upgraded', 'fresh');
ok(!@diff, "upgrade path $path and a fresh CREATE EXTENSION give the same catalog")
  or diag(join("\n", @diff));

######################################################################
# The comparison can fail
######################################################################

$node->safe_psql('upgraded', 'ALTER TABLE eo.delivery ALTER COLUMN attempts SET DEFAULT 1');
@diff = eo_catalog_diff(eo_catalog_description($node, 'upgraded'), $fresh, 'upgraded', 'fresh');
note join("\n", @diff);
is_deeply(
	\@diff,
	[
		'differs: column eo.delivery.attempts :: default',
		'    upgraded: 1',
		'    fresh: 0'
	],
	'a changed column default is reported, and nothing else');

$node->safe_psql('upgraded', 'ALTER TABLE eo.delivery ALTER COLUMN attempts SET DEFAULT 0');
@diff = eo_catalog_diff(eo_catalog_description($node, 'upgraded'), $fresh, 'upgraded', 'fresh');
ok(!@diff, 'the default set back: the same catalog again') or diag(join("\n", @diff));

$node->safe_psql(
	'upgraded', q{
	ALTER EXTENSION eo_processing DROP FUNCTION eo.check_topic_pattern(text);
	DROP FUNCTION eo.check_topic_pattern(text);});
@diff = eo_catalog_diff(eo_catalog_description($node, 'upgraded'), $fresh, 'upgraded', 'fresh');
note join("\n", @diff);
ok(@diff > 0, 'a member function missing from the upgraded database is reported');
is_deeply(
	[ grep { !/^only in fresh: function eo\.check_topic_pattern\(text\) :: / } @diff ],
	[], 'every difference reported names eo.check_topic_pattern(text)');
ok( (grep { /^only in fresh: function eo\.check_topic_pattern\(text\) :: definition = CREATE OR REPLACE FUNCTION/ }
		@diff),
	'the missing function is shown with its definition');

$node->stop;
done_testing();
