# End-to-end check of the HTTP sink: every committed message reaches a
# webhook receiver exactly once in effect, despite faults of every kind and
# a kill -9 of the postmaster in the middle of the deliveries.
#
# Concurrent pgbench sessions publish 1,000 messages (keyed ones carry a
# "seq" that increases per key in commit order, unkeyed ones none) while
# other sessions publish and roll back (payload "rolled_back": true).  The
# receiver (test/webhook_receiver.py) injects faults into ~30% of the
# requests: 500, an applied message whose answer is lost, a sleep past the
# destination's timeout, 429 and 503 with Retry-After.  The destination
# signs with two secrets (rotation) of which the receiver knows one.  The
# relay sleeps for an hour unless woken, so every retry must be scheduled.
#
# At the end the receiver must have applied exactly the messages of
# eo.message_log, each once (the duplicates that the faults and the crash
# caused were absorbed by its deduplication), in key order, with valid
# signatures, and none of a rolled-back transaction; nothing is dead.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EOWebhook;

my $clients = 8;
my $txns_per_client = 125;    # 1,000 committed messages
my $rollback_clients = 2;
my $rollback_txns = 50;       # 100 rolled-back messages
my $nkeys = 40;
my $kill_after = 300;         # applied messages before the kill -9
# Time allowed for all deliveries after the restart.
my $drain_timeout = 90;

my $node = eo_http_node('http_e2e', "max_connections = 40\n");

# The receiver knows the current secret only; the destination also signs
# with the next one, as during a rotation.
my $secret = eo_webhook_secret();
my $next_secret = eo_webhook_secret();
my $receiver = EOWebhook->new(name => 'e2e', secrets => [$secret], seed => 7);
my %faults = (
	fail_500 => 0.07,
	drop_after_apply => 0.07,
	sleep => 0.04,
	sleep_seconds => 1,
	too_many => 0.06,
	unavailable => 0.06,
	retry_after => 1);
$receiver->faults(\%faults);

eo_create_http_destination(
	$node, 'postgres', 'hooks',
	{
		url => $receiver->url('/e2e'),
		signing_secret => [ $next_secret, $secret ],
		timeout_ms => 500,
		concurrency => 8,
		max_attempts => 50,
		retry_delays => [ '50ms', '100ms', '200ms' ],
	},
	'e2e.*');
$node->safe_psql(
	'postgres', qq{
CREATE SCHEMA app;
CREATE TABLE app.key_seq (key text PRIMARY KEY, n integer NOT NULL);
INSERT INTO app.key_seq SELECT 'k' || g, 0 FROM generate_series(1, $nkeys) g;
});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM eo.relay_status
	   WHERE datname = 'postgres' AND pid IS NOT NULL AND state = 'idle'})
  or die 'the relay did not start';

# 60% keyed messages, numbered per key by a counter bumped in the
# publishing transaction (so that seq follows the commit order of a key).
sub publish_script
{
	my ($rolled_back) = @_;
	my $end = $rolled_back eq 'true' ? 'ROLLBACK' : 'COMMIT';
	return qq{
\\set r random(1, 100)
\\set k random(1, $nkeys)
BEGIN;
\\if :r <= 60
WITH s AS (UPDATE app.key_seq SET n = n + 1 WHERE key = 'k' || :k RETURNING key, n)
SELECT eo.publish('e2e.keyed', jsonb_build_object('seq', s.n, 'rolled_back', $rolled_back), s.key) FROM s;
\\else
SELECT eo.publish('e2e.unkeyed', jsonb_build_object('r', :r, 'rolled_back', $rolled_back));
\\endif
$end;
};
}

my $t0 = Time::HiRes::time();
my $publishers = eo_pgbench_start(
	$node,
	dbname => 'postgres',
	name => 'publish',
	clients => $clients,
	transactions => $txns_per_client,
	script => publish_script('false'));
my $rollbacks = eo_pgbench_start(
	$node,
	dbname => 'postgres',
	name => 'rollback',
	clients => $rollback_clients,
	transactions => $rollback_txns,
	script => publish_script('true'));
