# The relay vacuums eo.outbox itself after every 10,000 messages it routes
# (src/outbox_vacuum.c), so that the next claims do not walk the index
# entries of the rows it deleted.  Autovacuum is off in this cluster: any
# vacuum of eo.outbox, and any dead row gone, is the relay's doing.
#
#   1. 25,000 messages routed: eo.outbox was vacuumed at least twice and
#      has fewer dead rows left than one interval (without the relay's
#      vacuum all 25,000 would still be dead).
#   2. A session holds a lock on eo.outbox that VACUUM needs
#      (SHARE UPDATE EXCLUSIVE, which publishing and routing do not
#      conflict with): 12,000 messages are routed all the same, the relay
#      records no error, and eo.outbox was not vacuumed meanwhile (the
#      relay skipped it instead of waiting).
#   3. A snapshot held open (REPEATABLE READ) from before a further 12,000
#      messages: they are routed, the relay vacuums, the rows deleted after
#      the snapshot stay (no VACUUM may remove them), and no error.  Once
#      the snapshot is gone, the next vacuum removes them.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use DBI;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;

my $node = eo_new_relay_node('outbox_vacuum', 'v', 'notify', '{"channel": "v_chan"}', 'v.*',
	conf => "autovacuum = off\neo.relay_naptime = 3600\n");

# The outbox's counters (the relay reports its statistics within a second
# or so of a step; poll, do not sleep).
my $stats = q{SELECT vacuum_count, autovacuum_count, n_dead_tup
                FROM pg_stat_user_tables WHERE relid = 'eo.outbox'::regclass};

sub publish
{
	my ($n) = @_;
	$node->safe_psql('postgres',
		"SELECT count(eo.publish('v.x', jsonb_build_object('n', g))) FROM generate_series(1, $n) g");
	ok(eo_wait_drained($node, 'postgres'), "$n messages routed");
}

sub relay_error
{
	return $node->safe_psql('postgres',
		q{SELECT coalesce(last_error, '') FROM eo.relay_status WHERE datname = 'postgres'});
}

# 1. Vacuumed while routing.  Waited for on the relay's counter in shared
# memory: the snapshot of a poll that reads the tables (eo.stats) lasts
# long enough, while the relay routes, to keep a vacuum that runs meanwhile
# from removing the rows deleted since the poll began, and no vacuum comes
# after the backlog.
$node->safe_psql('postgres',
	"SELECT count(eo.publish('v.x', jsonb_build_object('n', g))) FROM generate_series(1, 25000) g");
ok( $node->poll_query_until(
		'postgres', q{SELECT delivered_since_start >= 25000 FROM eo.relay_status
		               WHERE datname = 'postgres'}),
	'25000 messages routed');
ok( $node->poll_query_until(
		'postgres', qq{SELECT vacuum_count >= 2 AND autovacuum_count = 0 AND n_dead_tup < 10000
		                FROM ($stats) s}),
	'the relay vacuumed eo.outbox (at least twice for 25,000 messages; fewer than 10,000 dead rows left)'
) or diag($node->safe_psql('postgres', $stats));
is(relay_error(), '', 'no relay error');

my $dsn = sprintf('dbi:Pg:dbname=postgres;host=%s;port=%s', $node->host, $node->port);

# 2. A lock VACUUM needs is held: the relay skips the vacuum, routing goes on.
my $before = $node->safe_psql('postgres', "SELECT vacuum_count FROM ($stats) s");
my $locker = DBI->connect($dsn, '', '', { AutoCommit => 0, RaiseError => 1, PrintError => 0 });
$locker->do('LOCK TABLE eo.outbox IN SHARE UPDATE EXCLUSIVE MODE');
publish(12000);
is($node->safe_psql('postgres', "SELECT vacuum_count FROM ($stats) s"),
	$before, 'no vacuum while the lock is held (skipped, not waited for)');
is(relay_error(), '', 'no relay error while skipping');
$locker->rollback;
$locker->disconnect;

# 3. An old snapshot keeps the deleted rows; the relay goes on and
# vacuums again once it is gone.
my $reader = DBI->connect($dsn, '', '', { AutoCommit => 0, RaiseError => 1, PrintError => 0 });
$reader->do('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ');
$reader->selectrow_array('SELECT count(*) FROM eo.destination');    # takes the snapshot
$before = $node->safe_psql('postgres', "SELECT vacuum_count FROM ($stats) s");
publish(12000);
ok( $node->poll_query_until(
		'postgres', qq{SELECT vacuum_count > $before AND n_dead_tup >= 12000 FROM ($stats) s}),
	'vacuumed under an old snapshot, which keeps the rows deleted after it'
) or diag($node->safe_psql('postgres', $stats));
is(relay_error(), '', 'no relay error under the old snapshot');
$reader->rollback;
$reader->disconnect;

publish(10000);
ok( $node->poll_query_until('postgres', qq{SELECT n_dead_tup < 10000 FROM ($stats) s}),
	'once the snapshot is gone, the next vacuum removes them'
) or diag($node->safe_psql('postgres', $stats));

$node->stop;
done_testing();
