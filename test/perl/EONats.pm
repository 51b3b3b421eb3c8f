# A NATS JetStream cluster on loopback for the tests and benchmarks of the
# nats sink: three nats-server processes with JetStream, routed to each
# other, each with its own ports and store directory, and nats_tool (built
# from test/nats_tool.c) to create streams and read them back.
#
#   my $cluster = EONats->new($dir);      # starts the three servers
#   $cluster->urls                        # "nats://127.0.0.1:p1,..."
#   EONats->new($dir, server_args => ['--auth', $token], userinfo => $token)
#                                         # servers that require a token; the
#                                         # tool's URLs carry it
#   $cluster->plain_url_list              # the URLs without credentials
#   $cluster->tool('create', 'S', 'app.>', 3, 120)
#   $cluster->kill9(1); $cluster->start(1)
#   $cluster->stop                        # all servers (also at exit)

package EONats;

use strict;
use warnings FATAL => 'all';

use File::Basename qw(dirname);
use File::Path qw(make_path);
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes ();

my @all;

# EONats->new($dir): build nats_tool, start three routed servers.
sub new
{
	my ($class, $dir, %opts) = @_;
	my $self = bless { dir => $dir, servers => [] }, $class;

	$self->configure(%opts);

	make_path($dir);
	my $src = dirname(__FILE__) . '/../nats_tool.c';
	$self->{tool} = "$dir/nats_tool";
	system('cc', '-O1', '-o', $self->{tool}, $src, '-lnats') == 0
	  or die "cannot build nats_tool from $src";
	for my $i (0 .. 2)
	{
		push @{ $self->{servers} },
		  {
			port => PostgreSQL::Test::Cluster::get_free_port(),
			cport => PostgreSQL::Test::Cluster::get_free_port(),
			store => "$dir/store$i",
			log => "$dir/nats$i.log",
		  };
	}
	$self->start($_) for 0 .. 2;
	push @all, $self;
	return $self;
}

# configure(server_args => [...], userinfo => 'token' or 'user:password'):
# the options servers get at their next start (authentication, say), and
# the credentials the tool puts in its URLs.
sub configure
{
	my ($self, %opts) = @_;
	$self->{server_args} = $opts{server_args} // [];
	$self->{userinfo} = $opts{userinfo};
}

# The client URLs, comma-separated (nats_tool) or as a list; with the
# credentials of configure(), except plain_url_list.
sub urls
{
	my ($self) = @_;
	return join(',', $self->url_list);
}

sub url_list
{
	my ($self) = @_;
	my $auth = defined $self->{userinfo} ? "$self->{userinfo}\@" : '';
	return map { "nats://${auth}127.0.0.1:$_->{port}" } @{ $self->{servers} };
}

sub plain_url_list
{
	my ($self) = @_;
	return map { "nats://127.0.0.1:$_->{port}" } @{ $self->{servers} };
}

# start($i): start server $i (again, after a kill: same ports and store).
sub start
{
	my ($self, $i) = @_;
	my $s = $self->{servers}[$i];
	my @routes = map { "nats://127.0.0.1:$_->{cport}" }
	  grep { $_ != $s } @{ $self->{servers} };

	make_path($s->{store});
	my @cmd = (
		'nats-server', '-js',
		'-a' => '127.0.0.1',
		'-p' => $s->{port},
		'-sd' => $s->{store},
		'--server_name' => "eo$i",
		'--cluster_name' => 'eo_test',
		'--cluster' => "nats://127.0.0.1:$s->{cport}",
		'--routes' => join(',', @routes),
		'-l' => $s->{log},
		@{ $self->{server_args} });
	$s->{handle} = IPC::Run::start(\@cmd, '<', \undef, '>', '/dev/null', '2>', "$s->{log}.stderr");
	$s->{pid} = $s->{handle}->{KIDS}[0]{PID};
	# Poll until it accepts connections.
	my $deadline = Time::HiRes::time() + 30;
	while (Time::HiRes::time() < $deadline)
	{
		return if _port_open($s->{port});
		Time::HiRes::usleep(50_000);
	}
	die "nats-server $i did not start (see $s->{log})";
}

sub _port_open
{
	my ($port) = @_;
	require IO::Socket::INET;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 1);
	return 0 unless $sock;
	close $sock;
	return 1;
}

# kill9($i): kill -9 server $i and reap it.
sub kill9
{
	my ($self, $i) = @_;
	my $s = $self->{servers}[$i];
	return unless $s->{handle};
	kill 'KILL', $s->{pid};
	eval { $s->{handle}->finish };
	$s->{handle} = undef;
}

# tool(@args): run nats_tool against the cluster; returns its output (dies
# if it fails).
sub tool
{
	my ($self, $cmd, @args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $self->{tool}, $cmd, $self->urls, @args ], '>', \$out, '2>', \$err,
		IPC::Run::timeout(180))
	  or die "nats_tool $cmd failed: $err";
	return $out;
}

# stop: kill every server.
sub stop
{
	my ($self) = @_;
	$self->kill9($_) for 0 .. $#{ $self->{servers} };
}

# At exit (also when a test dies): kill the servers, keeping the test's
# exit status (reaping a child sets $?).
END
{
	local $?;
	$_->stop for @all;
}

1;
