/* CSandbox: what a partition worker needs to start and to confine itself (clone3 with
 * namespaces and a pidfd, capabilities, no_new_privs, a libseccomp filter). Host only. */
#ifndef VIRIDIAN_CSANDBOX_H
#define VIRIDIAN_CSANDBOX_H

/* Starts `path` with `argv` (NULL-terminated) and the current environment in a new process whose
 * descriptors 3, 4, ... are fds[0..nfds) and which holds no other descriptor above 2. The child
 * gets SIGTERM when the calling *thread* ends, so call this from a thread that lives as long as
 * the supervisor. Returns the pid and sets *pidfd (a
 * pidfd, close-on-exec, pollable for the child's exit), or -1 with errno. */
int viridian_spawn_worker(const char *path, char *const argv[], const int *fds, int nfds, int *pidfd);

/* Sets PR_SET_NO_NEW_PRIVS. 0 or -1 with errno. */
int viridian_no_new_privs(void);

/* Drops every capability: the bounding set, then the effective, permitted and inheritable sets.
 * 0 or -1 with errno. */
int viridian_drop_capabilities(void);

/* The effective capability set's low 64 bits (0 when the process holds none). */
unsigned long long viridian_effective_capabilities(void);

/* Installs a seccomp filter: the `nallowed` named system calls are allowed, the `nkilled` named
 * ones kill the process, every other returns `default_errno`. kill and tgkill are allowed only
 * towards `own_pid`. Names unknown to this kernel are skipped. 0 or a negative errno. */
int viridian_seccomp_install(const char *const *allowed, int nallowed, const char *const *killed,
			     int nkilled, int default_errno, int own_pid);

/* TUNSETQUEUE: attaches (attach != 0) or detaches a multi-queue TAP's queue descriptor. */
int viridian_tap_queue_attach(int fd, int attach);

/* Exit status helpers for waitid results: how a child ended, for messages. */
int viridian_reap(int pid, int *code, int *signal_number);

#endif
