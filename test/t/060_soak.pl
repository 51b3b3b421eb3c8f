# Soak: EO_SOAK_SECONDS (default 60; scripts/soak runs 600) of 8 pgbench
# clients mixing what applications do with eo_processing, against a LISTEN
# client and two webhook receivers, one of which flaps.
#
# The workload (one pgbench script, throttled to a rate this machine
# sustains, so that what is measured is the extension and not a backlog):
#
#   40%  inbox: eo.process of a message id drawn from a small range, so that
#        duplicates arrive; the business work (an UPDATE and an INSERT) only
#        when it returns true; 10% of these transactions roll back after the
#        work, so that the message is processed again later.
#   40%  publishing: a business row per message and eo.publish of a keyed
#        message (a "seq" per key, bumped in the same transaction) and an
#        unkeyed one; 10% roll back after publishing and must never arrive.
#        Every message goes to the LISTEN client and to both receivers.
#   20%  idempotency keys: eo.key_begin of a key drawn from a small range
#        (replays: completed and in_progress answers), the local effect with
#        eo.key_checkpoint, a simulated external call, eo.key_complete with
#        the fence.  5% of the holders abandon the key after the effect with
#        a one-second lease, so that later callers resume it.
#
# Meanwhile the flapping receiver cycles through healthy, answering 500,
# dropping half of the connections after applying, and stopped (SIGTERM or
# SIGKILL: connection refused) then restarted on the same port, a few
# seconds each.  Its journal keeps its deduplication across restarts, as a
# real receiver's database would.  Retention windows are seconds, and the
# relay does its housekeeping every second.
#
# At the end, once the load has stopped, the receiver is healthy and the
# relay has drained: every committed message arrived at each destination
# (nothing is dead), nothing rolled back arrived, nothing was applied twice
# by a receiver, keys kept their order, signatures verified; every inbox
# message had its effect exactly once; every key's effect happened once and
# every replay got the first run's response, and abandoned keys can be
# resumed; the relay's memory did not grow between 20% of the run and the
# end; the extension's tables are bounded by their retention windows, not
# by the volume.  Only these bounds depend on timing; every wait has a
# generous deadline.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use List::Util ();
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EONotify;
use EOWebhook qw(eo_webhook_secret eo_create_http_destination);

my $seconds = $ENV{EO_SOAK_SECONDS} // 60;
die "EO_SOAK_SECONDS must be a number of seconds, at least 20"
  unless $seconds =~ /^\d+$/ && $seconds >= 20;
my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $clients = 8;
my $rate = 200;         # transactions per second, all clients together
my $nkeys = 50;         # message keys
my $inbox_bucket = 2;   # seconds: an inbox id is drawn from 60 per bucket
my $key_bucket = 5;     # seconds: an idempotency key from 20 per bucket

# Retention windows, in seconds.  A duplicate of an inbox id arrives within
# its bucket, and a key is used within its bucket, both far inside their
# windows (a duplicate after the window would rightly be processed again).
my %retention = (outbox => 2, dedup => 10, key => 15);

my $node = eo_new_node(
	'soak', conf => qq{
max_connections = 40
# Hundreds of thousands of statements: do not log them.
log_statement = none
# Autovacuum reuses the space of purged rows; housekeeping every second.
autovacuum_naptime = 1s
eo.relay_naptime = 1
eo.outbox_retention = '$retention{outbox}s'
eo.dedup_retention = '$retention{dedup}s'
eo.key_retention = '$retention{key}s'
});

######################################################################
# Destinations, receivers and the application's tables
######################################################################

my $steady_secret = eo_webhook_secret();
my $flappy_secret = eo_webhook_secret();
my $steady = EOWebhook->new(
	name => 'steady',
	secrets => [$steady_secret],
	seed => 11,
	journal => 1);
# Restarted on its port: one outside the range of outgoing connections.
my $flappy = EOWebhook->new(
	name => 'flappy',
	secrets => [$flappy_secret],
	seed => 12,
	journal => 1,
	port => PostgreSQL::Test::Cluster::get_free_port());
