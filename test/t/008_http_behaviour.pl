# Behaviour of the HTTP sink, one property per part, against webhook
# receivers (test/webhook_receiver.py) on 127.0.0.1:
#
#   (a) 410 Gone disables the destination (eo.stats shows why); its
#       deliveries wait, not dead; eo.alter_destination() enables it again.
#   (b) Retry-After of a 429 or 503 decides when the next attempt comes.
#   (c) Connection refused: attempts without a status but with an error,
#       dead after max_attempts; eo.redrive() puts them back.
#   (d) eo.http_allowed_hosts refuses new destinations and stops sending
#       to existing ones, with an error that names the setting.
#   (e) A slow destination does not hold back a fast one.
#   (f) No more requests in flight to a destination than its concurrency.
#   (g) pg_ctl stop -m fast does not wait for requests in flight; after the
#       restart they are sent again with the same webhook-id.
#   (h) kill -9 of the relay worker with requests in flight (the postmaster
#       restarts the server, as after any crash of a backend): afterwards
#       everything is delivered, duplicates are absorbed.
#   (i) Signing secrets and header values appear neither in the server log
#       nor in eo.stats / eo.destinations.
#   (j) A window whose messages are all held behind a failing key is
#       recorded: later messages of other keys do not wait for the retry.
#   (k) The relay reuses its libcurl handles: a request sent on a handle a
#       request of another destination used before carries none of that
#       request's headers.
#
# The relay sleeps for an hour unless woken: every retry must be scheduled.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP ();
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOWebhook;

# How long a part may wait for its deliveries.
my $settle = 30;

# (h) kills the relay worker: the postmaster must restart the server.
my $node = eo_http_node('http_behaviour', "max_connections = 30\nrestart_after_crash = on\n");

# The main receiver, reset by each part that uses it.
my $main = EOWebhook->new(name => 'main');

# publish($topic, $n): publish $n messages in one transaction; their ids.
sub publish
{
	my ($topic, $n) = @_;
	return split /\n/,
	  $node->safe_psql('postgres',
		"SELECT eo.publish('$topic', jsonb_build_object('i', g)) FROM generate_series(1, $n) g");
}

# One row of eo.stats as a hash ref.
sub stats_of
{
	my ($dest) = @_;
	my @cols = qw(enabled pending in_flight retrying dead delivered_total last_error disabled_reason);
	my %s;
	@s{@cols} = split /\|/,
	  $node->safe_psql('postgres',
		'SELECT ' . join(', ', @cols) . " FROM eo.stats WHERE destination = '$dest'"), -1;
	return \%s;
}

# poll($query, $seconds): poll_query_until with a bound of its own.
sub poll
{
	my ($query, $seconds) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $seconds // $settle;
	return $node->poll_query_until('postgres', $query);
}

######################################################################
# (a) 410 Gone
######################################################################

# max_attempts 1: an ordinary failure would make the delivery dead at once.
my %gone_options = (url => $main->url('/gone'), max_attempts => 1, retry_delays => ['50ms']);
eo_create_http_destination($node, 'postgres', 'gone', \%gone_options, 'gone.*');
$main->force_status(410);
publish('gone.a', 5);
ok(poll(q{SELECT NOT enabled AND pending + retrying = 5 AND in_flight = 0
            FROM eo.stats WHERE destination = 'gone'}),
	'(a) 410: the destination is disabled, its deliveries wait');
my $st = stats_of('gone');
is($st->{dead}, 0, '(a) no delivery is dead after 410 (although max_attempts is 1)');
like($st->{disabled_reason}, qr/410 Gone/, '(a) eo.stats shows why the destination was disabled');
is( $node->safe_psql('postgres',
		q{SELECT enabled::text || ' ' || (disabled_reason IS NOT NULL)::text
		    FROM eo.destinations WHERE name = 'gone'}),
	'false true', '(a) eo.destinations shows it disabled, with the reason');

