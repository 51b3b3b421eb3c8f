# Server lifecycle of eo_processing: with and without shared_preload_libraries,
# clean restart, crash (immediate stop) and recovery, configuration
# variables, DROP EXTENSION.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# "preload" loads the library at server start; "plain" loads it on first
# use by each backend.  The misspelled eo.dedup_retension is only reported
# where the library is preloaded (at postmaster start).
my $preload = PostgreSQL::Test::Cluster->new('preload');
$preload->init;
$preload->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'eo_processing'
max_prepared_transactions = 5
eo.dedup_retension = '1h'
});
$preload->start;

my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->append_conf('postgresql.conf', 'max_prepared_transactions = 5');
$plain->start;

# Run $sql on $node, expect it to fail; returns its stderr.
sub psql_fails
{
	my ($node, $sql, $test_name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($ret, $stdout, $stderr) = $node->psql('postgres', $sql);
	isnt($ret, 0, $test_name);
	return $stderr;
}

######################################################################
# Loading and configuration variables
######################################################################

is($preload->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'eo_processing', 'preload: library is in shared_preload_libraries');
is($plain->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'', 'plain: no preloaded library');

# The postmaster loaded the library and reserved the "eo" prefix, dropping
# the misspelled setting from postgresql.conf with a warning.
ok( $preload->log_contains(
		qr/WARNING:  invalid configuration parameter name "eo\.dedup_retension", removing it/
	),
	'preload: misspelled eo.* setting in postgresql.conf is reported at start');

for my $node ($preload, $plain)
{
	my $name = $node->name;
	my ($stdout, $stderr);
	$node->psql('postgres', 'CREATE EXTENSION eo_processing',
		stdout => \$stdout, stderr => \$stderr, on_error_die => 1);
	if ($node == $plain)
	{
		like($stderr, qr/WARNING:  eo_processing is not loaded through shared_preload_libraries: no relay runs/,
			"$name: CREATE EXTENSION warns that no relay runs");
		is($node->safe_psql('postgres', 'SELECT state FROM eo.relay_status'),
			'not running: eo_processing is not in shared_preload_libraries',
			"$name: eo.relay_status says that no relay runs");
	}
	else
	{
		unlike($stderr, qr/WARNING/, "$name: CREATE EXTENSION does not warn");
	}
	my $sharedir = `pg_config --sharedir`;
	chomp $sharedir;
	my ($default_version) =
	  slurp_file("$sharedir/extension/eo_processing.control") =~ /default_version\s*=\s*'([^']+)'/;
	is( $node->safe_psql(
			'postgres',
			q{SELECT extversion FROM pg_extension WHERE extname = 'eo_processing'}),
		$default_version,
		"$name: CREATE EXTENSION installs the default version");
	is($node->safe_psql('postgres', q{SELECT eo.process('hello')}),
		't', "$name: eo.process() is true the first time");
	is($node->safe_psql('postgres', q{SELECT eo.process('hello')}),
		'f', "$name: eo.process() is false for a duplicate");
	is($node->safe_psql('postgres', q{SELECT eo.process_seq('prod', 5)}),
		't', "$name: eo.process_seq() is true for a new number");
	is($node->safe_psql('postgres', q{SELECT eo.process_seq('prod', 5)}),
		'f', "$name: eo.process_seq() is false for a seen number");
}

# preload: the variable exists in a fresh session before any function call.
is($preload->safe_psql('postgres', 'SHOW eo.dedup_retention'),
	'7d', 'preload: eo.dedup_retention defined in a fresh session');
like(
	psql_fails($preload, q{SET eo.dedup_retention = '0'},
		'preload: eo.dedup_retention = 0 is rejected'),
	qr/invalid value for parameter "eo\.dedup_retention": "0"/,
	'preload: eo.dedup_retention = 0 gives an invalid value error');
like(
	psql_fails($preload, q{SET eo.dedup_retention = '-2'},
		'preload: eo.dedup_retention = -2 is rejected'),
	qr/invalid value for parameter "eo\.dedup_retention": "-2"\nDETAIL:  eo\.dedup_retention must be positive/,
	'preload: eo.dedup_retention = -2 is not positive');
