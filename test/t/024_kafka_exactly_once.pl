# The kafka sink's exactly_once mode against librdkafka's mock cluster
# (three brokers on 127.0.0.1, test/kafka_tool.c through EOKafka).
#
#   1. A batch of keyed messages goes out in Kafka transactions, each with
#      a position record in the positions topic (key: the destination's
#      transactional.id "eo-<system identifier>-<database oid>-<id>"):
#      every message once, each key in one partition in publish order.
#   2. After Kafka's commit, before the database's record: a session holds
#      the destination's row of eo.destination_stats, which the relay's
#      recording step updates; once the relay waits for it (pg_locks) and
#      the records are in Kafka, the postmaster is killed (kill -9).  On
#      restart the relay sends the window again, the sink reads the
#      position back and finishes those messages as delivered: nothing is
#      in Kafka twice.
#   3. kill -9 while a Kafka transaction is on the wire (the brokers answer
#      slowly): after the restart every committed message is in Kafka.
#
# What the mock cannot show (librdkafka 2.0.2's rdkafka_mock): it does not
# hide the records of an aborted or never committed transaction from
# read_committed readers, and it does not fence an old producer with the
# same transactional.id.  So phase 3 cannot tell a committed copy from the
# copy of the interrupted transaction, which a real cluster aborts when the
# new producer calls init_transactions; the test counts those copies and
# checks that they can only come from the interrupted batch.  The
# secrets check at the end: a destination's sasl.password is in neither
# eo.destinations, pg_stat_statements nor the server log.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EOKafka;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $kafka = EOKafka->new("$PostgreSQL::Test::Utils::tmp_check/kafka_eos");
$kafka->create_topic('orders', 3);
my $bootstrap = $kafka->bootstrap;

my $node = eo_new_node(
	'kafka_eos', conf => q{
shared_preload_libraries = 'eo_processing, pg_stat_statements'
pg_stat_statements.track = all
restart_after_crash = on
log_statement = none
eo.relay_naptime = 1
});
$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION pg_stat_statements;
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('k', 'kafka',
    '{"bootstrap_servers": "$bootstrap", "topic": "orders", "exactly_once": true,
      "retry_delays": ["200ms"], "max_attempts": 1000}');
SELECT eo.subscribe('orders.*', 'k');
CREATE TABLE app_committed (id uuid PRIMARY KEY, key text, n int);
});
my $dest_id = $node->safe_psql('postgres', q{SELECT id FROM eo.destination WHERE name = 'k'});
my $txn_id = join('-', 'eo',
	$node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()'),
	$node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'postgres'}),
	$dest_id);

# Publish $n messages over 5 keys in one transaction per message (a quarter
# rolled back); returns the ids committed.
my $published = 0;

sub publish
{
	my ($n) = @_;
	my $sql = '';
	for my $i (1 .. $n)
	{
		$published++;
		my $end = $published % 4 == 0 ? 'ROLLBACK' : 'COMMIT';
		$sql .= qq{BEGIN;
INSERT INTO app_committed SELECT eo.publish('orders.created', jsonb_build_object('n', $published), 'key' || ($published % 5)), 'key' || ($published % 5), $published;
$end;
};
	}
	$node->safe_psql('postgres', $sql);
}

# Publish $n messages over 5 keys in one transaction: one window.
sub publish_one_transaction
{
	my ($n) = @_;
	my $first = $published + 1;
	$published += $n;
	$node->safe_psql('postgres', qq{
INSERT INTO app_committed
SELECT eo.publish('orders.created', jsonb_build_object('n', g), 'key' || (g % 5)), 'key' || (g % 5), g
  FROM generate_series($first, $published) g;
});
}

# Wait until every committed message was recorded as delivered.
sub wait_delivered
{
	my ($what) = @_;
	ok( $node->poll_query_until(
			'postgres', q{
SELECT s.pending = 0 AND s.in_flight = 0 AND s.retrying = 0 AND s.dead = 0
   AND NOT EXISTS (SELECT 1 FROM eo.outbox)
  FROM eo.stats s WHERE s.destination = 'k'}),
		"$what: every message recorded as delivered");
}

