/*
 * A QEMU stand-in for scale runs: it takes QEMU's command line as matchlock's qemu provider
 * writes it, boots nothing and costs about a megabyte per VM, so hundreds fit on a small host.
 *
 * It writes -pidfile, prints the line Linux prints when it starts init to the serial console's log
 * (the logfile= of -chardev id=console, or a -serial file: of older command lines), and
 * answers QMP on the -qmp unix socket: the greeting, qmp_capabilities, query-status (running),
 * stop/cont, and system_powerdown or quit (after which it exits). Every other option is ignored.
 *
 * Build: cc -O2 -o vmm-standin vmm-standin.c
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_CLIENTS 16

static const char *arg_after(int argc, char **argv, const char *name) {
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], name) == 0) return argv[i + 1];
  return NULL;
}

/* "unix:/path,server=on,wait=off" -> "/path"; "file:/path" -> "/path" */
static void strip(const char *in, const char *prefix, char *out, size_t n) {
  size_t p = strlen(prefix);
  if (strncmp(in, prefix, p) == 0) in += p;
  snprintf(out, n, "%s", in);
  char *comma = strchr(out, ',');
  if (comma) *comma = '\0';
}

static void say(int fd, const char *s) {
  size_t len = strlen(s);
  while (len > 0) {
    ssize_t w = write(fd, s, len);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s += w;
    len -= (size_t)w;
  }
}

static const char GREETING[] = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"stand-in\"}, \"capabilities\": []}}\n";

int main(int argc, char **argv) {
  const char *pidfile = arg_after(argc, argv, "-pidfile");
  const char *qmp = arg_after(argc, argv, "-qmp");
  const char *serial = arg_after(argc, argv, "-serial");
  const char *chardev = arg_after(argc, argv, "-chardev");
  const char *logfile = chardev ? strstr(chardev, "logfile=") : NULL;
  if (!pidfile || !qmp || !(logfile || (serial && strncmp(serial, "file:", 5) == 0))) {
    fprintf(stderr, "vmm-standin: -pidfile, -qmp and a console log (-chardev ...,logfile= or -serial file:) are required\n");
    return 2;
  }
  char sock_path[108], console_path[4096];
  strip(qmp, "unix:", sock_path, sizeof sock_path);
  if (logfile) strip(logfile, "logfile=", console_path, sizeof console_path);
  else strip(serial, "file:", console_path, sizeof console_path);
  signal(SIGPIPE, SIG_IGN);

  int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock_path);
  unlink(sock_path);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 8) < 0) {
    fprintf(stderr, "vmm-standin: qmp socket %s: %s\n", sock_path, strerror(errno));
    return 1;
  }
  FILE *con = fopen(console_path, "a");
  if (con) {
    fputs("Run /sbin/init as init process\n", con);
    fclose(con);
  }
  /* The pid file last, as QEMU does: once it names this process, the VMM is up. */
  FILE *pf = fopen(pidfile, "w");
  if (!pf) {
    fprintf(stderr, "vmm-standin: pid file %s: %s\n", pidfile, strerror(errno));
    return 1;
  }
  fprintf(pf, "%d\n", (int)getpid());
  fclose(pf);

  struct pollfd fds[MAX_CLIENTS + 1];
  int n = 1;
  fds[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
  int paused = 0;
  for (;;) {
    if (poll(fds, (nfds_t)n, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if ((fds[0].revents & POLLIN) && n <= MAX_CLIENTS) {
      int c = accept(lfd, NULL, NULL);
      if (c >= 0) {
        say(c, GREETING);
        fds[n++] = (struct pollfd){.fd = c, .events = POLLIN};
      }
    }
    for (int i = 1; i < n; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t r = read(fds[i].fd, buf, sizeof buf - 1);
      if (r <= 0) {
        close(fds[i].fd);
        fds[i--] = fds[--n];
        continue;
      }
      buf[r] = '\0';
      /* Commands arrive one JSON object per line; a line is matched by the command it names. */
      for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (strstr(line, "\"query-status\"")) {
          say(fds[i].fd, paused ? "{\"return\": {\"status\": \"paused\", \"running\": false}}\n" : "{\"return\": {\"status\": \"running\", \"running\": true}}\n");
        } else if (strstr(line, "\"system_powerdown\"") || strstr(line, "\"quit\"")) {
          say(fds[i].fd, "{\"return\": {}}\n");
          unlink(sock_path);
          return 0;
        } else if (strstr(line, "\"stop\"")) {
          paused = 1;
          say(fds[i].fd, "{\"return\": {}}\n");
        } else if (strstr(line, "\"cont\"")) {
          paused = 0;
          say(fds[i].fd, "{\"return\": {}}\n");
        } else {
          say(fds[i].fd, "{\"return\": {}}\n");
        }
      }
    }
  }
}