# A message routed to the disabled destination is not sent.
my $received = $main->stats->{received};
my ($late) = publish('gone.b', 1);
ok(poll(qq{SELECT EXISTS (SELECT 1 FROM eo.message_log m JOIN eo.destination d ON d.name = 'gone'
                          WHERE m.id = '$late' AND d.id = ANY (m.routes))
              AND (SELECT state = 'idle' FROM eo.relay_status)}),
	'(a) a new message is routed to the disabled destination');
is( $node->safe_psql('postgres',
		qq{SELECT (SELECT count(*) FROM eo.http_attempt WHERE message_id = '$late')
		          || ' ' || (SELECT pending >= 1 FROM eo.stats WHERE destination = 'gone')}),
	'0 true', '(a) ... and waits (pending) without an attempt');
is($main->stats->{received}, $received, '(a) the receiver got nothing more once the destination was disabled');

$main->reset;
$node->safe_psql('postgres',
	q{SELECT eo.alter_destination('gone', options) FROM eo.destination WHERE name = 'gone'});
ok(eo_wait_drained($node, 'postgres', 'gone', $settle),
	'(a) after eo.alter_destination() everything is delivered');
$st = stats_of('gone');
is("$st->{enabled} $st->{disabled_reason} $st->{dead}", 't  0',
	'(a) enabled again, no reason, nothing dead');
eo_check_exactly_once($node, 'postgres', $main, q{topic LIKE 'gone.%'}, '(a) 410');

######################################################################
# (b) Retry-After
######################################################################

eo_create_http_destination($node, 'postgres', 'later',
	{ url => $main->url('/later'), retry_delays => ['50ms'], max_attempts => 10, log_attempts => 'all' },
	'later.*');
for my $status (429, 503)
{
	$main->reset;
	$main->faults({ retry_after => 2 });
	$main->force_status($status);
	my ($id) = publish("later.s$status", 1);
	ok(poll(qq{SELECT EXISTS (SELECT 1 FROM eo.http_attempt
	                           WHERE message_id = '$id' AND status_code = $status)}),
		"(b) the receiver answered $status");
	$main->force_status(undef);
	ok(eo_wait_drained($node, 'postgres', 'later', $settle), "(b) $status: then delivered");
	my ($gap, $next_status) = split /\|/,
	  $node->safe_psql(
		'postgres', qq{
		SELECT extract(epoch FROM n.attempted_at - f.attempted_at), n.status_code
		  FROM eo.http_attempt f
		  JOIN eo.http_attempt n ON n.message_id = f.message_id AND n.attempt = f.attempt + 1
		 WHERE f.message_id = '$id' AND f.attempt = 1});
	note "$status with Retry-After 2: next attempt (status $next_status) after $gap s";
	cmp_ok($gap, '>=', 1.95, "(b) $status: the next attempt came at least 2 s later (Retry-After: 2)");
	cmp_ok($gap, '<', 5, "(b) $status: ... and not much later than that (the relay woke up for it)");
}

######################################################################
# (c) connection refused
######################################################################

# A reserved port nothing listens on.
my $closed_port = PostgreSQL::Test::Cluster::get_free_port();
eo_create_http_destination($node, 'postgres', 'refused',
	{ url => "http://127.0.0.1:$closed_port/x", max_attempts => 3, retry_delays => [ '50ms', '100ms' ] },
	'refused.*');
my @refused = publish('refused.a', 2);
ok(poll(q{SELECT dead = 2 FROM eo.stats WHERE destination = 'refused'}),
	'(c) connection refused: both deliveries are dead after max_attempts');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*), count(*) FILTER (WHERE status_code IS NULL AND error IS NOT NULL),
	       string_agg(DISTINCT attempt::text, ',' ORDER BY attempt::text)
	  FROM eo.http_attempt a JOIN eo.destination d ON d.id = a.destination_id
	 WHERE d.name = 'refused'}),
	'6|6|1,2,3',
	'(c) three attempts each, recorded without a status code and with an error');
