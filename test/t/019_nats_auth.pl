# The nats sink against servers that require authentication (three routed
# nats-server processes on loopback, a stream with three replicas):
#   - with a token: a destination with the right token delivers, one
#     without a token delivers nothing and keeps its messages waiting,
#     with the error in eo.stats;
#   - with a user and password (the same servers restarted so): a
#     destination with them delivers, one with a wrong password does not;
#   - the credentials reach neither eo.stats nor the server log.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EONats;

my $settle = 40;
local $PostgreSQL::Test::Utils::timeout_default = $settle;

my $token = 'tok-AUTH-8131';
my ($user, $password) = ('eo_relay', 'pw-AUTH-5527');

my $nats = EONats->new("$PostgreSQL::Test::Utils::tmp_check/nats_auth",
	server_args => [ '--auth', $token ], userinfo => $token);
$nats->tool('create', 'AUTH', 'auth.>', 3, 600);
my $servers = join(', ', map { qq{"$_"} } $nats->plain_url_list);

my $node = eo_new_node('nats_auth', conf => "eo.relay_naptime = 1\n");
$node->safe_psql(
	'postgres', qq{
SET log_statement = 'none';
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('with_token', 'nats',
    '{"servers": [$servers], "stream": "AUTH", "token": "$token",
      "retry_delays": ["100ms"], "timeout_ms": 2000}');
SELECT eo.subscribe('auth.token.*', 'with_token');
SELECT eo.create_destination('no_token', 'nats',
    '{"servers": [$servers], "stream": "AUTH", "retry_delays": ["200ms"], "max_attempts": 1000,
      "timeout_ms": 1000}');
SELECT eo.subscribe('auth.none.*', 'no_token');
});

# stream_subjects: the subjects the stream holds, one per message.
sub stream_subjects
{
	return map { (split / /)[3] } split /\n/, $nats->tool('dump', 'AUTH');
}

$node->safe_psql('postgres',
	q{SELECT eo.publish('auth.token.a', jsonb_build_object('i', g)) FROM generate_series(1, 5) g});
$node->safe_psql('postgres', q{SELECT eo.publish('auth.none.a', '{"i": 0}'::jsonb)});
ok( $node->poll_query_until('postgres',
		q{SELECT delivered_total = 5 FROM eo.stats WHERE destination = 'with_token'}),
	'token: the destination with the right token delivers');
ok( $node->poll_query_until('postgres',
		q{SELECT last_error IS NOT NULL FROM eo.stats WHERE destination = 'no_token'}),
	'token: the destination without it fails, with an error in eo.stats');
note 'no_token: '
  . $node->safe_psql('postgres', q{SELECT last_error FROM eo.stats WHERE destination = 'no_token'});
is( $node->safe_psql('postgres',
		q{SELECT delivered_total, dead, pending + retrying + in_flight FROM eo.stats WHERE destination = 'no_token'}),
	'0|0|1', '... delivers nothing, and its message waits (not dead)');
is(join(',', sort(stream_subjects())), join(',', ('auth.token.a') x 5),
	'token: the stream holds the five messages sent with the token, nothing else');

# The same servers, now with a user and password.
$nats->stop;
$nats->configure(server_args => [ '--user', $user, '--pass', $password ],
	userinfo => "$user:$password");
$nats->start($_) for 0 .. 2;
# Until the stream has its leader again (the servers elect one after a
# restart of all three), publishes find no responders.
my $stream_back = 0;
for (1 .. 600)
{
	last if $stream_back = eval { $nats->tool('count', 'AUTH') =~ /^\d+$/m };
	Time::HiRes::usleep(100_000);
}
ok($stream_back, 'user and password: the servers are back with the stream');
$node->safe_psql(
	'postgres', qq{
SET log_statement = 'none';
SELECT eo.create_destination('with_user', 'nats',
    '{"servers": [$servers], "stream": "AUTH", "user": "$user", "password": "$password",
      "retry_delays": ["100ms"], "max_attempts": 1000, "timeout_ms": 2000}');
SELECT eo.subscribe('auth.user.*', 'with_user');
SELECT eo.create_destination('bad_password', 'nats',
    '{"servers": [$servers], "stream": "AUTH", "user": "$user", "password": "not-$password",
      "retry_delays": ["200ms"], "max_attempts": 1000, "timeout_ms": 1000}');
SELECT eo.subscribe('auth.bad.*', 'bad_password');
});
$node->safe_psql('postgres',
	q{SELECT eo.publish('auth.user.a', jsonb_build_object('i', g)) FROM generate_series(1, 3) g});
$node->safe_psql('postgres', q{SELECT eo.publish('auth.bad.a', '{"i": 0}'::jsonb)});
ok( $node->poll_query_until('postgres',
		q{SELECT delivered_total = 3 FROM eo.stats WHERE destination = 'with_user'}),
	'user and password: the destination with them delivers (after the servers restarted)')
  or diag 'with_user: '
  . $node->safe_psql('postgres', q{SELECT delivered_total || ' ' || coalesce(last_error, '') FROM eo.stats WHERE destination = 'with_user'});
ok( $node->poll_query_until('postgres',
		q{SELECT last_error IS NOT NULL FROM eo.stats WHERE destination = 'bad_password'}),
	'user and password: a wrong password fails, with an error in eo.stats');
is( $node->safe_psql('postgres',
		q{SELECT delivered_total, dead FROM eo.stats WHERE destination = 'bad_password'}),
	'0|0', '... and delivers nothing');
my @subjects = stream_subjects();
is(scalar(grep { $_ eq 'auth.user.a' } @subjects), 3, 'user and password: the stream holds the three');
is(scalar(grep { $_ eq 'auth.none.a' || $_ eq 'auth.bad.a' } @subjects), 0,
	'nothing sent without valid credentials reached the stream');

# The credentials are nowhere to be read.
my $views = $node->safe_psql('postgres',
	q{SELECT (SELECT json_agg(s) FROM eo.stats s)::text || (SELECT json_agg(d) FROM eo.destinations d)::text});
unlike($views, qr/\Q$token\E|\Q$password\E/, 'eo.stats and eo.destinations show neither the token nor the password');
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$token\E|\Q$password\E/, 'the server log shows neither');

$node->stop;
$nats->stop;
done_testing();
