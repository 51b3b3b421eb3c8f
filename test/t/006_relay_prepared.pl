# Two-phase commit and the relay.
#
# A transaction that publishes and is then prepared commits later, in
# another session (COMMIT PREPARED), where the publisher's commit callback
# does not run.  The relay must still be woken at that commit: with an
# hour-long eo.relay_naptime, only the wake-up can deliver the message
# promptly.  ROLLBACK PREPARED publishes nothing.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

my $node = PostgreSQL::Test::Cluster->new('relay_prepared');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'eo_processing'
max_prepared_transactions = 4
eo.relay_naptime = 3600
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('d', 'notify', '{"channel": "prepared"}');
SELECT eo.subscribe('tp.*', 'd');
});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM eo.relay_status WHERE pid IS NOT NULL AND state = 'idle'})
  or die 'the relay did not start';

sub delivered
{
	return $node->safe_psql('postgres',
		q{SELECT delivered_total FROM eo.stats WHERE destination = 'd'});
}

# Publish in a transaction that is prepared, then rolled back: nothing.
$node->safe_psql(
	'postgres', q{
BEGIN;
SELECT eo.publish('tp.rolled_back', '{}'::jsonb);
PREPARE TRANSACTION 'rb';
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM eo.outbox'),
	'0', 'a prepared message is invisible');
$node->safe_psql('postgres', q{ROLLBACK PREPARED 'rb'});

# Publish, prepare, commit from another session: delivered at once.
$node->safe_psql(
	'postgres', q{
BEGIN;
SELECT eo.publish('tp.committed', '{}'::jsonb);
PREPARE TRANSACTION 'cm';
});
my $start = Time::HiRes::time();
$node->safe_psql('postgres', q{COMMIT PREPARED 'cm'});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 0 FROM eo.outbox}),
	'the committed prepared message was routed');
my $elapsed = Time::HiRes::time() - $start;
cmp_ok($elapsed, '<', 60,
	'routed long before the relay naptime: COMMIT PREPARED woke the relay');
is(delivered(), '1', 'exactly the committed message was delivered');
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(topic, ',') FROM eo.message_log}),
	'tp.committed',
	'the rolled-back prepared message was never published');

$node->stop;
done_testing();
