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
# eo_proc_status() to watch a relay worker.  The soak (060) adds
# eo_memory_contexts() to read a relay's memory contexts and eo_copy_lines()
# to load what a listener or a receiver got into a table for checks in SQL.
#
# The reliability tests (020-022) add: eo_new_node() for a started node
# with the library preloaded, eo_wait_relay() to wait for a database's
# relay worker, eo_wait_drained() to wait until it has nothing left to do,
# eo_set_relay_enabled() to turn the relay off and on by reload,
# eo_id_set() to read a set of ids from a node, and
# eo_clients_start() / eo_clients_run() / eo_clients_finish(): application
# sessions that keep statements in flight (one per connection, DBD::Pg's
# asynchronous queries) and record which ones were acknowledged, so that a
# test can kill a server under load and know what each client was told.

package EOTest;

use strict;
use warnings FATAL => 'all';

use DBI;
use DBD::Pg qw(:async);
use Exporter 'import';
use IPC::Run;
use Time::HiRes ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(eo_pgbench eo_pgbench_start eo_pgbench_finish eo_server_pids
  eo_wait_pids_gone eo_poll_start eo_relay_pid eo_proc_status
  eo_memory_contexts eo_copy_lines eo_new_node eo_new_relay_node
  eo_wait_relay eo_wait_drained
  eo_set_relay_enabled eo_id_set eo_clients_start eo_clients_run
  eo_clients_finish);

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
#   timeout       seconds after which pgbench is killed (default
#                 timeout_default; a longer duration needs more)
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
		IPC::Run::timeout($p{timeout} // $PostgreSQL::Test::Utils::timeout_default));
	return _pgbench_result($? >> 8, $stdout, $stderr);
}

