"""matchlockd's process spawner.

The daemon starts this once and hands it every program start, so the daemon's own address space
(100 MB and more) is never forked again. Programs are started with posix_spawn(3): glibc (2.24
and later) clones with CLONE_VM|CLONE_VFORK, so not even this process's address space is copied
or write-protected, and an exec that fails comes back as the call's error. Only modules of
Debian's python3-minimal are used; the daemon runs it as `python3 -I -S` (no site, no user
paths, no PYTHON* variables).

Protocol, on stdin (requests) and stdout (events): frames of a 32-bit big-endian length and
that many bytes; a frame is a list of fields, each a 32-bit big-endian length and its bytes,
so arguments may hold any byte but NUL. The first two fields are a verb and a request id.

Requests: spawn <id> then key/value pairs:
  arg <bytes>         argv, in order; the first is the program, looked up in PATH
  cwd <dir>           working directory
  setsid 1            the child starts its own session (it outlives the daemon's terminal)
  stdout a<path>      opened O_WRONLY|O_CREAT|O_APPEND; t<path> truncates first
  stderr a|t<path>    the same for stderr
  fd <path>           opened O_RDWR and given to the child as fd 3, 4, ... in order
  capture <max>       stdout and stderr (those not sent to a file) go to pipes, read here up
                      to <max> bytes each
  input <bytes>       written to the child's stdin (a pipe), then closed
  stream 1            stdin and stdout are pipes kept here for the child's whole life: what
                      it writes comes as `out` events as it arrives, `write` requests feed
                      its stdin (stderr goes where the request says, /dev/null by default);
                      not with capture
  inmax <bytes>       a streamed program's bound on what waits here for its stdin: past it
                      what waits is dropped, its stdin closed and the program gets SIGKILL
  timeout <ms>        a capturing child still running after it gets SIGTERM
  env NAME=value      repeated: the environment of this and later programs, all of it (sent
                      when the daemon's environment changed since the last request)
About a capturing or streamed program, <id> being the id of its spawn request (dropped once it
is gone: its exit event is on the way):
  kill <id> <signal>  the signal (a number) is sent to it (a run called off)
About a streamed program:
  write <id> <bytes>  appended to what waits for its stdin, written as the pipe takes it, so a
                      child that does not read never blocks this process
  close <id>          its stdin is closed once what waits was written
Events:
  ready 0                              the spawner runs (sent once, first)
  spawned <id> <pid>                   the program was executed
  failed <id> <errno name> <message>   it was not (open, chdir or exec failed)
  out <id> <bytes>                     a streamed program wrote this on stdout
  exit <id> <code> <signal> [<stdout> <stderr> <why>]   it ended; code or signal number is
                                       empty; the output fields come for capture, why is
                                       '', 'timeout' or 'maxbuffer'; a streamed program's
                                       comes after its last `out`, with the output fields
                                       empty and why 'maxinput' when inmax killed it

The spawner exits when stdin closes (the daemon is gone) and never kills what it started
except a capturing child past its timeout or output bound, or a streamed one it is asked to.
"""

import errno
import os
import select
import sys
import time

# posix_spawn's setsid and signal.valid_signals came with Python 3.8: an older one says so in
# one line on the daemon's log instead of a traceback (the daemon then starts programs itself).
if sys.version_info < (3, 8):
    os.write(2, b'matchlock spawner: needs Python 3.8 or newer (found %d.%d)\n' % sys.version_info[:2])
    os._exit(1)

# The C module behind `signal`: signal.py wraps it in enums, and loading enum (with functools
# and collections) adds about 18 ms to this process's start for nothing used here.
import _signal as signal

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT

# A terminal's ^C or a hangup reaches the whole process group: the spawner outlives them and
# exits when the daemon does (its pipe closes), so the daemon is never left without it. They are
# caught, not ignored (Python itself ignores SIGPIPE and SIGXFSZ from its start): every signal
# is set back to its default in the child (setsigdef below), so a program starts with the
# defaults, as from Node.
for _sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD):
    signal.signal(_sig, lambda _s, _f: None)
DEFAULTS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}

# A child's exit wakes the poll below through this pipe: Python's C-level signal handler writes
# a byte to it the moment SIGCHLD arrives, so an exit after the last waitpid and before poll
# still makes poll return at once.
wake_r, wake_w = os.pipe()
os.set_blocking(wake_r, False)
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

