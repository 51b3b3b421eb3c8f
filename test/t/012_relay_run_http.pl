# Deliveries that eo.relay_run() routes in an application's transaction are
# sent by the running relay, whoever inserted them (issue #10):
#
#   (a) With the relay running: BEGIN; eo.publish(); eo.relay_run(); COMMIT.
#       The message waits in the log for the http destination (pending in
#       eo.stats); the relay must send it at once, not when it routes
#       something else itself.
#   (b) The same while eo.relay_enabled is off; once it is turned on by
#       reload, the relay sends it.
#   (c) The same class for notify: a notify delivery that eo.relay_run()
#       could not deliver (the topic is too long for a NOTIFY channel) is
#       scheduled for a retry; the relay must make that retry on time.
#   (d) eo.route_unrouted(): a message the relay routed while nothing
#       subscribed to its topic is delivered once the destination subscribes
#       and the operator routes the unrouted backlog to it.
#   (e) log_attempts: with the default ('failures') a successful attempt
#       leaves no row in eo.http_attempt, a failed one does.
#
# The relay's naptime is an hour (eo_http_node): nothing is sent unless a
# commit wakes the relay or it scheduled the work itself.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest qw(eo_wait_relay eo_set_relay_enabled);
use EOWebhook;

# How long a delivery may take: far less than the naptime.
my $settle = 20;

my $node = eo_http_node('relay_run_http');
my $receiver = EOWebhook->new(name => 'relay_run');
# log_attempts 'all': the test reads the successful attempt too.
eo_create_http_destination($node, 'postgres', 'hooks',
	{ url => $receiver->url, retry_delays => ['100ms'], log_attempts => 'all' },
	'payments.*');
eo_wait_relay($node, 'postgres') or die 'the relay did not start';

# poll($sql, $seconds): poll until $sql returns true, at most $seconds.
sub poll
{
	my ($sql, $seconds) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $seconds;
	return $node->poll_query_until('postgres', $sql);
}

# publish_and_route($topic): publish one message and route it with
# eo.relay_run() in the same transaction; returns its id and the number
# eo.relay_run() routed.
sub publish_and_route
{
	my ($topic) = @_;
	my ($id, $routed) = split /\n/,
	  $node->safe_psql(
		'postgres', qq{
BEGIN;
SELECT eo.publish('$topic', '{"n": 1}'::jsonb);
SELECT eo.relay_run();
COMMIT;
});
	return ($id, $routed);
}

# sent($id, $label): the message reaches the receiver, its delivery is
# finished and eo.http_attempt has one answered attempt for it (the first:
# eo.relay_run() itself sent nothing).
sub sent
{
	my ($id, $label) = @_;
	ok($receiver->wait_for(sub { $_[0]{applied} >= 1 }, $settle),
		"$label: the receiver got it within $settle s");
	ok( poll(
			qq{SELECT NOT EXISTS (SELECT 1 FROM eo.delivery WHERE message_id = '$id')
			     AND (SELECT pending + in_flight + retrying = 0 FROM eo.stats
			           WHERE destination = 'hooks')},
			$settle),
		"$label: the delivery is finished");
	is( $node->safe_psql('postgres',
			qq{SELECT string_agg(attempt || ':' || status_code, ',') FROM eo.http_attempt
			    WHERE message_id = '$id'}),
		'1:200',
		"$label: one attempt, answered 200");
	is(scalar(grep { $_->{id} eq $id } @{ $receiver->applied }), 1,
		"$label: the receiver applied that message");
	$receiver->reset;
	return;
}

######################################################################
# (a) the relay runs
######################################################################

{
	my ($id, $routed) = publish_and_route('payments.repro');
	is($routed, 1, '(a) eo.relay_run() routed the message');
	sent($id, '(a)');
}

######################################################################
# (b) routed while the relay is off, then turned on by reload
######################################################################

