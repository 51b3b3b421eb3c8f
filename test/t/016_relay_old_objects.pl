# This library with the objects of the version before (0.5.0: between
# installing the new library and ALTER EXTENSION UPDATE): the relay needs
# the rotating log of 0.6.0, so it waits and says why in the log, and
# eo.relay_run() refuses
# with a hint; publishing keeps working and the messages wait in eo.outbox.
# After the update (which wakes the relay) they are delivered, once each.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EONotify;
use EOTest qw(eo_new_node eo_wait_drained);

my $settle = 30;
local $PostgreSQL::Test::Utils::timeout_default = $settle;

my $node = eo_new_node('relay_old_objects', conf => "eo.relay_naptime = 3600\n");
my $log_offset = -s $node->logfile;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eo_processing VERSION '0.5.0';
SELECT eo.create_destination('n', 'notify', '{"channel": "eo_old"}');
SELECT eo.subscribe('old.*', 'n');
});
ok( $node->wait_for_log(
		qr/relay of database \d+ waits: the extension's objects are older than its library/,
		$log_offset),
	'the relay waits, and the log says why');

my $listener = EONotify->new($node, 'postgres', 'eo_old');
my @ids = split /\n/,
  $node->safe_psql('postgres',
	q{SELECT eo.publish('old.a', jsonb_build_object('i', g)) FROM generate_series(1, 5) g});
is(scalar(@ids), 5, 'publishing works on the 0.5.0 objects');

my ($ret, $stdout, $stderr) = $node->psql('postgres', 'SELECT eo.relay_run()');
isnt($ret, 0, 'eo.relay_run() refuses');
like($stderr, qr/objects of extension eo_processing are older than its library.*\n.*HINT:  Run ALTER EXTENSION eo_processing UPDATE/s,
	'... with an error and a hint');
# Waiting, the relay sleeps until woken: no wake-up between two reads of
# eo.relay_status 0.3 s apart (a busy wait would show a new last_wakeup).
my $wakeup_sql = q{SELECT last_wakeup FROM eo.relay_status WHERE datname = 'postgres'};
$node->safe_psql('postgres', 'SELECT pg_sleep(0.3)');    # the relay must not move
my $wakeup_before = $node->safe_psql('postgres', $wakeup_sql);
$node->safe_psql('postgres', 'SELECT pg_sleep(0.3)');
is($node->safe_psql('postgres', $wakeup_sql), $wakeup_before, 'the waiting relay does not wake by itself');
is($node->safe_psql('postgres', 'SELECT count(*) FROM eo.outbox'),
	'5', 'the messages wait in eo.outbox');

$node->safe_psql('postgres', q{ALTER EXTENSION eo_processing UPDATE});
ok(eo_wait_drained($node, 'postgres'), 'after the update the relay delivers them');
ok($listener->wait_until(sub { !grep { $listener->seen_count($_) != 1 } @ids }, $settle),
	'each message reached the listener once');
is( $node->safe_psql('postgres',
		q{SELECT count(*) || ' ' || count(seq) FROM eo.message_log WHERE topic = 'old.a'}),
	'5 5', 'they are in the log with their positions');

$listener->close;
$node->stop;
done_testing();
