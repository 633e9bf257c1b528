#!/usr/bin/perl
# matchlockd's process spawner. The daemon starts this once and hands it every program start,
# so the daemon's own address space (100 MB and more) is never forked again: forking this small
# process is cheap. Only modules of Debian's perl-base (Essential) are used.
#
# Protocol, on stdin (requests) and stdout (events): frames of a 32-bit big-endian length and
# that many bytes; a frame is a list of fields, each a 32-bit big-endian length and its bytes,
# so arguments may hold any byte but NUL. The first two fields are a verb and a request id.
#
# Requests: spawn <id> then key/value pairs:
#   arg <bytes>         argv, in order; the first is the program, looked up in PATH
#   cwd <dir>           working directory
#   setsid 1            the child starts its own session (it outlives the daemon's terminal)
#   stdout a<path>      opened O_WRONLY|O_CREAT|O_APPEND; t<path> truncates first
#   stderr a|t<path>    the same for stderr
#   fd <path>           opened O_RDWR and given to the child as fd 3, 4, ... in order
#   capture <max>       stdout and stderr (those not sent to a file) go to pipes, read here up
#                       to <max> bytes each
#   input <bytes>       written to the child's stdin (a pipe), then closed
#   stream 1            stdin and stdout are pipes kept here for the child's whole life: what
#                       it writes comes as `out` events as it arrives, `write` requests feed
#                       its stdin (stderr goes where the request says, /dev/null by default)
#   inmax <bytes>       a streamed program's bound on what waits here for its stdin: past it
#                       what waits is dropped, its stdin closed and the program gets SIGKILL
#   timeout <ms>        a capturing child still running after it gets SIGTERM
#   env NAME=value      repeated: the environment of this and later programs, all of it (sent
#                       when the daemon's environment changed since the last request)
# About a capturing or streamed program, <id> being the id of its spawn request (dropped once it
# is gone: its exit event is on the way):
#   kill <id> <signal>  the signal (a number) is sent to it (a run called off)
# About a streamed program:
#   write <id> <bytes>  appended to what waits for its stdin, written as the pipe takes it, so a
#                       child that does not read never blocks this process
#   close <id>          its stdin is closed once what waits was written
# Events:
#   ready 0                              the spawner runs (sent once, first)
#   spawned <id> <pid>                   the program was executed
#   failed <id> <errno name> <message>   it was not (fork, open, chdir or exec failed)
#   out <id> <bytes>                     a streamed program wrote this on stdout
#   exit <id> <code> <signal> [<stdout> <stderr> <why>]   it ended; code or signal number is
#                                        empty; the output fields come for capture, why is
#                                        '', 'timeout' or 'maxbuffer'; a streamed program's
#                                        comes after its last `out`, with the output fields
#                                        empty and why 'maxinput' when inmax killed it
#
# Environment: MATCHLOCK_SPAWNER_MAX_WAIT_MS, the longest select wait while children live
# (default 1000; exits wake the loop through a self-pipe, see below).
#
# The spawner exits when stdin closes (the daemon is gone) and never kills what it started
# except a capturing child past its timeout or output bound, or a streamed one it is asked to.
use strict;
use warnings;
# POSIX and Fcntl are loaded without their Perl halves (export lists, AUTOLOAD, wrappers): their
# XS parts hold every function and constant used here, and the process starts with about half
# the anonymous memory (1.2 MB instead of 2.4; 1.8 MB once busy). Every start forks this
# process, and a fork copies and write-protects the page tables of all of it.
BEGIN {
  require XSLoader;
  package POSIX { XSLoader::load('POSIX') }
  package Fcntl { XSLoader::load('Fcntl') }
}
use constant {
  EINTR => POSIX::EINTR(), EAGAIN => POSIX::EAGAIN(), WNOHANG => POSIX::WNOHANG(),
  F_GETFL => Fcntl::F_GETFL(), F_SETFL => Fcntl::F_SETFL(), O_NONBLOCK => Fcntl::O_NONBLOCK(),
  O_RDWR => Fcntl::O_RDWR(), O_RDONLY => Fcntl::O_RDONLY(), O_WRONLY => Fcntl::O_WRONLY(),
  O_CREAT => Fcntl::O_CREAT(), O_APPEND => Fcntl::O_APPEND(), O_TRUNC => Fcntl::O_TRUNC(),
};