{
	eo_set_relay_enabled($node, 'off', 'postgres');
	my ($id, $routed) = publish_and_route('payments.off');
	is($routed, 1, '(b) eo.relay_run() routed the message while the relay is off');
	$node->safe_psql('postgres', 'SELECT pg_sleep(0.5)');    # the relay must not send
	is($receiver->stats->{received}, 0, '(b) nothing is sent while the relay is off');
	is( $node->safe_psql('postgres',
			qq{SELECT pending || ' ' || in_flight || ' ' || retrying
			          || ' ' || (SELECT count(*) FROM eo.delivery WHERE message_id = '$id')
			     FROM eo.stats WHERE destination = 'hooks'}),
		'1 0 0 0',
		'(b) eo.relay_run() left the message pending in the log (no row of its own)');
	eo_set_relay_enabled($node, 'on', 'postgres');
	sent($id, '(b)');
}

######################################################################
# (c) notify: a retry scheduled by eo.relay_run() is made by the relay
######################################################################

{
	$node->safe_psql(
		'postgres', q{
SELECT eo.create_destination('long', 'notify',
       '{"max_attempts": 2, "retry_delays": ["2s"]}');
SELECT eo.subscribe('long.*', 'long');
});
	eo_wait_relay($node, 'postgres') or die 'the relay is not idle';
	my $topic = 'long.' . ('x' x 70);
	my ($id, $routed) = publish_and_route($topic);
	is($routed, 1, '(c) eo.relay_run() routed the message');
	is( $node->safe_psql('postgres',
			qq{SELECT state || ' ' || attempts FROM eo.delivery WHERE message_id = '$id'}),
		'retrying 1',
		'(c) the first attempt failed (channel too long) and a retry is scheduled in 2 s');
	ok( poll(
			qq{SELECT state = 'dead' AND attempts = 2 FROM eo.delivery WHERE message_id = '$id'},
			$settle),
		"(c) the relay made the second attempt within $settle s (then gave up)");
}

######################################################################
# (d) the unrouted backlog, routed by eo.route_unrouted()
######################################################################

{
	my $id = $node->safe_psql('postgres',
		q{SELECT eo.publish('audit.late', '{"n": 4}'::jsonb)});
	ok(poll(qq{SELECT EXISTS (SELECT 1 FROM eo.unrouted WHERE id = '$id')}, $settle),
		'(d) the relay routed the message to nobody');
	is($receiver->stats->{received}, 0, '(d) nothing was sent');
	is( $node->safe_psql(
			'postgres', q{
SELECT eo.subscribe('audit.*', 'hooks');
SELECT eo.route_unrouted('hooks');
}),
		"\n1",
		'(d) eo.route_unrouted() gave it a delivery');
	sent($id, '(d)');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM eo.unrouted}),
		'0', '(d) no message is left unrouted');
}

######################################################################
# (e) log_attempts: by default only failed attempts are logged
######################################################################

{
	my $plain = EOWebhook->new(name => 'default_log');
	eo_create_http_destination($node, 'postgres', 'quiet', { url => $plain->url },
		'quiet.*');
	my $ok_id = $node->safe_psql('postgres', q{SELECT eo.publish('quiet.ok', '{}'::jsonb)});
	ok($plain->wait_for(sub { $_[0]{applied} >= 1 }, $settle), '(e) delivered');
	ok( poll(
			q{SELECT delivered_total = 1 AND pending + in_flight = 0 FROM eo.stats
			   WHERE destination = 'quiet'},
			$settle),
		'(e) counted as delivered');
	$plain->force_status(500);
	my $bad_id = $node->safe_psql('postgres', q{SELECT eo.publish('quiet.bad', '{}'::jsonb)});
	ok(poll(qq{SELECT EXISTS (SELECT 1 FROM eo.http_attempt WHERE message_id = '$bad_id')}, $settle),
		'(e) the failed attempt is logged');
	is( $node->safe_psql('postgres',
			qq{SELECT count(*) FROM eo.http_attempt WHERE message_id = '$ok_id'}),
		'0',
		"(e) the successful attempt is not (log_attempts 'failures', the default)");
	$plain->stop;
}

$receiver->stop;
done_testing();
