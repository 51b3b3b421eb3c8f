# Webhook requests interrupted by a stop of the relay are in eo.http_attempt
# (issue #10): a receiver holds five requests; the server is restarted
# (pg_ctl stop -m fast, then start) or the relay worker is killed (the
# postmaster then restarts the server) once the claims are on disk.  Afterwards every message must have
# reached the receiver twice, and eo.http_attempt must hold, per message,
# attempt 1 without a status code and with the "interrupted" error, then
# attempt 2 answered 200.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest qw(eo_wait_relay);
use EOWebhook;

my $settle = 30;
my $n = 5;

my $node = eo_http_node('http_interrupted', "restart_after_crash = on\n");
eo_wait_relay($node, 'postgres') or die 'the relay did not start';

# interrupted($label, $stop): publish $n messages to a receiver of their
# own that holds every request, stop the relay with $stop->() while they
# are in flight, and check what the receiver got and what eo.http_attempt
# says.
sub interrupted
{
	my ($label, $stop) = @_;
	my $receiver = EOWebhook->new(name => "held_$label");
	$receiver->faults({ sleep => 1.0, sleep_seconds => 60 });
	eo_create_http_destination($node, 'postgres', "held_$label",
		{
			url => $receiver->url,
			timeout_ms => 60000,
			concurrency => $n,
			retry_delays => ['100ms'],
			log_attempts => 'all'    # the successful second attempts too
		},
		"$label.*");
	my @ids = split /\n/,
	  $node->safe_psql('postgres',
		"SELECT eo.publish('$label.a', jsonb_build_object('i', g)) FROM generate_series(1, $n) g");
	ok($receiver->wait_for(sub { $_[0]{in_flight} == $n }, $settle),
		"($label) the receiver holds $n requests");
	$receiver->faults({});
	$stop->();
	ok(eo_wait_drained($node, 'postgres', "held_$label", $settle),
		"($label) after the restart everything is delivered");

	my %sent;
	push @{ $sent{ $_->{id} } }, $_->{outcome} for @{ $receiver->requests };
	is( join(' ', map { join(',', @{ $sent{$_} // [] }) } @ids),
		join(' ', ('slept,applied') x $n),
		"($label) the receiver got each message twice, applied the second");

	my $list = join(',', map { "'$_'" } @ids);
	is( $node->safe_psql(
			'postgres', qq{
SELECT string_agg(a, ' ' ORDER BY message_id)
  FROM (SELECT message_id,
               string_agg(attempt || ':' || coalesce(status_code::text, 'none') || ':'
                          || CASE WHEN error LIKE 'interrupted: %' THEN 'interrupted'
                                  ELSE coalesce(error, 'ok') END,
                          ',' ORDER BY attempt) AS a
          FROM eo.http_attempt
         WHERE message_id IN ($list)
         GROUP BY message_id) s}),
		join(' ', ('1:none:interrupted,2:200:ok') x $n),
		"($label) eo.http_attempt: attempt 1 interrupted, attempt 2 answered 200, for each message");
	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM eo.http_attempt a1 JOIN eo.http_attempt a2 USING (message_id)
 WHERE a1.attempt = 1 AND a2.attempt = 2 AND message_id IN ($list)
   AND a1.response_body IS NULL AND a1.latency_ms >= 0
   AND a1.attempted_at < a2.attempted_at}),
		$n,
		"($label) the interrupted attempts: no body, a latency, before the second attempts");
	$receiver->stop(kill => 1);    # it still holds the first requests
	return;
}

interrupted(
	'restart',
	sub {
		$node->stop('fast');
		$node->start;
	});

interrupted(
	'kill',
	sub {
		# The relay commits asynchronously: a crash may lose the claims of
		# the last few hundred milliseconds, and with them the knowledge
		# that the requests went out (see http_sink.c).  Make them durable
		# first: this part is about what the next worker does with them.
		$node->safe_psql('postgres', 'CHECKPOINT');
		my $pid = $node->safe_psql('postgres',
			q{SELECT pid FROM eo.relay_status WHERE datname = 'postgres'});
		ok(kill('KILL', $pid), "(kill) relay worker $pid killed");
		local $PostgreSQL::Test::Utils::timeout_default = $settle;
		$node->poll_query_until('postgres',
			qq{SELECT pid IS NOT NULL AND pid <> $pid FROM eo.relay_status WHERE datname = 'postgres'})
		  or die 'no new relay worker after the crash restart';
	});

done_testing();
