# The extension under Valgrind memcheck: no memory error and no lost block
# in its code, above all in the relay worker and its libcurl dispatcher.
#
# How the server runs under Valgrind: a private bin directory holds
# symbolic links to the real binaries, except "postgres", a script that
# execs the real postgres under valgrind, and pg_ctl, a copy: pg_ctl starts
# the postgres next to itself, and PostgreSQL's find_my_exec resolves
# symbolic links, so a linked pg_ctl would find the real directory.
# (initdb, a link, bootstraps with the real postgres, without Valgrind.)
# The node uses that directory as its install_path.  Valgrind follows
# fork(), so the postmaster and every process it starts -- backends, the
# relay launcher, the relay workers -- run under memcheck, each writing
# its own log, vg.<pid>.log.
#
# The scenario is short but takes the relay through its paths: NOTIFY,
# NATS JetStream (a cluster of three nats-server processes), Kafka (the
# default and the exactly_once producer, against librdkafka's mock
# cluster; a record refused for good; a producer closed) and signed
# webhook deliveries of a few hundred messages (keyed, text, too
# large for a notification) to test/webhook_receiver.py answering with
# 500, 429, a dropped connection or a response slower than the timeout for
# some of them; a destination that refuses connections (dead, redriven,
# dropped); 410 Gone disabling a destination; a configuration change
# (eo.alter_destination), SIGHUP, the relay terminated by SIGTERM while
# requests are in flight (its exit path frees libcurl's handles), the inbox
# functions, a queue read, given back, redriven and acknowledged, and a
# fast shutdown at the end, after which every process has written its leak
# check.
#
# Then every log is read.  A record -- an error, or a definitely or
# indirectly lost block -- belongs to the extension when one of its stacks
# (where it happened, where the memory was allocated or freed) has a frame
# of eo_processing: a function from src/, or an address in
# eo_processing.so.  Those fail the test, libcurl's allocations made for
# the extension included (their stacks go through src/http_*.c).  The
# others are PostgreSQL's, libc's or libcurl's own (Debian's postgres is
# not built with USE_VALGRIND): reported by kind with note().
#
# Without USE_VALGRIND, memcheck sees PostgreSQL's memory contexts as the
# large malloc'd blocks they are: it checks malloc'd memory (libcurl's,
# the relay's socket list), uninitialised bytes in blocks not written yet,
# and leaks, but not a palloc'd chunk overrun within its block or used
# after pfree.
# test/valgrind.supp suppresses the few false positives inside PostgreSQL
# that happen beneath the extension's frames (see there).

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use File::Basename qw(basename);
use File::Copy ();
use HTTP::Tiny;
use IPC::Run;
use JSON::PP ();
use DBI;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EONotify;
use EONats;
use EOKafka;

plan skip_all => 'valgrind is not installed (Debian package valgrind)'
  unless system('valgrind --version >/dev/null 2>&1') == 0;

# Everything under Valgrind is 20-50 times slower: waits are generous.
my $timeout = $PostgreSQL::Test::Utils::timeout_default;
$ENV{PGCTLTIMEOUT} = $timeout;

my $src_dir = "$FindBin::RealBin/../../src";
my $supp_file = "$FindBin::RealBin/../valgrind.supp";
my $receiver_script = "$FindBin::RealBin/../webhook_receiver.py";

######################################################################
# A PostgreSQL installation whose postgres runs under Valgrind
######################################################################

my $vg_dir = "$PostgreSQL::Test::Utils::tmp_check/valgrind";
my $vg_install = "$vg_dir/install";
my $vg_logs = "$vg_dir/logs";
mkdir $_ or die "mkdir $_: $!" for ($vg_dir, $vg_install, "$vg_install/bin", $vg_logs);

my $real_bindir = `pg_config --bindir`;
die 'pg_config --bindir failed' if $? != 0;
chomp $real_bindir;
my $real_postgres = "$real_bindir/postgres";
die "$real_postgres not found" unless -x $real_postgres;

