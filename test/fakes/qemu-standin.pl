#!/usr/bin/perl
# A QEMU stand-in for scale runs (bench/host.ts): takes QEMU's command line as matchlock's qemu
# provider writes it, creates the serial console's log (-chardev logfile=, or -serial file:), listens on the -qmp unix socket, writes
# the -pidfile, and then sleeps in accept(). It answers QMP minimally (the greeting,
# qmp_capabilities, query-status) and exits on system_powerdown or quit. No guest runs, so a
# host can hold hundreds of these at a few MB each.
# With QEMU_STANDIN_HOLD=PATH in its environment it first waits until PATH exists, as a QEMU
# that is slow to start (its pid file not yet written) would; with QEMU_STANDIN_QMP_HOLD=PATH
# it waits after writing its pid file, before its console and QMP socket.
use strict;
use warnings;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);

my ($pidfile, $qmp, $console);
for (my $i = 0; $i < @ARGV; $i++) {
  my $a = $ARGV[$i];
  if ($a eq '-pidfile') { $pidfile = $ARGV[++$i]; }
  elsif ($a eq '-qmp') { ($qmp) = $ARGV[++$i] =~ /^unix:([^,]+)/; }
  elsif ($a eq '-serial') { my ($f) = $ARGV[++$i] =~ /^file:(.+)$/; $console //= $f; }
  elsif ($a eq '-chardev') { my ($f) = $ARGV[++$i] =~ /(?:^|,)logfile=([^,]+)/; $console = $f if defined $f; }
  elsif ($a eq '-version') { print "QEMU emulator version 7.2.0 (matchlock stand-in)\n"; exit 0; }
}
die "qemu-standin: -pidfile and -qmp unix:PATH are required\n" unless defined $pidfile && defined $qmp;
select(undef, undef, undef, 0.05) while defined $ENV{QEMU_STANDIN_HOLD} && !-e $ENV{QEMU_STANDIN_HOLD};
# QEMU's own order: the pid file, then the chardevs (the console) and the QMP monitor.
open(my $p, '>', "$pidfile.tmp") or die "qemu-standin: $pidfile: $!\n";
print $p "$$\n";
close $p;
rename("$pidfile.tmp", $pidfile) or die "qemu-standin: $pidfile: $!\n";
select(undef, undef, undef, 0.05) while defined $ENV{QEMU_STANDIN_QMP_HOLD} && !-e $ENV{QEMU_STANDIN_QMP_HOLD};
if (defined $console) { open(my $c, '>>', $console) or die "qemu-standin: $console: $!\n"; close $c; }
unlink $qmp;
my $server = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $qmp, Listen => 4) or die "qemu-standin: $qmp: $!\n";
$SIG{TERM} = sub { unlink $qmp; exit 0; };
while (my $c = $server->accept()) {
  $c->autoflush(1);
  print $c qq({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\r\n);
  while (my $line = <$c>) {
    my ($cmd) = $line =~ /"execute"\s*:\s*"([^"]+)"/;
    next unless defined $cmd;
    if ($cmd eq 'query-status') { print $c qq({"return": {"status": "running", "singlestep": false, "running": true}}\r\n); }
    else { print $c qq({"return": {}}\r\n); }
    if ($cmd eq 'system_powerdown' || $cmd eq 'quit') { close $c; unlink $qmp; exit 0; }
  }
  close $c;
}
