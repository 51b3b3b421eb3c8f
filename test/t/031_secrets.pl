# Secrets of http destinations (signing secrets, header values) never leave
# the extension's table, with pg_stat_statements loaded and tracking every
# statement (nested ones and the relay's included):
#
#   - an http destination is created, altered (secret rotation, a new
#     Authorization header) and its options checked, with the secrets given
#     as SQL literals, in a session that turned statement logging off as the
#     README advises; then a message is delivered, after a failed attempt;
#   - options with a malformed secret, or a header value that cannot be
#     sent, are refused: the errors name the option, never the value;
#   - no query text in pg_stat_statements, no row of eo.stats,
#     eo.destinations, eo.relay_status or eo.http_attempt, and no line of
#     the server log holds a secret or a header value;
#   - an application role with the README's grant sees no query text of
#     the owner's statements in pg_stat_statements.
#
# What an application role may not do with destinations (read
# eo.destination, eo.destinations or eo.http_attempt, create or check http
# options, read another role's stored result) is in sql/privileges.sql.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOWebhook;

my $settle = 30;

# The cluster logs every statement (PostgreSQL::Test::Cluster sets
# log_statement = all): what reaches the log unless a session turns it off.
my $node = eo_http_node(
	'secrets', q{
shared_preload_libraries = 'eo_processing, pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.track_utility = on
});
$node->safe_psql('postgres', 'CREATE EXTENSION pg_stat_statements');

# Every value that must stay secret, by what it is.
my %secret;
$secret{signing_secret} = eo_webhook_secret();
$secret{rotated_secret} = eo_webhook_secret();
$secret{token} = 'tok' . substr(eo_webhook_secret(), 6, 24);
$secret{rotated_token} = 'tok' . substr(eo_webhook_secret(), 6, 24);
$secret{refused_secret} = 'whsec_' . substr(eo_webhook_secret(), 6, 12);    # 9 bytes: too short
$secret{refused_token} = 'tok' . substr(eo_webhook_secret(), 6, 24);
$secret{checked_secret} = eo_webhook_secret();
# The part of a secret that is secret (the prefix is not).
my %needle = map { ($_ => $secret{$_} =~ s/^whsec_//r) } keys %secret;

my $receiver = EOWebhook->new(name => 'signed', secrets => [ $secret{rotated_secret} ]);
my $json = JSON::PP->new->canonical;

# A session as the README advises for configuring destinations: no
# statement logging, no logging of failing statements.
my $quiet = "SET log_statement = 'none';\nSET log_min_error_statement = 'panic';\n";

# options(%extra): http options as a SQL string literal.
sub options
{
	my (%extra) = @_;
	my $o = $json->encode({ url => $receiver->url, retry_delays => ['50ms'], %extra });
	$o =~ s/'/''/g;
	return "'$o'";
}

######################################################################
# Configure, with the secrets as literals
######################################################################

$node->safe_psql(
	'postgres',
	$quiet
	  . 'SELECT eo.create_destination(\'secretive\', \'http\', '
	  . options(
		signing_secret => $secret{signing_secret},
		headers => { Authorization => "Bearer $secret{token}", 'X-Plain' => 'visible' })
	  . ");\nSELECT eo.subscribe('secret.*', 'secretive');\n"
	  . 'SELECT eo.alter_destination(\'secretive\', '
	  . options(
		signing_secret => [ $secret{rotated_secret}, $secret{signing_secret} ],
		headers => { Authorization => "Bearer $secret{rotated_token}" })
	  . ");\n"
	  . 'SELECT eo.check_destination_options(\'http\', '
	  . options(signing_secret => $secret{checked_secret})
	  . ") IS NOT NULL;\n"
	  . 'SELECT eo.check_destination_options(\'http\', jsonb_build_object(\'url\', \'http://example.com/\', '
	  . "'signing_secret', '$secret{checked_secret}')) IS NOT NULL;");

# Refused options: the error names the option, not the value.
for my $case (
	[
		'a secret too short',
		options(signing_secret => $secret{refused_secret}),
		qr/option "signing_secret" must be the base64 encoding of 24 to 64 bytes/
	],
	[
		'a good secret next to a bad one',
		options(signing_secret => [ $secret{checked_secret}, 'whsec_!!' ]),
		qr/option "signing_secret" must be the base64 encoding/
	],
	[
		'a header value with a control character',
		options(headers => { Authorization => "Bearer $secret{refused_token}\x01" }),
		qr/the value of header "Authorization" contains a control character/
	],
	[
		'a header name that is no token, next to a secret value',
		options(headers => { Authorization => "Bearer $secret{refused_token}", 'Bad Name' => 'x' }),
		qr/header name "Bad Name" is not a valid HTTP header name/
	])
{
	my ($what, $literal, $expected) = @$case;
	for my $call ("eo.alter_destination('secretive', $literal)",
		"eo.create_destination('refused', 'http', $literal)",
		"eo.check_destination_options('http', $literal)")
	{
		my ($fn) = $call =~ /^(eo\.\w+)/;
		my ($ret, undef, $err) = $node->psql('postgres', "${quiet}SELECT $call;");
		isnt($ret, 0, "$fn refuses $what");
		like($err, $expected, "$fn: ... with an error naming the option");
		unlike($err, qr/\Q$needle{refused_secret}\E|\Q$needle{checked_secret}\E|\Q$secret{refused_token}\E/,
			"$fn: ... that does not repeat the value");
	}
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM eo.destination WHERE name = 'refused'}),
	'0', 'no refused destination was created');