# /dev/null for the standard streams a program is not given, opened once (close-on-exec, as
# every descriptor Python opens).
null_in = os.open('/dev/null', os.O_RDONLY)
null_out = os.open('/dev/null', os.O_WRONLY)
# Where this process returns after starting a program in another directory (see start).
home = os.open('.', os.O_PATH | os.O_DIRECTORY)

# The environment programs get. posix_spawnp looks the program up in this process's own PATH,
# so PATH is also set here whenever it changes (see request).
env = dict(os.environb)

by_pid = {}     # pid -> child state
# The children whose output or input passes through here: the loop below walks only these, not
# every VMM this process started.
capturing = {}
by_id = {}      # spawn request id -> state of a capturing or streamed child, which requests may name


class Child:
    __slots__ = ('id', 'pid', 'capture', 'stream', 'max', 'out', 'fh', 'infd', 'input', 'inoff',
                 'inmax', 'closing', 'why', 'deadline', 'status')

    def __init__(self, rid, pid):
        self.id = rid
        self.pid = pid
        self.capture = False
        self.stream = False
        self.fh = {}           # name -> the read end of its stdout or stderr pipe
        self.infd = None       # the write end of its stdin pipe
        self.input = bytearray()
        self.inoff = 0         # how much of input was written
        self.inmax = None
        self.closing = False
        self.why = b''
        self.deadline = None
        self.status = None


def now_ms():
    return time.monotonic() * 1000


def emit(*fields):
    parts = [b'']
    size = 0
    for f in fields:
        b = f if isinstance(f, (bytes, bytearray)) else str(f).encode()
        parts.append(len(b).to_bytes(4, 'big'))
        parts.append(b)
        size += 4 + len(b)
    # One copy of the frame (a capture may carry 64 MiB twice), not one per level of framing.
    parts[0] = size.to_bytes(4, 'big')
    data = memoryview(b''.join(parts))
    while data:
        try:
            n = os.write(1, data)
        except BlockingIOError:
            select.select([], [1], [])
            continue
        except OSError:
            os._exit(0)    # the daemon is gone
        data = data[n:]


def errname(e):
    return errno.errorcode.get(e, 'E%d' % e)


def failed(rid, e, what):
    emit(b'failed', rid, errname(e.errno), what + b': ' + (e.strerror or str(e)).encode())


def close_all(fds):
    for fd in fds:
        os.close(fd)


def start(rid, req, ours, theirs):
    """Starts the program of a spawn request; returns its pid, or None once `failed` was sent.
    The pipe ends this process keeps go into `ours`, the descriptors opened for the child only
    into `theirs` (the caller closes them)."""
    argv = req[b'arg']
    if not argv:
        emit(b'failed', rid, 'EINVAL', 'no program given')
        return None
    # What fd 0, 1, 2, 3, ... of the program become. Files are opened here, so a file that
    # cannot be opened fails the request with its own message and starts nothing.
    src = [None, None, None]
    for i, k in ((1, b'stdout'), (2, b'stderr')):
        spec = req.get(k)
        if spec is None:
            continue
        path = spec[1:]
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if spec[:1] == b't' else 0)
        try:
            src[i] = os.open(path, flags, 0o644)
        except OSError as e:
            failed(rid, e, b'open ' + path)
            return None
        theirs.append(src[i])
    for path in req[b'fd']:
        try:
            src.append(os.open(path, os.O_RDWR))
        except OSError as e:
            failed(rid, e, b'open ' + path)
            return None
        theirs.append(src[-1])
    try:
        if b'capture' in req:
            for i, k in ((1, b'stdout'), (2, b'stderr')):
                if src[i] is None:
                    ours[k], src[i] = os.pipe()
                    theirs.append(src[i])
        if req.get(b'stream'):
            ours[b'stdout'], src[1] = os.pipe()
            theirs.append(src[1])
        if b'input' in req or req.get(b'stream'):
            src[0], ours[b'in'] = os.pipe()
            theirs.append(src[0])
    except OSError as e:
        failed(rid, e, b'pipe')
        return None
    if src[0] is None:
        src[0] = null_in
    if src[1] is None:
        src[1] = null_out
    if src[2] is None:
        src[2] = null_out
    # dup2 clears close-on-exec on its target. A source below the number of descriptors the
    # child gets could be overwritten before it is placed: then each is first copied above
    # every source, and placed from there.
    n = len(src)
    if min(src) >= n:
        actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(src)]
    else:
        base = max(max(src) + 1, n)
        actions = [(os.POSIX_SPAWN_DUP2, fd, base + i) for i, fd in enumerate(src)]
        actions += [(os.POSIX_SPAWN_DUP2, base + i, i) for i in range(n)]
        actions += [(os.POSIX_SPAWN_CLOSE, base + i) for i in range(n)]
    cwd = req.get(b'cwd')
    # posix_spawn has no working directory (glibc's addchdir_np is not in Python's posix_spawn):
    # this process, single-threaded, moves there for the spawn and back, and the child inherits
    # it. The files were opened from here and the program is looked up from there, as by a
    # child that changes directory before its exec.
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as e:
            failed(rid, e, b'chdir ' + cwd)
            return None
    opts = dict(file_actions=actions, setsid=bool(req.get(b'setsid')), setsigmask=(), setsigdef=DEFAULTS)
    try:
        try:
            return os.posix_spawnp(argv[0], argv, env, **opts)
        except OSError as e:
            if e.errno != errno.ENOEXEC:
                raise
            # An executable file without `#!`: execvp, which the program would get from a
            # shell, Perl or Node, runs it with /bin/sh; glibc's posix_spawnp no longer does.
            return spawn_as_execvp(argv, opts)
    except OSError as e:
        failed(rid, e, b'exec ' + argv[0])
        return None
    except ValueError as e:
        # An argument or variable Python refuses (a NUL byte, a name with '=').
        emit(b'failed', rid, 'EINVAL', str(e))
        return None
    finally:
        if cwd is not None:
            back_home()


