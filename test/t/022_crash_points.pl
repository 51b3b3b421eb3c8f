# Crash recovery at chosen steps of the relay.
#
# The test stops the relay at a point of its work by holding a lock that
# the step needs, waits until the relay waits for it (pg_locks), then kills
# either the relay worker alone (kill -9 of the PID in eo.relay_status: the
# postmaster restarts every process) or the postmaster (kill -9, then a
# start).  The points:
#
#   routing       the relay holds the routing lock, has read a batch, and
#                 waits to move it to eo.message_log (a session holds
#                 LOCK eo.message_log IN SHARE ROW EXCLUSIVE MODE) before
#                 queuing its NOTIFYs: nothing was sent, the crash undoes
#                 the claim.
#   retry         deliveries 'retrying' and due now: the relay has queued
#                 their NOTIFYs and deleted their rows, and waits to count
#                 them in eo.destination_stats (a session holds the row
#                 FOR UPDATE): nothing was sent, the rows come back.
#   after_commit  the routing transaction has committed and its NOTIFYs
#                 reached the listener, but the relay commits asynchronously
#                 and the WAL writer is stopped (SIGSTOP), so the commit is
#                 not on disk; the relay waits in its next step (retry, for
#                 LOCK eo.delivery IN EXCLUSIVE MODE).  The crash loses the
#                 routing transaction: the messages are in eo.outbox again
#                 and are delivered a second time (at least once).
#
# At each point a transaction has published and rolled back, and another
# has published and is still open.  After the restart (with a listener
# connected before the relay runs again): every committed message was
# delivered at least once -- exactly once where nothing was sent before the
# crash, exactly twice where the sent routing was lost -- and nothing of a
# transaction that did not commit was ever delivered.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EONotify;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $nmsg = 20;
my $long = 'x' x 70;    # too long for a channel name

my $node = eo_new_node(
	'crash_points', conf => q{
# A killed relay worker makes the postmaster restart every process.
restart_after_crash = on
# Only commits wake the relay.
eo.relay_naptime = 3600
# While the WAL writer is stopped, nothing else may write the relay's
# commit record: no autovacuum commits, no buffer writes by the bgwriter.
autovacuum = off
bgwriter_lru_maxpages = 0
});
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('d', 'notify', '{"channel": "eo_cp"}');
SELECT eo.subscribe('cp.*', 'd');
});

# The lock that stops the relay at each point, and the relation it waits
# for (NULL: a row lock).
my %hold = (
	routing => [ 'LOCK eo.message_log IN SHARE ROW EXCLUSIVE MODE', q{'eo.message_log'::regclass} ],
	retry => [
		q{SELECT 1 FROM eo.destination_stats s JOIN eo.destination d ON d.id = s.destination_id
		   WHERE d.name = 'r' FOR UPDATE},
		'NULL::regclass'
	],
	after_commit => [ 'LOCK eo.delivery IN EXCLUSIVE MODE', q{'eo.delivery'::regclass} ],
);
my %state = (routing => 'routing', retry => 'retrying', after_commit => 'retrying');

# Messages whose delivery to destination "r" failed and waits for a retry
# in an hour: "r" has no channel, and their topic is too long for one.
# The channel is then set, so that the retry will succeed.  Returns the ids.
sub retrying_deliveries
{
	my ($topic) = @_;
	$node->safe_psql(
		'postgres', q{
SELECT eo.create_destination('r', 'notify', '{"retry_delays": ["1h"]}');
SELECT eo.subscribe('retry.*', 'r');
});
	my @ids = split /\n/,
	  $node->safe_psql('postgres',
		"SELECT eo.publish('$topic', jsonb_build_object('i', g)) FROM generate_series(1, $nmsg) g");
	$node->poll_query_until('postgres',
		q{SELECT count(*) = } . $nmsg . q{ FROM eo.delivery WHERE state = 'retrying'})
	  or die 'the deliveries did not fail';
	$node->safe_psql('postgres',
		q{SELECT eo.alter_destination('r', '{"channel": "eo_retry", "retry_delays": ["1h"]}')});
	return @ids;
}

