# Lifecycle of the relay workers: one per database that has the extension,
# started and stopped without a server restart, out of the way of
# DROP DATABASE / ALTER DATABASE, reloading its settings on SIGHUP,
# stopping promptly, surviving a crash restart with nothing lost, and not
# crash-looping on a destination it cannot deliver to.
#
# The relay's naptime is an hour: whatever happens here must happen because
# something woke the relay, not because it polled.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EONotify;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
# A message that should arrive at once (bounded: a broken relay fails fast).
my $deliver_timeout = 30;

# How long the relay may take to appear or go away after a command.  The
# database guard holds the launcher off for 5 s after DROP/ALTER DATABASE.
my $settle = 15;

my $node = PostgreSQL::Test::Cluster->new('relay_lifecycle');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'eo_processing'
restart_after_crash = on
max_worker_processes = 16
max_connections = 30
eo.relay_naptime = 3600
});
$node->start;

# poll_within($db, $query, $seconds): poll_query_until with a shorter
# timeout, for conditions that should hold within seconds.
sub poll_within
{
	my ($db, $query, $seconds) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $seconds;
	return $node->poll_query_until($db, $query);
}

# The relay worker of a database: pid from eo.relay_status ('' if none).
sub relay_status_pid
{
	my ($db) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT pid FROM eo.relay_status WHERE datname = '$db' AND pid IS NOT NULL});
}

# Number of relay workers connected to a database (by OID: it may have
# been dropped or renamed).
sub relays_in
{
	my ($dboid) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT count(*) FROM pg_stat_activity
		    WHERE backend_type = 'eo_processing relay' AND datid = $dboid});
}

sub db_oid
{
	my ($db) = @_;
	return $node->safe_psql('postgres', qq{SELECT oid FROM pg_database WHERE datname = '$db'});
}

# Wait until the relay of $db runs and is idle.
sub wait_relay_idle
{
	my ($db) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM eo.relay_status
		    WHERE datname = '$db' AND pid IS NOT NULL AND state = 'idle'});
}

# Create the extension and a notify destination on channel $channel for
# every topic.
sub setup_db
{
	my ($db, $channel) = @_;
	$node->safe_psql(
		$db, qq{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('all', 'notify', '{"channel": "$channel"}');
SELECT eo.subscribe('*', 'all');
});
}

$node->safe_psql('postgres', 'CREATE EXTENSION eo_processing');
wait_relay_idle('postgres') or die 'no relay in database postgres';
my $pm_start = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

######################################################################
# CREATE EXTENSION in another database starts its relay (no restart)
######################################################################

$node->safe_psql('postgres', 'CREATE DATABASE db2');
my $db2_oid = db_oid('db2');
is(relays_in($db2_oid), '0', 'db2 without the extension has no relay');
setup_db('db2', 'c2');
ok(poll_within('postgres',
		q{SELECT count(*) = 1 FROM eo.relay_status WHERE datname = 'db2' AND pid IS NOT NULL},
		$settle),
	'CREATE EXTENSION in db2 starts its relay');
ok(poll_within('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity
		    WHERE backend_type = 'eo_processing relay' AND datid = $db2_oid},
		$settle),
	'... visible in pg_stat_activity');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'),
	$pm_start, '... without a server restart');
{
	my $l = EONotify->new($node, 'db2', 'c2');
	my $id = $node->safe_psql('db2', q{SELECT eo.publish('t.db2', '{"x": 1}'::jsonb)});
	ok($l->wait_for_id($id, $deliver_timeout), 'the relay of db2 delivers');
	$l->close;
}

######################################################################
# DROP EXTENSION: not blocked, and the relay goes away
######################################################################