# The steady receiver loses an answer now and then: duplicates there too.
$steady->faults({ drop_after_apply => 0.01 });

# Short delays and many attempts: nothing may die of the flapping, and
# everything drains soon after it stops.
my %retry = (max_attempts => 1000, retry_delays => [ '50ms', '100ms', '200ms', '500ms', '1s' ]);
$node->safe_psql('postgres', 'CREATE EXTENSION eo_processing');
eo_create_http_destination($node, 'postgres', $_->[0],
	{ url => $_->[1]->url('/soak'), signing_secret => $_->[2], timeout_ms => 2000, concurrency => 8, %retry },
	'soak.*')
  for ([ 'steady', $steady, $steady_secret ], [ 'flappy', $flappy, $flappy_secret ]);
$node->safe_psql(
	'postgres', qq{
SELECT eo.create_destination('listener', 'notify',
	'{"channel": "eo_soak", "max_attempts": 1000, "retry_delays": ["100ms", "500ms"]}');
SELECT eo.subscribe('soak.*', 'listener');

CREATE SCHEMA app;
-- Publishing: the business row of each committed message (eo.message_log
-- forgets them after $retention{outbox} s), and the last seq of each key.
CREATE TABLE app.orders (msg_id uuid PRIMARY KEY, topic text NOT NULL, key text, seq integer);
CREATE TABLE app.key_seq (key text PRIMARY KEY, n integer NOT NULL);
INSERT INTO app.key_seq SELECT 'k' || g, 0 FROM generate_series(1, $nkeys) g;

-- Inbox: the business work (no unique constraint: the checks count), and
-- what eo.process answered in every committed transaction.
CREATE TABLE app.account (id integer PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO app.account SELECT g, 0 FROM generate_series(1, 100) g;
CREATE TABLE app.effect (msg_id text NOT NULL);
CREATE TABLE app.inbox_call (msg_id text NOT NULL, first boolean NOT NULL);

-- Idempotency keys: every eo.key_begin answer, the local effect of each
-- request (a charge), and holders that found their lease taken over.
CREATE TABLE app.key_call (key text NOT NULL, state text NOT NULL, recovery_point text,
                           response jsonb, fence bigint, abandon boolean NOT NULL);
CREATE TABLE app.charge (id bigint GENERATED ALWAYS AS IDENTITY, key text NOT NULL, fence bigint NOT NULL);
CREATE TABLE app.lease_lost (key text NOT NULL, fence bigint NOT NULL, step text NOT NULL);
-- The request of a key (the same on every call of the key).
CREATE FUNCTION app.request(k text) RETURNS jsonb LANGUAGE sql IMMUTABLE
AS \$\$ SELECT jsonb_build_object('amount', split_part(k, '-', 3)::integer) \$\$;
-- Step 1: the charge and the recovery point "charged", in one transaction.
CREATE FUNCTION app.charge(k text, f bigint) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO app.charge (key, fence) VALUES (k, f);
    PERFORM eo.key_checkpoint(k, 'charged', fence => f);
EXCEPTION WHEN SQLSTATE 'IK002' THEN
    -- Taken over: the charge rolls back with the checkpoint.
    INSERT INTO app.lease_lost VALUES (k, f, 'charge');
END \$\$;
-- Step 2: the response names the key's charge.
CREATE FUNCTION app.complete(k text, f bigint) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM eo.key_complete(k, jsonb_build_object('status', 201, 'charge',
                                (SELECT min(c.id) FROM app.charge c WHERE c.key = k)), fence => f);
EXCEPTION WHEN SQLSTATE 'IK002' THEN
    INSERT INTO app.lease_lost VALUES (k, f, 'complete');
END \$\$;

-- For the checks: what each destination received, loaded from files.
CREATE TABLE app.raw (n bigint GENERATED ALWAYS AS IDENTITY, line text NOT NULL);
CREATE TABLE app.arrival (dest text NOT NULL, n bigint NOT NULL, id uuid NOT NULL, topic text,
                          key text, seq integer, rb boolean, order_violation boolean);
CREATE TABLE app.request (dest text NOT NULL, outcome text, status integer, fault text);
});
eo_wait_relay($node, 'postgres') or die 'the relay did not start';
my $relay_pid = eo_relay_pid($node, 'postgres');
my $listener = EONotify->new($node, 'postgres', 'eo_soak');

######################################################################
# The load
######################################################################

my $script = qq{
\\set r random(1, 100)
\\if :r <= 40
\\set m random(1, 60)
\\set acct random(1, 100)
\\set fail random(1, 100)
BEGIN;
SELECT extract(epoch FROM clock_timestamp())::bigint / $inbox_bucket AS bucket \\gset
SELECT eo.process('in-' || :bucket || '-' || :m, 'soak')::integer AS first \\gset
INSERT INTO app.inbox_call (msg_id, first) VALUES ('in-' || :bucket || '-' || :m, :first = 1);
\\if :first
UPDATE app.account SET balance = balance + 1 WHERE id = :acct;
INSERT INTO app.effect (msg_id) VALUES ('in-' || :bucket || '-' || :m);
\\endif
\\if :fail <= 10
ROLLBACK;
\\else
COMMIT;
\\endif
\\elif :r <= 80
\\set k random(1, $nkeys)
\\set rb random(1, 100)
BEGIN;
WITH s AS (UPDATE app.key_seq SET n = n + 1 WHERE key = 'k' || :k RETURNING key, n)
INSERT INTO app.orders (msg_id, topic, key, seq)
SELECT eo.publish('soak.keyed', jsonb_build_object('seq', s.n, 'rb', :rb <= 10), s.key), 'soak.keyed', s.key, s.n
  FROM s;
INSERT INTO app.orders (msg_id, topic)
SELECT eo.publish('soak.plain', jsonb_build_object('rb', :rb <= 10, 'pad', repeat('p', 100))), 'soak.plain';
\\if :rb <= 10
ROLLBACK;
\\else
COMMIT;
\\endif
\\else
\\set ik random(1, 20)
\\set ab random(1, 100)
SELECT extract(epoch FROM clock_timestamp())::bigint / $key_bucket AS kb \\gset
WITH b AS (SELECT * FROM eo.key_begin('ik-' || :kb || '-' || :ik, app.request('ik-' || :kb || '-' || :ik),
                                      lease => CASE WHEN :ab <= 5 THEN interval '1 second' ELSE interval '5 minutes' END)),
     l AS (INSERT INTO app.key_call
           SELECT 'ik-' || :kb || '-' || :ik, state, recovery_point, response, fence, :ab <= 5 FROM b)
SELECT (state IN ('started', 'resumed'))::integer AS own,
       coalesce((recovery_point = 'started')::integer, 0) AS fresh, coalesce(fence, 0) AS fence
  FROM b \\gset
\\if :own
\\if :fresh
SELECT app.charge('ik-' || :kb || '-' || :ik, :fence);
\\endif
\\if :ab > 5
\\sleep 10 ms
SELECT app.complete('ik-' || :kb || '-' || :ik, :fence);
\\endif
\\endif
\\endif
};

# Row versions written to the extension's tables (the slots of the log
# counted as one table), their sizes and the
# relay's memory.
my @tables = qw(outbox message_log delivery http_attempt inbox idempotency_key);
my $tables_sql = 'SELECT ' . join(', ',
	map {
		"pg_total_relation_size('eo.$_') + coalesce((SELECT sum(pg_total_relation_size(relid))"
		  . " FROM pg_partition_tree('eo.$_') WHERE relid <> 'eo.$_'::regclass), 0),"
		  . " (SELECT count(*) FROM eo.$_)"
	} @tables);
sub sample
{
	my ($t) = @_;
	my %s = (t => $t);
	my @v = split /\|/, $node->safe_psql('postgres', $tables_sql);
	for my $table (@tables)
	{
		($s{size}{$table}, $s{rows}{$table}) = splice(@v, 0, 2);
	}
	my $st = eo_proc_status($relay_pid) // {};
	$s{rss} = $st->{VmRSS} // 0;
	$s{anon} = $st->{RssAnon} // 0;
	$s{shmem} = $st->{RssShmem} // 0;
	note sprintf('%5.1fs relay RssAnon %5d kB RssShmem %6d kB VmRSS %6d kB; %s',
		$t, $s{anon}, $s{shmem}, $s{rss},
		join(', ', map { sprintf('%s %d rows %d kB', $_, $s{rows}{$_}, $s{size}{$_} / 1024) } @tables));
	return \%s;
}

# The flapping receiver's cycle: [mode, seconds].  The first one ends
# before the first memory sample (at 20% of at least 60 s), so that the
# relay has been through each failure and each recovery by then.
my @cycle = ([ stopped => 3 ], [ healthy => 2 ], [ fail_500 => 2 ], [ healthy => 2 ],
	[ drop => 2 ], [ healthy => 2 ]);
my %flaps;
sub flap
{
	my ($mode) = @_;
	$flaps{$mode}++;
	if ($mode eq 'stopped')
	{
		# Every other stop is a crash.
		$flappy->stop(kill => $flaps{stopped} % 2 == 0);
		return;
	}
	$flappy->start unless $flappy->running;
	$flappy->force_status($mode eq 'fail_500' ? 500 : undef);
	$flappy->faults($mode eq 'drop' ? { drop_after_apply => 0.5 } : {});
	return;
}

my $pgbench = eo_pgbench_start(
	$node,
	dbname => 'postgres',
	name => 'soak',
	clients => $clients,
	duration => $seconds,
	timeout => $seconds + $timeout,
	options => [ '--rate' => $rate ],
	script => $script);
my $t0 = Time::HiRes::time();
my ($at20, @samples);
my ($step, $next_flap, $next_sample) = (0, $t0, $t0 + 5);
while ((my $now = Time::HiRes::time()) < $t0 + $seconds)
{
	if ($now >= $next_flap)
	{
		my ($mode, $length) = @{ $cycle[ $step++ % @cycle ] };
		flap($mode);
		$next_flap = $now + $length;
	}
	if (!$at20 && $now >= $t0 + 0.2 * $seconds)
	{
		$at20 = sample($now - $t0);
		$at20->{contexts} = eo_memory_contexts($node, $relay_pid);
		push @samples, $at20;
	}
	elsif ($now >= $next_sample)
	{
		push @samples, sample($now - $t0);
		$next_sample += 5;
	}
	$listener->drain(0.1);
}
my $load = eo_pgbench_finish($pgbench);
my $load_seconds = Time::HiRes::time() - $t0;
push @samples, my $at_end = sample($load_seconds);
# Rows inserted into each table during the load, and row versions written
# (inserted or updated), committed or not.
my (%inserted, %written);
for (split /\n/,
	$node->safe_psql('postgres',
		q{SELECT regexp_replace(relname, '^(message_log)_[0-9]+$', '\1'),
		         sum(n_tup_ins), sum(n_tup_ins + n_tup_upd)
		    FROM pg_stat_user_tables WHERE schemaname = 'eo' GROUP BY 1}))
{
	my ($table, $ins, $versions) = split /\|/;
	($inserted{$table}, $written{$table}) = ($ins, $versions);
}

is($load->{rc}, 0, 'the clients ran without error');
my ($tps) = $load->{stdout} =~ /^tps = ([\d.]+)/m;

# One more key abandoned after its effect, so that the end always finds
# one to resume (the load's are mostly resumed by later callers).
$node->safe_psql(
	'postgres', q{
	WITH b AS (SELECT * FROM eo.key_begin('ik-0-1', app.request('ik-0-1'), lease => '1 second'))
	INSERT INTO app.key_call SELECT 'ik-0-1', state, recovery_point, response, fence, true FROM b;
	SELECT app.charge('ik-0-1', fence) FROM app.key_call WHERE key = 'ik-0-1'});

######################################################################
# Drain
######################################################################

flap('healthy');
ok(eo_wait_drained($node, 'postgres'), 'the relay drains the outbox once the flapping stops');
my $t_drained = Time::HiRes::time() - $t0;

my $committed = $node->safe_psql('postgres', 'SELECT count(*) FROM app.orders');
my $committed_ids = eo_id_set($node, 'postgres', 'SELECT msg_id FROM app.orders');
ok( $listener->wait_until(
		sub { !grep { !$listener->seen_count($_) } keys %$committed_ids }, $timeout),
	'the listener received every committed message');
for my $r ($steady, $flappy)
{
	ok($r->wait_for(sub { $_[0]{applied} >= $committed }, $timeout),
		$r->name . ' applied as many messages as were committed')
	  or diag explain $r->last_stats;
}
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM eo.stats WHERE dead <> 0 OR NOT enabled}),
	'0', 'no delivery is dead and every destination is enabled');