opendir(my $bindir_dh, $real_bindir) or die "cannot read $real_bindir: $!";
for my $f (grep { !/^\.\.?$/ } readdir $bindir_dh)
{
	next if $f eq 'postgres' || $f eq 'postmaster';
	if ($f eq 'pg_ctl')
	{
		File::Copy::copy("$real_bindir/$f", "$vg_install/bin/$f") or die "copy $f: $!";
		chmod 0755, "$vg_install/bin/$f";
	}
	else
	{
		symlink("$real_bindir/$f", "$vg_install/bin/$f") or die "symlink $f: $!";
	}
}
closedir $bindir_dh;

my @valgrind = (
	'valgrind', '--tool=memcheck', '--trace-children=no',
	'--track-origins=no', '--leak-check=full',
	'--show-leak-kinds=definite,indirect',
	'--errors-for-leak-kinds=definite,indirect',
	'--num-callers=30', '--error-limit=no', '--vgdb=no',
	# full source paths: the extension's frames are those in .../src/
	'--fullpath-after=',
	"--suppressions=$supp_file", "--log-file=$vg_logs/vg.%p.log");
# pg_ctl asks "postgres -V" and may ask "postgres -C": answered without
# Valgrind.  DEBUGINFOD_URLS would make Valgrind download debug symbols.
append_to_file(
	"$vg_install/bin/postgres", qq{#!/bin/sh
# Written by test/t/050_valgrind.pl: postgres under Valgrind memcheck.
for arg in "\$@"; do
	case \$arg in
		-V|--version|-C|--describe-config) exec '$real_postgres' "\$@" ;;
	esac
done
unset DEBUGINFOD_URLS
exec @{[ join(' ', map { "'$_'" } @valgrind) ]} '$real_postgres' "\$@"
});
chmod 0755, "$vg_install/bin/postgres";

######################################################################
# The webhook receiver
######################################################################

# Standard Webhooks secret: whsec_ and the base64 of 32 bytes.
my $secret = 'whsec_dmFsZ3JpbmQgbWVtY2hlY2sgb2YgdGhlIHJlbGF5ISE=';
my $port_file = "$vg_dir/receiver.port";
my ($receiver_out, $receiver_err) = ('', '');
my $receiver = IPC::Run::start(
	[
		'python3', $receiver_script, '--port', '0',
		'--port-file', $port_file, '--secret', $secret, '--seed', '50',
		'--log', "$vg_dir/receiver.jsonl"
	],
	'<', \undef, '>', \$receiver_out, '2>', \$receiver_err);
{
	my $deadline = Time::HiRes::time() + 30;
	Time::HiRes::usleep(100_000) until -s $port_file || Time::HiRes::time() > $deadline;
}
die "webhook receiver did not start: $receiver_err" unless -s $port_file;
END { eval { $receiver->kill_kill if $receiver->pumpable; }; }
my $receiver_port = slurp_file($port_file);
chomp $receiver_port;
my $receiver_url = "http://127.0.0.1:$receiver_port";
my $http = HTTP::Tiny->new(timeout => 30);
my $json = JSON::PP->new->canonical;

# control($method, $path, $body): a receiver control endpoint; the decoded
# JSON answer.
sub control
{
	my ($method, $path, $body) = @_;
	my $r = $http->request($method, "$receiver_url$path",
		defined $body
		? { content => $json->encode($body), headers => { 'Content-Type' => 'application/json' } }
		: {});
	die "receiver $method $path: $r->{status} $r->{content}" unless $r->{success};
	return $json->decode($r->{content});
}

######################################################################
# The node
######################################################################

my $node = PostgreSQL::Test::Cluster->new('valgrind', install_path => $vg_install);
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'eo_processing'
# Fewer and smaller processes to run under Valgrind.
shared_buffers = 16MB
autovacuum = off
max_logical_replication_workers = 0
log_statement = none
eo.relay_naptime = 5
});
my $t_start = Time::HiRes::time();
$node->start;
my ($postmaster_pid) = slurp_file($node->data_dir . '/postmaster.pid') =~ /^(\d+)/;
note sprintf('server started under valgrind in %.1f s', Time::HiRes::time() - $t_start);

