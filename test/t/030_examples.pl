# The client examples run against a real server, so that they cannot rot.
#
# examples/python/payment_flow.py (psycopg 3) and examples/node/payment_flow.js
# (node-postgres) are self-checking programs: they run the payment flow of
# their payments module (idempotency keys mapped to HTTP answers, the
# transactional outbox, signed webhooks applied with eo.process, and the
# relay's own webhooks received on 127.0.0.1) and print one "ok" or
# "not ok" line per expectation; so are examples/python/queue_consumer.py
# and examples/node/queue_consumer.js (consumers of a queue destination).
# This test runs each against a cluster
# with eo_processing preloaded and checks their exit status and lines.
# The node example needs its dependencies: scripts/test runs "npm ci" in
# examples/node first; without node_modules it is skipped.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

use FindBin;

my $root = "$FindBin::RealBin/../..";
my $python = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';

my $node = PostgreSQL::Test::Cluster->new('examples');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'eo_processing'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION eo_processing');
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM eo.relay_status
	   WHERE datname = 'postgres' AND pid IS NOT NULL})
  or die 'the relay did not start';

# The examples connect through the PG* variables, as applications do.
my %pgenv = (
	PGHOST => $node->host,
	PGPORT => $node->port,
	PGDATABASE => 'postgres',
	PGUSER => $node->safe_psql('postgres', 'SELECT current_user'),
	PYTHONDONTWRITEBYTECODE => 1);

# Run one example; returns (exit status, stdout, stderr).
sub run_example
{
	my @cmd = @_;
	local %ENV = (%ENV, %pgenv);
	my ($out, $err) = ('', '');
	note 'running: ' . join(' ', @cmd);
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	my $rc = $? >> 8;
	note "stdout:\n$out";
	note "stderr:\n$err" if $err ne '';
	return ($rc, $out, $err);
}

# The expectations every example reports, by the start of their text.
my @expected = (
	'a new idempotency key: charged once, answered 201',
	'the same key again: the stored response replayed',
	'the same key with another request: 422',
	'one payment row and one payment.succeeded event',
	'a key another request is working on: 409',
	'a gateway failure: 502, key released',
	'a declined charge: 402 stored and replayed',
	'a holder whose lease was taken over: 409',
	'a correctly signed webhook: verified, applied',
	'the same webhook again: absorbed by eo.process',
	'a tampered body: 401',
	'a correctly signed webhook an hour old: 401',
	'a webhook ahead of its payment: 503',
	q{the relay's webhooks: signatures verified});

sub check_example
{
	my ($name, @cmd) = @_;
	my ($rc, $out) = run_example(@cmd);
	is($rc, 0, "$name exits 0");
	unlike($out, qr/^not ok/m, "$name: no expectation failed");
	for my $what (@expected)
	{
		like($out, qr/^ok \d+ - \Q$what\E/m, "$name: $what");
	}
	like($out, qr/^\Q$name\E: all \d+ checks passed$/m, "$name: summary line");
	return;
}

check_example('payment_flow.py', $python,
	"$root/examples/python/payment_flow.py");

# A second run finds the objects of the first and starts afresh.
my ($rc, $out) = run_example($python, "$root/examples/python/payment_flow.py",
	'dbname=postgres');
is($rc, 0, 'payment_flow.py runs again, with a connection string argument');

# In CI the node example must run: a failed npm ci is a failure there.
ok(-d "$root/examples/node/node_modules/pg",
	'examples/node has its dependencies (npm ci ran)')
  if $ENV{CI};

SKIP:
{
	skip 'examples/node has no node_modules (scripts/test runs npm ci there)',
	  3 + @expected
	  unless -d "$root/examples/node/node_modules/pg";
	check_example('payment_flow.js', 'node',
		"$root/examples/node/payment_flow.js");
}

# The queue consumers (examples/*/queue_consumer.*): two competing
# consumers woken by the queue's channel apply every message once, in key
# order, and a lease that ran out refuses the ack (QL001).
my @queue_expected = (
	'messages published with no consumer running wait in the queue',
	'two consumers applied the backlog',
	'a message published later wakes an idle consumer',
	'the consumers acked every message',
	'each message applied exactly once',
	'per key, messages applied in publishing order',
	'a lease that ran out: the ack fails with QL001, the work rolls back',
	'the queue is empty');

sub check_queue_example
{
	my ($name, @cmd) = @_;
	my ($rc, $out) = run_example(@cmd);
	is($rc, 0, "$name exits 0");
	unlike($out, qr/^not ok/m, "$name: no expectation failed");
	for my $what (@queue_expected)
	{
		like($out, qr/^ok \d+ - \Q$what\E/m, "$name: $what");
	}
	like($out, qr/^\Q$name\E: all \d+ checks passed$/m, "$name: summary line");
	return;
}

check_queue_example('queue_consumer.py', $python,
	"$root/examples/python/queue_consumer.py");

SKIP:
{
	skip 'examples/node has no node_modules (scripts/test runs npm ci there)',
	  3 + @queue_expected
	  unless -d "$root/examples/node/node_modules/pg";
	check_queue_example('queue_consumer.js', 'node',
		"$root/examples/node/queue_consumer.js");
}

$node->stop;
done_testing();