def back_home():
    """Returns this process to its start directory after a spawn elsewhere. If that fails (the
    directory was made unreadable to a non-root daemon), it goes to / instead: the program was
    started either way and must be reported so."""
    try:
        os.fchdir(home)
    except OSError as e:
        os.write(2, b'matchlock spawner: back to its start directory: %s; now in /\n' % (e.strerror or str(e)).encode())
        os.chdir('/')


# What execvp passes over in PATH (glibc's execvpe): a file that is not there, or not there
# for this exec (its interpreter or loader missing); EACCES is kept for the end.
SKIP = {errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.ENODEV, errno.ETIMEDOUT, errno.EACCES}


def spawn_as_execvp(argv, opts):
    """Starts `argv` as execvp would, in the rare case posix_spawnp met a file without `#!`:
    the PATH entries are tried in order (each an exec attempt, as execvp's loop), and the first
    file that is a program runs, or the first that is not (ENOEXEC) runs with /bin/sh. PATH
    unset is the C library's default path (confstr's CS_PATH), an empty entry the working
    directory. Raises the error execvp would: EACCES if a file was refused so, else ENOENT."""
    name = argv[0]
    if b'/' in name:
        candidates = [name]
    else:
        path = env.get(b'PATH')
        if path is None:
            path = os.confstr('CS_PATH').encode()
        candidates = [(d or b'.') + b'/' + name for d in path.split(b':')]
    denied = None
    for c in candidates:
        try:
            return os.posix_spawn(c, argv, env, **opts)
        except OSError as e:
            if e.errno == errno.ENOEXEC:
                return os.posix_spawn(b'/bin/sh', [b'/bin/sh', c] + argv[1:], env, **opts)
            if e.errno not in SKIP:
                raise
            if e.errno == errno.EACCES:
                denied = denied or e
    if denied is not None:
        raise denied
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))