# One session for the test's own queries: every connection is a backend
# started, and leak-checked at exit, under Valgrind.
my $dbh = DBI->connect(
	sprintf('dbi:Pg:dbname=postgres;host=%s;port=%s', $node->host, $node->port),
	'', '', { AutoCommit => 1, RaiseError => 1, PrintError => 0 });

# sql($query): the rows of the last statement, columns joined by '|'.
sub sql
{
	my ($query) = @_;
	my $sth = $dbh->prepare($query);
	$sth->execute;
	return '' unless $sth->{NUM_OF_FIELDS};
	return join("\n", map { join('|', map { $_ // '' } @$_) } @{ $sth->fetchall_arrayref });
}

# wait_for($query, $what): poll until $query returns true; false after
# $timeout seconds.
sub wait_for
{
	my ($query, $what) = @_;
	my $deadline = Time::HiRes::time() + $timeout;
	while (Time::HiRes::time() < $deadline)
	{
		return 1 if sql($query) eq '1';
		Time::HiRes::usleep(200_000);
	}
	diag "timed out waiting for: $what";
	return 0;
}

# Every delivery finished (or dead), nothing left in the outbox.
my $all_done = q{SELECT (NOT EXISTS (SELECT 1 FROM eo.outbox)
	AND NOT EXISTS (SELECT 1 FROM eo.delivery WHERE state <> 'dead')
	AND (SELECT coalesce(sum(pending + in_flight + retrying), 0) = 0 FROM eo.stats))::int};

# The relay worker's pid, once it runs and is idle.
sub relay_pid
{
	wait_for(q{SELECT (count(*) = 1)::int FROM eo.relay_status
	            WHERE datname = 'postgres' AND pid IS NOT NULL AND state = 'idle'},
		'an idle relay worker')
	  or return '';
	return sql(q{SELECT pid FROM eo.relay_status WHERE datname = 'postgres'});
}

sql(qq{
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('vg_notify', 'notify', '{"channel": "vg_notify"}');
SELECT eo.subscribe('vg.*', 'vg_notify');
});
my %http_options = (
	url => "$receiver_url/hooks",
	headers => { 'X-Test' => 'before' },
	signing_secret => $secret,
	timeout_ms => 4000,
	concurrency => 8,
	max_attempts => 20,
	retry_delays => ['1s']);
sub http_options { return $dbh->quote($json->encode({ %http_options, @_ })); }
sql(qq{
SELECT eo.create_destination('vg_http', 'http', @{[ http_options() ]});
SELECT eo.subscribe('vg.*', 'vg_http');
-- Nobody listens on port 1: connection refused, then dead.
SELECT eo.create_destination('refused', 'http',
	'{"url": "http://127.0.0.1:1/x", "max_attempts": 2, "retry_delays": ["1s"]}');
SELECT eo.subscribe('refused.*', 'refused');
});

my $relay_pid = relay_pid();
like($relay_pid, qr/^\d+$/, 'the relay worker runs under valgrind');
my @relay_pids = ($relay_pid);
my $launcher_pid = sql(q{SELECT pid FROM pg_stat_activity
                          WHERE backend_type = 'eo_processing relay launcher'});
like($launcher_pid, qr/^\d+$/, 'the relay launcher runs');

my $listener = EONotify->new($node, 'postgres', 'vg_notify');

######################################################################
# Deliveries with faults
######################################################################

# The first attempt of about a third of the messages fails, every retry
# succeeds.  "sleep" outlasts timeout_ms: the relay gives up on it.
control('POST', '/_faults', {
	fail_500 => 0.08, drop_after_apply => 0.08, too_many => 0.08, sleep => 0.08,
	sleep_seconds => 6, retry_after => 1, only_first_attempt => JSON::PP::true });

$t_start = Time::HiRes::time();
my @published = split /\n/, sql(q{
SELECT eo.publish('vg.keyed', jsonb_build_object('seq', g, 'pad', repeat('p', g)), 'k' || g % 7)
  FROM generate_series(1, 200) g;
});
push @published, split /\n/, sql(q{
SELECT eo.publish('vg.text', 'text ' || g, NULL, jsonb_build_object('X-Trace', 't' || g))
  FROM generate_series(1, 100) g;
});
push @published, sql(q{SELECT eo.publish('vg.big', jsonb_build_object('blob', repeat('x', 9000)))});
sql(q{
SELECT eo.publish('refused.x', jsonb_build_object('i', g)) FROM generate_series(1, 2) g;
});
is(scalar @published, 301, '301 messages published');

# The inbox, in backends under Valgrind too.
is( sql(q{SELECT count(*) FILTER (WHERE eo.process('m-' || g, 'vg')) FROM generate_series(1, 50) g}),
	'50', 'eo.process: 50 new messages');
is( sql(q{SELECT count(*) FILTER (WHERE eo.process('m-' || g, 'vg')) FROM generate_series(1, 50) g}),
	'0', 'eo.process: their duplicates');
is( sql(q{SELECT eo.process('m-r', 'vg', interval '1 hour')::int
	     + eo.process('m-t', 'vg', '2 hours')::int}),
	'2', 'eo.process with a retention (interval and text)');
sql(q{SELECT eo.set_result('m-1', '{"r": 1}', 'vg')});
is(sql(q{SELECT eo.result('m-1', 'vg')}), '{"r": 1}', 'eo.set_result / eo.result');
is(sql(q{SELECT eo.forget('m-2', 'vg')::int}), '1', 'eo.forget');
is( sql(q{SELECT count(*) FILTER (WHERE eo.process_seq('p1', g, 'vg')) FROM generate_series(1, 50) g}),
	'50', 'eo.process_seq: 50 new sequence numbers');
is( sql(q{SELECT count(*) FILTER (WHERE eo.process_seq('p1', g, 'vg')) FROM generate_series(1, 50) g}),
	'0', 'eo.process_seq: their duplicates');

# A queue, read and acknowledged by a backend under Valgrind: eo.read's
# scan (src/queue_scan.c), eo.nack to death, eo.redrive, eo.ack.
sql(q{SELECT eo.create_destination('vq', 'queue', '{"max_attempts": 1}')});
sql(q{SELECT eo.subscribe('vq.*', 'vq')});
sql(q{SELECT count(eo.publish('vq.job', jsonb_build_object('n', g), 'k' || g % 5))
        FROM generate_series(1, 40) g});
ok(wait_for(q{SELECT (ready = 40)::int FROM eo.stats WHERE destination = 'vq'}, 'the queue filled'),
	'40 messages enqueued');
is(sql(q{SELECT eo.nack('vq', ARRAY(SELECT lease FROM eo.read('vq', 10)))}),
	'5', 'eo.read hands out the first message of each of the 5 keys; eo.nack gives them back');
is(sql(q{SELECT eo.redrive('vq')}), '5', 'their only attempt made, they were dead: redriven');
sql(q{
DO $$
DECLARE
    l bigint[];
BEGIN
    LOOP
        SELECT array_agg(lease) INTO l FROM eo.read('vq', 7);
        EXIT WHEN l IS NULL;
        PERFORM eo.ack('vq', l);
    END LOOP;
END $$});
is(sql(q{SELECT ready || ' ' || leased || ' ' || dead || ' ' || acked_total
           FROM eo.stats WHERE destination = 'vq'}),
	'0 0 0 40', 'read and acknowledged in batches: all 40');

ok(wait_for($all_done, 'every delivery'), 'every message delivered under valgrind');
note sprintf('%d messages to two destinations delivered in %.1f s',
	scalar @published, Time::HiRes::time() - $t_start);

ok($listener->wait_until(sub { !grep { !$listener->seen_count($_) } @published }, $timeout),
	'the LISTEN client received every message');
my $stats = control('GET', '/_stats');
note 'receiver: ' . $json->encode($stats);
is($stats->{bad_signature}, 0, 'every webhook signature verified');
is($stats->{order_violations}, 0, 'per key, webhooks arrived in order');
{
	my %applied = map { $_->{id} => 1 } @{ control('GET', '/_applied') };
	is(scalar(grep { !$applied{$_} } @published), 0, 'the receiver applied every message');
}
for my $fault (qw(fail_500 drop_after_apply too_many sleep))
{
	cmp_ok($stats->{faults}{$fault}, '>', 0, "fault $fault injected and recovered from");
}
is( sql(q{SELECT count(*) FILTER (WHERE status_code = 500) > 0 AND count(*) FILTER (WHERE status_code = 429) > 0
	      AND count(*) FILTER (WHERE status_code IS NULL) > 0
	     FROM eo.http_attempt}),
	'1', 'eo.http_attempt recorded 500, 429 and failures without an answer');
is( sql(q{SELECT state || '|' || attempts || '|' || (last_error IS NOT NULL)
	     FROM eo.delivery d JOIN eo.destination t ON t.id = d.destination_id
	    WHERE t.name = 'refused' ORDER BY message_id}),
	"dead|2|true\ndead|2|true", 'refused connections: dead after max_attempts');

######################################################################
# Redrive and drop; 410 Gone; a configuration change; SIGHUP
######################################################################

is(sql(q{SELECT eo.redrive('refused')}), '2', 'eo.redrive puts the dead deliveries back');
ok(wait_for(q{SELECT (dead = 2)::int FROM eo.stats WHERE destination = 'refused'}, 'refused dead again'),
	'... they fail again');
sql(q{SELECT eo.drop_destination('refused', force => true)});

control('POST', '/_faults', {});
control('POST', '/_status', { status => 410 });
my $gone_id = sql(q{SELECT eo.publish('vg.gone', '{"gone": true}'::jsonb)});
ok(wait_for(q{SELECT (NOT enabled)::int FROM eo.stats WHERE destination = 'vg_http'}, '410 Gone'),
	'410 Gone disables the destination');
control('POST', '/_status', { status => undef });

# Enabled again with other options: the relay reloads its configuration
# and sends with the new header.
sql(qq{SELECT eo.alter_destination('vg_http', @{[ http_options(headers => { 'X-Test' => 'after' }) ]})});
ok(wait_for($all_done, 'the message held by 410'), 'alter_destination enables it: delivered');
{
	my @gone = grep { ($_->{id} // '') eq $gone_id && $_->{status} && $_->{status} == 200 }
	  @{ control('GET', '/_requests?limit=0') };
	is(scalar(@gone) ? $gone[-1]{headers}{'x-test'} : undef,
		'after', 'the relay sent with the changed configuration');
}

# SIGHUP: the relay re-reads its settings (it stamps last_wakeup after).
{
	my $before = sql(q{SELECT clock_timestamp()});
	sql(q{ALTER SYSTEM SET eo.http_max_concurrency = 2});
	sql(q{SELECT pg_reload_conf()});
	ok( wait_for(
			qq{SELECT (last_wakeup > '$before')::int FROM eo.relay_status WHERE datname = 'postgres'},
			'the relay woken by SIGHUP'),
		'SIGHUP: the relay reloads its settings');
	my @ids = split /\n/,
	  sql(q{SELECT eo.publish('vg.after_hup', jsonb_build_object('i', g), 'h') FROM generate_series(1, 20) g});
	ok(wait_for($all_done, 'deliveries after SIGHUP'), '... and delivers with them');
	push @published, @ids;
}

######################################################################
# NATS JetStream: keyed publishes into a stream, acknowledged by libnats
# threads; the relay's exit paths below (SIGTERM, fast shutdown) then
# close the connection and libnats
######################################################################

{
	my $nats = EONats->new("$PostgreSQL::Test::Utils::tmp_check/vg_nats");
	$nats->tool('create', 'VG', 'vgn.>', 1, 600);
	my $servers = join(',', map { qq{"$_"} } $nats->url_list);
	sql(qq{SELECT eo.create_destination('vg_nats', 'nats', '{"servers": [$servers], "stream": "VG", "timeout_ms": 30000}')});
	sql(q{SELECT eo.subscribe('vgn.*', 'vg_nats')});
	sql(q{SELECT count(eo.publish('vgn.x', jsonb_build_object('i', g), 'k' || (g % 4), '{"X-A": "1"}')) FROM generate_series(1, 40) g});
	sql(q{SELECT eo.publish('vgn.text', 'plain text'::text)});
	ok(wait_for($all_done, 'the nats deliveries'), 'nats: every message delivered');
	is($nats->tool('count', 'VG'), "41\n", 'nats: the stream holds them');
	is(sql(q{SELECT delivered_total FROM eo.stats WHERE destination = 'vg_nats'}), '41',
		'nats: eo.stats counts them');
}

######################################################################
# Kafka (librdkafka's mock cluster, in a process of its own): the
# idempotent producer, whose delivery reports wake the relay through
# librdkafka's queue event; an exactly_once destination, whose
# transaction thread writes batches with the position record; a record
# above message.max.bytes, dead at once, and its destination dropped (its
# producer closed while the relay runs).  The first two stay for the exit
# paths below.
######################################################################

{
	my $kafka = EOKafka->new("$PostgreSQL::Test::Utils::tmp_check/vg_kafka");
	$kafka->create_topic($_, 2) for qw(vgk vgk_eos vgk_small);
	my $bs = $kafka->bootstrap;
	sql(qq{SELECT eo.create_destination('vg_kafka', 'kafka', '{"bootstrap_servers": "$bs", "topic": "vgk"}')});
	sql(qq{SELECT eo.create_destination('vg_kafka_eos', 'kafka', '{"bootstrap_servers": "$bs", "topic": "vgk_eos", "exactly_once": true}')});
	sql(qq{SELECT eo.create_destination('vg_kafka_small', 'kafka', '{"bootstrap_servers": "$bs", "topic": "vgk_small", "properties": {"message.max.bytes": 10000}}')});
	sql(q{SELECT eo.subscribe('vgk.*', 'vg_kafka')});
	sql(q{SELECT eo.subscribe('vgk.*', 'vg_kafka_eos')});
	sql(q{SELECT eo.subscribe('vgks.*', 'vg_kafka_small')});
	sql(q{SELECT count(eo.publish('vgk.x', jsonb_build_object('i', g), 'k' || (g % 4), '{"X-A": "1"}')) FROM generate_series(1, 20) g});
	sql(q{SELECT eo.publish('vgk.text', 'plain text'::text)});
	sql(q{SELECT eo.publish('vgks.big', jsonb_build_object('blob', repeat('x', 20000)))});
	sql(q{SELECT eo.publish('vgks.small', '{"fits": true}'::jsonb)});
	ok(wait_for($all_done, 'the kafka deliveries'), 'kafka: every message delivered (or dead)');
	is( sql(q{SELECT string_agg(destination || ' ' || delivered_total || ' ' || dead, ', ' ORDER BY destination)
	            FROM eo.stats WHERE kind = 'kafka'}),
		'vg_kafka 21 0, vg_kafka_eos 21 0, vg_kafka_small 1 1',
		'kafka: eo.stats counts them, the large one dead');
	my @plain = $kafka->records('vgk', min => 21, timeout => 60);
	is(scalar @plain, 21, 'kafka: the topic holds them');
	my @eos = $kafka->records('vgk_eos', min => 21, timeout => 60, read_committed => 1);
	is(scalar @eos, 21, 'kafka: so does the exactly_once topic');
	sql(q{SELECT eo.drop_destination('vg_kafka_small', force => true)});
}

######################################################################
# SIGTERM with requests in flight
######################################################################

{
	# The receiver holds every request for longer than the test waits.
	control('POST', '/_faults', { sleep => 1.0, sleep_seconds => 60 });
	my @ids = split /\n/,
	  sql(q{SELECT eo.publish('vg.inflight', jsonb_build_object('i', g)) FROM generate_series(1, 3) g});
	push @published, @ids;
	# (two at a time: eo.http_max_concurrency is 2 now)
	my $held = 0;
	my $deadline = Time::HiRes::time() + $timeout;
	until ($held || Time::HiRes::time() > $deadline)
	{
		Time::HiRes::usleep(100_000);
		$held = control('GET', '/_stats')->{in_flight} >= 2
		  && sql(q{SELECT sum(in_flight) FROM eo.stats}) >= 2;
	}
	ok($held, 'two requests in flight, held by the receiver');
	is(sql(qq{SELECT pg_terminate_backend($relay_pid)::int}), '1', 'the relay worker is sent SIGTERM');
	ok(wait_for(qq{SELECT (count(*) = 0)::int FROM pg_stat_activity WHERE pid = $relay_pid},
			'the relay to exit'),
		'... and exits');
	control('POST', '/_faults', {});
	my $new_pid = relay_pid();
	ok($new_pid =~ /^\d+$/ && $new_pid != $relay_pid, 'the launcher starts a new relay worker');
	push @relay_pids, $new_pid if $new_pid =~ /^\d+$/;
	ok(wait_for($all_done, 'the requests that were in flight'),
		'it sends again what was in flight when the old one stopped');
}

ok($listener->wait_until(sub { !grep { !$listener->seen_count($_) } @published }, $timeout),
	'the LISTEN client received every message');
{
	my %applied = map { $_->{id} => 1 } @{ control('GET', '/_applied') };
	is(scalar(grep { !$applied{$_} } @published, $gone_id), 0,
		'the receiver applied every message');
}
is(sql(q{SELECT count(*) FROM eo.delivery}), '0', 'no delivery left');

$listener->close;
$dbh->disconnect;

# A fast shutdown: every process exits normally and writes its leak check.
$node->stop('fast');
control('POST', '/_shutdown');
$receiver->finish;
{
	my $log = slurp_file($node->logfile);
	like($log,
		qr/FATAL:  terminating background worker "eo_processing relay" due to administrator command/,
		'the relay worker left through its exit path (FATAL, proc_exit)');
	unlike($log, qr/terminated by signal|was terminated by exception/,
		'no process of the server crashed');
}

######################################################################
# The logs
######################################################################

# The extension's frames: in one of its source files, src/*.[ch] (with
# debug information; --fullpath-after= shows the directories, so that a
# file of the same name elsewhere, such as libcurl's lib/http.h, does not
# match), or in its library (without).
my $ours_re = do
{
	my @names = map { quotemeta(basename($_)) } glob("$src_dir/*.[ch]");
	die "no source files in $src_dir" unless @names;
	my $alt = join('|', @names);
	qr{[(/]src/(?:$alt):\d+\)$|\(in \S*/eo_processing\.so\)$};
};
my $frame_re = qr/^\s+(?:at|by) 0x[0-9A-Fa-f]+: /;
my $error_re = do
{
	my @headlines = (
		'Invalid (?:read|write|free|realloc)', 'Mismatched free',
		'Conditional jump', 'Use of uninitialised value', 'Syscall param',
		'Source and destination overlap', "Argument '.*' of function .* has a fishy",
		'Jump to the invalid address', 'Illegal memory pool',
		'.* bytes in [\d,]+ blocks are (?:definitely|indirectly|possibly) lost');
	my $alt = join('|', @headlines);
	qr/^(?:$alt)/;
};

# read_log($file): its records (the lines between two "==pid== " lines
# that start with an error's headline) and its ERROR SUMMARY.
sub read_log
{
	my ($file) = @_;
	my %log = (file => $file, records => [], complete => 0);
	($log{pid}) = $file =~ /vg\.(\d+)\.log$/;
	my @block;
	my $flush = sub {
		my $head = $block[0] // '';
		if ($head =~ $error_re || $head =~ /^Process terminating/)
		{
			my $kind = $head;
			$kind =~ s/.* are (definitely|indirectly|possibly) lost .*/$1 lost/;
			$kind =~ s/\d[\d,]*/N/g;
			push @{ $log{records} },
			  {
				kind => $kind,
				counted => $head !~ /^Process terminating/,
				ours => scalar(grep { /$frame_re/ && /$ours_re/ } @block),
				text => join("\n", @block),
			  };
		}
		@block = ();
	};
	for my $line (split /\n/, slurp_file($file))
	{
		next unless $line =~ /^==\d+== ?(.*)$/;
		my $body = $1;
		if ($body =~ /^ERROR SUMMARY: (\d+) errors from (\d+) contexts \(suppressed: (\d+) from (\d+)\)/)
		{
			@log{qw(errors contexts suppressed suppressed_contexts)} = ($1, $2, $3, $4);
			$log{complete} = 1;
		}
		if ($body eq '') { $flush->(); }
		else { push @block, $body; }
	}
	$flush->();
	$log{leak_checked} = slurp_file($file) =~ /==\d+== HEAP SUMMARY:/;
	return \%log;
}

# pg_ctl returns once the postmaster has removed its pid file, before
# Valgrind has written the postmaster's leak check: wait for every log.
my @logs;
{
	my $deadline = Time::HiRes::time() + $timeout;
	while (1)
	{
		@logs = map { read_log($_) } glob("$vg_logs/vg.*.log");
		last if !grep { !$_->{complete} } @logs;
		last if Time::HiRes::time() > $deadline;
		Time::HiRes::usleep(200_000);
	}
}
my %log_of = map { $_->{pid} => $_ } @logs;
note scalar(@logs) . " valgrind logs in $vg_logs";

is(join(' ', map { basename($_->{file}) } grep { !$_->{complete} } @logs),
	'', 'every process under valgrind wrote its ERROR SUMMARY');
for my $proc ([ postmaster => $postmaster_pid ], [ 'relay launcher' => $launcher_pid ],
	map { [ "relay worker $_" => $_ ] } @relay_pids)
{
	my ($what, $pid) = @$proc;
	my $log = $log_of{$pid};
	ok($log && $log->{complete} && $log->{leak_checked},
		"$what (pid $pid) ran under valgrind: its log has the leak check and the ERROR SUMMARY");
}

# Every record was read: in each log, as many as the error contexts
# valgrind counted.
is( join(' ',
		map { basename($_->{file}) . ' (' . scalar(grep { $_->{counted} } @{ $_->{records} })
			  . " of $_->{contexts})" }
		  grep { scalar(grep { $_->{counted} } @{ $_->{records} }) != $_->{contexts} }
		  grep { $_->{complete} } @logs),
	'', 'every error record of every log was read');

my @ours = map { my $l = $_; map { { %$_, file => $l->{file} } } grep { $_->{ours} } @{ $l->{records} } } @logs;
is(scalar @ours, 0, 'no memcheck error and no lost block in the extension\'s code');
for my $r (@ours[ 0 .. ($#ours < 19 ? $#ours : 19) ])
{
	diag basename($r->{file}) . ":\n$r->{text}\n";
}

{
	my (%noise, $suppressed);
	for my $log (@logs)
	{
		$noise{ $_->{kind} }++ for grep { !$_->{ours} } @{ $log->{records} };
		$suppressed += $log->{suppressed} // 0;
	}
	note "records outside the extension (PostgreSQL, libc, libcurl), by kind, over all processes:";
	note sprintf('  %5d  %s', $noise{$_}, $_) for sort { $noise{$b} <=> $noise{$a} || $a cmp $b } keys %noise;
	note "errors suppressed by test/valgrind.supp: " . ($suppressed // 0);
}

done_testing();
