# Concurrency check of eo.process() and eo.process_seq() with pgbench.
#
# Many clients deliver the same messages at the same time; each transaction
# does a side effect only when the dedup function returned true.  Whatever
# the interleaving, every message must have had its side effect exactly
# once, and the dedup records must match the side effects one for one.
# Runs under READ COMMITTED and under REPEATABLE READ (where pgbench retries
# the serialization failures the extension raises).

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# The Makefile's PROVE_FLAGS (-I test/perl) is reset by PGXS's
# Makefile.global, so find the helpers relative to this file.
use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;

my $clients = 8;
my $nids = 200;
my $inbox_txns = 500;    # per client: 4000 draws over 200 ids
my $seq_txns = 300;      # per client

my $node = PostgreSQL::Test::Cluster->new('inbox_pgbench');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'eo_processing'
max_connections = 40
# Report how often a duplicate had to wait for the first writer (see notes).
log_lock_waits = on
deadlock_timeout = '1ms'
});
$node->start;

# Count of lock waits logged since $offset (informational only).
sub lock_waits_since
{
	my ($offset) = @_;
	my $log = slurp_file($node->logfile, $offset);
	my @waits = $log =~ /still waiting for ShareLock on transaction/g;
	return scalar @waits;
}

# Make a database that runs every session at $iso and check that it does.
sub make_db
{
	my ($db, $iso) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql('postgres',
		"ALTER DATABASE $db SET default_transaction_isolation = '$iso'");
	$node->safe_psql($db, 'CREATE EXTENSION eo_processing');
	is($node->safe_psql($db, 'SHOW default_transaction_isolation'),
		$iso, "$db: sessions run at $iso");
}

######################################################################
# eo.process(): 8 clients, the same 200 ids drawn at random.
######################################################################

# The side effect (effects) is written only when eo.process() returned
# true; every delivery attempt is logged in attempts, in the same
# transaction, so that a rolled back (retried) attempt leaves no row.  The
# short sleep keeps the first writer's record uncommitted for a moment so
# that concurrent duplicates have to wait for it.
my $inbox_script = qq{
\\set n random(1, $nids)
BEGIN;
SELECT eo.process('msg-' || :n) AS first \\gset
\\if :first
INSERT INTO effects (id, client, iso)
  VALUES ('msg-' || :n, :client_id, current_setting('transaction_isolation'));
INSERT INTO attempts (id, client, first) VALUES ('msg-' || :n, :client_id, true);
SELECT pg_sleep(0.005);
\\else
INSERT INTO attempts (id, client, first) VALUES ('msg-' || :n, :client_id, false);
\\endif
END;
};

