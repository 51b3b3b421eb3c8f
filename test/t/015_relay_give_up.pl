# The relay's last resort for a retry that fails with an error even when
# retried alone ("giving up a delivery") must give up exactly that
# delivery: the first one the retry step attempts (due, of an enabled
# notify destination, first in line for its key) — never a delivery of
# another destination or kind, a disabled destination's waiting delivery,
# or one held behind its key (issue #13's defect, found by reading).
#
# A retry that fails with an error is made here by a trigger on
# eo.delivery that refuses to record a new attempt for messages of topic
# "poison.*" (the relay records a failed attempt with an UPDATE); the
# message's topic is too long for a NOTIFY channel, so every attempt fails.
# Earlier messages wait for a disabled destination and behind a failed
# message of their key: before the fix the relay marked those dead.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest qw(eo_new_node eo_wait_relay);

my $settle = 60;

my $node = eo_new_node('relay_give_up',
	conf => "eo.relay_batch_size = 1\neo.relay_naptime = 3600\n");
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eo_processing;
-- Waits: its destination is disabled.
SELECT eo.create_destination('paused', 'notify', '{"channel": "paused"}');
SELECT eo.subscribe('paused.*', 'paused');
SELECT eo.disable_destination('paused', 'maintenance');
-- Waits behind the failed first message of its key (retried in an hour).
SELECT eo.create_destination('keyed', 'notify', '{"max_attempts": 100, "retry_delays": ["1h"]}');
SELECT eo.subscribe('k.*', 'keyed');
-- Fails at every attempt, and its failures cannot even be recorded.
SELECT eo.create_destination('poisoned', 'notify', '{"max_attempts": 100, "retry_delays": ["200ms"]}');
SELECT eo.subscribe('poison.*', 'poisoned');
});
eo_wait_relay($node, 'postgres') or die 'the relay did not start';

my $long = 'x' x 70;    # topics longer than a NOTIFY channel may be
my $paused_id = $node->safe_psql('postgres',
	q{SELECT eo.publish('paused.a', '{"n": 1}'::jsonb)});
my $held_id = $node->safe_psql(
	'postgres', qq{
SELECT eo.publish('k.$long', '{"n": 1}'::jsonb, 'key-1');
SELECT eo.publish('k.short', '{"n": 2}'::jsonb, 'key-1');
});
$held_id = (split /\n/, $held_id)[1];

local $PostgreSQL::Test::Utils::timeout_default = $settle;
# The disabled destination's message waits in the log (pending in eo.stats,
# no row of its own); the message behind the failed one of its key is set
# aside in eo.delivery.
ok( $node->poll_query_until(
		'postgres', qq{
SELECT (SELECT count(*) = 2 FROM eo.delivery
         WHERE (message_id = '$held_id' AND state = 'pending')
            OR (key = 'key-1' AND state = 'retrying'))
   AND (SELECT pending = 1 FROM eo.stats WHERE destination = 'paused')}),
	'the disabled destination and the key behind a failure each hold a delivery');

$node->safe_psql(
	'postgres', q{
CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> 'dead' AND EXISTS (SELECT 1 FROM eo.message_log m
                                        WHERE m.id = NEW.message_id AND m.topic LIKE 'poison.%') THEN
        RAISE EXCEPTION 'injected failure recording an attempt of a poison message';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE UPDATE ON eo.delivery
    FOR EACH ROW EXECUTE FUNCTION public.refuse_poison();
});
my $log_offset = -s $node->logfile;
my $poison_id = $node->safe_psql('postgres',
	qq{SELECT eo.publish('poison.$long', '{"n": 1}'::jsonb)});

ok( $node->poll_query_until(
		'postgres', qq{
SELECT state = 'dead' FROM eo.delivery WHERE message_id = '$poison_id'}),
	'the relay gave up the poison delivery');
ok( $node->wait_for_log(qr/marked a delivery that cannot be retried as dead/, $log_offset),
	'and said so in the log');

is( $node->safe_psql(
		'postgres', qq{
SELECT (SELECT x.state || ' ' || x.attempts FROM eo.delivery x WHERE x.message_id = '$held_id')
       || ', ' || (SELECT pending || ' pending ' || dead || ' dead' FROM eo.stats
                    WHERE destination = 'paused')}),
	'pending 0, 1 pending 0 dead',
	'the waiting deliveries of other destinations were not given up');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM eo.delivery WHERE state = 'dead'}),
	'1', 'exactly one delivery is dead');

# The waiting deliveries still go out once they may.
$node->safe_psql(
	'postgres', q{
DROP TRIGGER refuse_poison ON eo.delivery;
SELECT eo.enable_destination('paused');
});
ok( $node->poll_query_until(
		'postgres', qq{
SELECT pending = 0 AND delivered_total = 1 FROM eo.stats WHERE destination = 'paused'}),
	'the paused destination gets its message once enabled');

$node->stop;
done_testing();
