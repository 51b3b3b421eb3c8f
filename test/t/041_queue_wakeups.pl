# Queue destinations: the relay wakes a queue's channel when a message
# becomes readable again with time alone -- its lease ran out, or the delay
# of eo.nack() passed -- and not before.
#
# The relay's naptime is the default (60 s), so a wake-up within seconds
# comes from the timer the relay schedules for that moment, not from its
# periodic look.  A consumer connection (DBD::Pg) listens on the channel;
# the test notes when it asked for the lease (or gave the message back)
# and when the notification arrived:
#   - after eo.read(visibility => 1 s) and no ack: a notification no
#     sooner than 1 s later (the lease ran out), within 5 s, and the
#     message is handed out again with attempt 2;
#   - after eo.nack(delay => 1 s): the same.
# (A wake-up for a message acknowledged just before its lease ran out is
# allowed, and documented: this test does not look for its absence.)

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use DBI;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;

my $node = eo_new_relay_node('queue_wakeups', 'w', 'queue',
	'{"channel": "w_wake", "visibility_timeout": "1min"}', 'w.*');

my $dsn = sprintf('dbi:Pg:dbname=postgres;host=%s;port=%s', $node->host, $node->port);
my $dbh = DBI->connect($dsn, '', '', { AutoCommit => 1, RaiseError => 1, PrintError => 0 });
$dbh->do('LISTEN w_wake');

# Wait up to $secs for a notification on w_wake; returns the time it came
# (Time::HiRes), or undef.
sub wait_wakeup
{
	my ($secs) = @_;
	my $deadline = Time::HiRes::time() + $secs;
	while (Time::HiRes::time() < $deadline)
	{
		my $n = $dbh->pg_notifies;
		return Time::HiRes::time() if $n && $n->[0] eq 'w_wake' && $n->[2] eq 'w';
		Time::HiRes::sleep(0.02);
	}
	return undef;
}

# Forget the notifications received so far.
sub drain
{
	1 while $dbh->pg_notifies;
}

# One message, routed (its routing batch notifies once).
$node->safe_psql('postgres', q{SELECT eo.publish('w.job', '{"n": 1}')});
ok(defined wait_wakeup(30), 'routing the message woke the channel');
drain();

# 1. A lease of one second, never acknowledged.
my $t0 = Time::HiRes::time();
my $lease = $node->safe_psql('postgres', q{SELECT lease FROM eo.read('w', 1, '1 second')});
like($lease, qr/^\d+$/, 'the message was leased for one second');
my $woke = wait_wakeup(10);
ok(defined $woke, 'the lease running out woke the channel');
cmp_ok($woke - $t0, '>=', 1.0, 'not before the lease ran out') if defined $woke;
cmp_ok($woke - $t0, '<', 5.0, 'within seconds (not the 60 s naptime)') if defined $woke;
my ($attempt, $lease2) = split /\|/,
  $node->safe_psql('postgres', q{SELECT attempt, lease FROM eo.read('w', 1, '1 minute')});
is($attempt, 2, 'the message is handed out again, attempt 2');

# 2. Given back with a delay of one second.
drain();
$t0 = Time::HiRes::time();
is($node->safe_psql('postgres', qq{SELECT eo.nack('w', '{$lease2}', '1 second')}),
	1, 'the message was given back for one second');
$woke = wait_wakeup(10);
ok(defined $woke, 'the end of the delay woke the channel');
cmp_ok($woke - $t0, '>=', 1.0, 'not before the delay passed') if defined $woke;
cmp_ok($woke - $t0, '<', 5.0, 'within seconds') if defined $woke;

$dbh->disconnect;
$node->stop;
done_testing();
