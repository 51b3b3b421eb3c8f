# A smoke run of test/bench/kafka_bench.sh, so that the benchmark cannot
# rot: 1,000 messages per drain and one second of latency at 200 msg/s,
# against the installation the tests use (the first pg_config on PATH),
# in a throwaway cluster of its own.  It
# checks that the script ends well -- every drain finished, each Kafka
# topic read back with every message once, every timed message matched --
# and that its summary has the figures.  No figure is judged: the run is
# far too short and the machine shared.

use strict;
use warnings FATAL => 'all';

use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;

my $script = "$FindBin::RealBin/../bench/kafka_bench.sh";
my $python = '/usr/bin/python3';

plan skip_all => 'psycopg is not importable by /usr/bin/python3'
  unless system($python, '-c', 'import psycopg') == 0;

my ($pg_config) = grep { -x $_ } map { "$_/pg_config" } split /:/, $ENV{PATH};
plan skip_all => 'no pg_config on PATH' unless defined $pg_config;

my ($out, $err) = ('', '');
my %env = (
	PG_CONFIG => $pg_config,
	BENCH_KAFKA_MESSAGES => 1000,
	BENCH_KAFKA_TRANSACTIONS => 10,
	BENCH_KAFKA_KEYS => 50,
	BENCH_LATENCY_RATE => 200,
	BENCH_LATENCY_SECONDS => 1,
	BENCH_LATENCY_CLIENTS => 2,
	BENCH_PYTHON => $python,
	BENCH_NOTE => 'smoke run of the test suite');
{
	local %ENV = (%ENV, %env);
	IPC::Run::run([ 'bash', $script ], '<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
}
my $rc = $? >> 8;
note "stdout:\n$out";
note "stderr:\n$err";
is($rc, 0, 'kafka_bench.sh ends with status 0');
for my $topic (qw(drain_default drain_keyed drain_eos))
{
	like($err, qr/^  $topic holds the 1000 messages, each once$/m, "$topic read back: every message once");
}
like($out, qr/^\| drain of 1000 messages: msg\/s(?: \| \*\*\d+\*\*){4} \|$/m,
	'the summary has the four drain rates');
like($out, qr/^\| commit → received by a consumer \| [\d.]+ ms \| \*\*[\d.]+ ms\*\* \| [\d.]+ ms \|$/m,
	'the summary has the latency percentiles');

done_testing();
