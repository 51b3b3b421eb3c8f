# Streaming replication failover with the inbox and the outbox under load.
#
# A primary (library preloaded, relay running) streams to a hot standby.
# Four application sessions call app.work(msg_id) without pause: it
# processes the message (eo.process), writes a business row, publishes a
# message (eo.publish, keyed) and records its id in app.sent, all in one
# transaction; some calls are duplicate deliveries of an acknowledged id,
# some fail after publishing (the transaction rolls back) and are sent
# again.  Two notify destinations subscribe to every message, each on its
# own channel: "live" is delivered by the old primary to a listener there,
# "held" is disabled from the start, so that its deliveries wait (pending)
# and can only reach a listener of the promoted server.  The relay must not
# run on the standby.  Then the primary's postmaster is killed (kill -9)
# with statements in flight, and the standby is promoted: its relay must
# start by itself, without a restart, and deliver what the promoted server
# has; the inbox records it has must still deduplicate.
#
# What each mode guarantees, and what is asserted:
#
# Synchronous replication (synchronous_standby_names names the standby,
# synchronous_commit = on).  A commit is acknowledged to the client, and
# becomes visible to other sessions (the relay's included), only after the
# standby has flushed its WAL.  So the promoted server has every
# acknowledged eo.process record and eo.publish message, with its business
# row, and every message the old relay could ever have routed.  The relay
# commits asynchronously, but each later synchronous commit carries its
# earlier routing transactions to the standby too: deliveries the old
# primary made before the last acknowledged commit are known to the
# promoted server and are not sent again.  Asserted: every acknowledged id
# is on the promoted server; every message there reaches a listener, once
# per destination; nothing of a rolled-back transaction is ever sent.
#
# Asynchronous replication.  A commit is acknowledged once it is durable on
# the primary; the standby may lack the tail (here replication is cut
# before the last part of the load, so the tail is certain).  Acknowledged
# commits in the tail are lost, and messages the old primary delivered from
# the tail are unknown to the promoted server; deliveries whose routing
# did not reach the standby are sent again (at least once).  What the
# promoted server has is consistent (business rows, inbox records and
# messages together or not at all): asserted are that every message it has
# is delivered at least once, that nothing is delivered from the promoted
# server that it does not have committed, that its inbox records
# deduplicate, and that the ids of the lost tail are processed again (once)
# when they are delivered again.

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

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $nclients = 4;

# The application: one call of app.work() per incoming message.  The
# business table has no key, so that a message processed twice would show.
my $app_sql = q{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('live', 'notify', '{"channel": "eo_live"}');
SELECT eo.create_destination('held', 'notify', '{"channel": "eo_held"}');
SELECT eo.subscribe('app.*', 'live');
SELECT eo.subscribe('app.*', 'held');
UPDATE eo.destination SET enabled = false WHERE name = 'held';
CREATE SCHEMA app;
CREATE TABLE app.business (msg_id text NOT NULL);
CREATE TABLE app.sent (id uuid PRIMARY KEY, msg_id text NOT NULL);
CREATE FUNCTION app.work(msg_id text, fail boolean) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    id uuid;
BEGIN
    IF NOT eo.process(msg_id, 'app') THEN
        RETURN NULL;
    END IF;
    INSERT INTO app.business VALUES (msg_id);
    id := eo.publish('app.work', jsonb_build_object('msg_id', msg_id, 'rb', fail),
                     'k' || (hashtext(msg_id) & 7));
    INSERT INTO app.sent VALUES (id, msg_id);
    IF fail THEN
        RAISE EXCEPTION 'application failure after publishing %', msg_id;
    END IF;
    RETURN id;
END $$;
};

# Ids of the messages of app.work() a node has (committed).
my $sent_sql = 'SELECT id FROM app.sent';

# Keys of %$have missing from %$in, sorted.
sub missing
{
	my ($have, $in) = @_;
	return grep { !$in->{$_} } sort keys %$have;
}

