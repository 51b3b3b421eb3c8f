# A LISTEN client for the TAP tests of the relay (test/t/00[345]_*.pl).
#
# psql cannot wait for notifications, so the tests listen through DBD::Pg
# (Debian package libdbd-pg-perl), inside the test process: there is no
# helper process to clean up, and every wait is bounded by a deadline.
# The client connects only to the node's own socket directory (or
# 127.0.0.1 when the node uses TCP), as the node's other clients do.
#
#   my $l = EONotify->new($node, 'postgres', 'eo_orders', 'audit.event');
#   $l->wait_for_id($id, 30) or fail(...);
#   for my $n ($l->notifications) { $n->{channel}, $n->{payload}, ... }
#
# Every notification is kept in arrival order with its channel, the PID of
# the sending backend, the raw payload, the time it was read and the
# message id (read from the start of the envelope, without decoding the
# JSON: a crash test reads tens of thousands).

package EONotify;

use strict;
use warnings FATAL => 'all';

use DBI;
use JSON::PP ();
use Time::HiRes ();

# EONotify->new($node, $dbname, @channels): connect and LISTEN.
sub new
{
	my ($class, $node, $dbname, @channels) = @_;

	my $dsn = sprintf('dbi:Pg:dbname=%s;host=%s;port=%s',
		$dbname, $node->host, $node->port);
	my $dbh = DBI->connect($dsn, '', '',
		{ AutoCommit => 1, RaiseError => 1, PrintError => 0 })
	  or die "EONotify: cannot connect to $dsn: $DBI::errstr";
	$dbh->do('SET application_name = ' . $dbh->quote('eo_listener'));
	$dbh->do('LISTEN ' . $dbh->quote_identifier($_)) for @channels;

	return bless {
		dbh => $dbh,
		backend_pid => $dbh->{pg_pid},
		notifications => [],
		seen => {},    # message id => times received
		lost => undef, # error text once the connection is gone
	}, $class;
}

# PID of the listening backend.
sub backend_pid { return $_[0]->{backend_pid}; }

# The error that ended the connection, or undef while it is up.
sub lost { return $_[0]->{lost}; }

# Read whatever notifications have arrived, without waiting.  Returns how
# many were read.
sub _consume
{
	my ($self) = @_;
	return 0 if defined $self->{lost};

	my $n = 0;
	my $ok = eval {
		while (my $x = $self->{dbh}->pg_notifies)
		{
			my ($channel, $pid, $payload) = @$x;
			my ($id) = $payload =~ /^\{"id": "([0-9a-f-]+)"/;
			push @{ $self->{notifications} },
			  {
				channel => $channel,
				sender_pid => $pid,
				payload => $payload,
				time => Time::HiRes::time(),
				id => $id,
			  };
			$self->{seen}{$id}++ if defined $id;
			$n++;
		}
		1;
	};
	$self->{lost} = ($@ || 'connection lost') unless $ok;
	return $n;
}

# drain($timeout): read what has arrived; if nothing has, wait up to
# $timeout seconds for the socket to become readable and read again.
# Returns how many notifications were read.
sub drain
{
	my ($self, $timeout) = @_;
	my $n = $self->_consume;
	return $n if $n > 0 || defined $self->{lost} || !$timeout;

	my $fd = $self->{dbh}->{pg_socket};
	my $rin = '';
	vec($rin, $fd, 1) = 1;
	select(my $rout = $rin, undef, undef, $timeout);
	return $self->_consume;
}

# wait_until($cond, $timeout): drain until $cond->() is true or $timeout
# seconds have passed (or the connection is lost).  Returns $cond->().
sub wait_until
{
	my ($self, $cond, $timeout) = @_;
	my $deadline = Time::HiRes::time() + $timeout;

	while (!$cond->())
	{
		my $left = $deadline - Time::HiRes::time();
		return $cond->() if $left <= 0 || defined $self->{lost};
		$self->drain($left < 0.2 ? $left : 0.2);
	}
	return 1;
}

# wait_for_id($id, $timeout): wait until a message with this id arrived.
sub wait_for_id
{
	my ($self, $id, $timeout) = @_;
	return $self->wait_until(sub { $self->{seen}{$id} }, $timeout);
}

# How many times a message id arrived (0 if never).
sub seen_count { return $_[0]->{seen}{ $_[1] } // 0; }

# Hash ref: message id => times received.
sub seen { return $_[0]->{seen}; }

# The notifications received so far, in arrival order (hash refs).
sub notifications { return @{ $_[0]->{notifications} }; }

# received($channel [, $topic]): hash ref, message id => times received on
# the channel (only messages of this topic when one is given).
sub received
{
	my ($self, $channel, $topic) = @_;
	my %ids;
	for my $n (@{ $self->{notifications} })
	{
		next unless $n->{channel} eq $channel && defined $n->{id};
		next if defined $topic && $n->{payload} !~ /"topic": "\Q$topic\E"/;
		$ids{ $n->{id} }++;
	}
	return \%ids;
}

# The first notification of a message id, or undef.
sub first_of
{
	my ($self, $id) = @_;
	for my $n (@{ $self->{notifications} })
	{
		return $n if defined $n->{id} && $n->{id} eq $id;
	}
	return undef;
}

# Decode a payload (an envelope) as JSON.
sub decode
{
	my ($class_or_self, $payload) = @_;
	return JSON::PP->new->decode($payload);
}

# close: stop listening and disconnect (harmless when already lost).
sub close
{
	my ($self) = @_;
	eval { $self->{dbh}->disconnect; };
	$self->{lost} //= 'closed';
	return;
}

1;