{
	my $db2_relay = relay_status_pid('db2');
	# Let the relay settle into its long sleep: no wake-up for 2 s.
	$node->poll_query_until('postgres',
		q{SELECT state = 'idle' AND last_wakeup < now() - interval '2 s'
		    FROM eo.relay_status WHERE datname = 'db2'})
	  or die 'the relay of db2 does not settle';
	my ($ret, $out, $err) = $node->psql('db2',
		q{SET lock_timeout = '10s'; DROP EXTENSION eo_processing});
	is($ret, 0, 'DROP EXTENSION is not blocked by the relay') or diag $err;
	ok(poll_within('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $db2_relay",
			$settle),
		"after DROP EXTENSION the relay of the database exits (within $settle s, naptime 1 h)");

	# Created again, the extension gets a working relay.
	setup_db('db2', 'c2');
	my $l = EONotify->new($node, 'db2', 'c2');
	my $id = $node->safe_psql('db2', q{SELECT eo.publish('t.db2', '{"x": 2}'::jsonb)});
	ok($l->wait_for_id($id, $deliver_timeout),
		'after DROP and CREATE EXTENSION, the relay of db2 delivers again');
	$l->close;
}

######################################################################
# DROP DATABASE with the relay running; WITH (FORCE) while it is busy
######################################################################

{
	wait_relay_idle('db2') or die 'no relay in db2';
	my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE db2');
	is($ret, 0, 'DROP DATABASE (without FORCE) of a database whose relay runs succeeds')
	  or diag $err;
	ok(poll_within('postgres', "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datid = $db2_oid)",
			$settle),
		'... and no relay is left for it');
}

{
	$node->safe_psql('postgres', 'CREATE DATABASE db4');
	my $db4_oid = db_oid('db4');
	# Three destinations: 150 000 notifications to send.
	$node->safe_psql(
		'db4', q{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('d' || g, 'notify', jsonb_build_object('channel', 'c' || g))
  FROM generate_series(1, 3) g;
SELECT eo.subscribe('*', 'd' || g) FROM generate_series(1, 3) g;
});
	wait_relay_idle('db4') or die 'no relay in db4';
	$node->safe_psql('db4',
		q{SELECT count(eo.publish('bulk.x', jsonb_build_object('i', g))) FROM generate_series(1, 50000) g});
	$node->poll_query_until('postgres',
		q{SELECT delivered_since_start > 0 FROM eo.relay_status WHERE datname = 'db4'})
	  or die 'the relay of db4 did not start delivering';

	my $t0 = Time::HiRes::time();
	my ($ret, $out, $err) = $node->psql(
		'postgres', q{
SELECT state || '|' || delivered_since_start FROM eo.relay_status WHERE datname = 'db4';
DROP DATABASE db4 WITH (FORCE);
});
	my $elapsed = Time::HiRes::time() - $t0;
	my ($state, $delivered) = split /\|/, $out;
	note "db4 relay before DROP: state $state, $delivered of 150000 delivered; DROP took ${elapsed}s";
	ok(defined $delivered && $state ne 'idle' && $delivered < 150000,
		'the relay of db4 was busy with its backlog when DROP DATABASE ran');
	is($ret, 0, 'DROP DATABASE WITH (FORCE) succeeds while the relay is busy') or diag $err;
	cmp_ok($elapsed, '<', 15, '... promptly');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_database WHERE datname = 'db4'}),
		'0', '... and the database is gone');
	ok(poll_within('postgres', "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datid = $db4_oid)",
			$settle),
		'... with its relay');
	is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'),
		$pm_start, '... without a server restart');
}

######################################################################
# ALTER DATABASE RENAME: works, and the relay comes back by itself
######################################################################

{
	$node->safe_psql('postgres', 'CREATE DATABASE db5');
	my $db5_oid = db_oid('db5');
	setup_db('db5', 'c5');
	my $name = 'db5';
	for my $new (qw(db5_b db5_c db5_d))
	{
		wait_relay_idle($name) or die "no relay in $name";
		my ($ret, $out, $err) = $node->psql('postgres', "ALTER DATABASE $name RENAME TO $new");
		is($ret, 0, "ALTER DATABASE $name RENAME TO $new succeeds with the relay running")
		  or diag $err;
		$name = $new;
		# No publishing here: the relay must come back without being asked.
		ok(poll_within('postgres',
				qq{SELECT count(*) = 1 FROM eo.relay_status
				    WHERE datname = '$name' AND pid IS NOT NULL},
				$settle),
			"the relay of $name is started again by itself (within $settle s)")
		  or $node->safe_psql($name, q{SELECT eo.publish('t.kick', '{}'::jsonb)});
		# (if not, a publish asks for it, so that the test can go on)
	}
	my $l = EONotify->new($node, $name, 'c5');
	my $id = $node->safe_psql($name, q{SELECT eo.publish('t.db5', '{"renamed": true}'::jsonb)});
	ok($l->wait_for_id($id, $deliver_timeout), "the relay of the renamed database delivers");
	$l->close;
	is(relays_in($db5_oid), '1', 'exactly one relay runs for the renamed database');
}

