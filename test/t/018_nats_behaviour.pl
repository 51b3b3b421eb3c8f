# Behaviour of the nats sink against real servers (a three-node JetStream
# cluster on loopback): what a message carries into the stream; a message
# the stream already holds under the same Nats-Msg-Id is acknowledged as a
# duplicate and counts as delivered (stored once); a subject captured by
# another stream than the option "stream" is dead at once; no stream
# capturing the subject ("no responders") is retried until max_attempts;
# the token never reaches the server log or eo.stats; and a fast shutdown
# stays prompt while the relay waits for servers that never answer.

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
use EONats;

my $nats = EONats->new("$PostgreSQL::Test::Utils::tmp_check/nats_behaviour");
$nats->tool('create', 'EVENTS', 'ev.>', 3, 600);
$nats->tool('create', 'OTHER', 'other.>', 1, 600);

my $node = eo_new_node('nats_behaviour', conf => "eo.relay_naptime = 1\n");
my $servers = join(', ', map { qq{"$_"} } $nats->url_list);
# Statement logging off while secrets are configured (the README's advice).
$node->safe_psql(
	'postgres', qq{
SET log_statement = 'none';
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('js', 'nats',
    '{"servers": [$servers], "stream": "EVENTS", "token": "tok-SECRET-4711",
      "retry_delays": ["100ms"], "timeout_ms": 3000}');
SELECT eo.subscribe('ev.*', 'js');
SELECT eo.create_destination('wrong', 'nats', '{"servers": [$servers], "stream": "EVENTS"}');
SELECT eo.subscribe('other.*', 'wrong');
SELECT eo.create_destination('nostream', 'nats',
    '{"servers": [$servers], "retry_delays": ["100ms"], "max_attempts": 3}');
SELECT eo.subscribe('none.*', 'nostream');
});

# What a message carries.
my $id = $node->safe_psql('postgres',
	q{SELECT eo.publish('ev.created', '{"n": 1}'::jsonb, 'k1', '{"X-Trace": "t1"}')});
ok(eo_wait_drained($node, 'postgres'), 'the message is delivered');
my @lines = split /\n/, $nats->tool('dump', 'EVENTS');
is(scalar @lines, 1, 'the stream holds one message');
my ($seq, $got_id, $key, $subject, $stored_at, $topic, $payload) = split / /, $lines[0], 7;
is($got_id, $id, 'Nats-Msg-Id is the message id');
is($key, 'k1', 'eo-key is the key');
is($subject, 'ev.created', 'the subject is the topic');
is($topic, 'ev.created', 'eo-topic is the topic');
is($payload, '{"n": 1}', 'the body is the payload');
is( $node->safe_psql('postgres', q{SELECT delivered_total, last_error IS NULL FROM eo.stats WHERE destination = 'js'}),
	'1|t', 'eo.stats counts the delivery');

# A duplicate: the stream already holds a message with this id.
eo_set_relay_enabled($node, 'off', 'postgres');
my $dup = $node->safe_psql('postgres', q{SELECT eo.publish('ev.dup', '{"n": 2}'::jsonb)});
like($nats->tool('pub', 'ev.dup', $dup, 'stored-before'), qr/^2$/, 'the same id published beforehand');
eo_set_relay_enabled($node, 'on');
ok(eo_wait_drained($node, 'postgres'), 'the duplicate is acknowledged');
is($node->safe_psql('postgres', q{SELECT delivered_total, dead FROM eo.stats WHERE destination = 'js'}),
	'2|0', 'an acknowledgement that says duplicate counts as delivered');
@lines = split /\n/, $nats->tool('dump', 'EVENTS');
is(scalar @lines, 2, 'the stream stored it once');
like($lines[1], qr/^2 \Q$dup\E .* stored-before$/, 'the copy stored is the first one');

# Captured by another stream than "stream": dead at once.
$node->safe_psql('postgres', q{SELECT eo.publish('other.x', '{}'::jsonb)});
ok( $node->poll_query_until('postgres', q{SELECT dead = 1 FROM eo.stats WHERE destination = 'wrong'}),
	'a subject of another stream is dead');
like(
	$node->safe_psql('postgres',
		q{SELECT d.attempts || ' ' || d.last_error FROM eo.delivery d JOIN eo.destination t ON t.id = d.destination_id WHERE t.name = 'wrong'}),
	qr/^1 .*10060/, 'at its first attempt, with JetStream error 10060');
is($nats->tool('count', 'OTHER'), "0\n", 'nothing reached the other stream');

# No stream captures the subject: retried, then dead after max_attempts.
$node->safe_psql('postgres', q{SELECT eo.publish('none.x', '{}'::jsonb)});
ok( $node->poll_query_until('postgres', q{SELECT dead = 1 FROM eo.stats WHERE destination = 'nostream'}),
	'no responders: retried until max_attempts');
like(
	$node->safe_psql('postgres',
		q{SELECT d.attempts || ' ' || d.last_error FROM eo.delivery d JOIN eo.destination t ON t.id = d.destination_id WHERE t.name = 'nostream'}),
	qr/^3 no stream captures the subject/, 'three attempts, and why');

# The token is nowhere to be seen.
is($node->safe_psql('postgres', q{SELECT count(*) FROM eo.destinations WHERE options::text LIKE '%tok-' || 'SECRET%'}),
	'0', 'eo.destinations hides the token');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM eo.stats WHERE coalesce(last_error, '') LIKE '%tok-' || 'SECRET%'}),
	'0', 'eo.stats does not show it');

# Servers that accept connections and never answer (a listen backlog that
# nobody accepts from): the relay waits for them without holding up a fast
# shutdown.
my @silent = map {
	IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
	  or die "cannot listen: $!"
} 1 .. 3;
my $silent = join(', ', map { '"nats://127.0.0.1:' . $_->sockport . '"' } @silent);
$node->safe_psql(
	'postgres', qq{
SELECT eo.create_destination('silent', 'nats', '{"servers": [$silent], "timeout_ms": 1000, "retry_delays": ["100ms"]}');
SELECT eo.subscribe('slow.*', 'silent');
SELECT eo.publish('slow.x', jsonb_build_object('i', g), 'k' || (g % 5)) FROM generate_series(1, 20) g;
});
ok( $node->poll_query_until('postgres',
		q{SELECT retrying > 0 FROM eo.stats WHERE destination = 'silent'}),
	'messages to silent servers are retried');
my $t0 = Time::HiRes::time();
$node->stop('fast');
my $took = Time::HiRes::time() - $t0;
cmp_ok($took, '<', 10, sprintf('a fast shutdown takes %.1f s with the servers silent', $took));

my $log = slurp_file($node->logfile);
unlike($log, qr/tok-SECRET/, 'the server log never shows the token');
unlike($log, qr/terminated by signal|server process .* was terminated/, 'no crash');

$nats->stop;
done_testing();
