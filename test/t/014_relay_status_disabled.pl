# eo.relay_status when the server starts with eo.relay_enabled = off
# (issue #10): the databases that have the extension are shown, with the
# state "disabled", as when the relay is turned off at runtime; databases
# without the extension are not.  Turned on by reload, the relay of the
# database runs and delivers what waited.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest qw(eo_set_relay_enabled eo_wait_relay);

my $settle = 30;

my $node = PostgreSQL::Test::Cluster->new('relay_status_disabled');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'eo_processing'\neo.relay_enabled = off\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION eo_processing');
$node->safe_psql('postgres', 'CREATE DATABASE plain');
$node->safe_psql('postgres', q{SELECT eo.publish('t.waiting', '{}'::jsonb)});
$node->restart;

# poll($sql): poll until $sql returns true, at most $settle seconds.
sub poll
{
	my ($sql) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $settle;
	return $node->poll_query_until('postgres', $sql);
}

ok( poll(
		q{SELECT count(*) = 1 FROM eo.relay_status
		   WHERE datname = 'postgres' AND pid IS NULL AND state LIKE 'disabled%'}),
	'started with eo.relay_enabled = off: eo.relay_status shows the database, disabled');
ok(poll(q{SELECT NOT EXISTS (SELECT 1 FROM eo.relay_status WHERE datname = 'plain')}),
	'... and not a database without the extension');
is($node->safe_psql('postgres', q{SELECT state FROM eo.relay_status WHERE datname = 'postgres'}),
	'disabled: eo.relay_enabled is off', '... with the state text of a relay turned off at runtime');
is($node->safe_psql('postgres', 'SELECT count(*) FROM eo.outbox'),
	'1', '... and the message waits in eo.outbox');

eo_set_relay_enabled($node, 'on');
ok(eo_wait_relay($node, 'postgres'), 'turned on by reload: the relay of the database runs');
ok(poll(q{SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)}), '... and routes the waiting message');
is($node->safe_psql('postgres', q{SELECT count(*) FROM eo.relay_status}),
	'1', '... and eo.relay_status has that database only');

done_testing();