######################################################################
# SIGHUP: eo.relay_enabled off keeps messages in the outbox, on delivers
######################################################################

$node->safe_psql(
	'postgres', q{
SELECT eo.create_destination('orders', 'notify', '{"channel": "eo_orders"}');
SELECT eo.subscribe('orders.*', 'orders');
});
my $listener = EONotify->new($node, 'postgres', 'eo_orders');
my $relay_pid = relay_status_pid('postgres');

# Set eo.relay_enabled and wait until the relay has reloaded: it wakes on
# SIGHUP and stamps last_wakeup after re-reading the configuration.
sub set_relay_enabled
{
	my ($value) = @_;
	my $before = $node->safe_psql('postgres',
		qq{ALTER SYSTEM SET eo.relay_enabled = $value; SELECT clock_timestamp()});
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	$node->poll_query_until('postgres',
		qq{SELECT last_wakeup > '$before' FROM eo.relay_status WHERE datname = 'postgres'})
	  or die 'the relay did not wake up on SIGHUP';
}

{
	set_relay_enabled('off');
	is($node->safe_psql('postgres', 'SHOW eo.relay_enabled'), 'off', 'eo.relay_enabled reloaded as off');

	# A commit that publishes does not wake a relay that is off (it would
	# have nothing to do); eo.wake_relay() does, and the relay must leave
	# the messages alone.
	my ($before) = split /\n/,
	  $node->safe_psql(
		'postgres', q{
BEGIN;
SELECT clock_timestamp();
SELECT count(eo.publish('orders.off', jsonb_build_object('i', g))) FROM generate_series(1, 100) g;
SELECT eo.wake_relay();
COMMIT;
});
	# (last_wakeup is stamped before the relay decides what to do; turned
	# off, it then only goes back to sleep.)
	$node->poll_query_until('postgres',
		qq{SELECT last_wakeup > '$before' FROM eo.relay_status WHERE datname = 'postgres'})
	  or die 'the relay did not wake up for eo.wake_relay()';
	like($node->safe_psql('postgres', q{SELECT state FROM eo.relay_status WHERE datname = 'postgres'}),
		qr/^(idle|disabled.*)$/, 'eo.relay_status: the relay is idle or shown as disabled');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM eo.outbox'),
		'100', 'eo.relay_enabled = off: messages stay in eo.outbox');
	$listener->drain(0);
	is(scalar(grep { $_->{payload} =~ /"orders\.off"/ } $listener->notifications),
		0, '... and nothing is delivered');

	my @ids = split /\n/,
	  $node->safe_psql('postgres', 'SELECT id FROM eo.outbox ORDER BY id');
	set_relay_enabled('on');
	ok( $listener->wait_until(
			sub { !grep { !$listener->seen_count($_) } @ids }, $timeout),
		'eo.relay_enabled = on and reload: the held messages are delivered');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM eo.outbox'),
		'0', '... and the outbox is empty');
	is(relay_status_pid('postgres'), $relay_pid, '... by the same relay worker (no restart)');
}

