# Helpers shared by the TAP tests of eo_processing (test/t/*.pl).
#
# eo_pgbench() runs pgbench against a PostgreSQL::Test::Cluster node with a
# custom script and returns its exit status, its output and the counters
# pgbench prints, so that a test can compare them with what the database
# holds afterwards.  ($node->pgbench only matches the output against
# patterns and does not return it.)  eo_pgbench_start() / eo_pgbench_finish()
# do the same with pgbench running in the background.
#
# The relay tests (003-005) also use: eo_server_pids() and eo_wait_pids_gone()
# to wait for the orphaned children of a killed postmaster, eo_poll_start()
# to start a node again once they are gone, eo_relay_pid() and
# eo_proc_status() to watch a relay worker.

package EOTest;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use IPC::Run;
use Time::HiRes ();
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(eo_pgbench eo_pgbench_start eo_pgbench_finish eo_server_pids
  eo_wait_pids_gone eo_poll_start eo_relay_pid eo_proc_status);

# The pgbench command line of eo_pgbench(); writes the script file.
sub _pgbench_command
{
	my ($node, %p) = @_;

	for my $required (qw(dbname name script clients))
	{
		die "eo_pgbench: $required is required" unless defined $p{$required};
	}
	die "eo_pgbench: transactions or duration is required"
	  unless defined $p{transactions} || defined $p{duration};

	my $file = $node->basedir . "/$p{name}.pgbench";
	die "eo_pgbench: script file $file already exists" if -e $file;
	append_to_file($file, $p{script});

	return (
		$node->installed_command('pgbench'),
		'--no-vacuum',
		'--host' => $node->host,
		'--port' => $node->port,
		'--client' => $p{clients},
		'--jobs' => $p{jobs} // $p{clients},
		(defined $p{transactions}
			? ('--transactions' => $p{transactions})
			: ('--time' => $p{duration})),
		@{ $p{options} // [] },
		'--file' => $file,
		$p{dbname});
}

# Parse what pgbench printed into the hash ref eo_pgbench() returns.
sub _pgbench_result
{
	my ($rc, $stdout, $stderr) = @_;
	my %r = (rc => $rc, stdout => $stdout, stderr => $stderr);
	note "pgbench stdout:\n$stdout";
	note "pgbench stderr:\n$stderr" if $stderr ne '';

	($r{processed}, $r{expected}) =
	  $stdout =~ m{^number of transactions actually processed: (\d+)(?:/(\d+))?}m;
	($r{failed}) = $stdout =~ m{^number of failed transactions: (\d+)}m;
	($r{retried}) = $stdout =~ m{^number of transactions retried: (\d+)}m;
	($r{retries}) = $stdout =~ m{^total number of retries: (\d+)}m;

	return \%r;
}

# eo_pgbench($node, %params)
#
#   dbname        database to run in (required)
#   name          file name for the script, unique in the test (required)
#   script        pgbench script text (required)
#   clients       --client (required)
#   transactions  --transactions per client (this or duration is required)
#   duration      --time in seconds
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
	my @cmd = _pgbench_command($node, %p);

	local %ENV = (%ENV, %{ $p{env} // {} });
	my ($stdout, $stderr) = ('', '');
	note 'running: ' . join(' ', @cmd);
	IPC::Run::run(\@cmd, '<', \undef, '>', \$stdout, '2>', \$stderr,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return _pgbench_result($? >> 8, $stdout, $stderr);
}

# eo_pgbench_start($node, %params): as eo_pgbench(), but start pgbench in
# the background and return a handle for eo_pgbench_finish().  pgbench is
# killed when it outlives timeout_default.
sub eo_pgbench_start
{
	my ($node, %p) = @_;
	my @cmd = _pgbench_command($node, %p);

	local %ENV = (%ENV, %{ $p{env} // {} });
	my $h = { stdout => '', stderr => '' };
	note 'starting: ' . join(' ', @cmd);
	$h->{harness} = IPC::Run::start(\@cmd, '<', \undef, '>', \$h->{stdout},
		'2>', \$h->{stderr},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return $h;
}

# eo_pgbench_finish($handle): wait for a background pgbench to exit and
# return what eo_pgbench() returns.
sub eo_pgbench_finish
{
	my ($h) = @_;
	eval { $h->{harness}->finish; };
	my $status = eval { $h->{harness}->full_result(0) };
	my $rc = defined $status ? $status >> 8 : -1;
	return _pgbench_result($rc, $h->{stdout}, $h->{stderr});
}

# eo_server_pids($node): the PIDs of the postmaster and its children (read
# from /proc), to wait for after a kill -9 of the postmaster: its children
# outlive it until they notice, and a new postmaster cannot start while
# they hold on to the old shared memory.
sub eo_server_pids
{
	my ($node) = @_;
	my @pids;
	my $pm = _lockfile_pid($node);

	return () unless defined $pm;
	opendir(my $dh, '/proc') or die "cannot read /proc: $!";
	for my $pid (grep { /^\d+$/ } readdir $dh)
	{
		open(my $fh, '<', "/proc/$pid/stat") or next;
		my $stat = <$fh>;
		close $fh;
		next unless defined $stat;
		# pid (comm) state ppid ...: comm may contain spaces.
		my ($ppid) = $stat =~ /\)\s+\S+\s+(\d+)/;
		push @pids, $pid if defined $ppid && $ppid == $pm;
	}
	closedir $dh;
	return ($pm, @pids);
}

# The PID in the node's postmaster.pid, or undef.
sub _lockfile_pid
{
	my ($node) = @_;
	open(my $pidfile, '<', $node->data_dir . '/postmaster.pid') or return undef;
	my $pid = <$pidfile>;
	close $pidfile;
	return undef unless defined $pid && $pid =~ /^(\d+)$/;
	return $1;
}

# Is a process gone?  A zombie holds no memory any more and counts as gone.
sub _gone
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/status") or return 1;
	local $/;
	my $status = <$fh>;
	close $fh;
	return ($status // '') =~ /^State:\s+[ZX]/m;
}

# eo_wait_pids_gone(\@pids, $timeout): poll until every process has
# exited; returns the list of those still alive at the deadline.
sub eo_wait_pids_gone
{
	my ($pids, $timeout) = @_;
	my $deadline = Time::HiRes::time() + ($timeout // $PostgreSQL::Test::Utils::timeout_default);
	my @alive = @$pids;

	while (1)
	{
		@alive = grep { !_gone($_) } @alive;
		return () unless @alive;
		return @alive if Time::HiRes::time() >= $deadline;
		Time::HiRes::usleep(50_000);
	}
}

# eo_poll_start($node, \@pids): start a node after a kill -9 of its
# postmaster, retrying while it fails (the old shared memory may be in use
# for a moment).  \@pids are the old server's processes (eo_server_pids()
# before the kill).  A killed postmaster that nobody has reaped yet is a
# zombie whose PID still "runs" for the lock file checks: once it and all
# the old processes are gone (or zombies), the stale lock files (data
# directory and socket) are removed.  Bails out when the node cannot start within timeout_default.
sub eo_poll_start
{
	my ($node, $pids) = @_;
	my $deadline = Time::HiRes::time() + $PostgreSQL::Test::Utils::timeout_default;

	while (Time::HiRes::time() < $deadline)
	{
		my $old = _lockfile_pid($node);
		if (defined $old && !grep { !_gone($_) } ($old, @{ $pids // [] }))
		{
			# Both lock files name the old postmaster.
			unlink($node->data_dir . '/postmaster.pid');
			unlink($node->host . '/.s.PGSQL.' . $node->port . '.lock')
			  unless $PostgreSQL::Test::Utils::use_unix_sockets == 0;
		}
		return 1 if $node->start(fail_ok => 1);
		# A failed start took the PID in the stale postmaster.pid for a
		# running server; it is not.
		$node->{_pid} = undef;
		Time::HiRes::usleep(100_000);
	}
	return $node->start;
}

# eo_relay_pid($node, $dbname): PID of the relay worker of a database
# according to pg_stat_activity, or '' when none runs.
sub eo_relay_pid
{
	my ($node, $dbname) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT pid FROM pg_stat_activity
		    WHERE backend_type = 'eo_processing relay' AND datname = '$dbname'});
}

# eo_proc_status($pid): /proc/<pid>/status as a hash ref; the memory
# fields (VmRSS, RssAnon, ...) in kB.  Undef when the process is gone.
sub eo_proc_status
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/status") or return undef;
	my %s;
	while (my $line = <$fh>)
	{
		$s{$1} = $2 if $line =~ /^(\w+):\s+(\d+) kB$/;
		$s{$1} //= $2 if $line =~ /^(\w+):\s+(.*?)\s*$/;
	}
	close $fh;
	return \%s;
}

1;