def spawn(rid, req):
    # Numbers first: a request refused for one (ValueError) has started nothing.
    cap = int(req[b'capture']) if b'capture' in req else None
    timeout = float(req[b'timeout']) if b'timeout' in req else None
    # poll takes at most 2^31 - 1 ms; NaN and infinity fail this too.
    if timeout is not None and not 0 <= timeout < 2 ** 31 - 1:
        raise ValueError('timeout %r ms is not between 0 and 2^31 - 1' % timeout)
    inmax = int(req[b'inmax']) if b'inmax' in req else None
    if cap is not None and req.get(b'stream'):
        raise ValueError('capture and stream exclude each other')
    ours = {}
    theirs = []
    try:
        pid = start(rid, req, ours, theirs)
    except BaseException:
        close_all(ours.values())
        raise
    finally:
        close_all(theirs)
    if pid is None:
        close_all(ours.values())
        return
    try:
        c = Child(rid, pid)
        if cap is not None:
            c.capture = True
            c.max = cap
            c.out = {b'stdout': bytearray(), b'stderr': bytearray()}
            c.fh = {k: ours[k] for k in (b'stdout', b'stderr') if k in ours}
            if b'in' in ours:
                c.infd = ours[b'in']
                c.input = bytearray(req.get(b'input', b''))
            if timeout is not None:
                c.deadline = now_ms() + timeout
        elif req.get(b'stream'):
            c.stream = True
            c.fh = {b'stdout': ours[b'stdout']}
            c.infd = ours[b'in']
            c.inmax = inmax
        for fd in ours.values():
            os.set_blocking(fd, False)
        if c.capture or c.stream:
            capturing[pid] = c
            by_id[rid] = c
        by_pid[pid] = c
    except BaseException:
        # Nothing may leave a started program untracked: it is ended and reaped here, so the
        # request's `failed` is the whole truth.
        close_all(ours.values())
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        by_pid.pop(pid, None)
        capturing.pop(pid, None)
        by_id.pop(rid, None)
        raise
    emit(b'spawned', rid, pid)


def finish(c):
    if c.status is None or c.fh:
        return
    del by_pid[c.pid]
    capturing.pop(c.pid, None)
    by_id.pop(c.id, None)
    st = c.status
    code = sig = b''
    if os.WIFEXITED(st):
        code = os.WEXITSTATUS(st)
    elif os.WIFSIGNALED(st):
        sig = os.WTERMSIG(st)
    if c.capture:
        emit(b'exit', c.id, code, sig, c.out[b'stdout'], c.out[b'stderr'], c.why)
    elif c.stream and c.why:
        emit(b'exit', c.id, code, sig, b'', b'', c.why)
    else:
        emit(b'exit', c.id, code, sig)


def reap():
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        c = by_pid.get(pid)
        if c is None:
            continue
        c.status = st
        # The child is gone: nobody reads what is left of its input.
        if c.infd is not None:
            os.close(c.infd)
            c.infd = None
        finish(c)


def kill(c, sig):
    # A child already reaped is not signalled: its pid may be another process's by now.
    if c.status is None:
        try:
            os.kill(c.pid, sig)
        except (OSError, OverflowError):
            pass    # not a signal (EINVAL, or a number past an int)


def waiting(c):
    return len(c.input) - c.inoff


def feed(c):
    """Writes what waits for a child's stdin as far as the pipe takes it without blocking; closes
    its stdin once all is written and no more comes (a capture's input, or a stream asked to
    close), or when the child no longer reads (EPIPE: what waits is dropped)."""
    if waiting(c):
        try:
            with memoryview(c.input) as m:
                c.inoff += os.write(c.infd, m[c.inoff:])
        except BlockingIOError:
            pass
        except OSError:
            c.input = bytearray()
            c.inoff = 0
            c.closing = True
        if c.inoff == len(c.input):
            c.input = bytearray()
            c.inoff = 0
    if not waiting(c) and (c.closing or not c.stream):
        os.close(c.infd)
        c.infd = None


def set_env(entries):
    """The environment of this and later programs: all of `entries` (NAME=value), taken whole or,
    when one is refused (a NUL byte), not at all."""
    new = {}
    for e in entries:
        if b'\0' in e:
            raise ValueError('an environment entry holds a NUL byte')
        name, _, value = e.partition(b'=')
        if name:
            new[name] = value
    if b'PATH' in new:
        os.putenv(b'PATH', new[b'PATH'])
    elif b'PATH' in env:
        os.unsetenv(b'PATH')
    env.clear()
    env.update(new)


