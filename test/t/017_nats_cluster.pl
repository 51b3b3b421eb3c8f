# The nats sink end to end against a real JetStream cluster: three
# nats-server processes on loopback, routed, and a stream with three
# replicas.  Keyed messages are published by pgbench (a quarter of the
# transactions roll back) while one NATS server is killed with kill -9 and
# restarted, then the postmaster is killed with kill -9 and restarted, and
# more messages follow.  Afterwards the stream must hold every committed
# message exactly once (count and ids), none of a rolled-back transaction,
# and each key's messages in publish order.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EONats;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $nats = EONats->new("$PostgreSQL::Test::Utils::tmp_check/nats_cluster");
$nats->tool('create', 'EO', 'app.>', 3, 600);
is($nats->tool('count', 'EO'), "0\n", 'a stream with three replicas, empty');

my $node = eo_new_node(
	'nats_cluster', conf => q{
max_connections = 40
log_statement = none
eo.relay_naptime = 1
});
my $servers = join(', ', map { qq{"$_"} } $nats->url_list);
$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('js', 'nats',
    '{"servers": [$servers], "stream": "EO", "timeout_ms": 2000,
      "retry_delays": ["200ms"], "max_attempts": 1000}');
SELECT eo.subscribe('app.*', 'js');
CREATE TABLE app_committed (id uuid PRIMARY KEY);
CREATE TABLE nats_got (seq bigint, id uuid, key text, subject text);
});

# A quarter of the transactions roll back; 40 keys.
my $script = q{
\set r random(1, 100)
\set k random(1, 40)
BEGIN;
INSERT INTO app_committed (id)
SELECT eo.publish('app.storm', jsonb_build_object('rb', :r <= 25), 'k' || :k);
\if :r <= 25
ROLLBACK;
\else
COMMIT;
\endif
};

# The destination's delivered total (0 while the server is unreachable).
sub delivered
{
	my $n = $node->safe_psql('postgres',
		q{SELECT delivered_total FROM eo.stats WHERE destination = 'js'}, on_error_die => 0);
	return $n =~ /^\d+$/ ? $n : 0;
}

# Poll until the stream holds at least $n messages more than $base.
sub wait_delivered
{
	my ($n) = @_;
	my $base = delivered();
	my $deadline = Time::HiRes::time() + $timeout;
	while (Time::HiRes::time() < $deadline)
	{
		return 1 if delivered() >= $base + $n;
		Time::HiRes::usleep(100_000);
	}
	return 0;
}

my $storm = eo_pgbench_start(
	$node,
	dbname => 'postgres',
	name => 'storm',
	clients => 4,
	duration => 40,
	options => [ '--rate=200' ],
	script => $script);

ok(wait_delivered(1000), 'messages reach the stream');

$nats->kill9(1);
note 'NATS server 1 killed';
ok(wait_delivered(1000), 'delivery goes on with one NATS server killed');
$nats->start(1);
note 'NATS server 1 restarted';
ok(wait_delivered(1000), 'delivery goes on after the NATS server restarted');

my @children = eo_server_pids($node);
$node->kill9;
note 'postmaster killed';
my $storm_result = eo_pgbench_finish($storm);
note "pgbench exit status after the crash: $storm_result->{rc}";
my @alive = eo_wait_pids_gone(\@children, $timeout);
is(scalar @alive, 0, 'every child of the killed postmaster exited');
eo_poll_start($node, \@children);

# More after the restart.
my $after = eo_pgbench(
	$node,
	dbname => 'postgres',
	name => 'after',
	clients => 4,
	transactions => 500,
	script => $script);
is($after->{rc}, 0, 'publishing after the restart');

ok(eo_wait_drained($node, 'postgres'), 'the relay delivers everything');

my ($ncommitted, $dead) = split /\|/,
  $node->safe_psql('postgres',
	q{SELECT (SELECT count(*) FROM app_committed), (SELECT dead FROM eo.stats WHERE destination = 'js')});
cmp_ok($ncommitted, '>=', 2000, "thousands of committed messages ($ncommitted)");
is($dead, '0', 'no delivery given up');

# Read the stream back.
my $dump = $nats->tool('dump', 'EO');
my $file = $node->basedir . '/nats_got.txt';
open(my $fh, '>', $file) or die "cannot write $file: $!";
for my $line (split /\n/, $dump)
{
	my ($seq, $id, $key, $subject) = split / /, $line;
	print $fh join("\t", $seq, $id, $key, $subject), "\n";
}
close $fh;
$node->safe_psql('postgres', "\\copy nats_got (seq, id, key, subject) FROM '$file'");

my ($nstream, $ndistinct) = split /\|/,
  $node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM nats_got});
is($nstream, $ncommitted, 'the stream holds as many messages as were committed');
is($ndistinct, $nstream, 'each message once');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM nats_got g WHERE NOT EXISTS (SELECT 1 FROM app_committed c WHERE c.id = g.id)}),
	'0', 'no message of a rolled-back transaction (every id in the stream was committed)');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM app_committed c WHERE NOT EXISTS (SELECT 1 FROM nats_got g WHERE g.id = c.id)}),
	'0', 'every committed message is in the stream');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM nats_got g JOIN eo.message_log m USING (id)
	 WHERE g.key IS DISTINCT FROM m.key OR g.subject <> m.topic}),
	'0', 'headers eo-key and the subject match the message');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
	    SELECT row_number() OVER (PARTITION BY g.key ORDER BY g.seq) AS in_stream,
	           row_number() OVER (PARTITION BY g.key ORDER BY m.seq) AS in_log
	      FROM nats_got g JOIN eo.message_log m USING (id)) x
	 WHERE in_stream <> in_log}),
	'0', "each key's messages are in the stream in publish order");

$node->stop;
$nats->stop;
done_testing();
