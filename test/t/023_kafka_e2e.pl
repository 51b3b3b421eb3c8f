# The kafka sink end to end against librdkafka's mock cluster (three
# brokers on 127.0.0.1, test/kafka_tool.c through EOKafka), one fault
# scenario after the other, each with a fresh cluster of its own (an error
# stack of one scenario cannot hide another's), its own destination and
# its own topic of four partitions.  In each, pgbench publishes keyed
# messages (40 keys; a quarter of the transactions roll back) while the
# relay delivers, and the fault is injected meanwhile:
#
#   leader     the broker leading two partitions goes down; once sends
#              wait for it, their leadership moves to the other brokers;
#              it comes back
#   produce    Produce requests answered NOT_LEADER_FOR_PARTITION,
#              REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS and with a dropped
#              connection, on every broker, twice
#   slow_acks  Produce answers (successes and REQUEST_TIMED_OUT) delayed by
#              up to 1.5 s on every broker, then a broker slow for a while
#   coordinator an exactly_once destination whose transaction coordinator
#              answers COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR,
#              COORDINATOR_LOAD_IN_PROGRESS and CONCURRENT_TRANSACTIONS to
#              FindCoordinator, InitProducerId, AddPartitionsToTxn and EndTxn
#   crash      kill -9 of the postmaster while the relay delivers, restart,
#              more messages
#
# The errors pushed on a broker are counted down by the mock as requests
# consume them: the test checks that every one was answered to the
# producer, so a scenario that did not exercise its fault fails.  Then,
# per scenario, from the records read back: every committed message is in
# Kafka, none of a rolled-back transaction; the record's key, eo-topic
# header and value are the message's; each key is in one partition and its
# records are in publish order (eo.message_log's seq); and no message is
# in Kafka twice -- except in "crash", where the relay sends again what it
# had not recorded (at least once: the count is shown, and each key's
# first copies are still in order), and in "leader", where a second copy
# written by the producer's retry is counted (see that phase).
#
# What this does not show: the mock keeps one log per partition whatever
# the leader, so a leader change loses nothing (a real cluster may lose
# what was acknowledged with fewer replicas; acks=all is what protects
# against that); acknowledgements later than message.timeout.ms (30 s) are
# not tried (the producer gives up on the record and the relay sends it
# again: a duplicate, as after a crash); and the mock does not hide the
# records of aborted transactions (an abort in "coordinator" would show
# as duplicates, so none happens unnoticed).

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EOKafka;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

my $node = eo_new_node(
	'kafka_e2e', conf => q{
max_connections = 40
log_statement = none
restart_after_crash = on
eo.relay_naptime = 1
});
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eo_processing;
CREATE TABLE app_committed (id uuid PRIMARY KEY, phase text NOT NULL);
CREATE TABLE kafka_got (phase text, part int, off bigint, key text, id uuid,
                        topic text, value text);
});

# The destination's delivered total (0 while the server is unreachable).
sub delivered
{
	my ($dest) = @_;
	my $n = $node->safe_psql('postgres',
		qq{SELECT delivered_total FROM eo.stats WHERE destination = '$dest'},
		on_error_die => 0);
	return $n =~ /^\d+$/ ? $n : 0;
}

# Poll until $dest delivered $n more messages than when called; true if so.
sub wait_more
{
	my ($dest, $n) = @_;
	my $base = delivered($dest);
	my $deadline = Time::HiRes::time() + $timeout;
	while (Time::HiRes::time() < $deadline)
	{
		return 1 if delivered($dest) >= $base + $n;
		Time::HiRes::usleep(50_000);
	}
	return 0;
}

# Poll until the broker error stacks of $api hold nothing more; true if so.
sub wait_consumed
{
	my ($kafka, $api, @brokers) = @_;
	my $deadline = Time::HiRes::time() + $timeout;
	while (Time::HiRes::time() < $deadline)
	{
		my $left = 0;
		$left += $kafka->command("pending $_ $api") for @brokers;
		return 1 if $left == 0;
		Time::HiRes::usleep(50_000);
	}
	return 0;
}

