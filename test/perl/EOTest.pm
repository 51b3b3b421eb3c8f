# Helpers shared by the TAP tests of eo_processing (test/t/*.pl).
#
# eo_pgbench() runs pgbench against a PostgreSQL::Test::Cluster node with a
# custom script and returns its exit status, its output and the counters
# pgbench prints, so that a test can compare them with what the database
# holds afterwards.  ($node->pgbench only matches the output against
# patterns and does not return it.)

package EOTest;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(eo_pgbench);

# eo_pgbench($node, %params)
#
#   dbname        database to run in (required)
#   name          file name for the script, unique in the test (required)
#   script        pgbench script text (required)
#   clients       --client (required)
#   transactions  --transactions per client (required)
#   jobs          --jobs (default: clients)
#   options       array ref of further pgbench options
#   env           hash ref of environment variables to set (e.g. PGOPTIONS)
#
# Returns a hash ref: rc (exit status), stdout, stderr, and the counters
# processed, expected (the "N/M" of "actually processed"), failed, retried
# and retries (undef when pgbench did not print them).
sub eo_pgbench
{
	my ($node, %p) = @_;

	for my $required (qw(dbname name script clients transactions))
	{
		die "eo_pgbench: $required is required" unless defined $p{$required};
	}

	my $file = $node->basedir . "/$p{name}.pgbench";
	die "eo_pgbench: script file $file already exists" if -e $file;
	append_to_file($file, $p{script});

	my @cmd = (
		$node->installed_command('pgbench'),
		'--no-vacuum',
		'--host' => $node->host,
		'--port' => $node->port,
		'--client' => $p{clients},
		'--jobs' => $p{jobs} // $p{clients},
		'--transactions' => $p{transactions},
		@{ $p{options} // [] },
		'--file' => $file,
		$p{dbname});

	local %ENV = (%ENV, %{ $p{env} // {} });
	my ($stdout, $stderr) = ('', '');
	note 'running: ' . join(' ', @cmd);
	IPC::Run::run(\@cmd, '<', \undef, '>', \$stdout, '2>', \$stderr,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	my %r = (rc => $? >> 8, stdout => $stdout, stderr => $stderr);
	note "pgbench stdout:\n$stdout";
	note "pgbench stderr:\n$stderr" if $stderr ne '';

	($r{processed}, $r{expected}) =
	  $stdout =~ m{^number of transactions actually processed: (\d+)/(\d+)}m;
	($r{failed}) = $stdout =~ m{^number of failed transactions: (\d+)}m;
	($r{retried}) = $stdout =~ m{^number of transactions retried: (\d+)}m;
	($r{retries}) = $stdout =~ m{^total number of retries: (\d+)}m;

	return \%r;
}

1;
