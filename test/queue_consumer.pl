#!/usr/bin/perl
# queue_consumer.pl: a consumer of a queue destination for the TAP test
# test/t/040_queue_consumers.pl, steered through its standard streams.
#
#   queue_consumer.pl DSN QUEUE CHANNEL NAME BATCH
#
# Loop: read up to BATCH messages (eo.read, committed: the leases are
# out), print "leased <count>" and wait for a line on stdin: "go" applies
# them (one row per message in table "applied", then eo.ack, in one
# transaction) and prints "acked <count>"; "stop" exits.  The test kills
# the process with SIGKILL instead of answering, to leave leases behind.
# With nothing to read it waits for a notification on CHANNEL (or one
# second) and reads again.  Any error ends the process with status 1 (a
# refused ack, QL001, is reported as "stale" first).

use strict;
use warnings FATAL => 'all';

use DBI;
use DBD::Pg;
use IO::Select;

$| = 1;
my ($dsn, $queue, $channel, $name, $batch) = @ARGV;
my $dbh = DBI->connect($dsn, '', '', { AutoCommit => 1, RaiseError => 1, PrintError => 0 })
  or die "cannot connect: $DBI::errstr";
$dbh->do('LISTEN ' . $dbh->quote_identifier($channel));
my $read = $dbh->prepare(
	q{SELECT lease, key, (payload ->> 'n')::int, attempt FROM eo.read(?, ?)});
my $apply = $dbh->prepare(
	q{INSERT INTO applied (n, key, consumer, attempt) VALUES (?, ?, ?, ?)});
my $ack = $dbh->prepare(q{SELECT eo.ack(?, ?)});

while (1)
{
	$read->execute($queue, $batch);
	my $rows = $read->fetchall_arrayref;
	if (!@$rows)
	{
		# Wait for the wake-up; a lease that expired wakes nobody.
		IO::Select->new($dbh->{pg_socket})->can_read(1.0);
		1 while $dbh->pg_notifies;
		next;
	}
	print 'leased ' . scalar(@$rows) . "\n";
	my $answer = <STDIN>;
	exit 0 if !defined $answer || $answer =~ /^stop/;

	$dbh->begin_work;
	for my $r (@$rows)
	{
		$apply->execute($r->[2], $r->[1], $name, $r->[3]);
	}
	if (!eval { $ack->execute($queue, [ map { $_->[0] } @$rows ]); 1 })
	{
		my ($err, $state) = ($@, $dbh->state // '');
		$dbh->rollback;
		print "stale\n" if $state eq 'QL001';
		die $err;
	}
	$dbh->commit;
	print 'acked ' . scalar(@$rows) . "\n";
}