# A mock cluster with topic "$phase.storm" (four partitions, leaders set:
# partitions 0 and 3 on broker 1, 1 on broker 2, 2 on broker 3) and a
# destination $phase subscribed to "$phase.*".
sub setup_phase
{
	my ($phase, $options) = @_;
	my $kafka = EOKafka->new("$tmp/kafka_$phase");
	$kafka->create_topic("$phase.storm", 4);
	$kafka->command("leader $phase.storm $_ " . ($_ % 3 + 1)) for 0 .. 3;
	my $bootstrap = $kafka->bootstrap;
	$node->safe_psql(
		'postgres', qq{
SELECT eo.create_destination('$phase', 'kafka',
    '{"bootstrap_servers": "$bootstrap", "retry_delays": ["200ms"], "max_attempts": 1000 $options}');
SELECT eo.subscribe('$phase.*', '$phase');
});
	return $kafka;
}

# pgbench publishing to "$phase.storm" in the background: 4 clients at
# $rate transactions a second for $seconds, a quarter rolled back; $run
# names the script (unique per run).
sub storm
{
	my ($phase, $rate, $seconds, $run) = @_;
	return eo_pgbench_start(
		$node,
		dbname => 'postgres',
		name => "storm_$phase" . ($run // ''),
		clients => 4,
		duration => $seconds,
		options => ["--rate=$rate"],
		script => qq{
\\set r random(1, 100)
\\set k random(1, 40)
BEGIN;
INSERT INTO app_committed (id, phase)
SELECT eo.publish('$phase.storm', jsonb_build_object('r', :r, 'k', :k), 'k' || :k), '$phase';
\\if :r <= 25
ROLLBACK;
\\else
COMMIT;
\\endif
});
}

# Wait for pgbench and for the relay to deliver everything.
sub finish_phase
{
	my ($phase, $bench) = @_;
	my $r = eo_pgbench_finish($bench);
	is($r->{rc}, 0, "$phase: pgbench ran");
	ok(eo_wait_drained($node, 'postgres'), "$phase: the relay delivered everything");
	return;
}

# Read the topic back into kafka_got and check it against app_committed.
sub check_phase
{
	my ($phase, $kafka, %opts) = @_;
	my $committed = $node->safe_psql('postgres',
		qq{SELECT count(*) FROM app_committed WHERE phase = '$phase'});
	cmp_ok($committed, '>=', 500, "$phase: $committed messages committed");
	is($node->safe_psql('postgres', qq{SELECT dead FROM eo.stats WHERE destination = '$phase'}),
		'0', "$phase: none given up");

	my @records = $kafka->records("$phase.storm", min => $committed, timeout => 60);
	my $file = "$tmp/kafka_got_$phase.tsv";
	open(my $fh, '>', $file) or die "cannot write $file: $!";
	for my $r (@records)
	{
		# Keys, ids, topics and these payloads hold no tabs, newlines or
		# backslashes (COPY's text format).
		print $fh join("\t", $phase, $r->{partition}, $r->{offset}, $r->{key} // '\N',
			$r->{id} // '\N', $r->{header}{'eo-topic'} // '\N', $r->{value} // '\N'), "\n";
	}
	close $fh;
	$node->safe_psql('postgres', "\\copy kafka_got FROM '$file'");

	my ($n, $distinct) = split /\|/,
	  $node->safe_psql('postgres',
		qq{SELECT count(*), count(DISTINCT id) FROM kafka_got WHERE phase = '$phase'});
	if ($opts{duplicates_allowed})
	{
		note "$phase: $n records of $distinct messages ("
		  . ($n - $distinct) . ' sent again after the crash)';
	}
	elsif ($opts{producer_copies_allowed})
	{
		# See "leader" below: a second copy is tolerated, in the same
		# partition, never a third; the copies are counted.
		note "$phase: $n records of $distinct messages ("
		  . ($n - $distinct) . ' second copies written under the leader move)';
		is( $node->safe_psql(
				'postgres', qq{
SELECT count(*) FROM (SELECT id FROM kafka_got WHERE phase = '$phase'
                       GROUP BY id HAVING count(*) > 2 OR count(DISTINCT part) > 1) x}),
			'0', "$phase: no message more than twice, nor in two partitions");
	}
	else
	{
		is($n, $distinct, "$phase: no message twice ($n records)");
	}
	is($distinct, $committed, "$phase: as many messages as were committed");
	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM kafka_got g
 WHERE g.phase = '$phase'
   AND NOT EXISTS (SELECT 1 FROM app_committed c WHERE c.id = g.id AND c.phase = '$phase')}),
		'0', "$phase: nothing of a rolled-back transaction");
	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM app_committed c
 WHERE c.phase = '$phase'
   AND NOT EXISTS (SELECT 1 FROM kafka_got g WHERE g.id = c.id AND g.phase = '$phase')}),
		'0', "$phase: every committed message is in Kafka");
	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM kafka_got g JOIN eo.message_log m USING (id)
 WHERE g.phase = '$phase'
   AND (g.key IS DISTINCT FROM m.key OR g.topic IS DISTINCT FROM m.topic
        OR g.value::jsonb IS DISTINCT FROM m.payload)}),
		'0', "$phase: key, eo-topic and value are the message's");
	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM (SELECT key FROM kafka_got WHERE phase = '$phase'
                       GROUP BY key HAVING count(DISTINCT part) > 1) x}),
		'0', "$phase: each key in one partition");
	# The first copy of each message (all of them but after a crash).
	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM (
    SELECT row_number() OVER (PARTITION BY g.key ORDER BY g.off) AS in_kafka,
           row_number() OVER (PARTITION BY g.key ORDER BY m.seq) AS in_log
      FROM (SELECT DISTINCT ON (id) * FROM kafka_got WHERE phase = '$phase'
             ORDER BY id, off) g
      JOIN eo.message_log m USING (id)) x
 WHERE in_kafka <> in_log}),
		'0', "$phase: each key's messages in publish order");
	# The cluster goes away: so does the destination (no reconnecting).
	$node->safe_psql('postgres', qq{SELECT eo.drop_destination('$phase', force => true)});
	$kafka->stop;
	return;
}