sub check_inbox_run
{
	my ($db, $iso, @pgbench_options) = @_;

	make_db($db, $iso);
	$node->safe_psql(
		$db, q{
		CREATE TABLE effects (id text NOT NULL, client int NOT NULL,
							  iso text NOT NULL);
		CREATE TABLE attempts (id text NOT NULL, client int NOT NULL,
							   first boolean NOT NULL);
	});

	my $log_offset = -s $node->logfile;
	my $r = eo_pgbench(
		$node,
		dbname => $db,
		name => "inbox_$db",
		script => $inbox_script,
		clients => $clients,
		transactions => $inbox_txns,
		options => \@pgbench_options);
	my $total = $clients * $inbox_txns;

	is($r->{rc}, 0, "$db: pgbench exits with status 0");
	is($r->{processed}, $total, "$db: pgbench completed all $total transactions");
	is($r->{failed} // 0, 0, "$db: no transaction failed");
	unlike($r->{stderr}, qr/ERROR/, "$db: no error reported by pgbench");

	# What happened, as seen by the tables.
	my ($effects, $distinct, $inbox, $first, $dups) = split /\|/,
	  $node->safe_psql(
		$db, q{
		SELECT (SELECT count(*) FROM effects),
		       (SELECT count(DISTINCT id) FROM effects),
		       (SELECT count(*) FROM eo.inbox),
		       (SELECT count(*) FROM attempts WHERE first),
		       (SELECT count(*) FROM attempts WHERE NOT first)});

	is($node->safe_psql(
			$db,
			'SELECT count(*) FROM (SELECT id FROM effects GROUP BY id HAVING count(*) > 1) d'),
		0, "$db: no id has its side effect twice");
	is($effects, $distinct, "$db: effects count equals distinct ids in effects");
	is($inbox, $effects, "$db: one eo.inbox record per side effect");
	is($node->safe_psql(
			$db, q{
		SELECT count(*)
		  FROM eo.inbox i FULL JOIN effects e ON e.id = i.msg_id
		 WHERE i.msg_id IS NULL OR e.id IS NULL OR i.consumer <> 'default'}),
		0, "$db: eo.inbox holds exactly the ids that had their side effect");

	# Each (retried or not) committed pgbench transaction logged one attempt.
	is($first + $dups, $total, "$db: one attempt logged per committed transaction");
	is($first, $effects, "$db: eo.process() returned true once per side effect");
	cmp_ok($dups, '>', 0, "$db: duplicate deliveries were attempted");
	cmp_ok($r->{processed}, '>', $effects,
		"$db: more successful transactions than side effects");

	# 4000 uniform draws over 200 ids miss one with probability ~4e-7.
	is($node->safe_psql(
			$db, qq{
		SELECT count(*)
		  FROM generate_series(1, $nids) g
		  FULL JOIN effects e ON e.id = 'msg-' || g
		 WHERE e.id IS NULL OR g IS NULL}),
		0, "$db: every one of the $nids ids was processed");

	is($node->safe_psql($db, "SELECT count(*) FROM effects WHERE iso <> '$iso'"),
		0, "$db: the side effects were written at $iso");

	# The records keep deduplicating once the dust has settled.
	is($node->safe_psql(
			$db, qq{
		SELECT count(*) FROM generate_series(1, $nids) g
		 WHERE eo.process('msg-' || g)}),
		0, "$db: every id is a duplicate afterwards");

	note sprintf(
		"%s: %d side effects, %d duplicate deliveries, %d lock waits logged, %s transactions retried",
		$db, $effects, $dups, lock_waits_since($log_offset),
		$r->{retried} // 'no');
	return;
}

check_inbox_run('inbox_rc', 'read committed');
check_inbox_run('inbox_rr', 'repeatable read', '--max-tries=100');

######################################################################
# eo.process_seq(): client i owns producer "p<i>".
######################################################################

# Each transaction is one of:
#   new        (70%) the owner sends its next sequence number, hi + 1;
#   resend     (15%) the owner re-sends one of its old numbers;
#   neighbour  (15%) a client re-sends an old number of the next client's
#                    producer, read from the producer's committed mark:
#                    this races with the owner raising that mark (kind
#                    "none" when that producer has no mark yet).
# hi (the owner's last sent number) advances after END, so a retried
# transaction does not advance it twice.  As with the inbox, every send is
# logged in the transaction that made it.
my $seq_script = qq{
\\set r random(1, 100)
\\set nb (:client_id + 1) % $clients
\\set kind 0
\\if :r <= 15 and :hi > 0
\\set kind 1
\\elif :r <= 30
\\set kind 2
\\endif
BEGIN;
\\if :kind = 0
\\set seq :hi + 1
SELECT eo.process_seq('p' || :client_id, :seq) AS first \\gset
\\if :first
INSERT INTO seq_effects (producer, seq, client) VALUES ('p' || :client_id, :seq, :client_id);
INSERT INTO seq_sends (producer, seq, sender, kind, first)
  VALUES ('p' || :client_id, :seq, :client_id, 'new', true);
SELECT pg_sleep(0.002);
\\else
INSERT INTO seq_sends (producer, seq, sender, kind, first)
  VALUES ('p' || :client_id, :seq, :client_id, 'new', false);
\\endif
\\elif :kind = 1
\\set seq random(1, :hi)
SELECT eo.process_seq('p' || :client_id, :seq) AS first \\gset
\\if :first
INSERT INTO seq_effects (producer, seq, client) VALUES ('p' || :client_id, :seq, :client_id);
INSERT INTO seq_sends (producer, seq, sender, kind, first)
  VALUES ('p' || :client_id, :seq, :client_id, 'resend', true);
\\else
INSERT INTO seq_sends (producer, seq, sender, kind, first)
  VALUES ('p' || :client_id, :seq, :client_id, 'resend', false);
\\endif
\\else
SELECT coalesce(max(last_seq), 0) AS nbhi FROM eo.producer_seq
 WHERE consumer = 'default' AND producer = 'p' || :nb \\gset
\\if :nbhi > 0
\\set seq random(1, :nbhi)
SELECT eo.process_seq('p' || :nb, :seq) AS first \\gset
\\if :first
INSERT INTO seq_effects (producer, seq, client) VALUES ('p' || :nb, :seq, :client_id);
INSERT INTO seq_sends (producer, seq, sender, kind, first)
  VALUES ('p' || :nb, :seq, :client_id, 'neighbour', true);
\\else
INSERT INTO seq_sends (producer, seq, sender, kind, first)
  VALUES ('p' || :nb, :seq, :client_id, 'neighbour', false);
\\endif
\\else
INSERT INTO seq_sends (producer, seq, sender, kind, first)
  VALUES ('p' || :nb, 0, :client_id, 'none', false);
\\endif
\\endif
END;
\\if :kind = 0
\\set hi :hi + 1
\\endif
};

sub check_seq_run
{
	my ($db, $iso, @pgbench_options) = @_;

	make_db($db, $iso);
	$node->safe_psql(
		$db, q{
		CREATE TABLE seq_effects (producer text NOT NULL, seq bigint NOT NULL,
								  client int NOT NULL);
		CREATE TABLE seq_sends (producer text NOT NULL, seq bigint NOT NULL,
								sender int NOT NULL, kind text NOT NULL,
								first boolean NOT NULL);
	});

	my $log_offset = -s $node->logfile;
	my $r = eo_pgbench(
		$node,
		dbname => $db,
		name => "seq_$db",
		script => $seq_script,
		clients => $clients,
		transactions => $seq_txns,
		options => [ '--define=hi=0', @pgbench_options ]);
	my $total = $clients * $seq_txns;

	is($r->{rc}, 0, "$db: pgbench exits with status 0");
	is($r->{processed}, $total, "$db: pgbench completed all $total transactions");
	is($r->{failed} // 0, 0, "$db: no transaction failed");
	unlike($r->{stderr}, qr/ERROR/, "$db: no error reported by pgbench");

	is($node->safe_psql($db, 'SELECT count(*) FROM seq_sends'),
		$total, "$db: one send logged per committed transaction");

	# Per producer: the side effects are exactly the sequence numbers
	# 1 .. last_seq, once each, and the mark is the highest of them.
	my $expected = join "\n",
	  map { "p$_|t|t|t|t" } 0 .. $clients - 1;
	is($node->safe_psql(
			$db, q{
		SELECT s.producer,
		       count(e.seq) = count(DISTINCT e.seq),
		       count(e.seq) = s.last_seq,
		       min(e.seq) = 1 AND max(e.seq) = s.last_seq,
		       count(e.seq) > 0
		  FROM eo.producer_seq s LEFT JOIN seq_effects e USING (producer)
		 WHERE s.consumer = 'default'
		 GROUP BY s.producer, s.last_seq
		 ORDER BY s.producer}),
		$expected,
		"$db: per producer, effects are 1..last_seq with no duplicates");
	is($node->safe_psql(
			$db, q{
		SELECT count(*) FROM seq_effects e
		 WHERE NOT EXISTS (SELECT FROM eo.producer_seq s
							WHERE s.producer = e.producer)}),
		0, "$db: no side effect for a producer without a mark");

	# Per producer: effects equal the distinct numbers ever sent.
	is($node->safe_psql(
			$db, q{
		SELECT count(*)
		  FROM (SELECT producer, count(DISTINCT seq) AS n FROM seq_sends
		         WHERE kind <> 'none' GROUP BY 1) s
		  FULL JOIN (SELECT producer, count(*) AS n FROM seq_effects GROUP BY 1) e
		       USING (producer)
		 WHERE s.n IS DISTINCT FROM e.n}),
		0, "$db: per producer, effects count equals distinct seqs sent");

	# Every new number was accepted, every re-sent one refused.
	my %kinds = map { my ($k, $f, $n) = split /\|/; ("$k|$f" => $n) }
	  split /\n/,
	  $node->safe_psql($db,
		'SELECT kind, first, count(*) FROM seq_sends GROUP BY 1, 2');
	is($kinds{'new|f'} // 0, 0, "$db: no new sequence number was refused");
	is($kinds{'resend|t'} // 0, 0, "$db: no re-sent number of the owner was accepted");
	is($kinds{'neighbour|t'} // 0, 0,
		"$db: no re-sent number from another client was accepted");
	cmp_ok($kinds{'resend|f'} // 0, '>', 0, "$db: the owners re-sent old numbers");
	cmp_ok($kinds{'neighbour|f'} // 0, '>', 0,
		"$db: other clients re-sent old numbers");
	is($node->safe_psql($db, q{SELECT count(*) FROM seq_effects WHERE producer <> 'p' || client}),
		0, "$db: only the owner's sends had side effects");

	note sprintf(
		"%s: %s, %d lock waits logged, %s transactions retried",
		$db, join(', ', map { "$_=$kinds{$_}" } sort keys %kinds),
		lock_waits_since($log_offset), $r->{retried} // 'no');
	return;
}

check_seq_run('seq_rc', 'read committed');
check_seq_run('seq_rr', 'repeatable read', '--max-tries=100');

$node->stop;

done_testing();