# ok() with up to five examples when a list that should be empty is not.
sub none_of
{
	my ($name, @list) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return ok(!@list, $name)
	  || diag(scalar(@list) . ' ids, e.g. ' . join(' ', @list[ 0 .. ($#list < 4 ? $#list : 4) ]));
}

sub run_case
{
	my ($mode) = @_;
	my $sync = $mode eq 'sync';

	my $primary = eo_new_node(
		"primary_$mode",
		init => { allows_streaming => 1 },
		conf => q{
max_connections = 30
# Only commits wake the relay.
eo.relay_naptime = 3600
});
	$primary->safe_psql('postgres', $app_sql);
	eo_wait_relay($primary, 'postgres') or die 'the relay did not start';

	$primary->backup('backup');
	my $standby = PostgreSQL::Test::Cluster->new("standby_$mode");
	$standby->init_from_backup($primary, 'backup', has_streaming => 1);
	$standby->start;
	if ($sync)
	{
		$primary->append_conf(
			'postgresql.conf', qq{
synchronous_standby_names = 'standby_$mode'
synchronous_commit = on
});
		$primary->reload;
		$primary->poll_query_until('postgres',
			q{SELECT sync_state = 'sync' FROM pg_stat_replication})
		  or die 'the standby did not become synchronous';
	}
	$primary->wait_for_catchup($standby);

	my $l1 = EONotify->new($primary, 'postgres', 'eo_live');

	# Each client sends new ids m-<mode>-<client>-<n>; every seventh fails
	# after publishing and is sent again next; every fifth statement is a
	# duplicate delivery of an id already acknowledged.
	my $phase = 'before';
	my %client;
	my $next = sub {
		my ($c, $prev) = @_;
		my $s = $client{$c} //= { n => 0, k => 0, done => [], retry => [] };
		if ($prev)
		{
			my $t = $prev->{tag};
			push @{ $s->{done} }, $t->{msg}
			  if $prev->{state} eq 'ok' && defined $prev->{row}[0];
			push @{ $s->{retry} }, $t->{msg} if $prev->{state} eq 'error';
		}
		my ($msg, $fail);
		$s->{k}++;
		if (@{ $s->{retry} })
		{
			($msg, $fail) = (shift @{ $s->{retry} }, 0);
		}
		elsif ($s->{k} % 5 == 0 && @{ $s->{done} })
		{
			($msg, $fail) = ($s->{done}[ $s->{k} % @{ $s->{done} } ], 0);
		}
		else
		{
			$s->{n}++;
			($msg, $fail) = ("m-$mode-$c-$s->{n}", $s->{n} % 7 == 0 ? 1 : 0);
		}
		return {
			sql => 'SELECT app.work($1, $2)',
			bind => [ $msg, $fail ],
			tag => { msg => $msg, fail => $fail, phase => $phase }
		};
	};
	my $load = eo_clients_start($primary, 'postgres', $nclients);
	my $acked = sub {
		scalar grep { $_->{state} eq 'ok' } @{ $load->{statements} };
	};

	######################################################################
	# Load; the relay runs on the primary only
	######################################################################

	ok(eo_clients_run($load, $next, sub { $l1->drain(0); $acked->() >= 300 }, $timeout),
		"$mode: 300 statements acknowledged under load");
	is( $standby->safe_psql(
			'postgres', q{
		SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'eo_processing relay%'}),
		'0', "$mode: no relay worker or launcher runs on the standby");
	is($standby->safe_psql('postgres', 'SELECT count(*) FROM eo.relay_status'),
		'0', "$mode: eo.relay_status on the standby shows no relay");
	is( $primary->safe_psql(
			'postgres', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type = 'eo_processing relay' AND datname = 'postgres'}),
		'1', "$mode: the relay runs on the primary");

	# Async: everything acknowledged so far reaches the standby, then
	# replication is cut, so that the rest of the load is certainly lost.
	my %before_cut;
	if (!$sync)
	{
		%before_cut = map { ($_->{tag}{msg} => 1) }
		  grep { $_->{state} eq 'ok' } @{ $load->{statements} };
		$primary->wait_for_catchup($standby, 'flush', $primary->lsn('flush'));
		$standby->append_conf('postgresql.conf', q{primary_conninfo = ''});
		$standby->reload;
		$primary->poll_query_until('postgres', 'SELECT count(*) = 0 FROM pg_stat_replication')
		  or die 'replication was not cut';
		$phase = 'cut';
	}
	my $first_cut_acked = $acked->();
	ok( eo_clients_run(
			$load, $next,
			sub {
				$l1->drain(0);
				return 0 if $acked->() < $first_cut_acked + 200;
				return 1 if $sync;
				# Async: the old relay delivered some of the tail.
				return grep {
					$_->{state} eq 'ok' && $_->{tag}{phase} eq 'cut'
					  && defined $_->{row}[0] && $l1->seen_count($_->{row}[0])
				} @{ $load->{statements} };
			},
			$timeout),
		"$mode: 200 more statements acknowledged"
		  . ($sync ? '' : ' after replication was cut, some of them delivered'));

	# Stop deliveries to "live" on the old primary: a message published
	# after the change waits in the log (pending) once the relay routes with
	# it.
	# Then the listener of the old primary has received all it ever will.
	$primary->safe_psql('postgres', q{UPDATE eo.destination SET enabled = false WHERE name = 'live'});
	my $marker = $primary->safe_psql('postgres', q{SELECT eo.publish('app.marker', '{}'::jsonb)});
	$primary->poll_query_until(
		'postgres', qq{
		SELECT EXISTS (SELECT 1 FROM eo.message_log m JOIN eo.destination t ON t.name = 'live'
		                WHERE m.id = '$marker' AND t.id = ANY (m.routes))})
	  or die 'the relay did not route with "live" disabled';
	# Delivered: routed to "live" up to its cursor, and not set aside.
	my $delivered_old = eo_id_set(
		$primary, 'postgres', q{
		SELECT m.id FROM eo.message_log m, eo.destination t
		  JOIN eo.destination_stats s ON s.destination_id = t.id
		 WHERE t.name = 'live' AND m.topic = 'app.work'
		   AND t.id = ANY (m.routes) AND m.seq <= s.delivered_seq
		   AND NOT EXISTS (SELECT 1 FROM eo.delivery d
		                    WHERE d.destination_id = t.id AND d.message_id = m.id)});
	ok($l1->wait_until(sub { !missing($delivered_old, $l1->seen) }, $timeout),
		"$mode: the old primary's listener received every message the old primary delivered");

	my $before_kill = $acked->();
	ok(eo_clients_run($load, $next, sub { $acked->() >= $before_kill + 150 }, $timeout),
		"$mode: 150 more statements acknowledged");

	######################################################################
	# kill -9 of the primary with statements in flight; promotion
	######################################################################

	my @pids = eo_server_pids($primary);
	my $in_flight = grep { $_->{state} eq 'in flight' } @{ $load->{statements} };
	$primary->kill9;
	my @alive = eo_wait_pids_gone(\@pids, $timeout);
	is(scalar @alive, 0, "$mode: every process of the killed primary exited");
	my @statements = eo_clients_finish($load, $timeout);
	$l1->drain(0);
	$l1->close;
	note "$mode: $in_flight statements in flight at the kill, "
	  . scalar(grep { $_->{state} eq 'lost' } @statements) . ' lost';

	my $pm_start = $standby->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
	$standby->promote;
	$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
	  or die 'promotion did not finish';
	ok( $standby->poll_query_until(
			'postgres', q{
		SELECT count(*) = 1 FROM pg_stat_activity
		 WHERE backend_type = 'eo_processing relay' AND datname = 'postgres'}),
		"$mode: a relay worker starts on the promoted server");
	ok(eo_wait_relay($standby, 'postgres'), "$mode: eo.relay_status shows it");
	is($standby->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'),
		$pm_start, "$mode: ... without a server restart");
	ok($standby->poll_query_until('postgres', 'SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)'),
		"$mode: it routes the messages left in eo.outbox");

	# Both destinations are disabled here: nothing was sent yet.  Listen,
	# then enable them; the held deliveries go out.
	my $l2 = EONotify->new($standby, 'postgres', 'eo_live', 'eo_held');
	$standby->safe_psql(
		'postgres', q{
SELECT eo.alter_destination('live', '{"channel": "eo_live"}');
SELECT eo.alter_destination('held', '{"channel": "eo_held"}');
});
	ok(eo_wait_drained($standby, 'postgres'),
		"$mode: the promoted server's relay finishes every delivery");
	my $sentinel = $standby->safe_psql('postgres', q{SELECT eo.publish('app.sentinel', '{}'::jsonb)});
	ok($l2->wait_until(sub { $l2->seen_count($sentinel) == 2 }, $timeout),
		"$mode: the listener of the promoted server receives a sentinel on both channels");

	######################################################################
	# What the promoted server has, and what was delivered
	######################################################################

	my $p_sent = eo_id_set($standby, 'postgres', $sent_sql);
	my $p_log = eo_id_set($standby, 'postgres',
		q{SELECT id FROM eo.message_log WHERE topic = 'app.work'});
	is_deeply([ sort keys %$p_log ], [ sort keys %$p_sent ],
		"$mode: the promoted server's messages are exactly its committed app.sent rows");
	note "$mode: the promoted server has " . scalar(keys %$p_sent) . ' messages';

	my $held = $l2->received('eo_held', 'app.work');
	none_of("$mode: \"held\": every message of the promoted server delivered to its listener",
		missing($p_sent, $held));
	none_of("$mode: \"held\": nothing delivered that the promoted server does not have",
		missing($held, $p_sent));
	none_of("$mode: \"held\": each message delivered once",
		grep { $held->{$_} > 1 } sort keys %$held);

	my $live_old = $l1->received('eo_live', 'app.work');
	my $live_new = $l2->received('eo_live', 'app.work');
	is_deeply([ sort keys %$live_old ], [ sort keys %$delivered_old ],
		"$mode: \"live\": the old listener received exactly what the old relay delivered");
	none_of("$mode: \"live\": every message of the promoted server delivered (old or new listener)",
		missing($p_sent, { %$live_old, %$live_new }));
	none_of("$mode: \"live\": the promoted server delivered nothing it does not have",
		missing($live_new, $p_sent));
	my @twice = grep { $live_old->{$_} } sort keys %$live_new;
	note "$mode: \"live\": " . scalar(@twice) . ' messages delivered by both servers';
	my @old_only = missing($live_old, $p_sent);
	if ($sync)
	{
		none_of("$mode: \"live\": what the old primary delivered is on the promoted server",
			@old_only);
		none_of("$mode: \"live\": no message delivered again after the failover", @twice);
	}
	else
	{
		ok(@old_only > 0,
			"$mode: \"live\": messages of the lost tail were delivered by the old primary ("
			  . scalar(@old_only) . ') and are unknown to the promoted server');
	}

	my @rb = grep { $_->{payload} =~ /"rb": true/ } ($l1->notifications, $l2->notifications);
	is(scalar @rb, 0, "$mode: no message of a rolled-back transaction was delivered");

	# Per key, the held deliveries arrive in id order.
	my (%last, $order_errors);
	$order_errors = 0;
	for my $n (grep { $_->{channel} eq 'eo_held' } $l2->notifications)
	{
		my $e = EONotify->decode($n->{payload});
		next unless defined $e->{key};
		$order_errors++ if defined $last{ $e->{key} } && $e->{id} le $last{ $e->{key} };
		$last{ $e->{key} } = $e->{id};
	}
	is($order_errors, 0, "$mode: \"held\": per key, delivered in publish order after the failover");

	######################################################################
	# What the clients were told
	######################################################################

	my (%uuid_of, @bad_dup, @two_ids, @bad_errors);
	for my $st (@statements)
	{
		my $msg = $st->{tag}{msg};
		if ($st->{state} eq 'ok' && defined $st->{row}[0])
		{
			push @two_ids, $msg if exists $uuid_of{$msg};
			$uuid_of{$msg} = $st->{row}[0];
		}
		elsif ($st->{state} eq 'error')
		{
			push @bad_errors, $msg
			  unless $st->{tag}{fail} && $st->{error} =~ /application failure after publishing/;
		}
	}
	for my $st (grep { $_->{state} eq 'ok' && !defined $_->{row}[0] } @statements)
	{
		push @bad_dup, $st->{tag}{msg} unless exists $uuid_of{ $st->{tag}{msg} };
	}
	none_of("$mode: no message was processed twice under load", @two_ids);
	none_of("$mode: a duplicate delivery is refused only after the first was acknowledged", @bad_dup);
	none_of("$mode: the only errors before the kill were the application's", @bad_errors);
	ok((grep { $_->{state} eq 'ok' && !defined $_->{row}[0] } @statements) > 0
		  && (grep { $_->{state} eq 'error' } @statements) > 0,
		"$mode: the load had duplicate deliveries and failed transactions");

	my $p_inbox = eo_id_set($standby, 'postgres',
		q{SELECT msg_id FROM eo.inbox WHERE consumer = 'app'});
	my $p_business = eo_id_set($standby, 'postgres', 'SELECT msg_id FROM app.business');
	my %acked_msg = map { ($_ => 1) } keys %uuid_of;
	my %acked_id = map { ($_ => 1) } values %uuid_of;
	if ($sync)
	{
		none_of("$mode: every acknowledged eo.process record is on the promoted server",
			missing(\%acked_msg, $p_inbox));
		none_of("$mode: ... with its business row", missing(\%acked_msg, $p_business));
		none_of("$mode: every acknowledged eo.publish message is on the promoted server",
			missing(\%acked_id, $p_sent));
	}
	else
	{
		my %tail = map { ($_->{tag}{msg} => 1) }
		  grep { $_->{tag}{phase} eq 'cut' && defined $_->{row}[0] } @statements;
		none_of("$mode: what was acknowledged before the standby caught up is on the promoted server",
			missing(\%before_cut, $p_inbox));
		ok(keys %tail > 0, "$mode: ids were first processed after replication was cut");
		none_of("$mode: ... and every one of them is lost with the tail",
			grep { $p_inbox->{$_} } sort keys %tail);
	}

	# The inbox of the promoted server: consistent with the business rows,
	# and every record still deduplicates.
	is_deeply([ sort keys %$p_business ], [ sort keys %$p_inbox ],
		"$mode: the promoted server's inbox records and business rows match");
	is( $standby->safe_psql(
			'postgres',
			q{SELECT count(*) FROM eo.inbox WHERE consumer = 'app' AND eo.process(msg_id, 'app')}),
		'0', "$mode: every replicated inbox record deduplicates after the failover");

	# Every id is delivered again: those the promoted server has are
	# duplicates; the others (lost, or in flight at the kill) are processed
	# now, once.
	my @all = sort keys %{ { map { ($_->{tag}{msg} => 1) } @statements } };
	my $list = join(',', map { "'$_'" } @all);
	my $again = $standby->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE app.work(m, false) IS NOT NULL) FROM unnest(ARRAY[$list]) m");
	is($again, scalar(grep { !$p_inbox->{$_} } @all),
		"$mode: redelivered, exactly the ids the promoted server lacks are processed");
	is( $standby->safe_psql(
			'postgres', q{
		SELECT count(*) = count(DISTINCT msg_id)
		       AND count(*) = (SELECT count(*) FROM eo.inbox WHERE consumer = 'app')
		  FROM app.business}),
		't', "$mode: no business row twice, one per inbox record");
	note "$mode: $again ids processed again after the failover";

	$l2->close;
	$standby->stop;
	return;
}

run_case('sync');
run_case('async');

done_testing();