# leader: the leader of partitions 0 and 3 goes down, and the sends to them
# wait; their leadership moves to the other brokers (as a controller would
# move it), and delivery resumes well before message.timeout.ms (30 s),
# when the producer would give up on those records; broker 1 comes back.
# Here alone a message may be in Kafka twice: in about one run of ten the
# mock cluster kept a batch that librdkafka 2.0.2 retried after the leader
# moved as well as the first write (the two copies next to each other in
# the partition, with no retry of the relay).  The idempotent producer's
# sequence check on a real broker is what rejects such a retry; the mock
# does not show it reliably, so this phase counts second copies instead
# of refusing them (every other phase without a crash refuses them).
{
	my $kafka = setup_phase('leader', '');
	my $bench = storm('leader', 300, 8);
	ok(wait_more('leader', 200), 'leader: delivering');
	$kafka->command('down 1');
	ok( $node->poll_query_until(
			'postgres', q{
SELECT in_flight > 0 AND oldest_pending_age > interval '1 s'
  FROM eo.stats WHERE destination = 'leader'}),
		'leader: with broker 1 down, sends wait');
	my $moved = Time::HiRes::time();
	$kafka->command('leader leader.storm 0 2');
	$kafka->command('leader leader.storm 3 3');
	ok(wait_more('leader', 300), 'leader: delivery goes on with the leadership moved');
	my $took = Time::HiRes::time() - $moved;
	cmp_ok($took, '<', 20,
		sprintf('leader: resumed %.1f s after the move, before the records time out', $took));
	$kafka->command('up 1');
	finish_phase('leader', $bench);
	check_phase('leader', $kafka, producer_copies_allowed => 1);
}