# eo_pgbench_start($node, %params): as eo_pgbench(), but start pgbench in
# the background and return a handle for eo_pgbench_finish().  pgbench is
# killed when it outlives its timeout.
sub eo_pgbench_start
{
	my ($node, %p) = @_;
	my @cmd = _pgbench_command($node, %p);

	local %ENV = (%ENV, %{ $p{env} // {} });
	my $h = { stdout => '', stderr => '' };
	note 'starting: ' . join(' ', @cmd);
	$h->{harness} = IPC::Run::start(\@cmd, '<', \undef, '>', \$h->{stdout},
		'2>', \$h->{stderr},
		IPC::Run::timeout($p{timeout} // $PostgreSQL::Test::Utils::timeout_default));
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

# eo_new_node($name, %params): a new PostgreSQL::Test::Cluster node with
# eo_processing in shared_preload_libraries, started.
#   init  hash ref of parameters for $node->init (e.g. allows_streaming)
#   conf  more postgresql.conf lines
sub eo_new_node
{
	my ($name, %p) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $p{init} // {} });
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'eo_processing'\n" . ($p{conf} // ''));
	$node->start;
	return $node;
}

# eo_new_relay_node($name, $dest, $kind, $options, $pattern, %params):
# eo_new_node() with the extension created in database postgres, one
# destination $dest of that kind with the options (JSON text) subscribed to
# $pattern, and its relay running and idle.
sub eo_new_relay_node
{
	my ($name, $dest, $kind, $options, $pattern, %p) = @_;
	my $node = eo_new_node($name, %p);
	$node->safe_psql('postgres',
		qq{CREATE EXTENSION eo_processing;
		   SELECT eo.create_destination('$dest', '$kind', '$options');
		   SELECT eo.subscribe('$pattern', '$dest');});
	eo_wait_relay($node, 'postgres') or die "the relay of $name did not start";
	return $node;
}

# eo_wait_relay($node, $dbname): poll until the relay worker of a database
# runs and is idle; returns what poll_query_until returned.
sub eo_wait_relay
{
	my ($node, $dbname) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM eo.relay_status
		    WHERE datname = '$dbname' AND pid IS NOT NULL AND state = 'idle'});
}

# eo_wait_drained($node, $dbname): poll until eo.outbox is empty and no
# delivery is unfinished: none set aside in eo.delivery, and none in the
# log after a destination's cursor (eo.stats); returns what
# poll_query_until returned.
sub eo_wait_drained
{
	my ($node, $dbname) = @_;
	return $node->poll_query_until(
		$dbname, q{
		SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)
		   AND NOT EXISTS (SELECT 1 FROM eo.delivery WHERE state <> 'dead')
		   AND (SELECT coalesce(sum(pending + in_flight + retrying), 0) = 0 FROM eo.stats)});
}

# eo_set_relay_enabled($node, 'on' | 'off' [, $dbname]): ALTER SYSTEM and
# reload, then wait until new sessions see the value.  (The server keeps the
# setting across a crash restart, and a restart reads it from
# postgresql.auto.conf.)  With $dbname, also wait until the running relay
# worker of that database has woken up after the reload (it stamps
# last_wakeup once it has re-read the configuration).
sub eo_set_relay_enabled
{
	my ($node, $value, $dbname) = @_;
	my $before = $node->safe_psql('postgres',
		"ALTER SYSTEM SET eo.relay_enabled = $value; SELECT clock_timestamp()");
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	$node->poll_query_until('postgres', 'SHOW eo.relay_enabled', $value)
	  or die "eo.relay_enabled did not become $value";
	if (defined $dbname)
	{
		$node->poll_query_until('postgres',
			qq{SELECT last_wakeup > '$before' FROM eo.relay_status WHERE datname = '$dbname'})
		  or die "the relay of $dbname did not wake up after the reload";
	}
	return;
}

# eo_id_set($node, $dbname, $sql): hash ref with the values of the first
# column of a query as keys (each mapped to 1).
sub eo_id_set
{
	my ($node, $dbname, $sql) = @_;
	return { map { ($_ => 1) } grep { $_ ne '' } split /\n/,
		  $node->safe_psql($dbname, $sql) };
}

# eo_clients_start($node, $dbname, $n): $n application sessions (DBD::Pg,
# autocommit) for eo_clients_run().  Returns a handle; its {statements} is
# the list of every statement issued, as a hash ref:
#   client  1 .. $n
#   tag     whatever the statement source gave (see eo_clients_run)
#   state   'in flight', 'ok' (result received: acknowledged),
#           'error' (an error from the server, session still usable) or
#           'lost' (the session died: the outcome is unknown)
#   row     array ref of the first result row ('ok')
#   error   the error text ('error', 'lost')
sub eo_clients_start
{
	my ($node, $dbname, $n) = @_;
	my $dsn = sprintf('dbi:Pg:dbname=%s;host=%s;port=%s',
		$dbname, $node->host, $node->port);
	my @clients;

	for my $i (1 .. $n)
	{
		my $dbh = DBI->connect($dsn, '', '',
			{ AutoCommit => 1, RaiseError => 1, PrintError => 0 })
		  or die "eo_clients_start: cannot connect to $dsn: $DBI::errstr";
		$dbh->do(q{SET application_name = 'eo_client'});
		push @clients, { id => $i, dbh => $dbh, sth => {}, current => undef };
	}
	return { clients => \@clients, statements => [] };
}

# Collect the result of a client's statement if it has arrived.  Returns
# true if the client is free for the next statement.
sub _client_collect
{
	my ($c) = @_;
	my $st = $c->{current};

	return 0 if $c->{lost};
	return 1 unless defined $st;
	my $ready = eval { $c->{dbh}->pg_ready };
	return 0 if defined $ready && $ready == 0;

	if (eval { $c->{dbh}->pg_result; 1 })
	{
		$st->{row} = [ $st->{sth}->fetchrow_array ];
		$st->{state} = 'ok';
	}
	else
	{
		$st->{error} = $@;
		# A server error leaves the session usable; a lost one does not.
		if (eval { $c->{dbh}->ping })
		{
			$st->{state} = 'error';
		}
		else
		{
			$st->{state} = 'lost';
			$c->{lost} = 1;
		}
	}
	delete $st->{sth};
	$c->{current} = undef;
	$c->{previous} = $st;
	return !$c->{lost};
}

# eo_clients_run($h, $next, $until, $timeout): keep each live session busy
# with one statement at a time until $until->() returns true (checked
# every few milliseconds) or $timeout seconds have passed; returns
# $until->().  $next->($client, $previous) gives the client's next
# statement as a hash ref { sql => ..., bind => [...], tag => ... } (any
# value as tag), or undef for none; $previous is the client's last
# finished statement (undef at first).  Statements in flight when it
# returns stay in flight: call it again to go on, or kill the server and
# call eo_clients_finish().
sub eo_clients_run
{
	my ($h, $next, $until, $timeout) = @_;
	my $deadline = Time::HiRes::time() + $timeout;

	while (!$until->())
	{
		return $until->() if Time::HiRes::time() >= $deadline;
		my $rin = '';
		for my $c (@{ $h->{clients} })
		{
			next unless _client_collect($c);
			my $s = $next->($c->{id}, $c->{previous});
			next unless defined $s;
			my $st = { client => $c->{id}, tag => $s->{tag}, state => 'in flight' };
			$st->{sth} = $c->{sth}{ $s->{sql} } //=
			  $c->{dbh}->prepare($s->{sql}, { pg_async => PG_ASYNC });
			$st->{sth}->execute(@{ $s->{bind} // [] });
			$c->{current} = $st;
			push @{ $h->{statements} }, $st;
		}
		for my $c (grep { $_->{current} } @{ $h->{clients} })
		{
			vec($rin, $c->{dbh}->{pg_socket}, 1) = 1;
		}
		select(my $rout = $rin, undef, undef, 0.005);
	}
	return 1;
}

# eo_clients_finish($h, $timeout): wait (up to $timeout seconds) for the
# statements in flight to end, as acknowledged, failed or lost (when the
# server is gone), then disconnect.  Returns the list of statements.
sub eo_clients_finish
{
	my ($h, $timeout) = @_;
	my $deadline = Time::HiRes::time() + $timeout;

	for my $c (@{ $h->{clients} })
	{
		Time::HiRes::usleep(10_000)
		  until _client_collect($c) || $c->{lost}
		  || Time::HiRes::time() >= $deadline;
		eval { $c->{dbh}->disconnect; };
	}
	return @{ $h->{statements} };
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

# eo_memory_contexts($node, $pid): the memory held by the memory contexts
# of a server process (a relay worker, say), as a hash ref of bytes:
# total (allocated from the operating system) and used.  Asks the process
# to log them (pg_log_backend_memory_contexts) and reads its "Grand total"
# line from the server log; undef when it did not answer in time.
sub eo_memory_contexts
{
	my ($node, $pid) = @_;
	my $offset = -s $node->logfile;
	my $grand = qr/\[$pid\] LOG:  Grand total: (\d+) bytes in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/;

	$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)");
	my $deadline = Time::HiRes::time() + $PostgreSQL::Test::Utils::timeout_default;
	while (Time::HiRes::time() < $deadline)
	{
		my ($total, $used) = slurp_file($node->logfile, $offset) =~ $grand;
		return { total => $total, used => $used } if defined $total;
		Time::HiRes::usleep(50_000);
	}
	return undef;
}

# eo_copy_lines($node, $dbname, $target, $file): load each line of a file,
# verbatim (JSON, say), as one row of $target, a table and column list
# taking one text value ("t (line)"), in file order.  The server reads the
# file, so it must be readable by the server's user (the test's own files
# are).
sub eo_copy_lines
{
	my ($node, $dbname, $target, $file) = @_;
	# CSV with a delimiter and a quote that never occur in text: no
	# character of the line is taken for anything but itself.
	$node->safe_psql($dbname,
		qq{COPY $target FROM '$file' WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')});
	return;
}

1;