my $published = eo_pgbench_finish($publishers);
my $rolled = eo_pgbench_finish($rollbacks);
is($published->{rc}, 0, 'the publishing sessions ran without error');
is($published->{processed}, $clients * $txns_per_client, 'every publishing transaction committed');
is($rolled->{rc}, 0, 'the rolling-back sessions ran without error');
is($rolled->{processed}, $rollback_clients * $rollback_txns, 'every rolling-back transaction ran');
note sprintf('published in %.1f s', Time::HiRes::time() - $t0);

######################################################################
# kill -9 of the postmaster while the deliveries are under way
######################################################################

ok($receiver->wait_for(sub { $_[0]{applied} >= $kill_after }, 60),
	"the receiver applied $kill_after messages");
my @children = eo_server_pids($node);
$node->kill9;
my $at_kill = $receiver->stats;
note sprintf('postmaster killed at %.1f s with %d messages applied, %d in flight at the receiver',
	Time::HiRes::time() - $t0, $at_kill->{applied}, $at_kill->{in_flight});
cmp_ok($at_kill->{applied}, '<', $clients * $txns_per_client,
	'the kill came before every message was delivered');
my @alive = eo_wait_pids_gone(\@children);
is(scalar @alive, 0, 'every child of the killed postmaster exited')
  or diag "still alive: @alive";
eo_poll_start($node, \@children);

ok(eo_wait_drained($node, 'postgres', 'hooks', $drain_timeout),
	'after the restart the relay delivers everything (nothing pending, in flight or retrying)');
note sprintf('drained at %.1f s', Time::HiRes::time() - $t0);

######################################################################
# What arrived
######################################################################

is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM eo.message_log WHERE topic LIKE 'e2e.%'}),
	$clients * $txns_per_client,
	'eo.message_log holds the 1,000 committed messages');
my $applied = eo_check_exactly_once($node, 'postgres', $receiver,
	q{topic LIKE 'e2e.%'}, 'e2e');
is(scalar(grep { $_->{body} =~ /"rolled_back": true/ } @$applied),
	0, 'no message of a rolled-back transaction arrived');
my $requests = $receiver->requests;
is(scalar(grep { $_->{body} =~ /"rolled_back": true/ } @$requests),
	0, 'no request carried a message of a rolled-back transaction');
is( scalar(
		grep { my @v1 = split(' ', $_->{headers}{'webhook-signature'} // ''); @v1 != 2 } @$requests),
	0, 'every request was signed with both secrets');

my $s = $receiver->stats;
my ($dead, $delivered, $attempts, $failed_attempts) = split /\|/,
  $node->safe_psql(
	'postgres', q{
	SELECT s.dead, s.delivered_total,
	       (SELECT count(*) FROM eo.http_attempt),
	       (SELECT count(*) FROM eo.http_attempt WHERE error IS NOT NULL)
	  FROM eo.stats s WHERE destination = 'hooks'});
is($dead, 0, 'no delivery is dead');
is($s->{bad_signature}, 0, 'every signature verified (with the one secret the receiver knows)');
is($s->{order_violations}, 0, 'keyed messages were applied in seq order');
is($s->{id_mismatch}, 0, 'Idempotency-Key and webhook-id always agreed');
cmp_ok($s->{duplicates}, '>', 0, 'duplicates arrived and were absorbed by the receiver');
cmp_ok($s->{faults}{$_}, '>', 0, "faults of kind $_ were injected")
  for qw(fail_500 drop_after_apply sleep too_many unavailable);
ok(scalar(grep { defined $_->{key} } @$applied) > 0
	  && scalar(grep { !defined $_->{key} } @$applied) > 0,
	'both keyed and unkeyed messages arrived');

note "receiver: $s->{received} requests, $s->{applied} applied, "
  . "$s->{duplicates} duplicates absorbed, $s->{connections_total} connections";
note 'faults injected: '
  . join(', ', map { "$_ $s->{faults}{$_}" } sort keys %{ $s->{faults} });
note "relay: $delivered delivered, $attempts attempts recorded in eo.http_attempt "
  . "($failed_attempts failed; the outcomes of requests cut by the crash are not recorded)";

$receiver->stop;
$node->stop;

done_testing();
