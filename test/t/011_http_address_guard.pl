# The relay refuses link-local and cloud metadata addresses while
# eo.http_allow_link_local is off (the default), when it sends, not only
# when destinations are created (sql/http_address_guard.sql covers that):
#
#   (a) A destination for http://169.254.169.254/ made while the setting
#       was on: once it is off again (reload), its delivery fails with an
#       error naming the refused address, the reason and the setting, is
#       recorded in eo.http_attempt like a connection error (no status),
#       and the relay goes on delivering to a receiver on 127.0.0.1.
#   (b) The check is made on the address actually connected to: with a
#       proxy at 169.254.169.254 in the server's environment (http_proxy),
#       a destination whose URL is a receiver on 127.0.0.1 (a host every
#       check of the URL accepts) is refused when libcurl is about to open
#       the connection, and the receiver gets nothing; started again
#       without the proxy, the server delivers what waited.
#   (c) A bad eo.http_allowed_hosts in postgresql.conf ("127.0.0.1:port",
#       accepted before entries were checked) is reported at server start
#       and kept, matching nothing, instead of falling back to empty, which
#       would allow every host.
#
# Nothing is sent to 169.254.169.254: in (a) the request is not even built,
# in (b) the connection is refused before a socket exists.  What these
# tests cannot show: a host name that resolves (or re-resolves, DNS
# rebinding) to such an address, which needs control of a resolver; (b)
# shows that the address checked is the one libcurl connects to after
# resolution, which is where such a name ends up too.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EOWebhook;

# How long a part may wait.
my $settle = 30;

# No proxy from the environment of the test run.
delete $ENV{$_} for qw(http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY
  no_proxy NO_PROXY);

my $node = eo_http_node('http_address_guard');
my $local = EOWebhook->new(name => 'local');

# poll($query): poll_query_until with a bound of its own.
sub poll
{
	my ($query) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $settle;
	return $node->poll_query_until('postgres', $query);
}

# publish($topic): publish one message; its id.
sub publish
{
	my ($topic) = @_;
	return $node->safe_psql('postgres', "SELECT eo.publish('$topic', '{}'::jsonb)");
}

my $refusal = 'refused to connect to 169.254.169.254: it is a link-local address, '
  . 'and eo.http_allow_link_local is off';

eo_create_http_destination($node, 'postgres', 'local',
	{ url => $local->url('/local'), retry_delays => ['100ms'], max_attempts => 1000 },
	'local.*');

######################################################################
# (a) a link-local destination made while the setting was on
######################################################################

# Refused by default.
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT eo.create_destination('meta', 'http', '{"url": "http://169.254.169.254/latest/meta-data/"}')});
like($stderr, qr/ERROR:  host "169\.254\.169\.254" is a link-local address/,
	'(a) by default a destination for 169.254.169.254 cannot be created');

# While the setting is on, eo.http_allowed_hosts lists only 169.254.169.254,
# so that the relay cannot send to 127.0.0.1 with that configuration: once
# the receiver on 127.0.0.1 gets a message sent after both were reset in
# one reload, the relay runs without the setting (and never reads it on
# again: the file no longer says so).  No message is routed to the link-local
# destination before that.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET eo.http_allow_link_local = on;
	ALTER SYSTEM SET eo.http_allowed_hosts = '169.254.169.254';
	SELECT pg_reload_conf()});
ok(poll(q{SELECT current_setting('eo.http_allow_link_local') = 'on'
            AND current_setting('eo.http_allowed_hosts') = '169.254.169.254'}),
	'(a) eo.http_allow_link_local is on');
eo_create_http_destination($node, 'postgres', 'meta',
	{ url => 'http://169.254.169.254/latest/meta-data/', max_attempts => 1, timeout_ms => 1000 },
	'meta.*');
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET eo.http_allow_link_local;
	ALTER SYSTEM RESET eo.http_allowed_hosts;
	SELECT pg_reload_conf()});
ok(poll(q{SELECT current_setting('eo.http_allow_link_local') = 'off'}),
	'(a) eo.http_allow_link_local is off again');

publish('local.probe');
ok($local->wait_for(sub { $_[0]{received} >= 1 }, $settle),
	'(a) the relay delivers to 127.0.0.1 (it has read the reset settings)');
my $relay = eo_relay_pid($node, 'postgres');

my $meta = publish('meta.a');
ok(poll(qq{SELECT EXISTS (SELECT 1 FROM eo.delivery WHERE message_id = '$meta' AND state = 'dead')}),
	'(a) the delivery to 169.254.169.254 fails (dead after max_attempts 1)');