sub crash_at
{
	my ($point, $how) = @_;
	my $label = "$point, kill -9 of the $how";
	my $topic = "cp.$point.$how";

	eo_wait_relay($node, 'postgres') or die 'no relay';
	my @committed = $point eq 'retry' ? retrying_deliveries("retry.$how.$long") : ();
	my $relay = $node->safe_psql('postgres',
		q{SELECT pid FROM eo.relay_status WHERE datname = 'postgres'});
	my $before = EONotify->new($node, 'postgres', 'eo_cp', 'eo_retry');

	my $blocker = $node->background_psql('postgres');
	$blocker->query_safe("BEGIN; $hold{$point}[0]");
	my $walwriter;
	if ($point eq 'after_commit')
	{
		$walwriter = $node->safe_psql('postgres',
			q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'});
		kill 'STOP', $walwriter;
	}

	# The relay's work at this point: one committed transaction, one
	# rolled back, one open at the crash.
	if ($point eq 'retry')
	{
		$node->safe_psql(
			'postgres', q{
UPDATE eo.delivery SET next_attempt_at = now() WHERE state = 'retrying';
SELECT eo.wake_relay();
});
	}
	else
	{
		# (eo.wake_relay(): the relay goes on to its retry step at once.)
		push @committed, split /\n/,
		  $node->safe_psql(
			'postgres', qq{
BEGIN;
SELECT eo.publish('$topic', jsonb_build_object('i', g, 'rb', false), 'k' || g % 4)
  FROM generate_series(1, $nmsg) g;
SELECT eo.wake_relay();
COMMIT;
});
	}
	$node->safe_psql(
		'postgres', qq{
BEGIN;
SELECT eo.publish('$topic', '{"rb": true}'::jsonb, 'k1') FROM generate_series(1, 5);
ROLLBACK;
});
	my $open = $node->background_psql('postgres');
	$open->query_safe(qq{BEGIN; SELECT eo.publish('$topic', '{"rb": true}'::jsonb)});

	ok( $node->poll_query_until(
			'postgres', qq{
		SELECT EXISTS (SELECT 1 FROM pg_locks
		                WHERE pid = $relay AND NOT granted
		                  AND (relation = $hold{$point}[1] OR $hold{$point}[1] IS NULL))}),
		"$label: the relay waits for the lock");
	is($node->safe_psql('postgres', q{SELECT state FROM eo.relay_status WHERE datname = 'postgres'}),
		$state{$point}, "$label: ... in its $state{$point} step");
	if ($point eq 'after_commit')
	{
		ok($before->wait_until(sub { !grep { !$before->seen_count($_) } @committed }, $timeout),
			"$label: the committed routing transaction's notifications arrived");
	}

	# No relay may deliver after the restart before a listener is there.
	eo_set_relay_enabled($node, 'off');
	my $log_offset = -s $node->logfile;
	if ($how eq 'relay')
	{
		kill 'KILL', $relay;
		kill 'KILL', $walwriter if $walwriter;
		ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset),
			"$label: the postmaster restarts every process");
		$node->wait_for_log(qr/database system is ready to accept connections/, $log_offset);
	}
	else
	{
		my @pids = eo_server_pids($node);
		$node->kill9;
		kill 'KILL', $walwriter if $walwriter;
		my @alive = eo_wait_pids_gone(\@pids, $timeout);
		is(scalar @alive, 0, "$label: every process of the killed postmaster exited");
		eo_poll_start($node, \@pids);
	}
	eval { $blocker->quit; };
	eval { $open->quit; };
	$before->drain(0);
	$before->close;

	my $after = EONotify->new($node, 'postgres', 'eo_cp', 'eo_retry');
	eo_set_relay_enabled($node, 'on');
	ok(eo_wait_drained($node, 'postgres'), "$label: after the restart the relay finishes its work");
	my $sentinel = $node->safe_psql('postgres', q{SELECT eo.publish('cp.sentinel', '{}'::jsonb)});
	ok($after->wait_for_id($sentinel, $timeout), "$label: a sentinel arrives after the restart");
	isnt($node->safe_psql('postgres', q{SELECT pid FROM eo.relay_status WHERE datname = 'postgres'}),
		$relay, "$label: a new relay worker runs");

	# What arrived, before and after the crash.
	my $channel = $point eq 'retry' ? 'eo_retry' : 'eo_cp';
	my %times;
	for my $l ($before, $after)
	{
		my $got = $l->received($channel);
		$times{$_} += $got->{$_} for keys %$got;
	}
	delete $times{$sentinel};
	my %is_committed = map { ($_ => 1) } @committed;
	my @lost = grep { !$times{$_} } @committed;
	my @phantom = grep { !$is_committed{$_} } sort keys %times;
	my @twice = grep { $times{$_} > 1 } @committed;
	my @rb = grep { $_->{payload} =~ /"rb": true/ } ($before->notifications, $after->notifications);
	is(scalar @lost, 0, "$label: every committed message was delivered");
	is(scalar @phantom, 0, "$label: nothing else was delivered on the channel");
	is(scalar @rb, 0, "$label: nothing of a rolled-back or unfinished transaction was delivered");
	note "$label: " . scalar(@twice) . " of $nmsg messages delivered twice";
	if ($point eq 'after_commit')
	{
		is(scalar @twice, $nmsg,
			"$label: the lost routing transaction is delivered again, every message (at least once)");
	}
	else
	{
		is(scalar @twice, 0, "$label: nothing was sent before the crash: each message delivered once");
	}
	is( $node->safe_psql(
			'postgres', qq{
		SELECT count(*) FROM eo.message_log
		 WHERE id = ANY ('{@{[ join(',', @committed) ]}}'::uuid[]) AND destinations = 1}),
		$nmsg, "$label: the committed messages are in eo.message_log, routed once");

	$after->close;
	$node->safe_psql('postgres', q{SELECT eo.drop_destination('r')}) if $point eq 'retry';
	return;
}

for my $point (qw(routing retry after_commit))
{
	for my $how (qw(relay postmaster))
	{
		crash_at($point, $how);
	}
}

$node->stop;
done_testing();