like(
	psql_fails($preload, q{ALTER SYSTEM SET eo.dedup_retention = 0},
		'preload: ALTER SYSTEM SET eo.dedup_retention = 0 is rejected'),
	qr/invalid value for parameter "eo\.dedup_retention"/,
	'preload: ALTER SYSTEM with retention 0 gives an invalid value error');
is( $preload->safe_psql(
		'postgres', q{
	SET eo.dedup_retention = -1; SHOW eo.dedup_retention;
	SET eo.dedup_retention = '1h'; SHOW eo.dedup_retention}),
	"-1\n1h",
	'preload: eo.dedup_retention accepts -1 and 1h');

# postgresql.conf: the spellings of the integer setting it used to be
# (unquoted 36h) and intervals ('2 days') are read at reload.
$preload->append_conf('postgresql.conf', "eo.dedup_retention = 36h\n");
$preload->reload;
$preload->poll_query_until('postgres',
	q{SELECT current_setting('eo.dedup_retention') = '36h'})
  or die 'eo.dedup_retention = 36h from postgresql.conf not seen';
is( $preload->safe_psql(
		'postgres', q{
	SELECT eo.process('conf-36h');
	SELECT expires_at - processed_at FROM eo.inbox WHERE msg_id = 'conf-36h'}),
	"t\n1 day 12:00:00",
	'preload: eo.dedup_retention = 36h in postgresql.conf is 36 hours');
$preload->append_conf('postgresql.conf', "eo.dedup_retention = '2 days'\n");
$preload->reload;
$preload->poll_query_until('postgres',
	q{SELECT current_setting('eo.dedup_retention') = '2 days'})
  or die "eo.dedup_retention = '2 days' from postgresql.conf not seen";
is( $preload->safe_psql(
		'postgres', q{
	SELECT eo.process('conf-2-days');
	SELECT expires_at = processed_at + interval '2 days'
	  FROM eo.inbox WHERE msg_id = 'conf-2-days'}),
	"t\nt",
	"preload: eo.dedup_retention = '2 days' in postgresql.conf is 2 days");
$preload->append_conf('postgresql.conf', "eo.dedup_retention = 7d\n");
$preload->reload;
$preload->poll_query_until('postgres',
	q{SELECT current_setting('eo.dedup_retention') = '7d'})
  or die 'eo.dedup_retention back to 7d not seen';
like(
	psql_fails($preload, q{SET eo.nonexistent = 1},
		'preload: SET eo.nonexistent is rejected'),
	qr/ERROR:  invalid configuration parameter name "eo\.nonexistent".*\n.*"eo" is a reserved prefix/,
	'preload: misspelled eo.* variable: "eo" is a reserved prefix');

# plain: unknown until the library is loaded in the session.
like(
	psql_fails($plain, 'SHOW eo.dedup_retention',
		'plain: eo.dedup_retention unknown before the library is loaded'),
	qr/unrecognized configuration parameter "eo\.dedup_retention"/,
	'plain: SHOW before loading gives unrecognized parameter');

# plain: a placeholder value 0 set before loading is refused when the
# library loads; the default (7 days) stays, so dedup is not turned off.
{
	my ($ret, $stdout, $stderr) = $plain->psql(
		'postgres', q{
		SET eo.dedup_retention = '0';
		SET eo.nonexistent = 1;
		SELECT eo.process('placeholder');
		SHOW eo.dedup_retention;
		SELECT expires_at - processed_at FROM eo.inbox WHERE msg_id = 'placeholder';
		SELECT eo.process('placeholder');
	});
	is($ret, 0, 'plain: placeholders before loading do not fail the session');
	like(
		$stderr,
		qr/WARNING:  invalid value for parameter "eo\.dedup_retention": "0"/,
		'plain: retention 0 set before loading is refused at load');
	like(
		$stderr,
		qr/WARNING:  invalid configuration parameter name "eo\.nonexistent", removing it/,
		'plain: misspelled eo.* placeholder is removed at load');
	is($stdout, "t\n7d\n7 days\nf",
		'plain: default retention kept, record remembered for 7 days');
}
{
	my ($ret, $stdout, $stderr) = $plain->psql(
		'postgres', q{
		SELECT eo.process('hello');
		SET eo.dedup_retention = '0';
	});
	isnt($ret, 0, 'plain: eo.dedup_retention = 0 is rejected once loaded');
	like(
		$stderr,
		qr/ERROR:  invalid value for parameter "eo\.dedup_retention": "0"/,
		'plain: eo.dedup_retention = 0 gives an invalid value error once loaded');

	($ret, $stdout, $stderr) = $plain->psql(
		'postgres', q{
		SELECT eo.process('hello');
		SET eo.nonexistent = 1;
	});
	isnt($ret, 0, 'plain: SET eo.nonexistent is rejected once loaded');
	like(
		$stderr,
		qr/ERROR:  invalid configuration parameter name "eo\.nonexistent".*\n.*"eo" is a reserved prefix/,
		'plain: misspelled eo.* variable once loaded: "eo" is a reserved prefix');
}