# SIGHUP: a shorter eo.relay_naptime and eo.outbox_retention take effect
# at once; the housekeeping (purge of routed messages) must not wait for
# the end of the hour that the old naptime scheduled.
{
	my $routed = $node->safe_psql('postgres', 'SELECT count(*) FROM eo.message_log');
	ok($routed > 0, "eo.message_log holds $routed routed messages");
	my $before = $node->safe_psql(
		'postgres', q{
ALTER SYSTEM SET eo.relay_naptime = '1s';
ALTER SYSTEM SET eo.outbox_retention = '1s';
SELECT clock_timestamp()});
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	$node->poll_query_until('postgres',
		qq{SELECT last_wakeup > '$before' FROM eo.relay_status WHERE datname = 'postgres'})
	  or die 'the relay did not wake up on SIGHUP';
	ok( poll_within(
			'postgres',
			qq{SELECT NOT EXISTS (SELECT 1 FROM eo.message_log WHERE routed_at < '$before')},
			$settle),
		"eo.relay_naptime and eo.outbox_retention reloaded: routed messages purged (within $settle s)");
	$node->safe_psql(
		'postgres', q{
ALTER SYSTEM RESET eo.relay_naptime;
ALTER SYSTEM RESET eo.outbox_retention;
SELECT pg_reload_conf()});
	$node->poll_query_until('postgres', q{SELECT current_setting('eo.outbox_retention') = '1d'})
	  or die 'eo.outbox_retention not reset';
}

######################################################################
# A destination the relay cannot deliver to: retrying, then dead
######################################################################

{
	# No channel option: NOTIFY on the topic, which is too long for a
	# channel name (63 bytes at most).
	my $long_topic = 'long.' . ('x' x 70);
	my $log_offset = -s $node->logfile;
	$node->safe_psql(
		'postgres', qq{
SELECT eo.create_destination('bad', 'notify', '{"max_attempts": 3, "retry_delays": ["1s"]}');
SELECT eo.subscribe('$long_topic', 'bad');
});
	my $bad_id = $node->safe_psql('postgres',
		qq{SELECT eo.publish('$long_topic', '{"bad": true}'::jsonb)});
	my $good_id = $node->safe_psql('postgres',
		q{SELECT eo.publish('orders.after_bad', '{"good": true}'::jsonb)});
	ok($listener->wait_for_id($good_id, $deliver_timeout),
		'a message published after the undeliverable one is delivered');
	ok($node->poll_query_until('postgres',
			q{SELECT retrying = 1 OR dead = 1 FROM eo.stats WHERE destination = 'bad'}),
		'undeliverable message: delivery recorded as failed');
	ok($node->poll_query_until('postgres',
			q{SELECT dead = 1 AND retrying = 0 AND pending = 0 FROM eo.stats WHERE destination = 'bad'}),
		'... and dead after max_attempts');
	is( $node->safe_psql(
			'postgres', qq{
		SELECT state, attempts, last_error LIKE 'channel name too long%'
		  FROM eo.delivery WHERE message_id = '$bad_id'}),
		'dead|3|t',
		'... after 3 attempts, with the reason');
	like($node->safe_psql('postgres', q{SELECT last_error FROM eo.stats WHERE destination = 'bad'}),
		qr/channel name too long/, 'eo.stats shows the error');
	is(relay_status_pid('postgres'), $relay_pid, 'the relay worker did not restart');
	unlike(slurp_file($node->logfile, $log_offset),
		qr/eo_processing relay started|terminated by signal|exited with exit code/,
		'no relay (re)start or crash in the server log');
}

######################################################################
# pg_ctl stop -m fast with the relay busy; start: it resumes
######################################################################

{
	$node->safe_psql(
		'postgres', q{
SELECT eo.create_destination('bulk', 'notify', '{"channel": "eo_bulk"}');
SELECT eo.subscribe('bulk.*', 'bulk');
});
	$node->safe_psql('postgres',
		q{SELECT count(eo.publish('bulk.x', jsonb_build_object('i', g))) FROM generate_series(1, 50000) g});
	$node->poll_query_until('postgres',
		q{SELECT delivered_total > 0 FROM eo.stats WHERE destination = 'bulk'})
	  or die 'the relay did not start on the bulk messages';
	$listener->close;

	my $t0 = Time::HiRes::time();
	$node->stop('fast');
	my $elapsed = Time::HiRes::time() - $t0;
	note "pg_ctl stop -m fast took ${elapsed}s";
	cmp_ok($elapsed, '<', 10, 'pg_ctl stop -m fast with the relay busy stops promptly');

	$node->start;
	ok($node->poll_query_until('postgres', 'SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)'),
		'after the restart the relay resumes and drains the outbox');
	is( $node->safe_psql(
			'postgres', q{SELECT delivered_total FROM eo.stats WHERE destination = 'bulk'}),
		'50000', 'every bulk message delivered once (by count)');
}