# Records of topic "orders": ids per count, and the checks of order.
sub check_kafka
{
	my ($what, %opts) = @_;
	my %committed = map { my ($id, $key, $n) = split /\|/; ($id => [ $key, $n ]) }
	  split /\n/, $node->safe_psql('postgres', 'SELECT id, key, n FROM app_committed');
	my @records = $kafka->records('orders', min => scalar(keys %committed), timeout => 30);
	my (%seen, %partition_of, %last_n);
	my ($order_ok, $partition_ok, $foreign) = (1, 1, 0);
	for my $r (@records)
	{
		my $id = $r->{header}{'eo-id'} // '';
		$seen{$id}++;
		if (!$committed{$id})
		{
			$foreign++;
			next;
		}
		my ($key, $n) = @{ $committed{$id} };
		$partition_ok = 0 if ($r->{key} // '') ne $key;
		$partition_ok = 0
		  if defined $partition_of{$key} && $partition_of{$key} != $r->{partition};
		$partition_of{$key} = $r->{partition};
		$order_ok = 0 if $seen{$id} == 1 && defined $last_n{$key} && $last_n{$key} > $n;
		$last_n{$key} = $n if $seen{$id} == 1;
	}
	my @missing = grep { !$seen{$_} } keys %committed;
	my @twice = grep { $seen{$_} > 1 } keys %seen;
	is(scalar(@missing), 0, "$what: every committed message is in Kafka");
	is($foreign, 0, "$what: no message of a rolled-back transaction is in Kafka");
	ok($partition_ok, "$what: each key's records carry the key, in one partition");
	ok($order_ok, "$what: each key's records in publish order");
	return scalar(@twice);
}

# The position records of the destination.
sub positions
{
	return [ grep { ($_->{key} // '') eq $txn_id }
		  $kafka->records('__eo_positions', timeout => 30) ];
}

# 1. A batch, delivered in Kafka transactions.
publish(40);
wait_delivered('batch');
is(check_kafka('batch'), 0, 'batch: no message is in Kafka twice');
my $pos = positions();
ok(@$pos > 0, 'batch: position records keyed by the transactional.id ' . $txn_id);
like($pos->[-1]{value} // '', qr/^\{"v": 1, "log": \[/, 'batch: a position lists messages');

# Slow every broker down, so that a Kafka transaction takes seconds.
sub brokers_rtt
{
	my ($ms) = @_;
	$kafka->command("rtt $_ $ms") for 1 .. 3;
}

# kill -9 of the postmaster, and a start once every process is gone.
sub crash_and_restart
{
	my ($what) = @_;
	my @pids = eo_server_pids($node);
	$node->kill9;
	my @alive = eo_wait_pids_gone(\@pids, $timeout);
	is(scalar @alive, 0, "$what: every process of the killed postmaster exited");
	eo_poll_start($node, \@pids);
}

# 2. After Kafka's commit, before the database's record.
brokers_rtt(700);
publish_one_transaction(20);
ok( $node->poll_query_until(
		'postgres', q{SELECT in_flight > 0 FROM eo.stats WHERE destination = 'k'}),
	'after commit: a window is on its way');
my $blocker = $node->background_psql('postgres');
$blocker->query_safe(
	"BEGIN; SELECT 1 FROM eo.destination_stats WHERE destination_id = $dest_id FOR UPDATE");
brokers_rtt(0);
my $relay = eo_relay_pid($node, 'postgres');
ok( $node->poll_query_until(
		'postgres',
		"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $relay AND NOT granted)"),
	'after commit: the relay waits to record the window');
is(check_kafka('after commit, before the crash'), 0,
	'after commit, before the crash: the window is in Kafka, once');
my $log_offset = -s $node->logfile;
crash_and_restart('after commit');
eval { $blocker->quit; };
wait_delivered('after commit, restarted');
is(check_kafka('after commit, restarted'), 0,
	'after commit, restarted: nothing was sent twice');
ok( $node->wait_for_log(
		qr/kafka destination $dest_id: \d+ messages are already in committed Kafka transactions/,
		$log_offset),
	'after commit, restarted: the relay read its position back from Kafka');

# 3. kill -9 while a Kafka transaction is on the wire.
brokers_rtt(1500);
publish_one_transaction(20);
ok( $node->poll_query_until(
		'postgres', q{SELECT in_flight > 0 FROM eo.stats WHERE destination = 'k'}),
	'mid-transaction: a window is on its way');
crash_and_restart('mid-transaction');
brokers_rtt(0);
wait_delivered('mid-transaction, restarted');
my $twice = check_kafka('mid-transaction, restarted');
ok($twice <= 20,
	"mid-transaction, restarted: $twice messages twice, at most the interrupted batch "
	  . '(whose copies a real cluster aborts; the mock shows them)');

# Secrets: a destination's sasl.password is in neither eo.destinations,
# pg_stat_statements nor the server log.
$node->safe_psql('postgres',
	qq{SELECT eo.create_destination('secret', 'kafka', '{"bootstrap_servers": "$bootstrap", "properties": {"sasl.username": "u", "sasl.password": "PW-KAFKA-SECRET"}}')});
is( $node->safe_psql(
		'postgres', q{
SELECT (SELECT count(*) FROM eo.destinations WHERE options::text ~ 'PW-KAFKA-SECRET')
     + (SELECT count(*) FROM pg_stat_statements WHERE query ~ 'PW-KAFKA-SECRET')}),
	'0', 'secrets: not in eo.destinations or pg_stat_statements');
unlike(slurp_file($node->logfile), qr/PW-KAFKA-SECRET/, 'secrets: not in the server log');

done_testing();
