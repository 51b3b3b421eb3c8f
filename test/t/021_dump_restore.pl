# Logical backup of a database that uses eo_processing: pg_dump -Fc, then
# pg_restore into a new database of the same cluster and into a database
# of a second cluster.
#
# The source holds every kind of state the extension keeps: destinations
# (one disabled) and subscriptions, routed messages (delivered, unrouted,
# held behind a disabled destination or behind their key, retrying, dead),
# messages still waiting in eo.outbox (the relay is turned off with ALTER
# SYSTEM, and the routing is done by eo.relay_run() so that nothing moves
# by itself), key rows, statistics, inbox records with results (one owned
# by an application role), producer sequence marks, an http destination
# with a signing secret and an Authorization header, HTTP attempts,
# idempotency keys (completed with a response, in progress after a
# checkpoint with a live lease and with a lease about to expire, one
# released), privileges granted to application roles, and a gap in the
# destination ids.  Each restored copy must hold exactly the same rows (and
# the same state of the destination id and fence sequences), the extension
# must work on it (restored inbox records deduplicate, new destinations get
# new ids, stored results stay readable by the role that owns them and by
# no other, restored keys answer retries, a new key gets a fence larger
# than any handed out before the dump, an expired key is resumed at its
# recovery point with a larger fence and its old holder is refused), and
# once the relay is enabled it must deliver the pending messages to a
# listener of the restored database, and nothing that had already been
# delivered, and sign webhooks with the restored secret.  Which tables
# pg_dump keeps is decided by pg_extension_config_dump(): every table and
# sequence of the extension must be listed.
#
# The second cluster has roles the first has not, created before the
# application roles: their OIDs differ, and eo.inbox.result_owner (regrole)
# must be restored by name.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EONotify;
use EOWebhook;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $long = 'long.' . ('x' x 70);    # too long for a channel name

# Every table of the extension, and the columns that order its rows.
my %tables = (
	'eo.inbox' => 'consumer, msg_id',
	'eo.producer_seq' => 'consumer, producer',
	'eo.outbox' => 'id',
	'eo.message_log' => 'id',
	'eo.outbox_key' => 'key',
	'eo.destination' => 'id',
	'eo.subscription' => 'destination_id, topic',
	'eo.delivery' => 'destination_id, message_id',
	'eo.destination_stats' => 'destination_id',
	'eo.http_attempt' => 'destination_id, message_id, attempt',
	'eo.idempotency_key' => 'scope, key',
);

# A node whose relay is off, with the application's roles (created after
# @other_roles).
sub new_node
{
	my ($name, @other_roles) = @_;
	my $n = eo_new_node($name);
	eo_set_relay_enabled($n, 'off');
	$n->safe_psql('postgres', "CREATE ROLE $_") for (@other_roles, 'app_role', 'other_role');
	return $n;
}

# The http destination signs with a secret and sends a credential: both
# must come back with the restore (the receiver checks the signature).
my $secret = eo_webhook_secret();
my $token = 'tok' . substr(eo_webhook_secret(), 6, 24);
my $hooks = EOWebhook->new(name => 'restored', secrets => [$secret]);

