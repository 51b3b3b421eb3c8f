# End-to-end check of the outbox relay with a LISTEN client.
#
# Messages are published with eo.publish() by concurrent pgbench sessions,
# some in transactions that roll back; the relay moves them to the log and
# sends one NOTIFY per delivery.  A listener (DBD::Pg, see EONotify.pm)
# must receive exactly the committed messages, per key in publish order,
# in the documented envelope, with oversized payloads truncated and
# available in full through eo.message().  The relay sleeps for an hour
# (eo.relay_naptime) unless a commit wakes it, and holds no transaction
# open while it waits.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EONotify;

# Delivery after a commit must be much faster than this; the relay's
# safety-net naptime is an hour, so only the commit wake-up can meet it.
my $max_latency = 30;
# How long to wait for a message that should arrive at once (bounded, so
# that a broken relay fails the test quickly).
my $deliver_timeout = 30;

my $clients = 8;
my $txns_per_client = 125;    # 1000 transactions, 2 messages each
my $nkeys = 20;

my $node = PostgreSQL::Test::Cluster->new('relay_notify');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'eo_processing'
max_connections = 40
eo.relay_naptime = 3600
});
$node->start;

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('orders', 'notify', '{"channel": "eo_orders"}');
SELECT eo.subscribe('orders.*', 'orders');
-- no channel: notifications go to the channel named like the topic
SELECT eo.create_destination('audit', 'notify');
SELECT eo.subscribe('audit.event', 'audit');

-- The application's side: the ids of the committed messages, and a
-- counter per key bumped in the publishing transaction, so that the
-- committed messages of a key are numbered 1, 2, 3... in commit order.
CREATE SCHEMA app;
CREATE TABLE app.key_seq (key text PRIMARY KEY, n integer NOT NULL);
INSERT INTO app.key_seq SELECT 'k' || g, 0 FROM generate_series(1, $nkeys) g;
CREATE TABLE app.sent (id uuid PRIMARY KEY, key text, n integer);
});
is($node->safe_psql('postgres', 'SHOW eo.relay_naptime'),
	'1h', 'eo.relay_naptime is an hour');

# CREATE EXTENSION started the relay (at commit).
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM eo.relay_status
	   WHERE datname = 'postgres' AND pid IS NOT NULL AND state = 'idle'})
  or die 'the relay did not start';
my $relay_pid = eo_relay_pid($node, 'postgres');
like($relay_pid, qr/^\d+$/, 'relay worker runs for the database');

my $listener =
  EONotify->new($node, 'postgres', 'eo_orders', 'audit.event', 'misc.unrouted');

# Publish one message in its own transaction; returns its id.
sub publish
{
	my ($args) = @_;
	return $node->safe_psql('postgres', "SELECT eo.publish($args)");
}

######################################################################
# Commit wake-up and envelope
######################################################################

# The relay is idle and would sleep for an hour: only the commit can wake
# it within $max_latency.
my %known;    # ids published here outside the pgbench storm
my $t0 = Time::HiRes::time();
my $probe = publish(q{'orders.created', '{"probe": 1, "nested": {"a": [1, 2]}}'::jsonb,
	'probe-key', '{"h1": "v1", "h2": "v2"}'});
$known{$probe} = 1;
ok($listener->wait_for_id($probe, $max_latency),
	"commit wakes the relay: message delivered within $max_latency s (naptime 1 h)");
my $latency = Time::HiRes::time() - $t0;
note sprintf('commit-to-notification latency: %.3f s', $latency);