######################################################################
# Server started with eo.relay_enabled = off, turned on by reload
######################################################################

{
	wait_relay_idle('postgres') or die 'no relay after restart';
	set_relay_enabled('off');
	$node->safe_psql('postgres',
		q{SELECT count(eo.publish('orders.atstart', jsonb_build_object('i', g))) FROM generate_series(1, 20) g});
	$node->restart;
	is($node->safe_psql('postgres', 'SELECT count(*) FROM eo.outbox'),
		'20', 'started with eo.relay_enabled = off: messages wait in eo.outbox');
	my $before = $node->safe_psql('postgres',
		q{ALTER SYSTEM SET eo.relay_enabled = on; SELECT clock_timestamp()});
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	ok(poll_within('postgres', 'SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)', $settle),
		"turned on by reload, a relay starts and delivers them (within $settle s, no new publish)");

	# Go on with a running relay whatever happened: a publish asks for one.
	$node->safe_psql('postgres', q{SELECT eo.publish('orders.kick', '{}'::jsonb)});
	$node->poll_query_until('postgres', 'SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)')
	  or die 'the relay does not run';
}

######################################################################
# kill -9 of a relay worker in the middle of a batch
######################################################################

{
	wait_relay_idle('postgres') or die 'no relay';
	$node->safe_psql(
		'postgres', q{
SELECT eo.create_destination('k', 'notify', '{"channel": "eo_k"}');
SELECT eo.subscribe('kill.*', 'k');
});
	my $before_kill = EONotify->new($node, 'postgres', 'eo_k');
	my $pid = relay_status_pid('postgres');

	# Hold the destination's statistics row: the relay claims the batch,
	# queues its notifications, moves it to the log and then waits for
	# this lock, inside its transaction.
	my $blocker = $node->background_psql('postgres');
	$blocker->query_safe(
		q{BEGIN; SELECT 1 FROM eo.destination_stats s JOIN eo.destination d ON d.id = s.destination_id
		   WHERE d.name = 'k' FOR UPDATE});
	my @ids = split /\n/,
	  $node->safe_psql('postgres',
		q{SELECT eo.publish('kill.x', jsonb_build_object('i', g)) FROM generate_series(1, 10) g});
	ok($node->poll_query_until('postgres',
			"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid"),
		'the relay is stuck in the middle of a batch');

	my $log_offset = -s $node->logfile;
	kill 'KILL', $pid;
	ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset),
		'kill -9 of the relay: the postmaster restarts the server');
	$node->wait_for_log(qr/database system is ready to accept connections/, $log_offset);
	eval { $blocker->quit; };
	$before_kill->drain(0.1);
	is(scalar(grep { $before_kill->seen_count($_) } @ids),
		0, 'nothing of the killed batch was sent before the crash');
	$before_kill->close;

	ok($node->poll_query_until('postgres',
			qq{SELECT count(*) = 1 FROM eo.relay_status
			    WHERE datname = 'postgres' AND pid IS NOT NULL AND pid <> $pid}),
		'a new relay worker runs after the crash restart');
	ok($node->poll_query_until('postgres', 'SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)'),
		'it delivers the messages that were pending');
	my $idlist = join(',', map { "'$_'" } @ids);
	is( $node->safe_psql(
			'postgres', qq{
		SELECT count(*) FROM eo.message_log
		 WHERE id IN ($idlist) AND destinations = 1
		   AND NOT EXISTS (SELECT 1 FROM eo.delivery d WHERE d.message_id = eo.message_log.id)}),
		'10', '... all 10, routed and delivered once to their destination');
	is($node->safe_psql('postgres', q{SELECT delivered_total FROM eo.stats WHERE destination = 'k'}),
		'10', '... counted once in eo.stats');
}

$node->stop;

done_testing();
