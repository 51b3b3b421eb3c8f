# A Kafka cluster for the tests of the kafka sink: librdkafka's mock
# cluster (three brokers on 127.0.0.1) run by kafka_tool, built from
# test/kafka_tool.c into the test's directory, with fault commands sent to
# it on its standard input and a consumer that reads topics back.
#
#   my $kafka = EOKafka->new($dir);        # builds the tool, starts a mock
#   EOKafka->new($dir, brokers => 1)       # a cluster of one broker
#   $kafka->bootstrap                      # "127.0.0.1:p1,127.0.0.1:p2,..."
#   $kafka->bootstrap_list                 # the same as a list
#   $kafka->command('topic orders 4 3')    # one command of kafka_tool's mock
#                                          # mode (see test/kafka_tool.c):
#                                          # returns what follows "ok", dies
#                                          # on "error ..."
#   $kafka->create_topic('orders', 4)      # the same (replication 3, or the
#                                          # broker count when smaller)
#   $kafka->records('orders', min => 100, timeout => 60, read_committed => 1)
#                                          # every record of the topic, in
#                                          # partition and offset order, as
#                                          # hash refs: partition, offset, key,
#                                          # value (undef when absent),
#                                          # timestamp (ms), headers (array
#                                          # ref of [name, value]), header
#                                          # (hash ref: last value per name),
#                                          # id (header eo-id); dies when fewer
#                                          # than min arrive within timeout
#   $kafka->stop                           # stops the cluster (also at exit)
#   EOKafka->build_tool($dir)              # only build kafka_tool (its path)
#
# Each EOKafka is its own cluster with its own ports: a test that injects
# a fault which could hide another (a broker's error stack is consumed
# before the cluster's) takes a fresh one.  The cluster lives in the tool's
# process: stop() (or the end of the test) takes it and its topics away.

package EOKafka;

use strict;
use warnings FATAL => 'all';

use File::Basename qw(dirname);
use File::Path qw(make_path);
use IPC::Run ();
use JSON::PP ();

my @all;

# Build kafka_tool into $dir once per directory; returns its path.
sub build_tool
{
	my ($class, $dir) = @_;
	my $src = dirname(__FILE__) . '/../kafka_tool.c';
	my $tool = "$dir/kafka_tool";

	make_path($dir);
	return $tool if -x $tool && -M $tool <= -M $src;
	system('cc', '-O1', '-o', $tool, $src, '-lrdkafka') == 0
	  or die "cannot build kafka_tool from $src";
	return $tool;
}

# EOKafka->new($dir, brokers => 3): start a mock cluster.
sub new
{
	my ($class, $dir, %opts) = @_;
	my $self = bless { dir => $dir, brokers => $opts{brokers} // 3 }, $class;

	$self->{tool} = $class->build_tool($dir);
	$self->{in} = '';
	$self->{out} = '';
	$self->{err} = '';
	$self->{handle} = IPC::Run::start(
		[ $self->{tool}, 'mock', $self->{brokers} ],
		'<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err});
	$self->{bootstrap} = $self->_line(30);
	die "kafka_tool mock printed no bootstrap servers: $self->{err}"
	  unless $self->{bootstrap} =~ /^(?:127\.0\.0\.1:\d+,?)+$/;
	push @all, $self;
	return $self;
}

# The next line of the tool's output, waiting up to $timeout seconds.
sub _line
{
	my ($self, $timeout) = @_;
	my $t = IPC::Run::timer($timeout);

	$t->start;
	until ($self->{out} =~ /\n/)
	{
		die "kafka_tool mock: no answer within $timeout s: $self->{err}"
		  if $t->is_expired;
		die "kafka_tool mock exited: $self->{err}" unless $self->{handle}->pumpable;
		$self->{handle}->pump_nb;
		select(undef, undef, undef, 0.01);
	}
	$self->{out} =~ s/^([^\n]*)\n//;
	return $1;
}

sub bootstrap
{
	my ($self) = @_;
	return $self->{bootstrap};
}

# The bootstrap servers as a list of "127.0.0.1:port".
sub bootstrap_list
{
	my ($self) = @_;
	return split /,/, $self->{bootstrap};
}

# command($line): send one command, return the rest of its "ok" answer (''
# when none); dies on an "error" answer.
sub command
{
	my ($self, $line) = @_;
	die 'kafka_tool mock is stopped' unless $self->{handle};
	$self->{in} .= "$line\n";
	my $answer = $self->_line(30);
	return $1 // '' if $answer =~ /^ok(?: (.*))?$/;
	die "kafka_tool mock: \"$line\": $answer";
}

# create_topic($name, $partitions [, $replication]).
sub create_topic
{
	my ($self, $name, $partitions, $replication) = @_;
	$replication //= $self->{brokers} < 3 ? $self->{brokers} : 3;
	$self->command("topic $name $partitions $replication");
	return;
}

# records($topic, min => 0, timeout => 60, read_committed => 0).
sub records
{
	my ($self, $topic, %opts) = @_;
	my ($out, $err) = ('', '');
	my $timeout = $opts{timeout} // 60;
	my @cmd = (
		$self->{tool}, 'read', $self->{bootstrap}, $topic,
		'--min' => $opts{min} // 0,
		'--timeout' => $timeout,
		($opts{read_committed} ? '--read-committed' : ()));

	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout($timeout + 30))
	  or die "kafka_tool read $topic failed (status " . ($? >> 8) . "): $err";
	my $json = JSON::PP->new->utf8;
	my @records;
	for my $line (split /\n/, $out)
	{
		my $r = $json->decode($line);
		$r->{header} = { map { @$_ } @{ $r->{headers} } };
		$r->{id} = $r->{header}{'eo-id'};
		push @records, $r;
	}
	return @records;
}

# stop: end the cluster.
sub stop
{
	my ($self) = @_;
	return unless $self->{handle};
	my $h = $self->{handle};
	my $t = IPC::Run::timer(10);
	$self->{handle} = undef;
	$self->{in} .= "quit\n";
	$t->start;
	eval {
		while ($h->pumpable && !$t->is_expired)
		{
			$h->pump_nb;
			select(undef, undef, undef, 0.01);
		}
		1;
	};
	if ($h->pumpable)
	{
		eval { $h->kill_kill; };
	}
	else
	{
		eval { $h->finish; };
	}
	return;
}

# At exit (also when a test dies): stop the clusters, keeping the test's
# exit status (reaping a child sets $?).
END
{
	local $?;
	$_->stop for @all;
}

1;
