# The webhook receiver (test/webhook_receiver.py) as seen from the TAP
# tests of the HTTP sink (test/t/007_http_e2e.pl, 008_http_behaviour.pl).
#
# EOWebhook->new starts a receiver in the background on 127.0.0.1 with a
# port of its own choosing (--port 0 --port-file), waits for the port file
# and talks to the receiver's JSON control endpoints with HTTP::Tiny:
#
#   my $r = EOWebhook->new(name => 'main', secrets => [$secret]);
#   $r->url('/hooks')                      http://127.0.0.1:<port>/hooks
#   $r->faults({fail_500 => 0.1})          POST /_faults
#   $r->force_status(410)                  POST /_status (undef ends it)
#   $r->stats, $r->applied, $r->requests   GET /_stats, /_applied, /_requests
#   $r->wait_for(sub { $_[0]{applied} >= 10 }, $seconds)
#   $r->stop                               stop it (also done at exit)
#   $r->start                              start it again, on the same port
#
# Every wait is bounded.  The receiver's output and its log of webhook
# requests (one JSON line each, request_log()) go to the test's log
# directory.  A receiver that a test stops and starts again (a flapping
# receiver) is created with a port outside the kernel's range for outgoing
# connections, so that nothing else takes the port while it is down
# (port => PostgreSQL::Test::Cluster::get_free_port()), and with a journal
# (journal => 1), so that it still deduplicates what it applied before.
#
# The functions below start a node, create http destinations, wait for a
# destination to be drained and compare what a receiver applied with what
# the database committed.

package EOWebhook;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use File::Basename ();
use HTTP::Tiny;
use IPC::Run;
use JSON::PP ();
use MIME::Base64 ();
use Time::HiRes ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(eo_http_node eo_webhook_secret eo_create_http_destination
  eo_wait_drained eo_check_exactly_once);

my $script = File::Basename::dirname(__FILE__) . '/../webhook_receiver.py';
my $json = JSON::PP->new->canonical;
my @running;    # receivers to stop at exit