my $n = $listener->first_of($probe);
SKIP:
{
	skip 'probe message not received', 12 unless $n;
	is($n->{channel}, 'eo_orders', 'envelope: sent on the destination\'s channel');
	is($n->{sender_pid}, $relay_pid, 'envelope: sent by the relay worker');
	my $e = EONotify->decode($n->{payload});
	is_deeply([ sort keys %$e ],
		[qw(headers id key payload published_at topic)],
		'envelope: id, topic, key, headers, published_at, payload');
	is($e->{id}, $probe, 'envelope: id is the one eo.publish() returned');
	is($e->{topic}, 'orders.created', 'envelope: topic');
	is($e->{key}, 'probe-key', 'envelope: key');
	is_deeply($e->{headers}, { h1 => 'v1', h2 => 'v2' }, 'envelope: headers');
	is_deeply($e->{payload}, { probe => 1, nested => { a => [ 1, 2 ] } },
		'envelope: payload');
	like($e->{published_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/,
		'envelope: published_at is ISO 8601 in UTC');
	is( $node->safe_psql(
			'postgres', qq{
		SELECT published_at = '$e->{published_at}'::timestamptz
		  FROM eo.message_log WHERE id = '$probe'}),
		't', 'envelope: published_at is the message\'s publication time');
	is( $node->safe_psql(
			'postgres',
			qq{SELECT eo.message('$probe') = \$json\$$n->{payload}\$json\$::jsonb}),
		't', 'eo.message(id) is the envelope');
	is( $node->safe_psql(
			'postgres', qq{SELECT topic FROM eo.message_log WHERE id = '$probe'}),
		'orders.created', 'the message moved to eo.message_log');
}

# Text payload, no key, no headers; default channel = the topic.
my $text_id = publish(q{'audit.event', 'plain "text"'::text});
ok($listener->wait_for_id($text_id, $deliver_timeout), 'text payload delivered');
$n = $listener->first_of($text_id);
SKIP:
{
	skip 'text message not received', 5 unless $n;
	my $e = EONotify->decode($n->{payload});
	is($n->{channel}, 'audit.event',
		'destination without channel: notification on the topic\'s channel');
	is($e->{payload}, 'plain "text"', 'text payload arrives as a JSON string');
	ok(exists $e->{key} && !defined $e->{key}, 'no key: "key": null');
	ok(exists $e->{headers} && !defined $e->{headers}, 'no headers: "headers": null');
	ok(!exists $e->{truncated}, 'small payload: not truncated');
}

# A NULL payload, and a topic nobody subscribed to.
my $null_id = publish(q{'orders.null', NULL::jsonb});
$known{$null_id} = 1;
ok($listener->wait_for_id($null_id, $deliver_timeout), 'NULL payload delivered');
$n = $listener->first_of($null_id);
ok($n && do { my $e = EONotify->decode($n->{payload}); exists $e->{payload} && !defined $e->{payload} },
	'NULL payload: "payload": null');
my $unrouted_id = publish(q{'misc.unrouted', '{"nobody": "listens"}'::jsonb});

######################################################################
# Payload size limit
######################################################################

# A 9000-byte payload does not fit a NOTIFY: it arrives truncated, and
# eo.message() returns it whole.
my $big_id = publish(
	q{'orders.big', jsonb_build_object('blob', repeat('x', 9000)), 'big-key'});
$known{$big_id} = 1;
ok($listener->wait_for_id($big_id, $deliver_timeout), 'oversized message delivered');
$n = $listener->first_of($big_id);
SKIP:
{
	skip 'oversized message not received', 5 unless $n;
	my $e = EONotify->decode($n->{payload});
	ok($e->{truncated}, 'oversized payload: "truncated": true');
	ok(!exists $e->{payload}, 'oversized payload: payload left out');
	is_deeply([ sort keys %$e ],
		[qw(headers id key published_at topic truncated)],
		'oversized payload: the other fields are there');
	cmp_ok(length($n->{payload}), '<', 8000, 'oversized payload: notification under 8000 bytes');
	is( $node->safe_psql(
			'postgres', qq{
		SELECT eo.message('$big_id')->'payload' = jsonb_build_object('blob', repeat('x', 9000))
		   AND NOT eo.message('$big_id') ? 'truncated'}),
		't', 'eo.message(id) returns the full payload of a truncated message');
}

# A payload that does not compress is stored out of line in eo.outbox's
# TOAST table; routing must copy it into the log's own, so the log keeps
# it whole after the outbox row and its TOAST chunks are vacuumed away.
my $blob_sql = q{(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g)};
my $toast_id = publish(qq{'orders.big', $blob_sql});
$known{$toast_id} = 1;
ok($listener->wait_for_id($toast_id, $deliver_timeout), 'out-of-line payload delivered');
$node->safe_psql('postgres', 'VACUUM eo.outbox');
is( $node->safe_psql('postgres',
		qq{SELECT eo.message('$toast_id')->>'payload' = $blob_sql
		     FROM eo.message_log WHERE id = '$toast_id' AND pg_column_size(payload_text) >= 9600}),
	't', 'out-of-line payload: whole in the log after the outbox was vacuumed');

# Around the limit: text payloads whose envelope is a few bytes under or
# over 8000 bytes.  Each must arrive once (a NOTIFY that is too long would
# fail), complete exactly when the whole envelope fits.  The length of
# eo.message(id)::text is the length of the whole envelope.
my @size_ids = split /\n/,
  $node->safe_psql('postgres',
	q{SELECT eo.publish('orders.size', repeat('y', g)) FROM generate_series(7800, 7880) g});
$known{$_} = 1 for @size_ids;
my $last_size = $size_ids[-1];
ok($listener->wait_for_id($last_size, $deliver_timeout), 'messages around the size limit delivered');
{
	my %full_len = split /[|\n]/,
	  $node->safe_psql('postgres',
		qq{SELECT id, octet_length(eo.message(id)::text) FROM eo.message_log WHERE topic = 'orders.size'});
	my ($complete, $truncated, $bad) = (0, 0, 0);
	for my $id (@size_ids)
	{
		my $m = $listener->first_of($id);
		if (!$m || $listener->seen_count($id) != 1)
		{
			diag "size-limit message $id arrived " . $listener->seen_count($id) . ' times';
			$bad++;
			next;
		}
		my $e = EONotify->decode($m->{payload});
		if ($e->{truncated})
		{
			$truncated++;
			if ($full_len{$id} < 8000 || exists $e->{payload})
			{
				diag "$id: truncated although its envelope is $full_len{$id} bytes";
				$bad++;
			}
		}
		else
		{
			$complete++;
			if (length($m->{payload}) != $full_len{$id} || $full_len{$id} >= 8000
				|| $e->{payload} !~ /^y+$/)
			{
				diag "$id: complete notification of " . length($m->{payload})
				  . " bytes, envelope $full_len{$id} bytes";
				$bad++;
			}
		}
	}
	is($bad, 0, 'size limit: truncated exactly when the envelope reaches 8000 bytes');
	ok($complete > 0 && $truncated > 0,
		"size limit: both sides of the limit tested ($complete complete, $truncated truncated)");
}

######################################################################
# Storm: concurrent publishers, keyed and unkeyed, some rolling back
######################################################################

# Each transaction bumps its key's counter and publishes a keyed JSON
# message and an unkeyed text message, both tagged with whether the
# transaction will roll back (about 10% do).  The ids go to app.sent in
# the same transaction: after the run app.sent holds exactly the
# committed messages.
my $storm = eo_pgbench(
	$node,
	dbname => 'postgres',
	name => 'storm',
	clients => $clients,
	transactions => $txns_per_client,
	script => qq{
\\set k random(1, $nkeys)
\\set r random(1, 100)
BEGIN;
WITH s AS (UPDATE app.key_seq SET n = n + 1 WHERE key = 'k' || :k RETURNING key, n)
INSERT INTO app.sent (id, key, n)
SELECT eo.publish('orders.created',
                  jsonb_build_object('client', :client_id, 'n', s.n, 'rb', :r <= 10),
                  s.key,
                  jsonb_build_object('client', (:client_id)::text)),
       s.key, s.n
  FROM s;
INSERT INTO app.sent (id)
SELECT eo.publish('orders.unkeyed', 'client ' || :client_id || ' rb ' || (:r <= 10)::text);
\\if :r <= 10
ROLLBACK;
\\else
COMMIT;
\\endif
});
is($storm->{rc}, 0, 'pgbench storm succeeded');
is($storm->{processed}, $clients * $txns_per_client, 'pgbench ran every transaction');

my %committed;    # id => key ('' for unkeyed)
for my $row (split /\n/,
	$node->safe_psql('postgres', q{SELECT id, coalesce(key, ''), coalesce(n, 0) FROM app.sent}))
{
	my ($id, $key, $seq) = split /\|/, $row;
	$committed{$id} = $key;
}
my $ncommitted = keys %committed;
my $rolled_back = 2 * $clients * $txns_per_client - $ncommitted;
note "storm: $ncommitted messages committed, $rolled_back rolled back";
ok($rolled_back > 0, 'some storm transactions rolled back');
ok($ncommitted > 0, 'some storm transactions committed');

# Wait until the relay has routed everything and finished every delivery,
# then for a last message: notifications from the relay arrive in the
# order it commits them, so once this one is here, all are.
$node->poll_query_until(
	'postgres', q{
	SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)
	   AND NOT EXISTS (SELECT 1 FROM eo.delivery WHERE state <> 'dead')})
  or die 'the relay did not drain the outbox';