like(stats_of('refused')->{last_error}, qr/connect/i, '(c) the error says the connection failed');

$main->reset;
$node->safe_psql('postgres',
	q{SELECT eo.alter_destination('refused', options || jsonb_build_object('url', '}
	  . $main->url('/refused') . q{')) FROM eo.destination WHERE name = 'refused'});
is($node->safe_psql('postgres', q{SELECT eo.redrive('refused')}), '2', '(c) eo.redrive() puts both back');
ok(eo_wait_drained($node, 'postgres', 'refused', $settle), '(c) ... and they are delivered');
is(stats_of('refused')->{dead}, 0, '(c) nothing is dead any more');
eo_check_exactly_once($node, 'postgres', $main, q{topic LIKE 'refused.%'}, '(c) redrive');

######################################################################
# (d) eo.http_allowed_hosts
######################################################################

eo_create_http_destination($node, 'postgres', 'listed',
	{ url => $main->url('/listed'), retry_delays => ['100ms'], max_attempts => 1000 }, 'listed.*');
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET eo.http_allowed_hosts = 'example.invalid'; SELECT pg_reload_conf()});
ok(poll(q{SELECT current_setting('eo.http_allowed_hosts') = 'example.invalid'}),
	'(d) eo.http_allowed_hosts is example.invalid');

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT eo.create_destination('unlisted', 'http', '{\"url\": \"" . $main->url('/unlisted') . "\"}')");
isnt($ret, 0, '(d) a destination for 127.0.0.1 cannot be created');
like($stderr, qr/ERROR:  host "127\.0\.0\.1" is not in eo\.http_allowed_hosts/,
	'(d) ... with an error naming the host and the setting');

$main->reset;
my ($unsent) = publish('listed.a', 1);
ok(poll(qq{SELECT count(*) >= 2 FROM eo.http_attempt
            WHERE message_id = '$unsent' AND status_code IS NULL
              AND error = 'host "127.0.0.1" is not in eo.http_allowed_hosts'}),
	'(d) deliveries to an existing destination fail with an error naming the allowlist');
like(stats_of('listed')->{last_error}, qr/eo\.http_allowed_hosts/, '(d) eo.stats shows that error');
is($main->stats->{received}, 0, '(d) nothing was sent to the host');

$node->safe_psql('postgres',
	q{ALTER SYSTEM RESET eo.http_allowed_hosts; SELECT pg_reload_conf()});
ok(eo_wait_drained($node, 'postgres', 'listed', $settle),
	'(d) once the host is allowed again, the delivery goes out');
eo_check_exactly_once($node, 'postgres', $main, q{topic LIKE 'listed.%'}, '(d) allowlist');

######################################################################
# (e) a slow destination does not hold back a fast one
######################################################################

my $slow = EOWebhook->new(name => 'slow');
$slow->faults({ sleep => 1.0, sleep_seconds => 2.5 });
eo_create_http_destination($node, 'postgres', 'slow',
	{
		url => $slow->url,
		timeout_ms => 3000,
		concurrency => 2,
		retry_delays => ['100ms'],
		max_attempts => 100,
		log_attempts => 'all'
	},
	'slow.*');
eo_create_http_destination($node, 'postgres', 'fast', { url => $main->url('/fast') }, 'fast.*');
$main->reset;
publish('slow.a', 10);
ok($slow->wait_for(sub { $_[0]{in_flight} == 2 }, $settle),
	'(e) the slow receiver holds two requests (the concurrency of its destination)');
my $t_fast = Time::HiRes::time();
publish('fast.a', 200);
ok(eo_wait_drained($node, 'postgres', 'fast', $settle), '(e) the fast destination gets its 200 messages');
my $fast_seconds = Time::HiRes::time() - $t_fast;
my ($slow_in_flight, $slow_answered) = split /\|/,
  $node->safe_psql(
	'postgres', q{
	SELECT s.in_flight, (SELECT count(*) FROM eo.http_attempt a
	                      JOIN eo.destination d ON d.id = a.destination_id WHERE d.name = 'slow')
	  FROM eo.stats s WHERE s.destination = 'slow'});
note sprintf('(e) 200 fast deliveries took %.2f s; slow: %d in flight, %d answered',
	$fast_seconds, $slow_in_flight, $slow_answered);
# eo.stats counts the whole window being sent as in flight (the relay does
# not write which of its messages are on the wire): 2 on the wire, 10 in
# the window.
cmp_ok($slow_in_flight, '>=', 2, '(e) ... while the slow one still has requests in flight');
is($slow_answered, 0, '(e) ... all delivered before the first slow request was answered');
eo_check_exactly_once($node, 'postgres', $main, q{topic LIKE 'fast.%'}, '(e) fast');

$slow->faults({});
ok(eo_wait_drained($node, 'postgres', 'slow', $settle), '(e) the slow destination catches up');
eo_check_exactly_once($node, 'postgres', $slow, q{topic LIKE 'slow.%'}, '(e) slow');

######################################################################
# (f) concurrency bound
######################################################################

# A few slow answers (0.2 s) make the requests pile up to the bound.
my $bounded = EOWebhook->new(name => 'bounded');
$bounded->faults({ sleep => 0.03, sleep_seconds => 0.2 });
eo_create_http_destination($node, 'postgres', 'bounded',
	{
		url => $bounded->url,
		concurrency => 4,
		timeout_ms => 5000,
		retry_delays => ['50ms'],
		max_attempts => 50,
		log_attempts => 'all'    # every request, for the overlap count
	},
	'bounded.*');
publish('bounded.a', 2000);
my ($max_in_flight, $max_open) = (0, 0);
ok( $bounded->wait_for(
		sub {
			my ($s) = @_;
			$max_in_flight = $s->{in_flight} if $s->{in_flight} > $max_in_flight;
			$max_open = $s->{connections_open} if $s->{connections_open} > $max_open;
			return $s->{applied} == 2000;
		},
		60),
	'(f) 2,000 messages delivered with concurrency 4');
my $bs = $bounded->last_stats;
note "(f) receiver: at most $max_in_flight requests in flight, $max_open connections open "
  . "(one of them the test's), $bs->{connections_total} connections in all, $bs->{faults}{sleep} slow answers";
cmp_ok($max_in_flight, '<=', 4, '(f) the receiver never had more than 4 requests in flight');
cmp_ok($max_in_flight, '>=', 2, '(f) ... and had several at once');
cmp_ok($max_open, '<=', 5, '(f) at most 4 connections of the relay were open at once');
# The relay's own record: the most requests whose time spans overlap.
my $overlap = $node->safe_psql(
	'postgres', q{
	WITH a AS (SELECT attempted_at AS t0,
	                  attempted_at + latency_ms * interval '1 ms' AS t1
	             FROM eo.http_attempt x JOIN eo.destination d ON d.id = x.destination_id
	            WHERE d.name = 'bounded'),
	     e AS (SELECT t0 AS t, 1 AS delta FROM a UNION ALL SELECT t1, -1 FROM a)
	SELECT max(n) FROM (SELECT sum(delta) OVER (ORDER BY t, delta) AS n FROM e) s});
note "(f) eo.http_attempt: at most $overlap requests overlapping";
cmp_ok($overlap, '<=', 4, '(f) eo.http_attempt shows no more than 4 requests overlapping');
ok(eo_wait_drained($node, 'postgres', 'bounded', $settle), '(f) nothing left to deliver');
eo_check_exactly_once($node, 'postgres', $bounded, q{topic LIKE 'bounded.%'}, '(f) bounded');
$bounded->stop;

# eo.http_max_concurrency caps the option: concurrency 64 under a cap of 3.
$node->safe_psql('postgres',
	'ALTER SYSTEM SET eo.http_max_concurrency = 3; SELECT pg_reload_conf()');
my $capped = EOWebhook->new(name => 'capped');
$capped->faults({ sleep => 0.03, sleep_seconds => 0.2 });
eo_create_http_destination($node, 'postgres', 'capped',
	{ url => $capped->url, concurrency => 64, retry_delays => ['50ms'], max_attempts => 50 },
	'capped.*');
publish('capped.a', 1000);
$max_in_flight = 0;
ok( $capped->wait_for(
		sub {
			$max_in_flight = $_[0]{in_flight} if $_[0]{in_flight} > $max_in_flight;
			return $_[0]{applied} == 1000;
		},
		60),
	'(f) 1,000 messages delivered with concurrency 64 under eo.http_max_concurrency = 3');
note "(f) capped receiver: at most $max_in_flight requests in flight";
cmp_ok($max_in_flight, '<=', 3, '(f) the setting caps the option: never more than 3 in flight');
cmp_ok($max_in_flight, '>=', 2, '(f) ... and several at once');
$node->safe_psql('postgres',
	'ALTER SYSTEM RESET eo.http_max_concurrency; SELECT pg_reload_conf()');
$capped->stop;

######################################################################
# (g) fast shutdown with requests in flight
######################################################################

my $sleepy = EOWebhook->new(name => 'sleepy');
$sleepy->faults({ sleep => 1.0, sleep_seconds => 30 });
eo_create_http_destination($node, 'postgres', 'sleepy',
	{ url => $sleepy->url, timeout_ms => 60000, retry_delays => ['100ms'] }, 'sleepy.*');
my @sleepy = publish('sleepy.a', 3);
ok($sleepy->wait_for(sub { $_[0]{in_flight} == 3 }, $settle),
	'(g) three requests in flight to a receiver that sleeps 30 s');
my $t_stop = Time::HiRes::time();
$node->stop('fast');
my $stop_seconds = Time::HiRes::time() - $t_stop;
note sprintf('(g) pg_ctl stop -m fast took %.2f s', $stop_seconds);
cmp_ok($stop_seconds, '<', 10, '(g) fast shutdown does not wait for the requests in flight');

$sleepy->faults({});
$node->start;
ok(eo_wait_drained($node, 'postgres', 'sleepy', $settle), '(g) after the restart they are delivered');
my %sent;
for my $r (@{ $sleepy->requests })
{
	push @{ $sent{ $r->{id} } }, $r->{outcome};
}
is( join(' ', map { join(',', @{ $sent{$_} // [] }) } sort @sleepy),
	'slept,applied slept,applied slept,applied',
	'(g) each was sent again with the same webhook-id and applied');
eo_check_exactly_once($node, 'postgres', $sleepy, q{topic LIKE 'sleepy.%'}, '(g) resent');
$sleepy->stop;

######################################################################
# (h) kill -9 of the relay worker
######################################################################

my $crash = EOWebhook->new(name => 'crash');
$crash->faults({ drop_after_apply => 0.2, sleep => 0.1, sleep_seconds => 1 });
eo_create_http_destination($node, 'postgres', 'crash',
	{ url => $crash->url, timeout_ms => 3000, concurrency => 8, retry_delays => ['50ms'], max_attempts => 50 },
	'crash.*');
# Keyed messages numbered in publish order, so that the order is checked.
$node->safe_psql('postgres',
	q{SELECT eo.publish('crash.a', jsonb_build_object('seq', g), 'k' || g % 10)
	    FROM generate_series(1, 300) g});
ok($crash->wait_for(sub { $_[0]{applied} >= 50 && $_[0]{in_flight} > 0 }, $settle),
	'(h) deliveries under way, requests in flight');
my $relay_pid = $node->safe_psql('postgres', q{SELECT pid FROM eo.relay_status});
ok(kill('KILL', $relay_pid), "(h) relay worker $relay_pid killed");
ok( poll(qq{SELECT pid IS NOT NULL AND pid <> $relay_pid FROM eo.relay_status}),
	'(h) a new relay worker runs after the crash restart');
ok(eo_wait_drained($node, 'postgres', 'crash', 60), '(h) everything is delivered');
eo_check_exactly_once($node, 'postgres', $crash, q{topic LIKE 'crash.%'}, '(h) relay crash');
my $cs = $crash->stats;
note "(h) receiver: $cs->{received} requests, $cs->{duplicates} duplicates absorbed";
cmp_ok($cs->{duplicates}, '>', 0, '(h) duplicates arrived and were absorbed');
is($cs->{order_violations}, 0, '(h) keyed messages were applied in order');
$crash->stop;

######################################################################
# (i) secrets stay secret
######################################################################

my $secret = eo_webhook_secret();
my $token = 'tok' . substr(eo_webhook_secret(), 6, 24);
my $signed = EOWebhook->new(name => 'signed', secrets => [$secret]);
eo_create_http_destination(
	$node, 'postgres', 'secretive',
	{
		url => $signed->url,
		signing_secret => $secret,
		headers => { Authorization => "Bearer $token", 'X-Plain' => 'visible-to-the-receiver' },
		retry_delays => ['50ms'],
	},
	'secretive.*');
$signed->force_status(500);
publish('secretive.a', 1);
ok(poll(q{SELECT retrying + in_flight > 0 AND last_error IS NOT NULL
            FROM eo.stats WHERE destination = 'secretive'}),
	'(i) a failed attempt (500)');
$signed->force_status(undef);
ok(eo_wait_drained($node, 'postgres', 'secretive', $settle), '(i) then delivered');
my $last = $signed->requests(1)->[0];
is($last->{headers}{authorization}, "Bearer $token", '(i) the receiver got the Authorization header');
is($signed->stats->{bad_signature}, 0, '(i) ... and a valid signature');

# Options the server refuses must not repeat what they were given.
my $bad_secret = 'whsec_' . substr(eo_webhook_secret(), 6, 12);
# (The statements are not logged: that would be PostgreSQL's doing.)
for my $case (
	[ { signing_secret => $bad_secret }, qr/option "signing_secret" must be the base64 encoding of 24 to 64 bytes/ ],
	[ { headers => { 'X-Key' => "$token\x01" } }, qr/the value of header "X-Key" contains a control character/ ])
{
	my ($bad, $expected) = @$case;
	my $o = JSON::PP->new->encode({ url => $signed->url, %$bad });
	my (undef, undef, $err) = $node->psql('postgres',
		"SET log_statement = none;\nSET log_min_error_statement = panic;\n"
		  . "SELECT eo.alter_destination('secretive', '$o');");
	like($err, $expected, '(i) invalid options are refused: ' . join(',', keys %$bad));
	unlike($err, qr/\Q$token\E|\Q$bad_secret\E/, '(i) ... without repeating the value');
}

my $views = $node->safe_psql(
	'postgres', q{
	SELECT (SELECT json_agg(s) FROM eo.stats s)::text
	    || (SELECT json_agg(d) FROM eo.destinations d)::text
	    || (SELECT json_agg(r) FROM eo.relay_status r)::text});
unlike($views, qr/\Q$secret\E/, '(i) the signing secret is not in eo.stats, eo.destinations, eo.relay_status');
unlike($views, qr/\Q$token\E/, '(i) the header value is not in them either');
like($views, qr/"signing_secret":\s*"\(hidden\)"/, '(i) eo.destinations shows the secret as hidden');
like($views, qr/"Authorization":\s*"\(hidden\)"/, '(i) ... and the header value as hidden');

my $log = slurp_file($node->logfile);
my $secret_b64 = substr($secret, 6);
unlike($log, qr/\Q$secret_b64\E/, '(i) the signing secret is not in the server log');
unlike($log, qr/\Q$token\E/, '(i) the header value is not in the server log');
unlike($log, qr/\Q$bad_secret\E/, '(i) the refused secret is not in the server log');
like($log, qr/disabled destination "gone": the receiver answered 410 Gone/,
	'(i) (the log is the right one: it has the 410 of part a)');

######################################################################
# (j) a window in which every message is held behind a failing key
######################################################################

# The first message of key k fails (500) and waits for its retry, 8 s
# away; the next three messages of k are then all set aside as held when
# their window opens, so that window has nothing to send.  It must still
# be recorded (only its cursor moves): a message of another key published
# after it is delivered while k's first message still waits, and k's
# messages follow, once each and in order.
$main->reset;
eo_create_http_destination($node, 'postgres', 'held',
	{ url => $main->url('/held'), retry_delays => ['8s'], max_attempts => 10 }, 'held.*');
$main->force_status(500);
$node->safe_psql('postgres', q{SELECT eo.publish('held.k', '{"seq": 1}'::jsonb, 'k')});
ok(poll(q{SELECT retrying = 1 FROM eo.stats WHERE destination = 'held'}),
	'(j) the first message of key k failed and waits for its retry');
$main->force_status(undef);
$node->safe_psql('postgres',
	q{SELECT eo.publish('held.k', jsonb_build_object('seq', g), 'k') FROM generate_series(2, 4) g});
ok(poll(q{SELECT count(*) = 3 FROM eo.delivery d JOIN eo.destination x ON x.id = d.destination_id
           WHERE x.name = 'held' AND d.state = 'pending'}),
	'(j) the three after it are held behind it');
$node->safe_psql('postgres', q{SELECT eo.publish('held.other', '{"seq": 5}'::jsonb, 'other')});
ok(poll(q{SELECT delivered_total >= 1 FROM eo.stats WHERE destination = 'held'}),
	'(j) a message of another key published after the held window is delivered');
is(stats_of('held')->{retrying}, 1, "(j) ... before k's first message was retried");
ok(eo_wait_drained($node, 'postgres', 'held', $settle), "(j) then k's messages are delivered");
my $held_applied = eo_check_exactly_once($node, 'postgres', $main, q{topic LIKE 'held.%'}, '(j)');
is( join(',', map { $_->{seq} } grep { ($_->{key} // '') eq 'k' } @$held_applied),
	'1,2,3,4', "(j) key k's messages were applied in order");

######################################################################
# (k) a reused libcurl handle carries nothing of its last request
######################################################################

# One request at a time to each destination, one destination after the
# other: b's requests go out on the handles a's requests gave back.
$main->reset;
eo_create_http_destination(
	$node, 'postgres', 'reuse_a',
	{
		url => $main->url('/reuse-a'),
		concurrency => 1,
		signing_secret => eo_webhook_secret(),
		headers => { 'X-Only-A' => 'a', 'Content-Type' => 'application/x-only-a' },
	},
	'reuse.a');
eo_create_http_destination($node, 'postgres', 'reuse_b',
	{ url => $main->url('/reuse-b'), concurrency => 1 }, 'reuse.b');
publish('reuse.a', 5);
ok(eo_wait_drained($node, 'postgres', 'reuse_a', $settle), '(k) a: delivered');
publish('reuse.b', 5);
ok(eo_wait_drained($node, 'postgres', 'reuse_b', $settle), '(k) b: delivered after a');
my %reuse;
push @{ $reuse{ $_->{path} } }, $_->{headers} for @{ $main->requests(0) };
my @a_like_a = grep {
	($_->{'x-only-a'} // '') eq 'a'
	  && $_->{'content-type'} eq 'application/x-only-a'
	  && defined $_->{'webhook-signature'}
} @{ $reuse{'/reuse-a'} // [] };
my @b_like_b = grep {
	!defined $_->{'x-only-a'}
	  && $_->{'content-type'} eq 'application/json'
	  && !defined $_->{'webhook-signature'}
} @{ $reuse{'/reuse-b'} // [] };
is(scalar @a_like_a, 5, "(k) a's requests have a's header, Content-Type and signature");
is(scalar @b_like_b, 5, "(k) b's requests have none of them");

$signed->stop;
$slow->stop;
$main->stop;
$node->stop;

done_testing();