######################################################################
# Deliver, after a failed attempt
######################################################################

$receiver->force_status(500);
$node->safe_psql('postgres', q{SELECT eo.publish('secret.a', '{"n": 1}'::jsonb)});
ok( $node->poll_query_until(
		'postgres', q{
	SELECT count(*) > 0 FROM eo.http_attempt a JOIN eo.destination d ON d.id = a.destination_id
	 WHERE d.name = 'secretive' AND a.status_code = 500}),
	'a failed attempt (500)');
$receiver->force_status(undef);
ok(eo_wait_drained($node, 'postgres', 'secretive', $settle), 'then the message is delivered');
my $last = $receiver->requests(1)->[0];
is($last->{headers}{authorization}, "Bearer $secret{rotated_token}",
	'the receiver got the rotated Authorization header');
is($receiver->stats->{bad_signature}, 0, '... and a signature made with the rotated secret');

######################################################################
# Where the secrets must not be
######################################################################

# Every statement above, the relay's own included, is in pg_stat_statements.
my $statements = $node->safe_psql('postgres',
	q{SELECT string_agg(query, E'\n----\n' ORDER BY query) FROM pg_stat_statements});
like($statements, qr/eo\.create_destination\(\$1, \$2, \$3\)/,
	'pg_stat_statements holds the eo.create_destination() call, with its constants replaced');
like($statements, qr/eo\.alter_destination\(\$1, \$2\)/, '... and eo.alter_destination()');
like($statements, qr/eo\.check_destination_options\(\$1, jsonb_build_object\(\$2, \$3, \$4, \$5\)\)/,
	'... and eo.check_destination_options() with the secret in jsonb_build_object()');
like($statements, qr/SELECT id, name, kind, options, enabled FROM eo\.destination/,
	'... and the relay worker\'s, which reads the options');
for my $what (sort keys %needle)
{
	unlike($statements, qr/\Q$needle{$what}\E/, "pg_stat_statements: no $what");
}

my $views = $node->safe_psql(
	'postgres', q{
	SELECT (SELECT json_agg(s) FROM eo.stats s)::text
	    || (SELECT json_agg(d) FROM eo.destinations d)::text
	    || (SELECT json_agg(r) FROM eo.relay_status r)::text
	    || (SELECT json_agg(a) FROM eo.http_attempt a)::text});
for my $what (sort keys %needle)
{
	unlike($views, qr/\Q$needle{$what}\E/,
		"eo.stats, eo.destinations, eo.relay_status, eo.http_attempt: no $what");
}
like($views, qr/"signing_secret":\s*"\(hidden\)"/, 'eo.destinations shows the secret as hidden');
like($views, qr/"Authorization":\s*"\(hidden\)"/, '... and the header value as hidden');

# An application role with the README's grant, reading pg_stat_statements
# (granted to PUBLIC): the owner's statements show no text at all.
$node->safe_psql(
	'postgres', q{
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA eo TO app;
GRANT EXECUTE ON FUNCTION eo.process(text,text,interval), eo.process(text,text,text), eo.process_seq(text,bigint,text), eo.set_result(text,jsonb,text), eo.result(text,text), eo.publish(text,jsonb,text,jsonb), eo.publish(text,text,text,jsonb), eo.message(uuid) TO app;
GRANT EXECUTE ON FUNCTION eo.key_begin(text,jsonb,text,interval), eo.key_checkpoint(text,text,text,bigint), eo.key_complete(text,jsonb,text,bigint), eo.key_release(text,text,bigint) TO app;
});
my $app_view = $node->safe_psql(
	'postgres', q{
	SELECT count(*) FILTER (WHERE query LIKE '%create_destination%') || ' '
	    || count(*) FILTER (WHERE query = '<insufficient privilege>')
	  FROM pg_stat_statements},
	extra_params => [ '-U', 'app' ]);
like($app_view, qr/^0 [1-9]\d*$/,
	'the application role sees the text of none of the owner\'s statements in pg_stat_statements');

# The server log: statements were logged (log_statement = all), but not
# those of the quiet sessions, and no error repeated a value.
my $log = slurp_file($node->logfile);
like($log, qr/statement: SELECT eo\.publish\('secret\.a'/,
	'(the log is the right one: it has the statements of sessions that log them)');
for my $what (sort keys %needle)
{
	unlike($log, qr/\Q$needle{$what}\E/, "server log: no $what");
}

# What PostgreSQL itself does with a secret given inside a DO block (a
# utility statement, whose text pg_stat_statements keeps as written): for
# the record, not a property of the extension.
{
	my $probe = eo_webhook_secret();
	my $needle = substr($probe, 6);
	$node->safe_psql('postgres',
		$quiet
		  . 'DO $$ BEGIN PERFORM eo.check_destination_options(\'http\', '
		  . options(signing_secret => $probe)
		  . '); END $$;');
	my $kept = $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_statements WHERE strpos(query, '$needle') > 0");
	note "a secret given inside a DO block is in $kept row(s) of pg_stat_statements";
	$node->safe_psql('postgres', 'SELECT pg_stat_statements_reset()');
}

$receiver->stop;
$node->stop;
done_testing();