my $sentinel = publish(q{'orders.sentinel', '{}'::jsonb});
$known{$sentinel} = 1;
ok($listener->wait_for_id($sentinel, $deliver_timeout), 'sentinel after the storm delivered');
ok(!defined $listener->lost, 'listener stayed connected')
  or diag $listener->lost;

{
	my @missing = grep { !$listener->seen_count($_) } sort keys %committed;
	is(scalar @missing, 0, 'every committed message arrived')
	  or diag 'missing: ' . join(' ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);

	my @dups = grep { $listener->seen_count($_) > 1 } sort keys %{ $listener->seen };
	is(scalar @dups, 0, 'no message arrived twice (no crash: exactly once)')
	  or diag 'duplicates: ' . join(' ', @dups[ 0 .. ($#dups < 9 ? $#dups : 9) ]);

	my ($phantom, $rb, $bad_envelope, $wrong_sender) = (0, 0, 0, 0);
	my (%last_id, %last_n, $order_errors);
	$order_errors = 0;
	my %seen_once;
	for my $m ($listener->notifications)
	{
		$wrong_sender++ if $m->{sender_pid} != $relay_pid;
		next unless $m->{channel} eq 'eo_orders';
		my $id = $m->{id} // '';
		next if $seen_once{$id}++;
		my $e = EONotify->decode($m->{payload});
		if (!exists $committed{$id} && !$known{$id})
		{
			$phantom++;
			diag "arrived but never committed: $m->{payload}" if $phantom <= 5;
		}
		if ($e->{topic} eq 'orders.created' && !$known{$id})
		{
			$rb++ if $e->{payload}{rb};
			$bad_envelope++
			  unless defined $e->{key}
			  && ($committed{$id} // '') eq $e->{key}
			  && $e->{headers}{client} eq "$e->{payload}{client}";

			# Per key: ids increase and the application's counter runs
			# 1, 2, 3... in arrival order.
			my $k = $e->{key} // '';
			if (defined $last_id{$k} && !($id gt $last_id{$k}))
			{
				$order_errors++;
				diag "key $k: $id arrived after $last_id{$k}";
			}
			if (($last_n{$k} // 0) + 1 != $e->{payload}{n})
			{
				$order_errors++;
				diag "key $k: message number $e->{payload}{n} arrived after "
				  . ($last_n{$k} // 0);
			}
			$last_id{$k} = $id;
			$last_n{$k} = $e->{payload}{n};
		}
		elsif ($e->{topic} eq 'orders.unkeyed')
		{
			$rb++ if $e->{payload} =~ / rb true$/;
			$bad_envelope++ if defined $e->{key} || defined $e->{headers};
		}
	}
	is($phantom, 0, 'only committed messages arrived');
	is($rb, 0, 'no message of a rolled-back transaction arrived');
	is($bad_envelope, 0, 'storm envelopes carry their key and headers');
	is($order_errors, 0, 'per key, messages arrived in publish (id and commit) order');
	is($wrong_sender, 0, 'every notification came from the relay worker');
	is( scalar(grep { $_->{channel} eq 'misc.unrouted' } $listener->notifications),
		0, 'a topic without subscription is not sent anywhere');
	is( $node->safe_psql(
			'postgres', qq{SELECT count(*) FROM eo.unrouted WHERE id = '$unrouted_id'}),
		'1', 'it is listed in eo.unrouted');
}

# eo.stats counts what the listener received.
{
	my $orders_received =
	  grep { $_->{channel} eq 'eo_orders' } $listener->notifications;
	is( $node->safe_psql(
			'postgres', q{
		SELECT delivered_total || '/' || pending || '/' || in_flight || '/' || retrying || '/' || dead
		  FROM eo.stats WHERE destination = 'orders'}),
		"$orders_received/0/0/0/0",
		"eo.stats: orders delivered_total = $orders_received received, nothing pending");
	is( $node->safe_psql(
			'postgres', q{SELECT delivered_total FROM eo.stats WHERE destination = 'audit'}),
		'1', 'eo.stats: audit delivered_total = 1');
	is( $node->safe_psql(
			'postgres', q{
		SELECT r.delivered_since_start = (SELECT sum(delivered_total) FROM eo.stats)
		  FROM eo.relay_status r WHERE r.datname = 'postgres'}),
		't', 'eo.relay_status: delivered_since_start = sum of delivered_total');
}

######################################################################
# Idle relay: no transaction held open while waiting
######################################################################

$node->poll_query_until(
	'postgres', q{
	SELECT r.state = 'idle' AND a.state = 'idle'
	  FROM eo.relay_status r JOIN pg_stat_activity a ON a.pid = r.pid
	 WHERE r.datname = 'postgres'})
  or die 'the relay did not become idle';
is( $node->safe_psql(
		'postgres', qq{
	SELECT state, xact_start IS NULL, backend_xid IS NULL, backend_xmin IS NULL,
	       wait_event_type
	  FROM pg_stat_activity WHERE pid = $relay_pid}),
	'idle|t|t|t|Extension',
	'idle relay: pg_stat_activity idle, xact_start NULL, no xid or xmin, waiting on its latch');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_locks WHERE pid = $relay_pid"),
	'0', 'idle relay holds no locks');

is(eo_relay_pid($node, 'postgres'), $relay_pid, 'the relay worker never restarted');
unlike(slurp_file($node->logfile), qr/eo_processing relay of database \d+: /,
	'the relay logged no error');

$listener->close;
$node->stop;

done_testing();
