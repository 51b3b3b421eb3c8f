# The HTTP sink against what a network does to requests:
#
#   (a) TLS: a receiver with a self-signed certificate is refused while
#       tls_verify is on (the error says why, nothing arrives), and gets
#       the signed webhook once tls_verify is off.
#   (b) DNS: a host name that does not resolve is an error of the attempt,
#       retried, then dead after max_attempts.
#   (c) Redirects are not followed: a 302 is a failed attempt, retried.
#   (d) Postmaster death with a request in flight: the relay, waiting on
#       the request's socket, exits at once; after a restart the delivery
#       is sent again with the same webhook-id.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EOWebhook;

my $settle = 30;
my $node = eo_http_node('http_tls');
my $secret = eo_webhook_secret();

# A self-signed certificate for 127.0.0.1 (openssl from Debian).
my $dir = PostgreSQL::Test::Utils::tempdir();
my ($cert, $key) = ("$dir/cert.pem", "$dir/key.pem");
my ($out, $err) = run_command([
	'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
	'-days', '1', '-subj', '/CN=127.0.0.1',
	'-addext', 'subjectAltName=IP:127.0.0.1',
	'-keyout', $key, '-out', $cert ]);
ok(-s $cert && -s $key, 'a self-signed certificate was made');

my $r = EOWebhook->new(name => 'tls', secrets => [$secret], tls => [ $cert, $key ]);

# attempts($dest): "status|error" of every attempt to $dest, oldest first.
sub attempts
{
	my ($dest) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT coalesce(a.status_code::text, '') || '|' || coalesce(a.error, '')
		  FROM eo.http_attempt a JOIN eo.destination d ON d.id = a.destination_id
		 WHERE d.name = '$dest' ORDER BY a.attempted_at});
}

sub wait_attempts
{
	my ($dest, $n) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $settle;
	return $node->poll_query_until('postgres', qq{
		SELECT count(*) >= $n FROM eo.http_attempt a JOIN eo.destination d ON d.id = a.destination_id
		 WHERE d.name = '$dest'});
}

# ---------------------------------------------------------------- (a) TLS
eo_create_http_destination($node, 'postgres', 'tls',
	{ url => $r->tls_url('/hooks'), signing_secret => $secret,
	  retry_delays => ['200ms'], max_attempts => 100 },
	'tls.*');
$node->safe_psql('postgres', "SELECT eo.publish('tls.test', '{\"n\": 1}'::jsonb)");
ok(wait_attempts('tls', 2), '(a) attempts are made and retried');
my @a = split /\n/, attempts('tls');
like($a[0], qr/^\|.*certificate/i, '(a) verification refuses the self-signed certificate: ' . $a[0]);
is($r->stats->{received}, 0, '(a) nothing reached the receiver while tls_verify is on');

$node->safe_psql('postgres', qq{
	SET log_statement = none;
	SELECT eo.alter_destination('tls', jsonb_build_object(
		'url', '@{[ $r->tls_url('/hooks') ]}', 'signing_secret', '$secret',
		'retry_delays', jsonb_build_array('200ms'), 'max_attempts', 100, 'tls_verify', false))});
ok(eo_wait_drained($node, 'postgres', 'tls', $settle), '(a) with tls_verify off it is delivered');
my $s = $r->stats;
is($s->{applied}, 1, '(a) the receiver applied the webhook once');
is($s->{bad_signature}, 0, '(a) its signature verified');

# ---------------------------------------------------------------- (b) DNS
eo_create_http_destination($node, 'postgres', 'nowhere',
	{ url => 'http://eo-processing-test.invalid/hooks', retry_delays => ['100ms'],
	  max_attempts => 2, timeout_ms => 5000 },
	'dns.*');
$node->safe_psql('postgres', "SELECT eo.publish('dns.test', '{}'::jsonb)");
{
	local $PostgreSQL::Test::Utils::timeout_default = $settle;
	ok($node->poll_query_until('postgres',
		"SELECT dead = 1 FROM eo.stats WHERE destination = 'nowhere'"),
		'(b) an unresolvable host: dead after max_attempts');
}
@a = split /\n/, attempts('nowhere');
is(scalar @a, 2, '(b) two attempts were recorded');
like($a[0], qr/^\|.*(resolve|host)/i, '(b) the error says the name did not resolve: ' . $a[0]);

# ------------------------------------------------------------ (c) redirect
my $plain = EOWebhook->new(name => 'plain');
eo_create_http_destination($node, 'postgres', 'redirect',
	{ url => $plain->url('/hooks'), retry_delays => ['200ms'], max_attempts => 100 },
	'redirect.*');
$plain->force_status(302);
$node->safe_psql('postgres', "SELECT eo.publish('redirect.test', '{}'::jsonb)");
ok(wait_attempts('redirect', 2), '(c) a 302 is retried');
@a = split /\n/, attempts('redirect');
is($a[0], '302|HTTP status 302', '(c) the 302 was recorded as a failed attempt, not followed');
$plain->force_status(undef);
ok(eo_wait_drained($node, 'postgres', 'redirect', $settle), '(c) delivered once the receiver answers 200');
is($plain->stats->{applied}, 1, '(c) applied once');

# --------------------------------------------------- (d) postmaster death
$plain->reset;
$plain->faults({ sleep => 1, sleep_seconds => 60 });
$node->safe_psql('postgres', qq{
	SET log_statement = none;
	SELECT eo.alter_destination('redirect', jsonb_build_object(
		'url', '@{[ $plain->url('/hooks') ]}', 'timeout_ms', 120000,
		'retry_delays', jsonb_build_array('200ms'), 'max_attempts', 100))});
my $id = $node->safe_psql('postgres', "SELECT eo.publish('redirect.pm', '{}'::jsonb)");
ok($plain->wait_for(sub { $_[0]{in_flight} >= 1 }, $settle), '(d) a request is in flight (the receiver sleeps)');
my $relay = eo_relay_pid($node, 'postgres');
ok($relay, "(d) the relay runs (pid $relay)");
my @server = eo_server_pids($node);
$node->kill9;
my $t0 = Time::HiRes::time();
ok(!eo_wait_pids_gone([$relay], 20),
	'(d) the relay exits when the postmaster dies, with a request in flight');
note sprintf('(d) the relay was gone %.2f s after the postmaster', Time::HiRes::time() - $t0);

# The server is restarted: the delivery that was in flight is sent again.
$plain->faults({});
eo_poll_start($node, \@server);
ok(eo_wait_drained($node, 'postgres', 'redirect', $settle), '(d) after a restart the delivery completes');
my @seen = grep { $_->{id} eq $id } @{ $plain->requests(0) };
cmp_ok(scalar @seen, '>=', 2, '(d) the message was sent again with the same webhook-id (' . scalar(@seen) . ' requests)');
is($plain->stats->{applied}, 1, '(d) and applied once');

$r->stop;
$plain->stop;
$node->stop;
done_testing();