######################################################################
# What arrived
######################################################################

# The listener's notifications, in arrival order.
my $notified = $node->basedir . '/notified.jsonl';
open(my $fh, '>', $notified) or die "cannot write $notified: $!";
print $fh "$_->{payload}\n" for $listener->notifications;
close $fh;
load_arrivals('listener', $notified, q{
	SELECT 'listener', n, (line::jsonb->>'id')::uuid, line::jsonb->>'topic', line::jsonb->>'key',
	       (line::jsonb->'payload'->>'seq')::integer, (line::jsonb->'payload'->>'rb')::boolean, false
	  FROM app.raw});
# What each receiver applied (its journal, over all its runs) and every
# request it answered (its request log).
for my $r ($steady, $flappy)
{
	my $name = $r->name;
	load_arrivals($name, $r->journal_file, qq{
		SELECT '$name', (line::jsonb->>'order')::bigint, (line::jsonb->>'id')::uuid,
		       line::jsonb->>'topic', line::jsonb->>'key', (line::jsonb->>'seq')::integer,
		       ((line::jsonb->>'body')::jsonb->>'rb')::boolean, (line::jsonb->>'order_violation')::boolean
		  FROM app.raw});
	load_arrivals($name, $r->request_log, qq{
		SELECT '$name', line::jsonb->>'outcome', (line::jsonb->>'status')::integer, line::jsonb->>'fault'
		  FROM app.raw}, 'app.request');
}

