# The SQL examples of README.md run as written, so that they cannot drift
# from the extension.
#
# Every ```sql fenced block of README.md is extracted and the blocks are
# run in document order, in one psql session (-v ON_ERROR_STOP=1, so psql
# variables set with \set or \gset in one block are there for the next),
# against a fresh database of a cluster configured as test/test.conf
# configures the regression clusters (library preloaded, relay off: no
# webhook of an example is ever sent).  The extension is created first; the
# README's own CREATE EXTENSION IF NOT EXISTS then finds it.
#
# Each block is preceded by an \echo of its number and README line and
# followed by a SELECT of an end marker, so the test checks that every
# block ran to its end (a block whose last statement lacks its semicolon
# swallows the end marker and fails), and reports the block and README
# line of the first error.  Blocks that are not meant to run (function
# signatures, configuration files, shell commands, output samples) are
# tagged text, ini, sh or json in the README, not sql.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EOTest;

my $root = "$FindBin::RealBin/../..";
my $readme = "$root/README.md";

# extract_sql_blocks($file): the ```sql blocks of a markdown file, in
# order, as hash refs { line => README line of the opening fence,
# text => the lines between the fences }.  Dies on a block that is not
# closed.
sub extract_sql_blocks
{
	my ($file) = @_;
	my @blocks;
	my $current;
	my $lineno = 0;

	open(my $fh, '<', $file) or die "cannot read $file: $!";
	while (my $line = <$fh>)
	{
		$lineno++;
		if (!defined $current)
		{
			$current = { line => $lineno, text => '' }
			  if $line =~ /^```sql\s*$/;
		}
		elsif ($line =~ /^```\s*$/)
		{
			push @blocks, $current;
			$current = undef;
		}
		else
		{
			$current->{text} .= $line;
		}
	}
	close $fh;
	die "$file: the sql block of line $current->{line} is not closed"
	  if defined $current;
	return @blocks;
}

my @blocks = extract_sql_blocks($readme);

# The README has sixteen: far fewer means the extraction is broken
# (or the examples were retagged), and the test would pass vacuously.
cmp_ok(scalar @blocks, '>=', 12, 'README.md has at least 12 sql blocks')
  or diag('found ' . scalar(@blocks) . ' sql blocks');
for my $block (@blocks)
{
	like($block->{text}, qr/\S/, "the sql block of README line $block->{line} is not empty");
}

# One script: for block N (README line L)
#   \echo 'README block N, line L'
#   <block>
#   SELECT 'README block N ran' AS readme_marker;
# @origin maps each script line to [block number, README line] so that an
# error psql reports by script line can be shown by README line.
my $script = '';
my @origin = (undef);
for my $i (0 .. $#blocks)
{
	my $block = $blocks[$i];
	my $n = $i + 1;
	my @lines = split /\n/, $block->{text}, -1;
	pop @lines if @lines && $lines[-1] eq '';

	$script .= "\\echo 'README block $n, line $block->{line}'\n";
	push @origin, [ $n, $block->{line} ];
	for my $j (0 .. $#lines)
	{
		$script .= "$lines[$j]\n";
		push @origin, [ $n, $block->{line} + 1 + $j ];
	}
	$script .= "SELECT 'README block $n ran' AS readme_marker;\n";
	push @origin, [ $n, $block->{line} + @lines + 1 ];
}

my $node = eo_new_node('readme',
	conf => slurp_file("$root/test/test.conf"));
$node->safe_psql('postgres', 'CREATE DATABASE readme');
$node->safe_psql('readme', 'CREATE EXTENSION eo_processing');

my $file = $node->basedir . '/readme.sql';
append_to_file($file, $script);

my ($out, $err) = ('', '');
IPC::Run::run(
	[
		$node->installed_command('psql'), '-X', '-v', 'ON_ERROR_STOP=1',
		'-h', $node->host, '-p', $node->port, '-d', 'readme', '-f', $file
	],
	'<', \undef, '>', \$out, '2>', \$err,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
my $rc = $? >> 8;
note "psql stdout:\n$out";
note "psql stderr:\n$err" if $err ne '';

# Where the first error was, in README terms.
if ($err =~ /^psql:\Q$file\E:(\d+): (ERROR|FATAL|error):\s*(.*)$/m)
{
	my ($scriptline, $msg) = ($1, $3);
	my ($n, $line) = @{ $origin[$scriptline] // [ '?', '?' ] };
	my $block = $n =~ /^\d+$/ ? $blocks[ $n - 1 ] : undef;
	my ($first) = defined $block ? $block->{text} =~ /^(.*\S.*)$/m : ('?');
	diag("README block $n (fence on line "
		  . (defined $block ? $block->{line} : '?')
		  . ", first line: $first) failed at README line $line: $msg");
}

is($rc, 0, 'psql runs every sql block of README.md without an error');
unlike($err, qr/^psql:.*(ERROR|FATAL|error):/m, 'psql reported no error');

# Every block started and ran to its end, in order.
my @started = $out =~ /^README block (\d+), line \d+$/mg;
my @ran = $out =~ /^ README block (\d+) ran$/mg;
is_deeply(\@started, [ 1 .. @blocks ], 'every sql block started, in order');
is_deeply(\@ran, [ 1 .. @blocks ], 'every sql block ran to its end, in order');

$node->stop;
done_testing();