# produce: Produce errors on every broker, twice during the storm.
{
	my $kafka = setup_phase('produce', '');
	my $bench = storm('produce', 300, 6);
	for my $round (1, 2)
	{
		ok(wait_more('produce', 200), "produce: delivering (round $round)");
		$kafka->command(
			"broker_errors $_ Produce NOT_LEADER_FOR_PARTITION:0*3 REQUEST_TIMED_OUT:0*3 "
			  . "NOT_ENOUGH_REPLICAS:0*2 _TRANSPORT:0 NOT_LEADER_FOR_PARTITION:0*2")
		  for 1 .. 3;
		ok(wait_consumed($kafka, 'Produce', 1 .. 3),
			"produce: the producer met every injected error (round $round)");
	}
	finish_phase('produce', $bench);
	check_phase('produce', $kafka);
}

# slow_acks: delayed answers to Produce, then one slow broker.
{
	my $kafka = setup_phase('slow_acks', '');
	my $bench = storm('slow_acks', 300, 6);
	ok(wait_more('slow_acks', 200), 'slow_acks: delivering');
	$kafka->command("broker_errors $_ Produce 0:800*3 REQUEST_TIMED_OUT:1000 0:1500 0:300*3")
	  for 1 .. 3;
	ok(wait_consumed($kafka, 'Produce', 1 .. 3), 'slow_acks: every delayed answer was given');
	$kafka->command('rtt 2 400');
	ok(wait_more('slow_acks', 200), 'slow_acks: delivering with broker 2 slow');
	$kafka->command('rtt 2 0');
	finish_phase('slow_acks', $bench);
	check_phase('slow_acks', $kafka);
}

# coordinator: an exactly_once destination whose coordinator refuses for
# a while.  The transactional.id is eo-<system id>-<database oid>-<id>.
{
	my $kafka = setup_phase('coordinator', ', "exactly_once": true');
	my $txn_id = join('-', 'eo',
		$node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()'),
		$node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'postgres'}),
		$node->safe_psql('postgres', q{SELECT id FROM eo.destination WHERE name = 'coordinator'}));
	$kafka->command("coordinator transaction $txn_id 2");
	# The producer starts with the first message: its InitProducerId first.
	$kafka->command('broker_errors 2 InitProducerId COORDINATOR_LOAD_IN_PROGRESS:0*2 '
		  . 'CONCURRENT_TRANSACTIONS:0');
	my $bench = storm('coordinator', 300, 6);
	ok(wait_more('coordinator', 200), 'coordinator: delivering');
	ok(wait_consumed($kafka, 'InitProducerId', 2),
		'coordinator: InitProducerId met every injected error');
	$kafka->command('errors FindCoordinator COORDINATOR_NOT_AVAILABLE*3');
	$kafka->command('broker_errors 2 AddPartitionsToTxn COORDINATOR_NOT_AVAILABLE:0 '
		  . 'CONCURRENT_TRANSACTIONS:0*2 COORDINATOR_LOAD_IN_PROGRESS:0');
	$kafka->command('broker_errors 2 EndTxn COORDINATOR_LOAD_IN_PROGRESS:0*2 NOT_COORDINATOR:0');
	ok(wait_consumed($kafka, 'AddPartitionsToTxn', 2),
		'coordinator: AddPartitionsToTxn met every injected error');
	ok(wait_consumed($kafka, 'EndTxn', 2), 'coordinator: EndTxn met every injected error');
	ok(wait_more('coordinator', 200), 'coordinator: delivering after the coordinator came back');
	finish_phase('coordinator', $bench);
	check_phase('coordinator', $kafka);
}

# crash: kill -9 of the postmaster while the relay delivers.
{
	my $kafka = setup_phase('crash', '');
	my $bench = storm('crash', 300, 8);
	ok(wait_more('crash', 300), 'crash: delivering');
	my @children = eo_server_pids($node);
	$node->kill9;
	note 'postmaster killed';
	my $r = eo_pgbench_finish($bench);
	note "pgbench exit status after the crash: $r->{rc}";
	my @alive = eo_wait_pids_gone(\@children, $timeout);
	is(scalar @alive, 0, 'crash: every child of the killed postmaster exited');
	eo_poll_start($node, \@children);

	# pgbench's transactions in flight at the kill may or may not have
	# committed: app_committed is what did.
	my $after = storm('crash', 300, 3, '_after');
	finish_phase('crash', $after);
	check_phase('crash', $kafka, duplicates_allowed => 1);
}

$node->stop;
done_testing();