# load_arrivals($dest, $file, $select, $table): lines of a file through
# app.raw into $table (default app.arrival) by $select.
sub load_arrivals
{
	my ($dest, $file, $select, $table) = @_;
	eo_copy_lines($node, 'postgres', 'app.raw (line)', $file);
	$node->safe_psql('postgres',
		'INSERT INTO ' . ($table // 'app.arrival') . " $select; TRUNCATE app.raw");
	return;
}

my %duplicates;
for my $dest (qw(listener steady flappy))
{
	my ($received, $missing, $unexpected, $rolled_back, $twice, $mismatched, $disorder,
		$flagged) = split /\|/,
	  $node->safe_psql(
		'postgres', qq{
		WITH a AS (SELECT * FROM app.arrival WHERE dest = '$dest'),
		     first AS (SELECT DISTINCT ON (id) * FROM a ORDER BY id, n)
		SELECT (SELECT count(*) FROM a),
		       (SELECT count(*) FROM app.orders o WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.id = o.msg_id)),
		       (SELECT count(*) FROM first f WHERE NOT EXISTS (SELECT 1 FROM app.orders o WHERE o.msg_id = f.id)),
		       (SELECT count(*) FROM a WHERE rb),
		       (SELECT count(*) - count(DISTINCT id) FROM a),
		       (SELECT count(*) FROM first f JOIN app.orders o ON o.msg_id = f.id
		         WHERE (f.topic, f.key, f.seq) IS DISTINCT FROM (o.topic, o.key, o.seq)),
		       (SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY n) AS prev
		                                FROM first WHERE key IS NOT NULL) x WHERE seq <= prev),
		       (SELECT count(*) FROM a WHERE order_violation)});
	note "$dest: $received arrivals for $committed committed messages";
	is($missing, 0, "$dest: every committed message arrived");
	is($unexpected, 0, "$dest: nothing but committed messages arrived");
	is($rolled_back, 0, "$dest: no message of a rolled-back transaction arrived");
	is($mismatched, 0, "$dest: topic, key and seq arrived as published");
	is($disorder, 0, "$dest: the messages of each key arrived in seq order");
	if ($dest eq 'listener')
	{
		# NOTIFY is at least once; without a crash nothing is sent twice,
		# but the listener does not deduplicate: counted, not asserted.
		$duplicates{$dest} = $twice;
		next;
	}
	is($twice, 0, "$dest: no message was applied twice (across its restarts)");
	is($flagged, 0, "$dest: the receiver saw no order violation");
	my ($dup, $bad_signature, $requests) = split /\|/,
	  $node->safe_psql(
		'postgres', qq{
		SELECT count(*) FILTER (WHERE outcome = 'duplicate'),
		       count(*) FILTER (WHERE outcome = 'bad_signature'), count(*)
		  FROM app.request WHERE dest = '$dest'});
	is($bad_signature, 0, "$dest: every signature verified");
	$duplicates{$dest} = "$dup of $requests requests";
}
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM app.request WHERE outcome = 'duplicate'}),
	'>', 0, 'duplicates arrived at the receivers and were absorbed');

