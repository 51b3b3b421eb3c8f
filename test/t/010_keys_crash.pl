# Idempotency keys across a crash between two atomic phases.
#
# A request with key order-7 begins (phase 0, committed), charges a card
# and records the recovery point 'charge_created' (phase 1, committed);
# its next phase (send the receipt, checkpoint 'email_sent') is still
# open when the postmaster is killed with SIGKILL.  After the restart:
#  - the committed phases survived: the charge, the recovery point, a
#    completed key's response, another key's live lease (in_progress);
#    the open phase is gone, with its checkpoint;
#  - once order-7's lease has expired (polled, not slept), the next caller
#    gets resumed at 'charge_created' with a fence larger than every fence
#    handed out before the crash, and finishes the request from there;
#  - the crashed holder's stale fence is refused (SQLSTATE IK002) by
#    checkpoint, complete and release, and changes nothing.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $node = PostgreSQL::Test::Cluster->new('keys_crash');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'eo_processing'
eo.relay_enabled = off
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eo_processing;
CREATE TABLE charges (order_id integer PRIMARY KEY, amount integer NOT NULL);
CREATE TABLE receipts (order_id integer PRIMARY KEY);
});

my $request7 = q{'{"order": 7, "amount": 100}'};
my $request8 = q{'{"order": 8, "amount": 200}'};
my $request9 = q{'{"order": 9, "amount": 300}'};

# eo.key_begin() as "state|recovery_point|response|fence".
sub key_begin
{
	my ($key, $request, $lease) = @_;
	$lease //= '5 minutes';
	return $node->safe_psql('postgres',
		qq{SELECT * FROM eo.key_begin('$key', $request, lease => '$lease')});
}

# Run $sql, expecting an error; returns its message with the SQLSTATE.
sub fails_with
{
	my ($sql) = @_;
	my ($ret, $stdout, $stderr) =
	  $node->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	return $ret == 0 ? '(no error)' : $stderr;
}

######################################################################
# Before the crash
######################################################################

# order-7: phase 0 with a 3 second lease, in its own transaction.
my ($state, $point, $response, $f1) = split /\|/, key_begin('order-7', $request7, '3 s'), -1;
is("$state|$point", 'started|started', 'order-7 started');
# Phase 1: the charge and its recovery point commit together.
$node->safe_psql(
	'postgres', qq{
BEGIN;
INSERT INTO charges VALUES (7, 100);
SELECT eo.key_checkpoint('order-7', 'charge_created', fence => $f1);
COMMIT;
});

# order-8: a key whose hour-long lease outlives the restart.
my (undef, undef, undef, $g1) = split /\|/, key_begin('order-8', $request8, '1 hour'), -1;
$node->safe_psql('postgres',
	qq{SELECT eo.key_checkpoint('order-8', 'charge_created', fence => $g1)});

# order-9: completed before the crash.
my (undef, undef, undef, $h1) = split /\|/, key_begin('order-9', $request9), -1;
$node->safe_psql('postgres',
	qq{SELECT eo.key_complete('order-9', '{"status": 201, "charge": "ch_9"}', fence => $h1)});

# order-7's phase 2 is open when the server dies.
my $open = $node->background_psql('postgres');
$open->query_safe(
	qq{BEGIN;
	   INSERT INTO receipts VALUES (7);
	   SELECT eo.key_checkpoint('order-7', 'email_sent', fence => $f1);});

######################################################################
# kill -9 of the postmaster, restart
######################################################################

my @pids = eo_server_pids($node);
$node->kill9;
my @alive = eo_wait_pids_gone(\@pids, $timeout);
is(scalar @alive, 0, 'every process of the killed server exited')
  or diag "still alive: @alive";
eval { $open->quit; };
eo_poll_start($node, \@pids);

######################################################################
# After the restart
######################################################################

is( $node->safe_psql(
		'postgres',
		q{SELECT (SELECT count(*) FROM charges WHERE order_id = 7) || '/' ||
		         (SELECT count(*) FROM receipts)}),
	'1/0',
	'the committed charge survived, the open receipt did not');
is( $node->safe_psql(
		'postgres',
		q{SELECT state || '/' || recovery_point FROM eo.idempotency_key WHERE key = 'order-7'}),
	'in_progress/charge_created',
	'order-7 is at its last committed recovery point');
is(key_begin('order-9', $request9),
	'completed|finished|{"charge": "ch_9", "status": 201}|',
	'a completed key returns its stored response after the crash');
is(key_begin('order-8', $request8),
	'in_progress|||', 'a live lease is still held after the crash');

# Wait for order-7's lease to end (it was set before the crash).
ok( $node->poll_query_until(
		'postgres',
		q{SELECT lease_expires_at <= clock_timestamp() FROM eo.idempotency_key WHERE key = 'order-7'}),
	'order-7\'s lease expired');

my $f2;
($state, $point, $response, $f2) = split /\|/, key_begin('order-7', $request7), -1;
is("$state|$point|$response", 'resumed|charge_created|',
	'the next caller resumes order-7 at the last recovery point');
ok($f2 > $f1 && $f2 > $g1 && $f2 > $h1,
	"the new fence ($f2) is larger than every fence before the crash ($f1, $g1, $h1)");
is(key_begin('order-7', $request7),
	'in_progress|||', 'the new holder\'s lease is live: others get in_progress');
like(fails_with(qq{SELECT * FROM eo.key_begin('order-7', '{"order": 7, "amount": 999}')}),
	qr/ERROR:  IK001: idempotency key "order-7" was already used with a different request/,
	'another request with the same key is refused (IK001)');

# The crashed holder comes back with its fence: refused, nothing changes.
for my $call (
	qq{SELECT eo.key_checkpoint('order-7', 'email_sent', fence => $f1)},
	qq{SELECT eo.key_complete('order-7', '{"status": 201}', fence => $f1)},
	qq{SELECT eo.key_release('order-7', fence => $f1)})
{
	like(fails_with($call),
		qr/ERROR:  IK002: lease on idempotency key "order-7" was lost/,
		"stale fence refused: $call");
}
is( $node->safe_psql(
		'postgres',
		q{SELECT state || '/' || recovery_point || '/' || fence FROM eo.idempotency_key WHERE key = 'order-7'}),
	"in_progress/charge_created/$f2",
	'the stale calls changed nothing');

# The new holder finishes the request from the recovery point: no second
# charge, the receipt, the response.
$node->safe_psql(
	'postgres', qq{
BEGIN;
INSERT INTO receipts VALUES (7);
SELECT eo.key_checkpoint('order-7', 'email_sent', fence => $f2);
COMMIT;
SELECT eo.key_complete('order-7', '{"status": 201, "charge": "ch_7"}', fence => $f2);
});
is(key_begin('order-7', $request7),
	'completed|finished|{"charge": "ch_7", "status": 201}|',
	'order-7 completed by the new holder');
is( $node->safe_psql(
		'postgres',
		q{SELECT (SELECT count(*) FROM charges WHERE order_id = 7) || '/' ||
		         (SELECT count(*) FROM receipts WHERE order_id = 7)}),
	'1/1',
	'one charge and one receipt for order 7');

$node->stop;
done_testing();