my $node = new_node('dump_source');
$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql(
	'src', qq{
CREATE EXTENSION eo_processing;
GRANT USAGE ON SCHEMA eo TO app_role;
GRANT EXECUTE ON FUNCTION eo.process(text, text, interval), eo.process(text, text, text), eo.publish(text, jsonb, text, jsonb)
   TO app_role;
-- Stored results: app_role owns one, other_role may call eo.result() but
-- not read it.
GRANT USAGE ON SCHEMA eo TO other_role;
GRANT EXECUTE ON FUNCTION eo.set_result(text, jsonb, text), eo.result(text, text)
   TO app_role, other_role;

SELECT eo.create_destination('gone', 'notify');
SELECT eo.drop_destination('gone');
SELECT eo.create_destination('live', 'notify',
    '{"channel": "eo_live", "max_attempts": 4, "retry_delays": ["1s", "1h"]}');
SELECT eo.create_destination('held', 'notify', '{"channel": "eo_held"}');
SELECT eo.create_destination('broken', 'notify', '{"max_attempts": 3, "retry_delays": ["1h"]}');
SELECT eo.create_destination('fragile', 'notify', '{"max_attempts": 1}');
SELECT eo.subscribe('app.*', 'live');
SELECT eo.subscribe('app.exact', 'live');
SELECT eo.subscribe('app.*', 'held');
SELECT eo.subscribe('long.*', 'broken');
SELECT eo.subscribe('long.*', 'fragile');
UPDATE eo.destination SET enabled = false WHERE name = 'held';

-- Routed: delivered to "live", held for the disabled "held"; unrouted;
-- retrying for "broken" (its channel would be the long topic) and dead for
-- "fragile", then one more of that key, held behind the retrying one.
SELECT count(eo.publish('app.routed', jsonb_build_object('i', g), 'k' || g % 3))
  FROM generate_series(1, 20) g;
SELECT eo.publish('app.exact', 'exact'::text);
SELECT eo.publish('nobody.listens', 'unrouted'::text);
SELECT eo.publish('$long', '{"first": true}'::jsonb, 'kl');
SELECT eo.relay_run(1000);
SELECT eo.publish('$long', '{"second": true}'::jsonb, 'kl');
SELECT eo.relay_run(1000);

-- Pending in eo.outbox: keyed and not, JSON and text, with headers.
SELECT count(eo.publish('app.pending', jsonb_build_object('i', g),
                        CASE WHEN g % 2 = 0 THEN 'k' || g % 3 END, '{"h": "v"}'))
  FROM generate_series(1, 10) g;
SELECT count(eo.publish('app.pending', 'text payload ' || g)) FROM generate_series(1, 5) g;

-- Inbox records (some with results, one kept forever), producer marks.
SELECT count(eo.process('msg-' || g, 'orders')) FROM generate_series(1, 50) g;
SELECT count(eo.set_result('msg-' || g, jsonb_build_object('total', g * 10), 'orders'))
  FROM generate_series(1, 50, 7) g;
SELECT eo.process('forever-1', 'billing', 'infinity');
SELECT eo.process('short-1', 'billing', interval '1 hour');
SELECT count(eo.process_seq('producer-' || g, g * 100, 'orders')) FROM generate_series(1, 5) g;

-- An HTTP attempt (what the HTTP sink records).
INSERT INTO eo.http_attempt
SELECT now(), d.id, m.id, 1, 503, 'service unavailable', 12.5, 'busy'
  FROM eo.destination d, eo.message_log m
 WHERE d.name = 'live' AND m.topic = 'app.exact';

-- A result stored by the application role.
SET ROLE app_role;
SELECT eo.process('owned-1', 'payments');
SELECT eo.set_result('owned-1', '{"charge": "ch_1"}', 'payments');
RESET ROLE;
});

# An http destination with a secret and a credential (created without
# statement logging), and attempts of its own.
eo_create_http_destination(
	$node, 'src', 'hooks',
	{
		url => $hooks->url('/restored'),
		signing_secret => $secret,
		headers => { Authorization => "Bearer $token" },
		retry_delays => ['50ms'],
	},
	'hooks.*');
$node->safe_psql(
	'src', q{
INSERT INTO eo.http_attempt
SELECT now() - g * interval '1 min', d.id, m.id, g, CASE WHEN g = 1 THEN NULL ELSE 500 END,
       CASE WHEN g = 1 THEN 'Failed to connect to 127.0.0.1 port 9' ELSE 'HTTP status 500' END,
       g * 1.5, CASE WHEN g = 1 THEN NULL ELSE 'oops' END
  FROM eo.destination d, eo.message_log m, generate_series(1, 2) g
 WHERE d.name = 'hooks' AND m.topic = 'app.exact';
});

# Idempotency keys: completed with a response; in progress after a
# checkpoint, with a live lease (in scope "shipping") and with a lease of
# one second (expired by the time it is restored); released (forgotten,
# but its fence was handed out).
my %fence;
for my $k (
	[ 'pay-1', 'default', '{"amount": 100}', '5 minutes' ],
	[ 'ship-1', 'shipping', '{"order": 7}', '1 day' ],
	[ 'ship-2', 'default', '{"order": 8}', '1 second' ],
	[ 'mail-1', 'default', '{"to": "a@example.com"}', '5 minutes' ])
{
	my ($key, $scope, $request, $lease) = @$k;
	$fence{$key} = $node->safe_psql('src',
		"SELECT fence FROM eo.key_begin('$key', '$request', '$scope', '$lease')");
}
$node->safe_psql(
	'src', qq{
SELECT eo.key_complete('pay-1', '{"status": 201, "body": {"charge": "ch_1"}}', fence => $fence{'pay-1'});
SELECT eo.key_checkpoint('ship-1', 'label_bought', 'shipping', $fence{'ship-1'});
SELECT eo.key_checkpoint('ship-2', 'charged', fence => $fence{'ship-2'});
SELECT eo.key_release('mail-1', fence => $fence{'mail-1'});
});