######################################################################
# Inbox: every effect exactly once
######################################################################

my ($calls, $absorbed, $ids, $effects, $effect_ids, $balance, $not_once) = split /\|/,
  $node->safe_psql(
	'postgres', q{
	SELECT (SELECT count(*) FROM app.inbox_call),
	       (SELECT count(*) FROM app.inbox_call WHERE NOT first),
	       (SELECT count(DISTINCT msg_id) FROM app.inbox_call),
	       (SELECT count(*) FROM app.effect),
	       (SELECT count(DISTINCT msg_id) FROM app.effect),
	       (SELECT sum(balance) FROM app.account),
	       (SELECT count(*) FROM (SELECT msg_id FROM app.inbox_call GROUP BY msg_id
	                               HAVING count(*) FILTER (WHERE first) <> 1) x)});
is($not_once, 0, 'inbox: eo.process returned true exactly once per id in committed transactions');
is($effects, $ids, 'inbox: one effect per processed id');
is($effect_ids, $ids, 'inbox: no id had its effect twice');
is($balance, $ids, 'inbox: the business update ran once per processed id');
cmp_ok($absorbed, '>', 0, 'inbox: duplicates arrived and were absorbed');

######################################################################
# Idempotency keys: effect once, replays get the first response
######################################################################

my %replies = map { split /\|/ } split /\n/,
  $node->safe_psql('postgres', q{SELECT state, count(*) FROM app.key_call GROUP BY state});