is( $node->safe_psql('postgres',
		qq{SELECT count(*) || ' ' || coalesce(status_code::text, 'none') || ' ' || error
		     FROM eo.http_attempt WHERE message_id = '$meta'
		    GROUP BY status_code, error}),
	"1 none $refusal",
	'(a) one attempt in eo.http_attempt, no status, the refusal as its error');
is( $node->safe_psql('postgres',
		qq{SELECT last_error FROM eo.delivery WHERE message_id = '$meta'}),
	$refusal, '(a) eo.delivery shows the same error');
like($node->safe_psql('postgres', q{SELECT last_error FROM eo.stats WHERE destination = 'meta'}),
	qr/eo\.http_allow_link_local/, '(a) eo.stats names the setting');

# The relay goes on: the same worker delivers to 127.0.0.1.
my @more = map { publish("local.after.$_") } 1 .. 3;
ok(eo_wait_drained($node, 'postgres', 'local', $settle), '(a) later messages to 127.0.0.1 are delivered');
is(eo_relay_pid($node, 'postgres'), $relay, '(a) by the same relay worker (nothing crashed)');
eo_check_exactly_once($node, 'postgres', $local, q{topic LIKE 'local.%'}, '(a) 127.0.0.1');

######################################################################
# (b) the address connected to: a proxy at 169.254.169.254
######################################################################

my $received = $local->stats->{received};
$node->stop;
{
	local $ENV{http_proxy} = 'http://169.254.169.254:3128';
	$node->start;
}
my $proxied = publish('local.proxied');
ok(poll(qq{SELECT count(*) >= 2 FROM eo.http_attempt
            WHERE message_id = '$proxied' AND status_code IS NULL AND error = '$refusal'}),
	'(b) through a proxy at 169.254.169.254, sending to 127.0.0.1 is refused when connecting');
# Retried every 100 ms: the delivery is retrying, or its next attempt is
# on its way (in_flight); never dead or delivered.
is($node->safe_psql('postgres',
		qq{SELECT state IN ('retrying', 'in_flight') FROM eo.delivery WHERE message_id = '$proxied'}),
	't', '(b) ... as a failed attempt that is retried');
is($local->stats->{received}, $received, '(b) the receiver got nothing');

# Without the proxy, what waited is delivered.
$node->stop;
$node->start;
ok(eo_wait_drained($node, 'postgres', 'local', $settle),
	'(b) started without the proxy, the server delivers the message');
eo_check_exactly_once($node, 'postgres', $local, q{topic LIKE 'local.%'}, '(b) after the proxy');

######################################################################
# (c) a bad eo.http_allowed_hosts in postgresql.conf at server start
######################################################################

# Refused, the setting would fall back to empty (every host); kept, its
# entry matches nothing, as before entries were checked: the server stays
# closed, and says why.
$node->stop;
my $bad = '127.0.0.1:' . $local->port;
$node->append_conf('postgresql.conf', "eo.http_allowed_hosts = '$bad'\n");
my $log_offset = -s $node->logfile;
$node->start;
ok( $node->log_contains(
		qr/WARNING:  eo\.http_allowed_hosts has an entry that matches no host\n.*DETAIL:  "\Q$bad\E" is not a host name or address: entries have no port/s,
		$log_offset),
	'(c) a host:port entry in postgresql.conf is reported at start');
is($node->safe_psql('postgres', 'SHOW eo.http_allowed_hosts'), $bad, '(c) ... and kept');
($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT eo.check_destination_options('http', '{\"url\": \"" . $local->url('/local') . "\"}')");
like($stderr, qr/ERROR:  host "127\.0\.0\.1" is not in eo\.http_allowed_hosts/,
	'(c) it matches nothing: the receiver on 127.0.0.1 is not allowed');
($ret, $stdout, $stderr) = $node->psql('postgres', "ALTER SYSTEM SET eo.http_allowed_hosts = '$bad'");
like($stderr, qr/ERROR:  invalid value for parameter "eo\.http_allowed_hosts"/,
	'(c) ALTER SYSTEM refuses the same value');
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET eo.http_allowed_hosts = '127.0.0.1'; SELECT pg_reload_conf()});
ok(poll(q{SELECT current_setting('eo.http_allowed_hosts') = '127.0.0.1'}),
	'(c) corrected with ALTER SYSTEM and a reload');
is( $node->safe_psql('postgres',
		"SELECT eo.check_destination_options('http', '{\"url\": \"" . $local->url('/local') . "\"}') IS NOT NULL"),
	't', '(c) ... the receiver on 127.0.0.1 is allowed again');

ok(!$node->log_contains('terminated by signal'), 'no server process crashed');

$local->stop;
$node->stop;
done_testing();