# What the source holds, for the checks below.
# Deliveries per destination: pending/retrying/dead.
my $stats_sql = q{
	SELECT string_agg(destination || ':' || pending || '/' || retrying || '/' || dead, ' '
	                  ORDER BY destination)
	  FROM eo.stats};
is($node->safe_psql('src', $stats_sql),
	'broken:1/1/0 fragile:0/0/2 held:21/0/0 hooks:0/0/0 live:0/0/0',
	'source: held, retrying and dead deliveries');
is( $node->safe_psql(
		'src', q{
	SELECT string_agg(format('%s/%s:%s:%s', scope, key, state, recovery_point), ' ' ORDER BY scope, key)
	  FROM eo.idempotency_key}),
	'default/pay-1:completed:finished default/ship-2:in_progress:charged shipping/ship-1:in_progress:label_bought',
	'source: a completed key, two in progress after a checkpoint, the released one gone');
is($node->safe_psql('src', 'SELECT count(*) FROM eo.outbox'),
	'15', 'source: 15 messages pending in eo.outbox');
my $pending = eo_id_set($node, 'src', 'SELECT id FROM eo.outbox');
my $held = eo_id_set($node, 'src',
	q{SELECT id FROM eo.message_log WHERE topic LIKE 'app.%' UNION SELECT id FROM eo.outbox});
for my $table (sort keys %tables)
{
	cmp_ok($node->safe_psql('src', "SELECT count(*) FROM $table"),
		'>', 0, "source: $table has rows");
}

# Every table and sequence of the extension is dumped with its rows.
is( $node->safe_psql(
		'src', q{
	SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.relname)
	  FROM pg_depend d
	  JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
	  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'eo_processing'
	 WHERE d.deptype = 'e' AND c.relkind IN ('r', 'S')
	   AND c.oid <> ALL (e.extconfig)}),
	'', 'every table and sequence of the extension is listed by pg_extension_config_dump');

# Ordered rows of every table (in UTC), and the identity sequence.
sub snapshot
{
	my ($n, $db) = @_;
	my %s;
	for my $table (sort keys %tables)
	{
		$s{$table} = $n->safe_psql($db,
			"SET TimeZone = 'UTC'; SELECT t::text FROM $table t ORDER BY $tables{$table}");
	}
	for my $seq ('eo.destination_id_seq', 'eo.idempotency_fence_seq')
	{
		$s{$seq} = $n->safe_psql($db, "SELECT last_value, is_called FROM $seq");
	}
	$s{extension} = $n->safe_psql($db,
		q{SELECT extversion, array_length(extconfig, 1) FROM pg_extension WHERE extname = 'eo_processing'});
	return \%s;
}
my $source = snapshot($node, 'src');

my $dump = $node->basedir . '/src.dump';
command_checks_all(
	[ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ],
	0, [qr/^$/], [qr/^$/], 'pg_dump -Fc');

######################################################################
# Restore into the same cluster and into a second one
######################################################################

# The roles the first cluster has not come first: app_role gets another OID.
my $node2 = new_node('dump_target', 'unrelated_role_1', 'unrelated_role_2');
isnt(
	$node2->safe_psql('postgres', q{SELECT 'app_role'::regrole::oid}),
	$node->safe_psql('postgres', q{SELECT 'app_role'::regrole::oid}),
	'app_role has another OID in the second cluster');