def request(body):
    f = []
    o = 0
    while o + 4 <= len(body):
        n = int.from_bytes(body[o:o + 4], 'big')
        f.append(bytes(body[o + 4:o + 4 + n]))
        o += 4 + n
    if not f:
        return
    verb = f[0]
    rid = f[1] if len(f) > 1 else b''
    if verb in (b'write', b'close', b'kill'):
        c = by_id.get(rid)
        if c is None:
            return
        if verb == b'kill':
            if len(f) > 2 and f[2].isdigit():
                kill(c, int(f[2]))
        elif not c.stream or c.infd is None or c.closing:
            pass
        elif verb == b'write':
            if c.inoff > 1 << 20:
                del c.input[:c.inoff]
                c.inoff = 0
            c.input += f[2] if len(f) > 2 else b''
            feed(c)
            if c.inmax is not None and waiting(c) > c.inmax:
                c.input = bytearray()
                c.inoff = 0
                c.closing = True
                # Only a child still running is killed for it; one that ended meanwhile ended
                # on its own.
                if c.status is None:
                    c.why = b'maxinput'
                feed(c)
                kill(c, signal.SIGKILL)
        else:
            c.closing = True
            feed(c)
        return
    if verb != b'spawn':
        return
    req = {b'arg': [], b'fd': [], b'env': []}
    kv = f[2:]
    for i in range(0, len(kv) - 1, 2):
        k, v = kv[i], kv[i + 1]
        if k in (b'arg', b'fd', b'env'):
            req[k].append(v)
        else:
            req[k] = v
    try:
        if req[b'env']:
            set_env(req[b'env'])
        spawn(rid, req)
    except (OSError, ValueError) as e:
        # A request this process cannot carry out (a bad number, no descriptors left) fails
        # alone; the spawner goes on.
        emit(b'failed', rid, errname(e.errno) if isinstance(e, OSError) and e.errno else 'EINVAL', str(e))
    except Exception as e:
        # Anything else (a C library without posix_spawn's setsid) fails this request too,
        # never every run in flight with the spawner.
        emit(b'failed', rid, 'EINVAL', '%s: %s' % (type(e).__name__, e))


def main():
    os.set_blocking(0, False)
    inbuf = bytearray()
    emit(b'ready', b'0')
    while True:
        poll = select.poll()
        poll.register(0, POLLIN)
        poll.register(wake_r, POLLIN)
        now = now_ms()
        wait = None
        for c in list(capturing.values()):
            for fd in c.fh.values():
                poll.register(fd, POLLIN)
            # A stream's stdin is watched only while bytes wait for it: an idle pipe is always
            # writable.
            if c.infd is not None and (waiting(c) or not c.stream):
                poll.register(c.infd, POLLOUT)
            if c.deadline is None or c.why:
                continue
            if c.deadline <= now:
                c.why = b'timeout'
                kill(c, signal.SIGTERM)
                continue
            left = c.deadline - now
            if wait is None or left < wait:
                wait = left
        ready = dict(poll.poll(None if wait is None else min(int(wait) + 1, 2 ** 31 - 1)))
        if not ready:
            continue
        # Emptied before the reap: a byte written after this read wakes the next poll.
        if wake_r in ready:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            reap()
        if 0 in ready:
            try:
                got = os.read(0, 1 << 20)
            except BlockingIOError:
                got = None
            except OSError:
                got = b''
            if got == b'':
                os._exit(0)    # the daemon is gone
            if got:
                inbuf += got
                o = 0
                while len(inbuf) - o >= 4:
                    n = int.from_bytes(inbuf[o:o + 4], 'big')
                    if len(inbuf) - o < 4 + n:
                        break
                    try:
                        request(bytes(inbuf[o + 4:o + 4 + n]))
                    except Exception as e:
                        # A request's fault stays its own: the spawner carries every other.
                        os.write(2, b'matchlock spawner: request refused: %s\n' % repr(e).encode())
                    o += 4 + n
                del inbuf[:o]
        for c in list(capturing.values()):
            if c.infd is not None and c.infd in ready:
                feed(c)
            for k, fd in list(c.fh.items()):
                if fd not in ready:
                    continue
                try:
                    got = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if c.stream:
                    if got:
                        emit(b'out', c.id, got)
                    else:
                        os.close(fd)
                        del c.fh[k]
                    continue
                if not got:
                    os.close(fd)
                    del c.fh[k]
                    continue
                out = c.out[k]
                out += got
                if len(out) > c.max:
                    del out[c.max:]
                    if not c.why:
                        c.why = b'maxbuffer'
                        kill(c, signal.SIGTERM)
                    os.close(fd)
                    del c.fh[k]
                out = None    # not kept alive (up to the bound) until the next capture's read
            finish(c)


main()