$replies{$_} //= 0 for qw(started resumed completed in_progress);
cmp_ok($replies{$_}, '>', 0, "keys: some eo.key_begin answered $_")
  for qw(started resumed completed in_progress);
# The response a key must have: its one charge.
my $expected_response = q{(SELECT jsonb_build_object('status', 201, 'charge', min(ch.id))
	                           FROM app.charge ch WHERE ch.key = %s)};
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM (SELECT key FROM app.charge GROUP BY key HAVING count(*) > 1) x}),
	'0', 'keys: no key had its effect twice');
is( $node->safe_psql(
		'postgres', sprintf(q{
	SELECT count(*) FROM app.key_call c
	 WHERE c.state = 'completed'
	   AND ((SELECT count(*) FROM app.charge ch WHERE ch.key = c.key) <> 1
	        OR c.response IS DISTINCT FROM %s)}, sprintf($expected_response, 'c.key'))),
	'0', 'keys: every completed replay carried the first run\'s response, naming its one effect');
is( $node->safe_psql(
		'postgres', sprintf(q{
	SELECT count(*) FROM eo.idempotency_key k
	 WHERE k.state = 'completed' AND k.response IS DISTINCT FROM %s}, sprintf($expected_response, 'k.key'))),
	'0', 'keys: every completed key (not yet purged) stores that response');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM eo.idempotency_key k
	 WHERE k.state = 'in_progress'
	   AND NOT EXISTS (SELECT 1 FROM app.key_call c WHERE c.key = k.key AND c.fence = k.fence AND c.abandon)}),
	'0', 'keys: no key is left in progress but those abandoned on purpose');