######################################################################
# Restart and crash recovery
######################################################################

for my $node ($preload, $plain)
{
	my $name = $node->name;

	is($node->safe_psql('postgres', q{SELECT eo.process('committed-1')}),
		't', "$name: committed-1 processed");

	# Clean restart.
	$node->restart;
	is($node->safe_psql('postgres', q{SELECT eo.process('committed-1')}),
		'f', "$name: committed-1 still deduplicates after a clean restart");
	is($node->safe_psql('postgres', q{SELECT eo.process_seq('prod', 5)}),
		'f', "$name: producer mark survives a clean restart");
	is($node->safe_psql('postgres', q{SELECT eo.process_seq('prod', 6)}),
		't', "$name: next producer number accepted after a clean restart");

	# A transaction that records a message and a producer number but is
	# still open when the server crashes.
	my $open = $node->background_psql('postgres');
	$open->query_safe('BEGIN');
	is($open->query_safe(q{SELECT eo.process('uncommitted-1')}),
		't', "$name: uncommitted-1 recorded in an open transaction");
	is($open->query_safe(q{SELECT eo.process_seq('prod', 100)}),
		't', "$name: producer number 100 recorded in an open transaction");

	# The open record is invisible to others, but holds the key: a
	# concurrent duplicate waits for it (here until lock_timeout).
	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) FROM eo.inbox WHERE msg_id = 'uncommitted-1'}),
		'0', "$name: uncommitted record invisible to other sessions");
	like(
		psql_fails(
			$node,
			q{SET lock_timeout = '100ms'; SELECT eo.process('uncommitted-1')},
			"$name: a concurrent duplicate waits for the open transaction"),
		qr/canceling statement due to lock timeout/,
		"$name: ... until lock_timeout");

	# Write the uncommitted rows to disk, then commit one more record that
	# exists only in the WAL after the checkpoint.
	$node->safe_psql('postgres', 'CHECKPOINT');
	is($node->safe_psql('postgres', q{SELECT eo.process('committed-2')}),
		't', "$name: committed-2 processed after the checkpoint");

	# Two prepared transactions: they survive the crash with their records.
	$node->safe_psql(
		'postgres', q{
		BEGIN;
		SELECT eo.process('prepared-1');
		SELECT eo.process_seq('prod2', 1);
		PREPARE TRANSACTION 'eo_commit_me';
		BEGIN;
		SELECT eo.process('prepared-2');
		PREPARE TRANSACTION 'eo_roll_me_back';
	});

	# Crash: immediate stop, then crash recovery at start.
	my $log_offset = -s $node->logfile;
	$node->stop('immediate');
	eval { $open->quit; };    # its server is gone
	$node->start;
	ok( $node->log_contains(
			qr/database system was not properly shut down; automatic recovery in progress/,
			$log_offset),
		"$name: crash recovery ran");

	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) FROM eo.inbox WHERE msg_id = 'uncommitted-1'}),
		'0', "$name: the crashed transaction's record is gone");
	is($node->safe_psql('postgres', q{SELECT eo.process('committed-1')}),
		'f', "$name: committed-1 still deduplicates after crash recovery");
	is($node->safe_psql('postgres', q{SELECT eo.process('committed-2')}),
		'f', "$name: committed-2 (WAL only) still deduplicates after crash recovery");
	is($node->safe_psql('postgres', q{SELECT eo.process('uncommitted-1')}),
		't', "$name: the crashed transaction's message is processed again");
	is($node->safe_psql('postgres', q{SELECT eo.process('uncommitted-1')}),
		'f', "$name: ... and then deduplicates");
	is($node->safe_psql('postgres', q{SELECT eo.process_seq('prod', 6)}),
		'f', "$name: committed producer mark survives crash recovery");
	is($node->safe_psql('postgres', q{SELECT eo.process_seq('prod', 7)}),
		't', "$name: the crashed transaction's producer number is gone");
	is( $node->safe_psql(
			'postgres',
			q{SELECT last_seq FROM eo.producer_seq WHERE producer = 'prod'}),
		'7', "$name: producer mark is 7");

	# The prepared transactions still hold their keys after recovery.
	is( $node->safe_psql(
			'postgres', 'SELECT gid FROM pg_prepared_xacts ORDER BY gid'),
		"eo_commit_me\neo_roll_me_back",
		"$name: prepared transactions survive the crash");
	like(
		psql_fails(
			$node,
			q{SET lock_timeout = '100ms'; SELECT eo.process('prepared-1')},
			"$name: a duplicate of a prepared record waits after recovery"),
		qr/canceling statement due to lock timeout/,
		"$name: ... until lock_timeout");
	$node->safe_psql('postgres', q{COMMIT PREPARED 'eo_commit_me'});
	$node->safe_psql('postgres', q{ROLLBACK PREPARED 'eo_roll_me_back'});
	is($node->safe_psql('postgres', q{SELECT eo.process('prepared-1')}),
		'f', "$name: record of a prepared transaction committed after the crash deduplicates");
	is($node->safe_psql('postgres', q{SELECT eo.process_seq('prod2', 1)}),
		'f', "$name: producer mark of a prepared transaction committed after the crash");
	is($node->safe_psql('postgres', q{SELECT eo.process('prepared-2')}),
		't', "$name: record of a prepared transaction rolled back after the crash is gone");
}

