# Behaviour of the kafka sink against librdkafka's mock cluster (three
# brokers on 127.0.0.1, test/kafka_tool.c through EOKafka):
#
#   - what a record carries: the message's key (none without one), its
#     payload as the value (jsonb as JSON text, or the text), the headers
#     eo-id, eo-topic, eo-published-at and the message's own; the Kafka
#     topic is the message's topic unless the option "topic" names one;
#   - what Kafka refuses for good goes dead at the first attempt with the
#     reason in eo.stats and eo.delivery: a record above the producer's
#     message.max.bytes, a record the broker answers MSG_SIZE_TOO_LARGE,
#     a topic name Kafka cannot take; the next messages are delivered;
#   - unreachable brokers hold back only their destination: a notify
#     destination and a kafka destination of a live cluster, subscribed to
#     the same topics, deliver meanwhile; once the brokers are back, the
#     held-back messages are delivered;
#   - retries follow the destination's schedule (retry_delays 2 s then 4 s,
#     with the relay's +-20% jitter) until max_attempts, then dead with
#     librdkafka's error;
#   - a fast shutdown stays prompt while the relay waits for brokers that
#     accept connections and never answer.

use strict;
use warnings FATAL => 'all';

use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EOKafka;

my $tmp = $PostgreSQL::Test::Utils::tmp_check;
my $kafka = EOKafka->new("$tmp/kafka_behaviour");
$kafka->create_topic('ev.created', 3);
$kafka->create_topic('ev.text', 1);
$kafka->create_topic('orders', 2);
my $bootstrap = $kafka->bootstrap;

my $node = eo_new_node('kafka_behaviour', conf => "eo.relay_naptime = 1\n");
$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('k', 'kafka',
    '{"bootstrap_servers": "$bootstrap", "retry_delays": ["100ms"]}');
SELECT eo.subscribe('ev.*', 'k');
SELECT eo.create_destination('fixed', 'kafka',
    '{"bootstrap_servers": "$bootstrap", "topic": "orders", "retry_delays": ["100ms"]}');
SELECT eo.subscribe('order.*', 'fixed');
});

# Poll until a destination has delivered $n messages in all.
sub wait_delivered_total
{
	my ($dest, $n) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT delivered_total >= $n FROM eo.stats WHERE destination = '$dest'});
}

# The delivery of a message to a destination: "attempts|state|last_error".
sub delivery_of
{
	my ($dest, $id) = @_;
	return $node->safe_psql(
		'postgres', qq{
SELECT d.attempts || '|' || d.state || '|' || coalesce(d.last_error, '')
  FROM eo.delivery d JOIN eo.destination t ON t.id = d.destination_id
 WHERE t.name = '$dest' AND d.message_id = '$id'});
}

# --- What a record carries.
my $id1 = $node->safe_psql('postgres',
	q{SELECT eo.publish('ev.created', '{"n": 1, "s": "\u00e9t\u00e9"}'::jsonb, 'k1', '{"X-Trace": "t1"}')});
my $id2 = $node->safe_psql('postgres', q{SELECT eo.publish('ev.text', 'plain text'::text)});
my $id3 = $node->safe_psql('postgres', q{SELECT eo.publish('order.placed', '{"o": 7}'::jsonb, 'c9')});
ok(wait_delivered_total('k', 2) && wait_delivered_total('fixed', 1), 'the messages are delivered');

