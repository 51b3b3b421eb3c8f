# Crash safety of the outbox relay: kill -9 of the postmaster during a
# publish storm (pgbench, some transactions rolling back) while the relay
# works through a backlog.  The application records the id of every
# message it commits in the same transaction.  NOTIFY is not durable, so
# one listener runs before the crash and another after the restart;
# together they must have received every committed message, except those
# the relay sent in the very moment of the crash (sent, but lost with the
# listener's connection), and never a message of a transaction that did
# not commit.  The relay must not go on routing once the postmaster is
# gone: nobody can receive notifications then.
#
# The long run under load (bounded tables, flat relay memory) is the soak,
# 060_soak.pl.

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

# A relay transaction that started before the kill may still commit after
# it; none may start after it (this much allows for the measurement).
my $grace = 0.1;

my $node = PostgreSQL::Test::Cluster->new('relay_crash');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'eo_processing'
max_connections = 40
shared_buffers = 16MB
# Hundreds of thousands of statements: do not log them.
log_statement = none
# Housekeeping every second.  The retention stays at its default (a day),
# so that the checks can inspect the message log.
eo.relay_naptime = 1
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('app', 'notify', '{"channel": "eo_app"}');
SELECT eo.subscribe('app.*', 'app');
CREATE TABLE app_committed (id uuid PRIMARY KEY);
CREATE TABLE recv (listener integer NOT NULL, id uuid NOT NULL);
});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM eo.relay_status
	   WHERE datname = 'postgres' AND pid IS NOT NULL AND state = 'idle'})
  or die 'the relay did not start';

my $before = EONotify->new($node, 'postgres', 'eo_app');

# 20% of the transactions roll back; their messages are tagged "rb".
my $storm = eo_pgbench_start(
	$node,
	dbname => 'postgres',
	name => 'storm',
	clients => 6,
	duration => 60,
	script => q{
\set r random(1, 100)
\set k random(1, 50)
BEGIN;
INSERT INTO app_committed (id)
SELECT eo.publish('app.storm', jsonb_build_object('rb', :r <= 20, 'k', :k), 'k' || :k);
\if :r <= 20
ROLLBACK;
\else
COMMIT;
\endif
});

ok($before->wait_until(sub { $before->notifications >= 2000 }, $timeout),
	'storm running: the first listener receives messages');

# A backlog for the relay to work through when the postmaster dies.
$node->safe_psql('postgres',
	q{INSERT INTO app_committed (id)
	  SELECT eo.publish('app.bulk', jsonb_build_object('i', g)) FROM generate_series(1, 100000) g});
{
	my $checked = 0;
	my $bulk_seen = 0;
	ok( $before->wait_until(
			sub {
				my @n = $before->notifications;
				for my $i ($checked .. $#n)
				{
					$bulk_seen = 1 if $n[$i]{payload} =~ /"topic": "app\.bulk"/;
				}
				$checked = @n;
				return $bulk_seen;
			},
			$timeout),
		'the relay is delivering the backlog');
}

# After the restart no relay may deliver before the second listener is
# connected: start the server with the relay turned off (written now,
# read by the new postmaster), turn it on once the listener is there.
$node->safe_psql('postgres', 'ALTER SYSTEM SET eo.relay_enabled = off');

my @children = eo_server_pids($node);
my $t_kill = Time::HiRes::time();
$node->kill9;
note sprintf("postmaster killed at %.3f (%d processes to wait for)", $t_kill, scalar @children);

# The first listener's connection ends when its backend notices.
$before->wait_until(sub { defined $before->lost }, $timeout);
ok(defined $before->lost, 'the first listener lost its connection');
my $storm_result = eo_pgbench_finish($storm);
note "pgbench exit status after the crash: $storm_result->{rc}";
my @alive = eo_wait_pids_gone(\@children, $timeout);
is(scalar @alive, 0, 'every child of the killed postmaster exited')
  or diag "still alive: @alive";
eo_poll_start($node, \@children);

my $after = EONotify->new($node, 'postgres', 'eo_app');
$node->safe_psql('postgres', 'ALTER SYSTEM SET eo.relay_enabled = on; SELECT pg_reload_conf()');
# A publish also asks for a relay, so that this part does not depend on
# the launcher noticing the reload (004_relay_lifecycle.pl checks that).
my %known;
$known{ $node->safe_psql('postgres', q{SELECT eo.publish('app.kick', '{}'::jsonb)}) } = 1;
ok( $node->poll_query_until(
		'postgres', q{
	SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)
	   AND NOT EXISTS (SELECT 1 FROM eo.delivery WHERE state <> 'dead')}),
	'after the restart the relay drains the outbox');
