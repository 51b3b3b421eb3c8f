# The round trip PostgreSQL -> Kafka -> PostgreSQL with
# examples/python/kafka_consumer.py (confluent_kafka and psycopg 3):
# deposits published with eo.publish (a quarter of the transactions rolled
# back) go through a kafka destination into librdkafka's mock cluster
# (test/kafka_tool.c through EOKafka), and the example applies them to its
# tables with eo.process_seq(topic-partition, offset) in the same
# transaction.
#
#   1. It is killed right after a database commit, before it commits the
#      offsets to Kafka (its --crash-after): the next run gets that batch
#      again, skips every record of it (the count is checked: the skip
#      happened), and applies the rest.
#   2. A run of the same group afterwards finds nothing new.
#   3. In a second database, a consumer that never commits offsets reads
#      the topic from its beginning at each start: the second run applies
#      nothing.
#   4. Running while messages are published, it applies them as they come.
#
# Each time: every committed deposit applied once (ids, count, sums per
# account against what was published), none of a rolled-back transaction,
# and each account's deposits applied in publish order.

use strict;
use warnings FATAL => 'all';

use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;
use EOKafka;

my $root = "$FindBin::RealBin/../..";
my $example = "$root/examples/python/kafka_consumer.py";
my $python = '/usr/bin/python3';
my $timeout = $PostgreSQL::Test::Utils::timeout_default;

plan skip_all => 'confluent_kafka and psycopg are not importable by /usr/bin/python3'
  unless system($python, '-c', 'import confluent_kafka, psycopg') == 0;

my $kafka = EOKafka->new("$PostgreSQL::Test::Utils::tmp_check/kafka_example");
$kafka->create_topic('deposits', 3);
my $bootstrap = $kafka->bootstrap;

my $node = eo_new_node('kafka_example', conf => "eo.relay_naptime = 1\n");
$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('deposits', 'kafka',
    '{"bootstrap_servers": "$bootstrap", "topic": "deposits", "retry_delays": ["200ms"]}');
SELECT eo.subscribe('deposit.*', 'deposits');
CREATE TABLE app_deposit (id uuid PRIMARY KEY, account text NOT NULL, amount int NOT NULL);
});
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION eo_processing');

# Publish $n deposits, one transaction each, a quarter rolled back.
my $published = 0;

sub publish
{
	my ($n) = @_;
	my $sql = '';
	for (1 .. $n)
	{
		$published++;
		my $account = 'acct-' . ($published % 9);
		my $end = $published % 4 == 0 ? 'ROLLBACK' : 'COMMIT';
		$sql .= qq{BEGIN;
INSERT INTO app_deposit
SELECT eo.publish('deposit.made', jsonb_build_object('amount', $published), '$account'), '$account', $published;
$end;
};
	}
	$node->safe_psql('postgres', $sql);
	return;
}

# The consumer's command line for a database and group, with more options.
sub consumer_cmd
{
	my ($dbname, $group, @more) = @_;
	return (
		$python, $example,
		'--bootstrap' => $bootstrap,
		'--topic' => 'deposits',
		'--group' => $group,
		'--conninfo' => sprintf('host=%s port=%s dbname=%s', $node->host, $node->port, $dbname),
		'--setup',
		# A killed member's partitions come back after this (default 45 s).
		'--property' => 'session.timeout.ms=6000',
		@more);
}

# Run the consumer to its end; returns (exit status, applied, skipped).
sub run_consumer
{
	my @cmd = consumer_cmd(@_);
	my ($out, $err) = ('', '');
	note 'running: ' . join(' ', @cmd);
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout($timeout));
	my $rc = $? >> 8;
	note "stdout: $out";
	my ($applied, $skipped) = $out =~ /^applied (\d+) skipped (\d+)/m;
	diag "kafka_consumer.py: $err" unless defined $applied;
	return ($rc, $applied // -1, $skipped // -1);
}