# A terminal's ^C or a hangup reaches the whole process group: the spawner outlives them and
# exits when the daemon does (its pipe closes), so the daemon is never left without it. They
# are caught, not ignored: exec resets a caught signal to its default, so a program starts with
# the defaults, as from Node, without the child touching them (every page the child writes
# before exec is a copy-on-write fault).
$SIG{$_} = sub { } for qw(PIPE INT QUIT HUP TERM);
# A child's exit wakes the select loop through this pipe: the handler (run by perl between two
# statements) writes a byte, so a SIGCHLD that lands after the last waitpid but before select
# still makes select return at once instead of at its next timeout.
pipe(my $wakeR, my $wakeW) or die "pipe: $!";
my $chld = 0;
$SIG{CHLD} = sub { $chld = 1; syswrite($wakeW, 'c') };
# The longest select waits while children live, in ms: a backstop for a signal that lands inside
# perl's select op itself, after its last signal check and before the system call (microseconds
# wide).
my $maxWait = ($ENV{MATCHLOCK_SPAWNER_MAX_WAIT_MS} // 1000) / 1000;
delete $ENV{MATCHLOCK_SPAWNER_MAX_WAIT_MS};

my %byPid;    # pid -> child state
# The children whose output or input passes through here: the loop below walks only these, not
# every VMM this process started.
my %capturing;
my %byId;    # spawn request id -> state of a capturing or streamed child, which requests may name
my $inbuf = '';

sub frame { my $p = join '', map { pack('N/a*', $_) } @_; return pack('N', length $p) . $p }

sub emit {
  my $f = frame(@_);
  my $off = 0;
  while ($off < length $f) {
    my $n = syswrite(STDOUT, $f, length($f) - $off, $off);
    if (!defined $n) {
      next if $! == EINTR;
      if ($! == EAGAIN) {
        my $w = '';
        vec($w, fileno(STDOUT), 1) = 1;
        select(undef, $w, undef, undef);
        next;
      }
      exit 0;    # the daemon is gone
    }
    $off += $n;
  }
}

sub nonblock { my $fh = shift; fcntl($fh, F_SETFL, fcntl($fh, F_GETFL, 0) | O_NONBLOCK) }

# The errno's name from Errno's %!, looked up by name at run time: %! written out would load
# Errno (a few hundred KB) at start, and only failures need it.
sub errname {
  my $e = shift;
  my $names = do { no strict 'refs'; \%{'!'} };
  local $! = $e;
  for (keys %$names) { return $_ if $names->{$_} }
  return "E$e";
}

# /dev/null for the standard streams a program is not given, opened once (close-on-exec).
sysopen(my $nullIn, '/dev/null', O_RDONLY) or die "open /dev/null: $!";
sysopen(my $nullOut, '/dev/null', O_WRONLY) or die "open /dev/null: $!";

# In the forked child: everything up to exec. Every page the child writes before exec is a
# copy-on-write fault, so the parent prepared all it could: the child only makes its session,
# places the descriptors, changes directory and execs. Failures go back on $report as errno and
# text.
sub child {
  my ($req, $report, $src) = @_;
  if ($req->{setsid} && !defined POSIX::setsid()) { childFailed($report, 'setsid') }
  # Each source is first copied above every descriptor in use, so placing one at its target
  # never overwrites a source still to be placed, nor the report pipe.
  my $base = fileno($report);
  for (@$src) { $base = $_ if $_ > $base }
  $base = $#$src if $#$src > $base;
  $base++;
  for my $i (0 .. $#$src) { defined POSIX::dup2($src->[$i], $base + $i) or childFailed($report, 'dup2') }
  if (fileno($report) <= $#$src) {
    defined POSIX::dup2(fileno($report), $base + @$src) or childFailed($report, 'dup2');
    open($report, '>&=', $base + @$src) or childFailed($report, 'fdopen');
    fcntl($report, Fcntl::F_SETFD(), Fcntl::FD_CLOEXEC());
  }
  for my $i (0 .. $#$src) { defined POSIX::dup2($base + $i, $i) or childFailed($report, 'dup2') }
  POSIX::close($base + $_) for 0 .. $#$src;
  if (defined $req->{cwd}) { chdir($req->{cwd}) or childFailed($report, "chdir $req->{cwd}") }
  my $argv = $req->{arg};
  { no warnings 'exec'; exec { $argv->[0] } @$argv; }
  childFailed($report, "exec $argv->[0]");
}

sub childFailed {
  my ($report, $what) = @_;
  my $e = $! + 0;
  syswrite($report, pack('N', $e) . "$what: $!");
  POSIX::_exit(127);
}

sub spawn {
  my ($id, $req) = @_;
  my $argv = $req->{arg};
  if (!@$argv) { emit('failed', $id, 'EINVAL', 'no program given'); return }
  my %pipes;
  my %ours;    # the ends this process keeps
  # What fd 0, 1, 2, 3, ... of the program become. Files are opened here, close-on-exec, so a
  # file that cannot be opened fails the request without a fork.
  my @src = (undef, undef, undef);
  my $fail;
  for my $k ('stdout', 'stderr') {
    my $spec = $req->{$k};
    next if !defined $spec;
    my ($mode, $path) = (substr($spec, 0, 1), substr($spec, 1));
    my $fh;
    if (sysopen($fh, $path, O_WRONLY | O_CREAT | O_APPEND | ($mode eq 't' ? O_TRUNC : 0), 0644)) { $src[$k eq 'stdout' ? 1 : 2] = $fh }
    else { $fail = [$! + 0, "open $path: $!"]; last }
  }
  if (!$fail) {
    for my $path (@{ $req->{fd} }) {
      my $fh;
      if (sysopen($fh, $path, O_RDWR)) { push @src, $fh }
      else { $fail = [$! + 0, "open $path: $!"]; last }
    }
  }
  if ($fail) { emit('failed', $id, errname($fail->[0]), $fail->[1]); return }
  my $ok = pipe(my $rep_r, my $rep_w);
  if ($ok && defined $req->{capture}) {
    for my $k ('stdout', 'stderr') { $ok &&= pipe($ours{$k}, $pipes{$k}) if !defined $req->{$k} }
  }
  if ($ok && $req->{stream}) { $ok = pipe($ours{stdout}, $pipes{stdout}) }
  if ($ok && (defined $req->{input} || $req->{stream})) { $ok = pipe($pipes{in}, $ours{in}) }
  if (!$ok) { emit('failed', $id, errname($! + 0), "pipe: $!"); return }
  $src[0] = $pipes{in} // $nullIn;
  $src[1] //= $pipes{stdout} // $nullOut;
  $src[2] //= $pipes{stderr} // $nullOut;
  my @fds = map { fileno($_) } @src;
  my $pid = fork();
  if (!defined $pid) { emit('failed', $id, errname($! + 0), "fork: $!"); return }
  if ($pid == 0) { child($req, $rep_w, \@fds) }
  close($rep_w);
  close($_) for values %pipes;
  # EOF on the report pipe: the exec happened (the write end is close-on-exec).
  my $got = '';
  while (1) {
    my $n = sysread($rep_r, $got, 4096, length $got);
    last if defined $n && $n == 0;
    next if !defined $n && $! == EINTR;
    last if !defined $n;
  }
  close($rep_r);
  if (length $got >= 4) {
    my ($e, $msg) = unpack('N a*', $got);
    my $r;
    do { $r = waitpid($pid, 0) } while ($r == -1 && $! == EINTR);
    emit('failed', $id, errname($e), $msg);
    return;
  }
  my $c = { id => $id, pid => $pid, capture => defined $req->{capture} };
  if ($c->{capture}) {
    $c->{max} = $req->{capture} + 0;
    $c->{out} = { stdout => '', stderr => '' };
    $c->{fh} = { map { $ours{$_} ? ($_ => $ours{$_}) : () } 'stdout', 'stderr' };
    nonblock($_) for values %{ $c->{fh} };
    if ($ours{in}) {
      $c->{in} = $ours{in};
      $c->{input} = $req->{input};
      nonblock($c->{in});
    }
    $c->{why} = '';
    $c->{deadline} = time_ms() + $req->{timeout} if defined $req->{timeout};
    $capturing{$pid} = $c;
    $byId{$id} = $c;
  } elsif ($req->{stream}) {
    $c->{stream} = 1;
    $c->{fh} = { stdout => $ours{stdout} };
    $c->{in} = $ours{in};
    $c->{input} = '';
    $c->{inmax} = $req->{inmax};
    $c->{why} = '';
    nonblock($_) for $ours{stdout}, $ours{in};
    $capturing{$pid} = $c;
    $byId{$id} = $c;
  }
  $byPid{$pid} = $c;
  emit('spawned', $id, $pid);
}

# Elapsed real time in ms from times(2), in clock ticks (10 ms): Time::HiRes is not in perl-base.
my $tick = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
sub time_ms { return (POSIX::times())[0] * 1000 / $tick }

sub finish {
  my $c = shift;
  return if !defined $c->{status} || ($c->{fh} && %{ $c->{fh} });
  delete $byPid{ $c->{pid} };
  delete $capturing{ $c->{pid} };
  delete $byId{ $c->{id} };
  my $st = $c->{status};
  my ($code, $sig) = ('', '');
  if (POSIX::WIFEXITED($st)) { $code = POSIX::WEXITSTATUS($st) }
  elsif (POSIX::WIFSIGNALED($st)) { $sig = POSIX::WTERMSIG($st) }
  if ($c->{capture}) { emit('exit', $c->{id}, $code, $sig, $c->{out}{stdout}, $c->{out}{stderr}, $c->{why}) }
  elsif ($c->{stream} && $c->{why}) { emit('exit', $c->{id}, $code, $sig, '', '', $c->{why}) }
  else { emit('exit', $c->{id}, $code, $sig) }
}

sub reap {
  $chld = 0;
  while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
    my $c = $byPid{$pid} or next;
    $c->{status} = $?;
    # The child is gone: nobody reads what is left of its input.
    if ($c->{in}) { close($c->{in}); delete $c->{in} }
    finish($c);
  }
}

# Writes what waits for a child's stdin as far as the pipe takes it without blocking; closes
# its stdin once all is written and no more comes (a capture's input, or a stream asked to
# close), or when the child no longer reads (EPIPE: what waits is dropped).
sub feed {
  my $c = shift;
  if ($c->{input} ne '') {
    my $w = syswrite($c->{in}, $c->{input});
    if (defined $w) { substr($c->{input}, 0, $w) = '' }
    elsif ($! != EAGAIN && $! != EINTR) { $c->{input} = ''; $c->{closing} = 1 }
  }
  if ($c->{input} eq '' && ($c->{closing} || !$c->{stream})) { close($c->{in}); delete $c->{in} }
}

sub request {
  my @f = unpack('(N/a*)*', shift);
  my ($verb, $id) = splice(@f, 0, 2);
  return if !defined $verb;
  if ($verb eq 'write' || $verb eq 'close' || $verb eq 'kill') {
    my $c = $byId{ $id // '' } or return;
    if ($verb eq 'kill') { kill($f[0] + 0, $c->{pid}) if !defined $c->{status} && defined $f[0] }
    elsif (!$c->{stream} || !$c->{in} || $c->{closing}) { }
    elsif ($verb eq 'write') {
      $c->{input} .= $f[0] // '';
      feed($c);
      if (defined $c->{inmax} && length $c->{input} > $c->{inmax}) {
        $c->{input} = '';
        $c->{closing} = 1;
        # Only a child still running is killed for it; one that ended meanwhile ended on its own.
        $c->{why} = 'maxinput' if !defined $c->{status};
        feed($c);
        kill('KILL', $c->{pid}) if !defined $c->{status};
      }
    }
    else { $c->{closing} = 1; feed($c) }
    return;
  }
  return if $verb ne 'spawn';
  my %req = (arg => [], fd => [], env => []);
  while (@f >= 2) {
    my ($k, $v) = splice(@f, 0, 2);
    if ($k eq 'arg' || $k eq 'fd' || $k eq 'env') { push @{ $req{$k} }, $v }
    else { $req{$k} = $v }
  }
  if (@{ $req{env} }) { %ENV = map { split(/=/, $_, 2) } @{ $req{env} } }
  spawn($id, \%req);
}

nonblock($_) for $wakeR, $wakeW;
nonblock(\*STDIN);
binmode(STDIN);
binmode(STDOUT);
emit('ready', '0');
while (1) {
  reap() if $chld;
  my ($rin, $win) = ('', '');
  vec($rin, fileno(STDIN), 1) = 1;
  vec($rin, fileno($wakeR), 1) = 1;
  my $now = time_ms();
  my $wait;
  for my $c (values %capturing) {
    vec($rin, fileno($_), 1) = 1 for values %{ $c->{fh} };
    # A stream's stdin is watched only while bytes wait for it: an idle pipe is always writable.
    vec($win, fileno($c->{in}), 1) = 1 if $c->{in} && ($c->{input} ne '' || !$c->{stream});
    next if !defined $c->{deadline} || $c->{why};
    if ($c->{deadline} <= $now) { $c->{why} = 'timeout'; kill('TERM', $c->{pid}); next }
    my $left = ($c->{deadline} - $now) / 1000;
    $wait = $left if !defined $wait || $left < $wait;
  }
  if (%byPid) { $wait = $maxWait if !defined $wait || $wait > $maxWait }
  my $n = select(my $rout = $rin, my $wout = $win, undef, $wait);
  next if $n <= 0;
  # Emptied before the next reap: a byte written after this read wakes the next select.
  if (vec($rout, fileno($wakeR), 1)) { 1 while sysread($wakeR, my $drain, 4096) }
  if (vec($rout, fileno(STDIN), 1)) {
    my $r = sysread(STDIN, $inbuf, 1 << 20, length $inbuf);
    if (defined $r && $r == 0) { exit 0 }
    while (length $inbuf >= 4) {
      my $len = unpack('N', $inbuf);
      last if length $inbuf < 4 + $len;
      my $body = substr($inbuf, 4, $len);
      substr($inbuf, 0, 4 + $len) = '';
      request($body);
    }
  }
  for my $c (values %capturing) {
    feed($c) if $c->{in} && vec($wout, fileno($c->{in}), 1);
    for my $k (keys %{ $c->{fh} }) {
      my $fh = $c->{fh}{$k};
      next if !vec($rout, fileno($fh), 1);
      if ($c->{stream}) {
        my $r = sysread($fh, my $got, 1 << 16);
        next if !defined $r && ($! == EAGAIN || $! == EINTR);
        if ($r) { emit('out', $c->{id}, $got) }
        else { close($fh); delete $c->{fh}{$k} }
        next;
      }
      my $r = sysread($fh, $c->{out}{$k}, 1 << 16, length $c->{out}{$k});
      next if !defined $r && ($! == EAGAIN || $! == EINTR);
      if (!$r) { close($fh); delete $c->{fh}{$k}; next }
      if (length $c->{out}{$k} > $c->{max}) {
        substr($c->{out}{$k}, $c->{max}) = '';
        if (!$c->{why}) { $c->{why} = 'maxbuffer'; kill('TERM', $c->{pid}) }
        close($fh);
        delete $c->{fh}{$k};
      }
    }
    finish($c);
  }
}
