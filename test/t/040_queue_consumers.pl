# Queue destinations under crashes: four consumers (test/queue_consumer.pl)
# compete over 20,000 keyed messages; some are killed with SIGKILL right
# after leasing a batch (their leases must expire and the messages go to
# another consumer), and the postmaster is killed with SIGKILL while leases
# are outstanding.  Each consumer applies a batch (one row per message in
# "applied") and acks it in one transaction.  In the end:
#   - every committed message was applied exactly once, and no message of
#     a rolled-back publishing transaction was;
#   - per key, messages were applied in publishing order (a message is
#     handed out only once every earlier one of its key was acked);
#   - some messages were handed out more than once (the kills did leave
#     leases behind), and the queue is empty, with nothing dead;
#   - eo.stats counts every acknowledgement.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $total = 20_000;
my $keys = 1000;
my $consumers = 4;
my $batch = 100;
my $script = "$FindBin::RealBin/../queue_consumer.pl";

my $node = eo_new_node(
	'queue_consumers', conf => q{
max_connections = 40
log_statement = none
eo.relay_naptime = 1
});
$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('jobs', 'queue',
    '{"channel": "jobs_wake", "visibility_timeout": "3s", "max_attempts": 1000}');
SELECT eo.subscribe('job', 'jobs');
CREATE TABLE applied (seq bigserial PRIMARY KEY, n integer NOT NULL, key text NOT NULL,
                      consumer text NOT NULL, attempt integer NOT NULL);
-- Published in ten transactions; one more is rolled back.
SELECT count(*) FROM generate_series(0, 9) AS t,
    LATERAL (SELECT eo.publish('job', jsonb_build_object('n', g), 'k' || (g % $keys))
               FROM generate_series(t * $total / 10 + 1, (t + 1) * $total / 10) AS g) AS p;
BEGIN;
SELECT eo.publish('job', jsonb_build_object('n', -g), 'k' || (g % $keys))
  FROM generate_series(1, 100) AS g;
ROLLBACK;
});
ok(eo_wait_relay($node, 'postgres'), 'the relay runs');

my $dsn = sprintf('dbi:Pg:dbname=postgres;host=%s;port=%s', $node->host, $node->port);
my $started = 0;

# A consumer process, with the pipes the test steers it through.
sub start_consumer
{
	my $c = { in => '', out => '', err => '', name => 'c' . ++$started, lines => 0 };
	$c->{h} = IPC::Run::start([ $^X, $script, $dsn, 'jobs', 'jobs_wake', $c->{name}, $batch ],
		'<', \$c->{in}, '>', \$c->{out}, '2>', \$c->{err});
	return $c;
}

# How many messages were applied, asked of the server at most twice a
# second (the steering loop calls it far more often).
my ($applied, $applied_at) = (0, 0);

sub applied_count
{
	if (Time::HiRes::time() - $applied_at >= 0.5)
	{
		$applied = $node->safe_psql('postgres', 'SELECT count(*) FROM applied');
		$applied_at = Time::HiRes::time();
	}
	return $applied;
}

# Steer the consumers until $until->() holds: answer each "leased" with
# "go", or (one time in $kill_every) kill the consumer and start another.
# Returns the number of kills.
my %stats = (kills => 0, stale => 0, leased => 0);

sub steer
{
	my ($pool, $kill_every, $until, $max_kills) = @_;
	my $deadline = Time::HiRes::time() + $timeout;
	my $kills = 0;

	while (!$until->())
	{
		die 'the consumers did not finish in time' if Time::HiRes::time() > $deadline;
		for my $i (0 .. $#$pool)
		{
			my $c = $pool->[$i];
			$c->{h}->pump_nb;
			while ($c->{out} =~ s/^(\w+)[^\n]*\n//)
			{
				my $what = $1;
				if ($what eq 'leased')
				{
					$stats{leased}++;
					if ($kills < $max_kills && int(rand($kill_every)) == 0)
					{
						$c->{h}->signal('KILL');
						eval { $c->{h}->finish; };
						$stats{kills}++;
						$kills++;
						$c = $pool->[$i] = start_consumer();
						last;
					}
					$c->{in} .= "go\n";
				}
				elsif ($what eq 'stale')
				{
					$stats{stale}++;
				}
			}
			if (!$c->{h}->pumpable)
			{
				# Ended by itself (a refused ack, QL001): replace it.
				eval { $c->{h}->finish; };
				diag("consumer $c->{name} ended: $c->{err}") if $c->{err} !~ /QL001|no longer current/;
				$pool->[$i] = start_consumer();
			}
		}
		Time::HiRes::usleep(2_000);
	}
	return $kills;
}

my @pool = map { start_consumer() } 1 .. $consumers;

# Phase 1: a quarter of the messages, with kills after leasing.
steer(\@pool, 8, sub { applied_count() >= $total / 4 }, 6);
ok($stats{kills} > 0, "consumers were killed after leasing ($stats{kills})");

# Phase 2: kill the postmaster while leases are outstanding (the next
# "leased" batches go unanswered).
my $outstanding = 0;
my $deadline = Time::HiRes::time() + $timeout;
while ($outstanding < 2 && Time::HiRes::time() < $deadline)
{
	for my $c (@pool)
	{
		$c->{h}->pump_nb;
		$outstanding++ while $c->{out} =~ s/^leased[^\n]*\n//;
		$c->{out} =~ s/^(?:acked|stale)[^\n]*\n//g;
	}
	Time::HiRes::usleep(2_000);
}
ok($outstanding >= 2, 'leases are outstanding when the postmaster is killed');
my @server = eo_server_pids($node);
$node->kill9;
for my $c (@pool)
{
	$c->{h}->signal('KILL');
	eval { $c->{h}->finish; };
}
my @alive = eo_wait_pids_gone(\@server, $timeout);
is(scalar(@alive), 0, 'the old server processes are gone');
ok(eo_poll_start($node, \@server), 'the server restarts');
$applied_at = 0;
ok(eo_wait_relay($node, 'postgres'), 'the relay runs again');
cmp_ok($node->safe_psql('postgres', q{SELECT leased FROM eo.stats WHERE destination = 'jobs'}),
	'>', 0, 'leases survived the crash');

# Phase 3: the rest, with a few more kills.
@pool = map { start_consumer() } 1 .. $consumers;
steer(\@pool, 20, sub { applied_count() >= $total }, 3);
$_->{in} .= "stop\n" for @pool;
for my $c (@pool)
{
	$c->{h}->signal('KILL');
	eval { $c->{h}->finish; };
}
note("leased batches: $stats{leased}, kills: $stats{kills}, stale acks: $stats{stale}");

is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT n) || ' ' || min(n) || ' ' || max(n)
		  FROM applied}),
	"$total $total 1 $total",
	'every committed message applied exactly once, none rolled back');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FROM (
		    SELECT n, lag(n) OVER (PARTITION BY key ORDER BY seq) AS before FROM applied) AS x
		 WHERE n < before}),
	'0', 'per key, messages were applied in publishing order');
is( $node->safe_psql('postgres', qq{SELECT count(*) FROM applied WHERE key <> 'k' || (n % $keys)}),
	'0', 'each message came with its key');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM applied WHERE attempt > 1'),
	'>', 0, 'messages whose lease was left behind were handed out again');
is( $node->safe_psql(
		'postgres', q{
		SELECT ready || ' ' || leased || ' ' || retrying || ' ' || dead || ' ' || acked_total
		  FROM eo.stats WHERE destination = 'jobs'}),
	"0 0 0 0 $total",
	'the queue is empty, nothing is dead, every acknowledgement is counted');

$node->stop;
done_testing();