for my $target ($node, $node2)
{
	my $name = $target->name;
	$target->safe_psql('postgres', 'CREATE DATABASE restored');
	command_checks_all(
		[ 'pg_restore', '-d', $target->connstr('restored'), $dump ],
		0, [qr/^$/], [qr/^$/], "$name: pg_restore");

	my $restored = snapshot($target, 'restored');
	for my $what (sort keys %$source)
	{
		is($restored->{$what}, $source->{$what}, "$name: $what restored equal");
	}
	is( $target->safe_psql(
			'restored', q{
		SELECT has_function_privilege('app_role', 'eo.process(text, text, interval)', 'EXECUTE'),
		       has_function_privilege('app_role', 'eo.publish(text, jsonb, text, jsonb)', 'EXECUTE'),
		       has_function_privilege('app_role', 'eo.forget(text, text)', 'EXECUTE'),
		       has_table_privilege('app_role', 'eo.inbox', 'SELECT'),
		       has_table_privilege('app_role', 'eo.idempotency_key', 'SELECT'),
		       has_table_privilege('app_role', 'eo.destination', 'SELECT')}),
		't|t|f|f|f|f', "$name: the application role's grants are restored, and no more");
}

######################################################################
# The restored databases work
######################################################################

for my $target ($node, $node2)
{
	my $name = $target->name;
	is( $target->safe_psql(
			'restored', q{
		SELECT eo.process('msg-1', 'orders'), eo.process('forever-1', 'billing'),
		       eo.result('msg-8', 'orders'), eo.process_seq('producer-2', 200, 'orders'),
		       eo.process('msg-51', 'orders'), eo.process_seq('producer-2', 201, 'orders')}),
		'f|f|{"total": 80}|f|t|t',
		"$name: restored inbox records and marks deduplicate; new ones are processed");
	$target->safe_psql('restored', q{SELECT eo.create_destination('after_restore', 'notify')});
	is( $target->safe_psql(
			'restored', q{
		SELECT id > (SELECT max(id) FROM eo.destination WHERE name <> 'after_restore')
		  FROM eo.destination WHERE name = 'after_restore'}),
		't', "$name: a new destination gets a new id (the identity sequence was restored)");
	$target->safe_psql('restored', q{SELECT eo.drop_destination('after_restore')});

	# Stored results belong to the same role, by name.
	is( $target->safe_psql(
			'restored', q{
		SELECT result_owner::text, result_owner::oid = 'app_role'::regrole::oid
		  FROM eo.inbox WHERE consumer = 'payments' AND msg_id = 'owned-1'}),
		'app_role|t', "$name: the stored result belongs to app_role of this cluster");
	is( $target->safe_psql(
			'restored', q{SET ROLE app_role; SELECT eo.result('owned-1', 'payments')}),
		'{"charge": "ch_1"}', "$name: app_role reads its restored result");
	my ($ret, undef, $err) = $target->psql('restored',
		qq{\\set VERBOSITY sqlstate\nSET ROLE other_role;\nSELECT eo.result('owned-1', 'payments');});
	like($err, qr/ERROR:  42501/, "$name: another role may not read it (42501)");

	# Idempotency keys: retries get the stored answers.
	is( $target->safe_psql(
			'restored', q{
		SELECT state || ' ' || recovery_point || ' ' || response::text
		  FROM eo.key_begin('pay-1', '{"amount": 100}')}),
		'completed finished {"body": {"charge": "ch_1"}, "status": 201}',
		"$name: a completed key returns its stored response");
	(undef, undef, $err) = $target->psql('restored',
		qq{\\set VERBOSITY sqlstate\nSELECT * FROM eo.key_begin('pay-1', '{"amount": 101}');});
	like($err, qr/ERROR:  IK001/, "$name: ... and still refuses another request (IK001)");
	is( $target->safe_psql(
			'restored', q{
		SELECT state || ' ' || (fence IS NULL) FROM eo.key_begin('ship-1', '{"order": 7}', 'shipping')}),
		'in_progress true', "$name: a key whose lease is live is in progress");

	# Fences keep growing: a new key, and the released one begun again, get
	# fences larger than any handed out before the dump.
	my $max_fence = (sort { $b <=> $a } values %fence)[0];
	cmp_ok($target->safe_psql('restored', q{SELECT max(fence) FROM eo.idempotency_key}),
		'<', $fence{'mail-1'}, "$name: (no restored key has a fence as large as the released key's)");
	my $new = $target->safe_psql('restored', q{SELECT fence FROM eo.key_begin('new-1', '{}')});
	cmp_ok($new, '>', $max_fence, "$name: a new key gets a fence larger than any restored or released one");
	is( $target->safe_psql(
			'restored', qq{
		SELECT state || ' ' || (fence > $new) FROM eo.key_begin('mail-1', '{"to": "b\@example.com"}')}),
		'started true', "$name: the released key starts afresh, with a larger fence still");

	# The key whose lease expired is taken over at its recovery point, with a
	# larger fence; its old holder is refused.
	ok( $target->poll_query_until(
			'restored', q{
		SELECT lease_expires_at < clock_timestamp() FROM eo.idempotency_key WHERE key = 'ship-2'}),
		"$name: the lease of ship-2 has expired");
	my ($state, $point, $resumed) = split /\|/,
	  $target->safe_psql('restored', q{SELECT state, recovery_point, fence FROM eo.key_begin('ship-2', '{"order": 8}')});
	is("$state $point", 'resumed charged', "$name: the expired key is resumed at its recovery point");
	cmp_ok($resumed, '>', $max_fence, "$name: ... with a fence larger than any before the dump");
	(undef, undef, $err) = $target->psql('restored',
		qq{\\set VERBOSITY sqlstate\nSELECT eo.key_complete('ship-2', '"late"', fence => $fence{'ship-2'});});
	like($err, qr/ERROR:  IK002/, "$name: the holder from before the dump has lost the lease (IK002)");
	$target->safe_psql('restored',
		qq{SELECT eo.key_complete('ship-2', '{"status": 200}', fence => $resumed)});
	is( $target->safe_psql(
			'restored', q{SELECT state || ' ' || response::text FROM eo.key_begin('ship-2', '{"order": 8}')}),
		'completed {"status": 200}', "$name: the new holder completes it");

	# The relay delivers exactly the messages that were pending.
	my $l = EONotify->new($target, 'restored', 'eo_live', 'eo_held');
	eo_set_relay_enabled($target, 'on');
	ok( $target->poll_query_until(
			'restored', q{
		SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)
		   AND (SELECT pending FROM eo.stats WHERE destination = 'held') = 36}),
		"$name: with the relay enabled, the pending messages are routed");
	my $sentinel = $target->safe_psql('restored', q{SELECT eo.publish('app.sentinel', '{}'::jsonb)});
	ok($l->wait_for_id($sentinel, $timeout), "$name: a sentinel reaches the listener");
	my $live = $l->received('eo_live');
	delete $live->{$sentinel};
	is_deeply([ sort keys %$live ], [ sort keys %$pending ],
		"$name: \"live\" delivers the pending messages, and none delivered before the dump");

	# The disabled destination's held deliveries go out once it is enabled.
	$target->safe_psql('restored', q{SELECT eo.alter_destination('held', '{"channel": "eo_held"}')});
	ok( $l->wait_until(
			sub { my $got = $l->received('eo_held'); !grep { !$got->{$_} } keys %$held },
			$timeout),
		"$name: \"held\" delivers its held deliveries once enabled");
	ok( $target->poll_query_until(
			'restored', $stats_sql, 'broken:1/1/0 fragile:0/0/2 held:0/0/0 hooks:0/0/0 live:0/0/0'),
		"$name: retrying and dead deliveries are kept as they were");
	$l->drain(0.2);
	my $held_got = $l->received('eo_held');
	delete $held_got->{$sentinel};
	is_deeply($held_got, { map { ($_ => 1) } keys %$held },
		"$name: \"held\" delivered exactly the messages it held, once each");
	$l->close;

	# The http destination signs with the restored secret and sends the
	# restored credential.
	my $hook_id = $target->safe_psql('restored', q{SELECT eo.publish('hooks.after_restore', '{}'::jsonb)});
	ok(eo_wait_drained($target, 'restored', 'hooks', $timeout), "$name: a webhook is delivered");
	my $req = $hooks->requests(1)->[0];
	is($req->{id}, $hook_id, "$name: ... to the receiver");
	is($req->{headers}{authorization}, "Bearer $token", "$name: ... with the restored Authorization header");
	is($hooks->stats->{bad_signature}, 0, "$name: ... signed with the restored secret");
}

$hooks->stop;
$node->stop;
$node2->stop;
done_testing();