my @r = $kafka->records('ev.created', min => 1, timeout => 30);
is(scalar @r, 1, 'topic ev.created holds one record');
is($r[0]{key}, 'k1', 'the record key is the message key');
is($r[0]{value}, qq{{"n": 1, "s": "\x{e9}t\x{e9}"}}, 'the value is the jsonb payload as JSON text (UTF-8)');
is($r[0]{id}, $id1, 'header eo-id is the message id');
is($r[0]{header}{'eo-topic'}, 'ev.created', 'header eo-topic is the topic');
is($r[0]{header}{'X-Trace'}, 't1', q{the message's own header});
is( $node->safe_psql('postgres',
		qq{SELECT published_at = '$r[0]{header}{'eo-published-at'}'::timestamptz
		     FROM eo.message_log WHERE id = '$id1'}),
	't', 'header eo-published-at is the publishing time');

@r = $kafka->records('ev.text', min => 1, timeout => 30);
is_deeply([ map { [ $_->{key}, $_->{value}, $_->{id} ] } @r ],
	[ [ undef, 'plain text', $id2 ] ], 'a text payload as it is, no key without one');

@r = $kafka->records('orders', min => 1, timeout => 30);
is_deeply([ map { [ $_->{key}, $_->{id}, $_->{header}{'eo-topic'} ] } @r ],
	[ [ 'c9', $id3, 'order.placed' ] ], 'option "topic" names the Kafka topic; eo-topic keeps the message topic');

# --- Refused for good.
# The producer's own limit: message.max.bytes of 10000.
my $fresh = EOKafka->new("$tmp/kafka_refuse");
my $fresh_bootstrap = $fresh->bootstrap;
$fresh->create_topic('big.x', 1);
$node->safe_psql(
	'postgres', qq{
SELECT eo.create_destination('small', 'kafka',
    '{"bootstrap_servers": "$fresh_bootstrap", "retry_delays": ["100ms"], "max_attempts": 5,
      "properties": {"message.max.bytes": 10000}}');
SELECT eo.subscribe('big.*', 'small');
});
my $too_big = $node->safe_psql('postgres',
	q{SELECT eo.publish('big.x', jsonb_build_object('blob', repeat('x', 20000)), 'b1')});
my $fits = $node->safe_psql('postgres', q{SELECT eo.publish('big.x', '{"fits": true}'::jsonb, 'b1')});
ok($node->poll_query_until('postgres', q{SELECT dead = 1 FROM eo.stats WHERE destination = 'small'}),
	'a record above message.max.bytes is dead');
like(delivery_of('small', $too_big), qr/^1\|dead\|.*(too large|MSG_SIZE_TOO_LARGE)/i,
	'at its first attempt, and eo.delivery says why');
like(
	$node->safe_psql('postgres', q{SELECT last_error FROM eo.stats WHERE destination = 'small'}),
	qr/too large|MSG_SIZE_TOO_LARGE/i, 'eo.stats shows the reason');
ok(wait_delivered_total('small', 1), 'the next message of the key is delivered');
is_deeply([ map { $_->{id} } $fresh->records('big.x', min => 1, timeout => 30) ],
	[$fits], 'Kafka holds only the one that fits');

# The broker refuses: the next Produce request is answered MSG_SIZE_TOO_LARGE
# (on every broker, whichever leads the partition).
$fresh->command("broker_errors $_ Produce MSG_SIZE_TOO_LARGE:0") for 1 .. 3;
my $refused = $node->safe_psql('postgres', q{SELECT eo.publish('big.x', '{"refused": true}'::jsonb, 'b2')});
ok($node->poll_query_until('postgres', q{SELECT dead = 2 FROM eo.stats WHERE destination = 'small'}),
	'a record the broker answers MSG_SIZE_TOO_LARGE is dead');
like(delivery_of('small', $refused), qr/^1\|dead\|.*(too large|MSG_SIZE_TOO_LARGE)/i,
	'at its first attempt, with the reason');
my $after = $node->safe_psql('postgres', q{SELECT eo.publish('big.x', '{"after": true}'::jsonb, 'b2')});
ok(wait_delivered_total('small', 2), 'the producer goes on: the next message is delivered');

# A topic name Kafka cannot take (eo topics may hold blanks and slashes).
my $bad_topic = $node->safe_psql('postgres', q{SELECT eo.publish('ev.not a/topic', '{}'::jsonb)});
ok($node->poll_query_until('postgres', q{SELECT dead = 1 FROM eo.stats WHERE destination = 'k'}),
	'a topic Kafka cannot take is dead');
like(delivery_of('k', $bad_topic), qr/^1\|dead\|.*not a valid Kafka topic/,
	'at its first attempt, and the reason says so');
$fresh->stop;

# --- Unreachable brokers hold back only their destination.
my $down = EOKafka->new("$tmp/kafka_down");
$down->create_topic('both.x', 2);
my $down_bootstrap = $down->bootstrap;
$down->command("down $_") for 1 .. 3;
$node->safe_psql(
	'postgres', qq{
SELECT eo.create_destination('unreachable', 'kafka',
    '{"bootstrap_servers": "$down_bootstrap", "retry_delays": ["200ms"], "max_attempts": 1000,
      "properties": {"message.timeout.ms": 1000}}');
SELECT eo.subscribe('both.*', 'unreachable');
SELECT eo.create_destination('live', 'kafka',
    '{"bootstrap_servers": "$bootstrap", "retry_delays": ["200ms"]}');
SELECT eo.subscribe('both.*', 'live');
SELECT eo.create_destination('note', 'notify', '{"channel": "both_note"}');
SELECT eo.subscribe('both.*', 'note');
});
$node->safe_psql('postgres',
	q{SELECT eo.publish('both.x', jsonb_build_object('i', g), 'key' || (g % 4)) FROM generate_series(1, 40) g});
ok( $node->poll_query_until(
		'postgres', q{
SELECT bool_and(delivered_total = 40) FROM eo.stats WHERE destination IN ('live', 'note')}),
	'the notify and the live kafka destination deliver everything');
ok( $node->poll_query_until(
		'postgres', q{
SELECT delivered_total = 0 AND retrying > 0 AND last_error IS NOT NULL
  FROM eo.stats WHERE destination = 'unreachable'}),
	'the destination whose brokers are down delivers nothing and retries');
note 'unreachable: '
  . $node->safe_psql('postgres', q{SELECT last_error FROM eo.stats WHERE destination = 'unreachable'});
$down->command("up $_") for 1 .. 3;
ok( $node->poll_query_until(
		'postgres', q{
SELECT delivered_total = 40 AND pending + in_flight + retrying + dead = 0
  FROM eo.stats WHERE destination = 'unreachable'}),
	'once the brokers are back, the held-back messages are delivered');
my @got = $down->records('both.x', min => 40, timeout => 30);
my %ids = map { $_->{id} => 1 } @got;
is(scalar(keys %ids), 40, 'Kafka has each of the 40 messages');
$down->stop;

# --- Retries on schedule, then dead.  Nothing listens on the port.
my $closed = PostgreSQL::Test::Cluster::get_free_port();
$node->safe_psql(
	'postgres', qq{
SELECT eo.create_destination('sched', 'kafka',
    '{"bootstrap_servers": "127.0.0.1:$closed", "retry_delays": ["2s", "4s"], "max_attempts": 3,
      "properties": {"message.timeout.ms": 1000}}');
SELECT eo.subscribe('sched.*', 'sched');
});
my $sched = $node->safe_psql('postgres', q{SELECT eo.publish('sched.x', '{}'::jsonb, 's1')});
my @gaps;
for my $attempt (1, 2)
{
	ok( $node->poll_query_until(
			'postgres', qq{
SELECT attempts = $attempt AND state = 'retrying'
  FROM eo.delivery WHERE message_id = '$sched'}),
		"attempt $attempt failed, a retry is scheduled");
	push @gaps,
	  $node->safe_psql('postgres',
		qq{SELECT extract(epoch FROM next_attempt_at - last_attempt_at) FROM eo.delivery WHERE message_id = '$sched'});
}
note sprintf('retry delays scheduled: %.2f s, %.2f s', @gaps);
# last_attempt_at is the now() of the relay's recording transaction, a
# little off the moment the failure was seen: 0.1 s of slack.
ok($gaps[0] >= 1.5 && $gaps[0] <= 2.5, 'the first retry is due 2 s (+-20%) after the failure');
ok($gaps[1] >= 3.1 && $gaps[1] <= 4.9, 'the second retry is due 4 s (+-20%) after the failure');
ok($node->poll_query_until('postgres', qq{SELECT state = 'dead' FROM eo.delivery WHERE message_id = '$sched'}),
	'after max_attempts the message is dead');
like(delivery_of('sched', $sched), qr/^3\|dead\|.+/, 'three attempts, with the last error');
note 'sched: ' . delivery_of('sched', $sched);
# From the first failure to the third attempt's: at least 1.6 + 3.2 s of
# delays and two timeouts of 1 s (less 0.3 s for the recording times).
is( $node->safe_psql(
		'postgres', qq{
SELECT last_attempt_at - created_at >= interval '6.5 s' FROM eo.delivery WHERE message_id = '$sched'}),
	't', 'the attempts were not made earlier than the schedule allows');

# --- A fast shutdown while the relay waits for brokers that never answer
# (a listen backlog nobody accepts from).
my @silent = map {
	IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
	  or die "cannot listen: $!"
} 1 .. 3;
my $silent = join(',', map { '127.0.0.1:' . $_->sockport } @silent);
$node->safe_psql(
	'postgres', qq{
SELECT eo.create_destination('silent', 'kafka',
    '{"bootstrap_servers": "$silent", "retry_delays": ["100ms"], "max_attempts": 1000}');
SELECT eo.subscribe('slow.*', 'silent');
SELECT eo.publish('slow.x', jsonb_build_object('i', g), 'k' || (g % 5)) FROM generate_series(1, 20) g;
});
ok( $node->poll_query_until('postgres',
		q{SELECT in_flight > 0 FROM eo.stats WHERE destination = 'silent'}),
	'messages to silent brokers are in flight');
my $t0 = Time::HiRes::time();
$node->stop('fast');
my $took = Time::HiRes::time() - $t0;
cmp_ok($took, '<', 10, sprintf('a fast shutdown takes %.1f s with the brokers silent', $took));
unlike(slurp_file($node->logfile), qr/terminated by signal|server process .* was terminated/,
	'no crash');

$kafka->stop;
done_testing();