######################################################################
# DROP EXTENSION
######################################################################

for my $node ($preload, $plain)
{
	my $name = $node->name;

	# A session that has already used the extension keeps working across a
	# drop and re-create (the tables have new OIDs then).
	my $session = $node->background_psql('postgres');
	is($session->query_safe(q{SELECT eo.process('committed-1')}),
		'f', "$name: long-lived session sees committed-1");

	$node->safe_psql('postgres', 'DROP EXTENSION eo_processing');
	is( $node->safe_psql(
			'postgres', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'eo'}),
		'0', "$name: DROP EXTENSION removes schema eo");
	is( $node->safe_psql(
			'postgres', q{
		SELECT count(*) FROM pg_class WHERE relname IN ('inbox', 'producer_seq')}),
		'0', "$name: DROP EXTENSION removes the tables");
	like(
		psql_fails($node, q{SELECT eo.process('x')},
			"$name: eo.process() is gone after DROP EXTENSION"),
		qr/schema "eo" does not exist|function eo\.process\(unknown\) does not exist/,
		"$name: calling eo.process() after DROP EXTENSION is an error");

	# The install script refuses a pre-existing schema eo.
	$node->safe_psql('postgres', 'CREATE SCHEMA eo');
	like(
		psql_fails($node, 'CREATE EXTENSION eo_processing',
			"$name: CREATE EXTENSION fails when a schema eo exists"),
		qr/schema "eo" already exists/,
		"$name: ... with schema \"eo\" already exists");
	$node->safe_psql('postgres', 'DROP SCHEMA eo');

	$node->safe_psql('postgres', 'CREATE EXTENSION eo_processing');
	is($session->query_safe(q{SELECT eo.process('committed-1')}),
		't', "$name: after re-create, committed-1 is new to the long-lived session");
	is($node->safe_psql('postgres', q{SELECT eo.process('committed-1')}),
		'f', "$name: ... and a duplicate for a new session");
	$session->quit;
}

$preload->stop;
$plain->stop;

done_testing();