# What the example applied in $dbname against what was committed.
sub check_applied
{
	my ($dbname, $what) = @_;
	my $committed = $node->safe_psql('postgres', 'SELECT count(*) FROM app_deposit');
	my $expected = $node->safe_psql('postgres',
		q{SELECT string_agg(account || ':' || total || ':' || n, ',' ORDER BY account)
		    FROM (SELECT account, sum(amount) AS total, count(*) AS n
		            FROM app_deposit GROUP BY account) x});
	my %ids = map { $_ => 1 } split /\n/,
	  $node->safe_psql('postgres', 'SELECT id FROM app_deposit');

	my ($n, $distinct) = split /\|/,
	  $node->safe_psql($dbname,
		'SELECT count(*), count(DISTINCT eo_id) FROM kafka_example_py.deposit');
	is($n, $committed, "$what: every committed deposit applied ($n)");
	is($distinct, $n, "$what: none twice");
	my @foreign = grep { !$ids{$_} } split /\n/,
	  $node->safe_psql($dbname, 'SELECT eo_id FROM kafka_example_py.deposit');
	is(scalar @foreign, 0, "$what: none of a rolled-back transaction");
	is( $node->safe_psql(
			$dbname,
			q{SELECT string_agg(name || ':' || balance || ':' || deposits, ',' ORDER BY name)
			    FROM kafka_example_py.account}),
		$expected,
		"$what: balances and deposit counts per account are the published sums");
	# amount is the publish counter: per account, increasing with the
	# order in which deposits were applied.
	is( $node->safe_psql(
			$dbname, q{
SELECT count(*) FROM (SELECT amount, lag(amount) OVER (PARTITION BY account ORDER BY seq) AS prev
                        FROM kafka_example_py.deposit) x WHERE amount < prev}),
		'0', "$what: each account's deposits applied in publish order");
	return;
}

publish(800);
ok(eo_wait_drained($node, 'postgres'), 'the relay delivered the deposits to Kafka');
my $committed = $node->safe_psql('postgres', 'SELECT count(*) FROM app_deposit');

# 1. Killed between the database commit and the offset commit.
my ($rc, $applied, $skipped) = run_consumer('postgres', 'bank', '--batch' => 50, '--crash-after' => 250);
is($rc, 9, 'the consumer stopped abruptly after a database commit');
cmp_ok($applied, '>=', 250, "it had applied $applied deposits");
my $first = $applied;
($rc, $applied, $skipped) = run_consumer('postgres', 'bank', '--batch' => 50, '--idle-exit' => 2);
is($rc, 0, 'the consumer ran again');
cmp_ok($skipped, '>', 0, "the records of the batch without an offset commit came again and were skipped ($skipped)");
is($first + $applied, $committed, 'the rest was applied');
check_applied('postgres', 'after a crash');

# 2. Once more: nothing new.
($rc, $applied, $skipped) = run_consumer('postgres', 'bank', '--idle-exit' => 2);
is("$rc $applied", '0 0', 'a third run applies nothing');

# 3. No offsets committed to Kafka: eo.process_seq alone.
($rc, $applied, $skipped) = run_consumer('other', 'audit', '--no-offset-commit', '--idle-exit' => 2);
is("$rc $applied $skipped", "0 $committed 0", 'without offset commits: the first run applies everything');
($rc, $applied, $skipped) = run_consumer('other', 'audit', '--no-offset-commit', '--idle-exit' => 2);
is("$rc $applied $skipped", "0 0 $committed",
	'the second run reads the topic from its beginning and skips every record');
check_applied('other', 'without offset commits');

# 4. Running while deposits are published.
my ($out, $err) = ('', '');
my @cmd = consumer_cmd('postgres', 'bank', '--idle-exit' => 5);
my $h = IPC::Run::start(\@cmd, '<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout($timeout));
publish(200);
$committed = $node->safe_psql('postgres', 'SELECT count(*) FROM app_deposit');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = $committed FROM kafka_example_py.deposit"),
	'published deposits arrive while the consumer runs');
$h->finish;
is($? >> 8, 0, 'the running consumer exits once idle');
check_applied('postgres', 'live');

$node->stop;
$kafka->stop;
done_testing();
