# The relay's own HTTP/1.1 client (src/http_wire.c, src/http_response.c)
# against a scripted peer (test/http_peer.py) that answers in every way the
# client must read right or refuse:
#
#   (a) The request: "POST <path>?<query> HTTP/1.1", Host with the port,
#       Content-Length equal to the body, the body the payload, webhook-id
#       the message id, and a destination's empty header sent empty.  A
#       host name (localhost) is resolved and connected to.
#   (b) Answers that are delivered: Content-Length, chunked (with an
#       extension and a trailer), split into single bytes, 100 and 103
#       before a 201, HTTP/1.0 ending at the close, Connection: close.
#   (c) Keep-alive: with concurrency 1, 20 messages travel on one
#       connection; after "Connection: close", HTTP/1.0, or bytes after the
#       answer's end, each message opens a new one (a connection is reused
#       only when the answer's end was known exactly).
#   (d) A receiver that silently closes each connection after answering:
#       everything delivered, no attempt failed (the relay sees the close
#       of an idle connection, or sends once more on a new connection when
#       the receiver closed a reused one before answering).
#   (e) Answers it refuses, each an attempt that failed with its own
#       error, the message dead after max_attempts 1: no answer at all, a
#       folded header line, a line that is no status line, two different
#       Content-Length values, a header section over 64 kB, no answer
#       within timeout_ms.  503 with Retry-After is a retry, not a failure
#       of reading.
#   (f) eo.http_client = libcurl: the same delivered answers pass through
#       libcurl, and a refused answer fails with libcurl's wording, not the
#       own client's (so the setting is what chose the client).

use strict;
use warnings FATAL => 'all';

use IPC::Run ();
use JSON::PP ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOWebhook;

my $json = JSON::PP->new;
my $node = eo_http_node('http_client', "max_connections = 20\n");

# The peer.
my $peer_dir = PostgreSQL::Test::Utils::tempdir();
my $peer_log = "$peer_dir/requests.jsonl";
my $peer_out = "${PostgreSQL::Test::Utils::log_path}/http_peer.out";
my $peer = IPC::Run::start(
	[ 'python3', "$FindBin::RealBin/../http_peer.py",
		'--port-file' => "$peer_dir/port", '--log' => $peer_log ],
	'<', \undef, '>>', $peer_out, '2>>', $peer_out);
my $deadline = Time::HiRes::time() + $PostgreSQL::Test::Utils::timeout_default;
Time::HiRes::usleep(20_000) until -s "$peer_dir/port" || Time::HiRes::time() > $deadline;
my $port = PostgreSQL::Test::Utils::slurp_file("$peer_dir/port");
chomp $port;
like($port, qr/^\d+$/, 'the peer listens');
END { $peer->kill_kill if $peer; }

# The peer's requests for one scenario (its path), in arrival order.
sub requests_of
{
	my ($kind) = @_;
	return [] unless -e $peer_log;
	return [ grep { $_->{target} =~ m{^/$kind\b} }
		  map { $json->decode($_) }
		  split /\n/, PostgreSQL::Test::Utils::slurp_file($peer_log) ];
}

# destination($name, $kind, %options): an http destination for a scenario,
# subscribed to "$name.*".
sub destination
{
	my ($name, $kind, %opt) = @_;
	eo_create_http_destination($node, 'postgres', $name,
		{
			url => "http://127.0.0.1:$port/$kind?dest=$name",
			max_attempts => 1,
			log_attempts => 'all',
			timeout_ms => 3000,
			%opt
		},
		"$name.*");
	return;
}

# publish($topic, $n): $n messages in one transaction; their ids.
sub publish
{
	my ($topic, $n) = @_;
	return split /\n/,
	  $node->safe_psql('postgres',
		"SELECT eo.publish('$topic', jsonb_build_object('i', g)) FROM generate_series(1, $n) g");
}

# Wait until the destination has nothing pending, in flight or retrying.
sub settled
{
	my ($dest) = @_;
	return $node->poll_query_until('postgres', qq{
		SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)
		   AND (SELECT pending + in_flight + retrying = 0 FROM eo.stats
		         WHERE destination = '$dest')});
}

sub stat_of
{
	my ($dest, $col) = @_;
	return $node->safe_psql('postgres',
		"SELECT $col FROM eo.stats WHERE destination = '$dest'");
}

# The distinct errors of a destination's attempts.
sub errors_of
{
	my ($dest) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT string_agg(DISTINCT coalesce(a.error, '<none>'), ' | ')
		  FROM eo.http_attempt a JOIN eo.destination d ON d.id = a.destination_id
		 WHERE d.name = '$dest'});
}

# Number of distinct connections a scenario's requests came on.
sub connections_of
{
	my ($kind) = @_;
	my %c = map { $_->{conn} => 1 } @{ requests_of($kind) };
	return scalar keys %c;
}

######################################################################
# (a) the request, (b) answers that are delivered
######################################################################