# The abandoned keys nobody came back for: resumable once their lease
# expired, at the recovery point of their effect, and then complete.
my @abandoned = split /\n/,
  $node->safe_psql('postgres',
	q{SELECT key || '|' || fence FROM eo.idempotency_key WHERE state = 'in_progress' ORDER BY key});
$node->poll_query_until('postgres',
	q{SELECT NOT EXISTS (SELECT 1 FROM eo.idempotency_key
	                      WHERE state = 'in_progress' AND lease_expires_at > clock_timestamp())})
  or die 'leases of abandoned keys did not expire';
my $resumed_ok = 0;
for (@abandoned)
{
	my ($key, $fence) = split /\|/;
	my ($state, $point, $new_fence) = split /\|/,
	  $node->safe_psql('postgres',
		qq{SELECT state, recovery_point, fence FROM eo.key_begin('$key', app.request('$key'))});
	next unless $state eq 'resumed' && $point eq 'charged' && $new_fence > $fence;
	$node->safe_psql('postgres', "SELECT app.complete('$key', $new_fence)");
	$resumed_ok++
	  if $node->safe_psql(
		'postgres', sprintf(q{
		SELECT b.state = 'completed' AND b.response = %s
		  FROM eo.key_begin('%s', app.request('%s')) b}, sprintf($expected_response, "'$key'"), $key, $key))
	  eq 't';
}
is($resumed_ok, scalar @abandoned,
	'keys: each abandoned key resumes after its lease (recovery point "charged", a larger fence) and completes');
is($node->safe_psql('postgres', q{SELECT count(*) FROM eo.idempotency_key WHERE state = 'in_progress'}),
	'0', 'keys: none is left in progress');

######################################################################
# The relay's memory and the tables' sizes
######################################################################

is(eo_relay_pid($node, 'postgres'), $relay_pid, 'the same relay worker ran through the soak');
my $final = sample(Time::HiRes::time() - $t0);
$final->{contexts} = eo_memory_contexts($node, $relay_pid);
ok($at20->{contexts} && $final->{contexts}, 'the relay logged its memory contexts when asked');
$_->{contexts} //= { total => 0 } for $at20, $final;

# The relay's memory at 20% of the run, when every code path (routing,
# NOTIFY, webhooks, each kind of failure, housekeeping) has run many times
# and the caches have filled, and at the end.  Its loop allocates in a
# memory context reset every iteration, so its memory contexts (palloc)
# must stay within a few blocks (512 kB) of where they were.  Its private
# memory (RssAnon: the heap, malloc's included, for libcurl's bounded pool
# of connections; not the shared buffers) may still creep while malloc's
# arena settles, but by less than 2 MB: a leak of 10 bytes per delivery
# or HTTP attempt would exceed that within the 600 s run (about 1.5
# million of them), one of 100 bytes within the 60 s one.
my $anon_growth = $final->{anon} - $at20->{anon};
cmp_ok($anon_growth, '<', 2048,
	"relay private memory (RssAnon) is flat: $at20->{anon} kB at 20%, $final->{anon} kB at the end");
my $ctx_growth = $final->{contexts}{total} - $at20->{contexts}{total};
cmp_ok($ctx_growth, '<', 512 * 1024,
	"relay memory contexts are flat: $at20->{contexts}{total} bytes at 20%, $final->{contexts}{total} at the end");