# EOWebhook->new(%params): a started receiver.
#
#   name     unique in the test; names the log files (required)
#   secrets  array ref of "whsec_..." secrets the receiver verifies with
#            (none: signatures are not checked)
#   seed     seed of the fault generator (default 1)
#   port     the port to listen on (default: one of the receiver's choosing)
#   journal  true: keep the applied messages in journal_file() across
#            stop() and start() (the receiver's --journal)
#   args     array ref of further receiver options
#   tls      [certificate file, key file]: also serve webhooks over TLS,
#            on a port of the receiver's choosing (see tls_url)
sub new
{
	my ($class, %p) = @_;
	die 'EOWebhook->new: name is required' unless defined $p{name};

	my $base = "$PostgreSQL::Test::Utils::log_path/webhook_$p{name}";
	my $self = bless {
		name => $p{name},
		base => $base,
		port => $p{port} // 0,
		tls => $p{tls},
		args => [
			'--seed' => $p{seed} // 1,
			'--log' => "$base.requests",
			($p{journal} ? ('--journal' => "$base.journal") : ()),
			(map { ('--secret' => $_) } @{ $p{secrets} // [] }),
			@{ $p{args} // [] }
		],
	}, $class;
	$self->start;
	return $self;
}

# start: start the receiver (again: on the port it had) and wait until it
# listens.  A restart retries for a while if the port is still taken.
sub start
{
	my ($self) = @_;
	die "webhook receiver $self->{name} is running" if $self->{harness};

	my $name = $self->{name};
	my $out = "$self->{base}.out";
	my $deadline = Time::HiRes::time() + $PostgreSQL::Test::Utils::timeout_default;
	my ($h, $port_file);
	note "starting webhook receiver $name";
	while (1)
	{
		$port_file = PostgreSQL::Test::Utils::tempdir() . '/port';
		my @cmd = ('python3', $script, '--port' => $self->{port},
			'--port-file' => $port_file,
			($self->{tls}
				? ('--tls-cert' => $self->{tls}[0], '--tls-key' => $self->{tls}[1],
					'--tls-port-file' => "$port_file.tls")
				: ()),
			@{ $self->{args} });
		$h = IPC::Run::start(\@cmd, '<', \undef, '>>', $out, '2>>', $out);
		until (-s $port_file || !$h->pumpable
			  || Time::HiRes::time() > $deadline)
		{
			Time::HiRes::usleep(20_000);
		}
		last if -s $port_file;
		die "webhook receiver $name did not write $port_file in time"
		  if Time::HiRes::time() > $deadline;
		$h->finish;
		die "webhook receiver $name exited before listening (see $out)"
		  unless $self->{port};
		Time::HiRes::usleep(200_000);    # the port is still taken: again
	}
	my $port = PostgreSQL::Test::Utils::slurp_file($port_file);
	chomp $port;
	die "webhook receiver $name: bad port file content '$port'" unless $port =~ /^\d+$/;

	$self->{port} = $port;
	if ($self->{tls})
	{
		# written before the port file
		$self->{tls_port} = PostgreSQL::Test::Utils::slurp_file("$port_file.tls");
		chomp $self->{tls_port};
	}
	$self->{harness} = $h;
	$self->{http} = HTTP::Tiny->new(timeout => 30, keep_alive => 1);
	push @running, $self;
	note "webhook receiver $name listens on 127.0.0.1:$port";
	return;
}

sub name { return $_[0]->{name}; }
sub port { return $_[0]->{port}; }
sub running { return defined $_[0]->{harness}; }

# The receiver's log of webhook requests (JSON lines, kept across restarts)
# and its journal of applied messages (JSON lines; journal => 1 only).
sub request_log { return "$_[0]->{base}.requests"; }
sub journal_file { return "$_[0]->{base}.journal"; }

# url($path): the receiver's URL for a webhook path (default /hooks).
sub url
{
	my ($self, $path) = @_;
	return "http://127.0.0.1:$self->{port}" . ($path // '/hooks');
}

# tls_url($path): the same over TLS (a receiver started with "tls").
sub tls_url
{
	my ($self, $path) = @_;
	die "webhook receiver $self->{name} does not serve TLS" unless $self->{tls_port};
	return "https://127.0.0.1:$self->{tls_port}" . ($path // '/hooks');
}

# call($method, $path, $body): a control request; returns the decoded JSON
# answer, dies on anything but 200.
sub call
{
	my ($self, $method, $path, $body) = @_;
	my $res = $self->{http}->request(
		$method,
		$self->url($path),
		defined $body
		? {
			content => $json->encode($body),
			headers => { 'Content-Type' => 'application/json' }
		  }
		: {});
	die "webhook receiver $self->{name}: $method $path: $res->{status} $res->{reason}: $res->{content}"
	  unless $res->{success};
	return $json->decode($res->{content});
}

sub stats { return $_[0]->call('GET', '/_stats'); }
sub applied { return $_[0]->call('GET', '/_applied'); }
sub reset { return $_[0]->call('POST', '/_reset'); }

# requests($limit): the last $limit webhook requests (default: all kept).
sub requests
{
	my ($self, $limit) = @_;
	return $self->call('GET', '/_requests?limit=' . ($limit // 0));
}

# faults(\%config): replace the fault configuration ({} = none).
sub faults
{
	my ($self, $config) = @_;
	return $self->call('POST', '/_faults', $config);
}

# force_status($status): answer every webhook with $status; undef ends it.
sub force_status
{
	my ($self, $status) = @_;
	return $self->call('POST', '/_status', { status => $status });
}

# wait_for($cond, $seconds): poll /_stats every 20 ms until $cond->($stats)
# is true; returns that, or false at the deadline (the last stats are in
# last_stats()).
sub wait_for
{
	my ($self, $cond, $seconds) = @_;
	my $deadline = Time::HiRes::time() + $seconds;

	while (1)
	{
		my $s = $self->{last_stats} = $self->stats;
		my $ok = $cond->($s);
		return $ok if $ok || Time::HiRes::time() > $deadline;
		Time::HiRes::usleep(20_000);
	}
}

sub last_stats { return $_[0]->{last_stats}; }

# stop: SIGTERM (the receiver exits within a second), SIGKILL after 10 s.
# stop(kill => 1): SIGKILL at once, as in a crash.
sub stop
{
	my ($self, %p) = @_;
	return unless $self->{harness};
	if ($p{kill})
	{
		$self->{harness}->signal('KILL');
		eval { $self->{harness}->finish; };
	}
	else
	{
		$self->{harness}->kill_kill(grace => 10);
	}
	$self->{harness} = undef;
	@running = grep { $_ != $self } @running;
	return;
}

# A test that dies leaves its receivers running: stop them (stop() changes
# @running, so iterate over a copy).
END
{
	my @left = @running;
	$_->stop for @left;
}

# eo_http_node($name, $conf): a running node with the library preloaded,
# the extension created in database postgres, and the relay's naptime an
# hour, so that every wake-up of the relay must come from a commit or a
# retry it scheduled.  $conf is appended to postgresql.conf.
sub eo_http_node
{
	my ($name, $conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'eo_processing'\neo.relay_naptime = 3600\n" . ($conf // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION eo_processing');
	return $node;
}

# eo_webhook_secret(): a fresh Standard Webhooks secret, "whsec_" and the
# base64 of 32 random bytes.
sub eo_webhook_secret
{
	open(my $fh, '<:raw', '/dev/urandom') or die "cannot read /dev/urandom: $!";
	read($fh, my $bytes, 32) == 32 or die "short read from /dev/urandom";
	close $fh;
	return 'whsec_' . MIME::Base64::encode_base64($bytes, '');
}

# eo_create_http_destination($node, $dbname, $name, \%options, @topics):
# create an http destination and subscribe it to the topics.  The options
# may hold secrets: the statement is not logged.
sub eo_create_http_destination
{
	my ($node, $dbname, $name, $options, @topics) = @_;
	my $o = $json->encode($options);
	$node->safe_psql($dbname,
		join("\n",
			'SET log_statement = none;',
			"SELECT eo.create_destination('$name', 'http', '$o');",
			map { "SELECT eo.subscribe('$_', '$name');" } @topics));
	return;
}

# eo_wait_drained($node, $dbname, $destination, $seconds): wait until the
# outbox is empty and the destination has no delivery pending, in flight or
# retrying.  Returns whether that happened in time.
sub eo_wait_drained
{
	my ($node, $dbname, $destination, $seconds) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $seconds;
	return $node->poll_query_until(
		$dbname, qq{
		SELECT NOT EXISTS (SELECT 1 FROM eo.outbox)
		   AND (SELECT pending + in_flight + retrying = 0 FROM eo.stats
		         WHERE destination = '$destination')});
}

# The first ten of a list of ids, for a diagnostic.
sub _some
{
	my @ids = @_;
	splice(@ids, 10) if @ids > 10;
	return join(' ', @ids);
}

# eo_check_exactly_once($node, $dbname, $receiver, $where, $label): the
# messages of eo.message_log matching the SQL condition $where (on columns
# id, topic, key, payload) must be exactly those the receiver applied, each
# once, with the topic, key and payload "seq" the database has.  Returns the
# receiver's applied entries (array ref).
sub eo_check_exactly_once
{
	my ($node, $dbname, $receiver, $where, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	my %committed;
	for my $line (split /\n/,
		$node->safe_psql($dbname,
			qq{SELECT id, topic, coalesce(key, ''), coalesce(payload->>'seq', '')
			     FROM eo.message_log WHERE $where}))
	{
		my ($id, $topic, $key, $seq) = split /\|/, $line, -1;
		$committed{$id} = { topic => $topic, key => $key, seq => $seq };
	}
	my $applied = $receiver->applied;
	my (%times, @unexpected, @mismatched);
	for my $e (@$applied)
	{
		next if $times{ $e->{id} }++;
		my $c = $committed{ $e->{id} };
		if (!$c)
		{
			push @unexpected, $e->{id};
			next;
		}
		push @mismatched, $e->{id}
		  if ($e->{topic} // '') ne $c->{topic}
		  || ($e->{key} // '') ne $c->{key}
		  || ($e->{seq} // '') ne $c->{seq};
	}
	my @missing = grep { !$times{$_} } sort keys %committed;
	my @twice = grep { $times{$_} > 1 } sort keys %times;

	note sprintf('%s: %d committed, %d applied', $label, scalar keys %committed,
		scalar @$applied);
	is(scalar @missing, 0, "$label: every committed message was applied")
	  or diag 'missing: ' . _some(@missing);
	is(scalar @unexpected, 0, "$label: nothing but committed messages was applied")
	  or diag 'unexpected: ' . _some(@unexpected);
	is(scalar @twice, 0, "$label: no message was applied twice")
	  or diag 'twice: ' . _some(@twice);
	is(scalar @mismatched, 0, "$label: topic, key and seq arrived as published")
	  or diag 'mismatched: ' . _some(@mismatched);
	return $applied;
}

1;