destination('req', 'length', concurrency => 1, headers => { 'X-Empty' => '', 'X-Team' => 'payments' });
my @ids = publish('req.a', 20);
ok(settled('req'), '(a) 20 messages to the "length" answer settled');
is(stat_of('req', 'delivered_total'), '20', '(b) Content-Length: all delivered');
my $reqs = requests_of('length');
is(scalar @$reqs, 20, '(a) the peer read 20 requests');
my $r = $reqs->[0];
is("$r->{method} $r->{target} $r->{version}", 'POST /length?dest=req HTTP/1.1', '(a) the request line');
is($r->{headers}{host}, "127.0.0.1:$port", '(a) Host names the port');
ok((!grep { !$_->{length_ok} } @$reqs), '(a) every Content-Length matches its body');
is($r->{headers}{'x-team'}, 'payments', '(a) a destination header');
ok(exists $r->{headers}{'x-empty'} && $r->{headers}{'x-empty'} eq '', '(a) an empty destination header is sent empty');
my %sent = map { $_->{headers}{'webhook-id'} => $_->{body} } @$reqs;
my %want = map { $_ => 1 } @ids;
is(scalar(grep { $want{$_} } keys %sent), 20, '(a) webhook-id carries the message ids');
is($json->decode($reqs->[0]{body})->{i} =~ /^\d+$/ ? 'ok' : 'bad', 'ok', '(a) the body is the payload');
is(connections_of('length'), 1, '(c) concurrency 1: all 20 on one keep-alive connection');

for my $kind (qw(chunked split interim http10 close extra))
{
	destination("ok_$kind", $kind, concurrency => 1);
	publish("ok_$kind.a", 5);
	ok(settled("ok_$kind"), "(b) $kind: settled");
	is(stat_of("ok_$kind", 'delivered_total'), '5', "(b) $kind: 5 delivered");
	is(errors_of("ok_$kind"), '<none>', "(b) $kind: no attempt failed");
}
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT a.response_body, ',')
	  FROM eo.http_attempt a JOIN eo.destination d ON d.id = a.destination_id
	 WHERE d.name = 'ok_chunked'}), 'abcdefg', '(b) the chunked body is read without its framing');
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT a.status_code::text, ',')
	  FROM eo.http_attempt a JOIN eo.destination d ON d.id = a.destination_id
	 WHERE d.name = 'ok_interim'}), '201', '(b) the final status after 100 and 103');
is(connections_of('chunked'), 1, '(c) chunked answers keep the connection');
is(connections_of('split'), 1, '(c) answers split into single bytes keep the connection');
is(connections_of($_), 5, "(c) $_: a new connection per message") for qw(close http10 extra);

# A host name: resolved off the relay's loop (getaddrinfo_a), from
# /etc/hosts; where localhost is also ::1, on which the peer does not
# listen, the next address is tried.
eo_create_http_destination($node, 'postgres', 'named',
	{ url => "http://localhost:$port/length?dest=named", max_attempts => 1, log_attempts => 'all' },
	'named.*');
publish('named.a', 3);
ok(settled('named'), '(a) a host name: settled');
is(stat_of('named', 'delivered_total'), '3', '(a) a host name: delivered');
is((requests_of('length'))->[-1]{headers}{host}, "localhost:$port", '(a) ... with the name in Host');

######################################################################
# (d) a receiver that closes idle connections without a word
######################################################################

destination('idle', 'idledrop', concurrency => 2);
publish('idle.a', 30);
ok(settled('idle'), '(d) settled');
is(stat_of('idle', 'delivered_total'), '30', '(d) all 30 delivered');
is(errors_of('idle'), '<none>', '(d) no attempt failed');

######################################################################
# (e) answers it refuses
######################################################################

my %refused = (
	nothing => qr/closed the connection without answering/,
	fold => qr/folds a header line/,
	garbage => qr/not an HTTP\/1\.x response/,
	twolengths => qr/conflicting Content-Length/,
	bigheader => qr/larger than 64 kB/,
	silent => qr/no complete answer within 1000 ms/,
);
for my $kind (sort keys %refused)
{
	destination("bad_$kind", $kind, timeout_ms => 1000);
	publish("bad_$kind.a", 2);
}
for my $kind (sort keys %refused)
{
	ok(settled("bad_$kind"), "(e) $kind: settled");
	is(stat_of("bad_$kind", 'dead'), '2', "(e) $kind: both messages dead after one attempt");
	like(errors_of("bad_$kind"), $refused{$kind}, "(e) $kind: the error says why");
}
is(stat_of('bad_nothing', 'delivered_total'), '0', '(e) nothing counted delivered');

destination('busy', 'retry', max_attempts => 2, retry_delays => ['1h']);
publish('busy.a', 1);
ok(settled('busy'), '(e) 503: settled');
is($node->safe_psql('postgres', q{
	SELECT count(*) || ' attempts, ' || string_agg(DISTINCT status_code::text, ',') || ', '
	       || (max(attempted_at) - min(attempted_at) < interval '30 s')
	  FROM eo.http_attempt a JOIN eo.destination d ON d.id = a.destination_id
	 WHERE d.name = 'busy'}), '2 attempts, 503, true',
	'(e) 503 with Retry-After: 1: the second attempt came within seconds, not after the 1 h schedule');

######################################################################
# (f) eo.http_client = libcurl
######################################################################

$node->safe_psql('postgres', q{ALTER SYSTEM SET eo.http_client = 'libcurl'; SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', q{SELECT current_setting('eo.http_client') = 'libcurl'}),
	'(f) the setting is read');
for my $kind (qw(chunked interim))
{
	destination("curl_$kind", $kind, concurrency => 1);
	publish("curl_$kind.a", 3);
	ok(settled("curl_$kind"), "(f) $kind through libcurl: settled");
	is(stat_of("curl_$kind", 'delivered_total'), '3', "(f) $kind through libcurl: delivered");
}
destination('curl_garbage', 'garbage');
publish('curl_garbage.a', 1);
ok(settled('curl_garbage'), '(f) garbage through libcurl: settled');
my $curl_error = errors_of('curl_garbage');
unlike($curl_error, $refused{garbage}, "(f) ... failed with libcurl's wording ($curl_error)");
isnt($curl_error, '<none>', '(f) ... but failed');

$node->stop;
done_testing();