# Each table holds the rows of its retention window (0: until routed or
# delivered), plus what waits for the flapping receiver (an outage of 3 s
# and a retry delay of 1 s), for housekeeping (every second) and for
# autovacuum (naptime 1 s), all slower on a loaded machine: at most 20 s
# more, at the rate rows were inserted during the load.  Its size is bounded likewise, at the rate row
# versions were written (updates included), 512 bytes each (a row of
# these tables with its index entries takes 100 to 300), plus 512 kB for
# the pages every table and index has.  Without the purges both would grow
# with the volume: the rows written are printed next to the bounds.  (In
# the 60 s run the volume is only a few windows and the row bounds are the
# sharper check; the 600 s run holds ten times the volume to the same
# bounds.)
my %window = (outbox => 0, message_log => $retention{outbox}, delivery => 0,
	http_attempt => $retention{outbox}, inbox => $retention{dedup},
	idempotency_key => $retention{key});
my $slack = 20;
my @size_notes;
for my $table (@tables)
{
	my $seconds_kept = $window{$table} + $slack;
	my $peak_rows = List::Util::max(map { $_->{rows}{$table} } @samples);
	my $row_bound = int($inserted{$table} / $load_seconds * $seconds_kept);
	my $peak = List::Util::max(map { $_->{size}{$table} } @samples);
	my $bound = int(512 * 1024 + $written{$table} / $load_seconds * $seconds_kept * 512);
	push @size_notes, sprintf('eo.%s: at most %d rows (bound %d = %d s of %.0f inserts/s; %d inserted in all), '
		  . '%d kB (bound %d kB; %d kB at the end of the load, %d kB drained; %d row versions written)',
		$table, $peak_rows, $row_bound, $seconds_kept, $inserted{$table} / $load_seconds,
		$inserted{$table}, $peak / 1024, $bound / 1024, $at_end->{size}{$table} / 1024,
		$final->{size}{$table} / 1024, $written{$table});
	cmp_ok($peak_rows, '<=', $row_bound, "eo.$table holds no more rows than its retention window's");
	cmp_ok($peak, '<=', $bound, "eo.$table stays within its retention window's size");
}

######################################################################
# Summary
######################################################################

my $flap_note = join(', ', map { "$_ $flaps{$_}" } sort keys %flaps);
note join("\n", 'soak summary:',
	sprintf('  %d s of load (%d clients, --rate %d): %d transactions, %.0f TPS, drained %.1f s after the start',
		$seconds, $clients, $rate, $load->{processed} // 0, $tps // 0, $t_drained),
	sprintf('  messages: %d committed (each to 3 destinations), %d rolled back after publishing (none arrived); '
		  . 'listener duplicates: %d', $committed, $inserted{outbox} - $committed, $duplicates{listener}),
	"  receivers: duplicates absorbed: steady $duplicates{steady}, flappy $duplicates{flappy}",
	"  flappy receiver: $flap_note (every other stop a SIGKILL)",
	sprintf('  inbox: %d committed calls, %d ids processed, %d duplicates absorbed, %d effects; '
		  . '%d first records rolled back with their transaction', $calls, $ids, $absorbed, $effects,
		$inserted{inbox} - $ids),
	sprintf('  keys: eo.key_begin answered %s; %d holders found their lease taken over; '
		  . '%d abandoned keys resumed at the end',
		join(', ', map { "$_ $replies{$_}" } sort keys %replies),
		$node->safe_psql('postgres', 'SELECT count(*) FROM app.lease_lost'), scalar @abandoned),
	sprintf('  relay memory: RssAnon %d kB at 20%%, %d kB at the end of the load, %d kB drained; '
		  . 'memory contexts %d / %d bytes; VmRSS %d / %d / %d kB (shared buffers touched: %d / %d / %d kB)',
		$at20->{anon}, $at_end->{anon}, $final->{anon}, $at20->{contexts}{total}, $final->{contexts}{total},
		$at20->{rss}, $at_end->{rss}, $final->{rss}, $at20->{shmem}, $at_end->{shmem}, $final->{shmem}),
	map { "  $_" } @size_notes);

$listener->close;
$steady->stop;
$flappy->stop;
$node->stop;

done_testing();