my $sentinel = $node->safe_psql('postgres', q{SELECT eo.publish('app.sentinel', '{}'::jsonb)});
$known{$sentinel} = 1;
ok($after->wait_for_id($sentinel, 60), 'the second listener receives the sentinel');

# Load what each listener received into recv, then compare in SQL.
for my $pair ([ 1, $before ], [ 2, $after ])
{
	my ($n, $l) = @$pair;
	my $file = $node->basedir . "/recv$n.txt";
	open(my $fh, '>', $file) or die "cannot write $file: $!";
	print $fh "$n\t$_->{id}\n" for grep { defined $_->{id} } $l->notifications;
	close $fh;
	$node->safe_psql('postgres', "\\copy recv (listener, id) FROM '$file'");
}
my $known_list = join(',', map { "'$_'" } keys %known);

my ($ncommitted, $nreceived1, $nreceived2) = split /\|/,
  $node->safe_psql(
	'postgres', q{
	SELECT (SELECT count(*) FROM app_committed),
	       (SELECT count(DISTINCT id) FROM recv WHERE listener = 1),
	       (SELECT count(DISTINCT id) FROM recv WHERE listener = 2)});
note "committed: $ncommitted; received before the crash: $nreceived1, after: $nreceived2";

my $rb = grep { $_->{payload} =~ /"rb": true/ } ($before->notifications, $after->notifications);
is($rb, 0, 'no message of a rolled-back transaction ever arrived');

is( $node->safe_psql(
		'postgres', qq{
	SELECT count(DISTINCT r.id) FROM recv r
	 WHERE NOT EXISTS (SELECT 1 FROM app_committed c WHERE c.id = r.id)
	   AND r.id NOT IN ($known_list)}),
	'0', 'every message that arrived was committed (none of the transactions cut by the crash)');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM app_committed c
	 WHERE NOT EXISTS (SELECT 1 FROM eo.message_log m
	                    WHERE m.id = c.id AND m.destinations = 1)
	    OR EXISTS (SELECT 1 FROM eo.delivery d WHERE d.message_id = c.id)}),
	'0', 'every committed message was routed and delivered (eo.message_log, no open delivery)');

# Messages the relay routed in transactions that started after the
# postmaster died: their notifications could reach nobody.
my $after_kill = $node->safe_psql(
	'postgres', qq{
	SELECT count(*), count(DISTINCT routed_at), min(routed_at) - to_timestamp($t_kill),
	       max(routed_at) - to_timestamp($t_kill)
	  FROM eo.message_log
	 WHERE routed_at > to_timestamp($t_kill + $grace) AND routed_at < pg_postmaster_start_time()});
like($after_kill, qr/^0\|/,
	"the relay started no routing transaction after the postmaster was killed (${grace}s grace)")
  or diag "messages, routing transactions, first and last after the kill: $after_kill";

# Committed messages that neither listener received: only those of the
# relay's last transactions before the crash may be missing (their
# notifications were queued but not yet read when the connection died).
my ($nmissing, $bad_missing, $window) = split /\|/,
  $node->safe_psql(
	'postgres', qq{
	WITH last1 AS (SELECT max(m.routed_at) AS t
	                 FROM eo.message_log m JOIN recv r ON r.id = m.id AND r.listener = 1),
	     missing AS (SELECT c.id, m.routed_at
	                   FROM app_committed c LEFT JOIN eo.message_log m ON m.id = c.id
	                  WHERE NOT EXISTS (SELECT 1 FROM recv r WHERE r.id = c.id))
	SELECT count(*),
	       count(*) FILTER (WHERE routed_at IS NULL OR routed_at < (SELECT t FROM last1)
	                        OR routed_at > to_timestamp($t_kill + $grace)),
	       coalesce(min(routed_at)::text, '-') || ' .. ' || coalesce(max(routed_at)::text, '-')
	  FROM missing});
note "committed but received by no listener: $nmissing (routed $window)";
is($bad_missing, 0,
	'every committed message reached a listener, but for the notifications in flight at the crash');

$before->close;
$after->close;
$node->stop;

done_testing();
