// SPDX-License-Identifier: Apache-2.0
/* A partition worker's start and confinement. */
#define _GNU_SOURCE
#include "CSandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/if_tun.h>
#include <linux/sched.h>
#include <net/if.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int viridian_spawn_worker(const char *path, char *const argv[], const int *fds, int nfds, int *pidfd)
{
	struct clone_args args;
	int pfd = -1;
	long pid;

	if (nfds < 0 || nfds > 16) {
		errno = EINVAL;
		return -1;
	}
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_PIDFD;
	args.pidfd = (uint64_t)(uintptr_t)&pfd;
	args.exit_signal = SIGCHLD;
	pid = syscall(SYS_clone3, &args, sizeof(args));
	if (pid < 0)
		return -1;
	if (pid == 0) {
		/* The child: only async-signal-safe calls until execve. Move the descriptors out of
		 * the way first (one may already sit on a target number), then into 3, 4, ... */
		int high[16];
		int i;

		prctl(PR_SET_PDEATHSIG, SIGTERM);
		for (i = 0; i < nfds; i++) {
			high[i] = fcntl(fds[i], F_DUPFD, 64);
			if (high[i] < 0)
				_exit(127);
		}
		for (i = 0; i < nfds; i++) {
			if (dup2(high[i], 3 + i) < 0)
				_exit(127);
		}
		syscall(SYS_close_range, 3 + nfds, ~0U, 0);
		execve(path, argv, environ);
		_exit(127);
	}
	*pidfd = pfd;
	return (int)pid;
}

int viridian_no_new_privs(void)
{
	return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

int viridian_drop_capabilities(void)
{
	struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	int cap;

	for (cap = 0; cap <= 63; cap++) {
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL && errno != EPERM)
			return -1;
	}
	memset(data, 0, sizeof(data));
	return (int)syscall(SYS_capset, &header, data);
}

unsigned long long viridian_effective_capabilities(void)
{
	struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];

	memset(data, 0, sizeof(data));
	if (syscall(SYS_capget, &header, data) < 0)
		return ~0ULL;
	return (unsigned long long)data[0].effective | (unsigned long long)data[1].effective << 32;
}

int viridian_seccomp_install(const char *const *allowed, int nallowed, const char *const *killed,
			     int nkilled, int default_errno, int own_pid)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO((uint32_t)default_errno));
	struct scmp_arg_cmp own = { 0, SCMP_CMP_EQ, (scmp_datum_t)own_pid, 0 };
	struct scmp_arg_cmp thread = { 0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD };
	int rc = 0;
	int i;

	if (!ctx)
		return -ENOMEM;
	/* A binary tree over the syscall numbers instead of a linear list: every system call of the
	 * data path passes the filter, so its cost is paid per read, write and ioctl. */
	seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
	for (i = 0; i < nallowed && rc == 0; i++) {
		int nr = seccomp_syscall_resolve_name(allowed[i]);

		if (nr != __NR_SCMP_ERROR)
			rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, NULL);
	}
	for (i = 0; i < nkilled && rc == 0; i++) {
		int nr = seccomp_syscall_resolve_name(killed[i]);

		if (nr != __NR_SCMP_ERROR)
			rc = seccomp_rule_add_array(ctx, SCMP_ACT_KILL_PROCESS, nr, 0, NULL);
	}
	/* Signals only to this process: its own threads (tgkill) or itself (kill). */
	if (rc == 0)
		rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1, &own);
	if (rc == 0)
		rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, SCMP_SYS(kill), 1, &own);
	/* New threads, never new processes: clone only with CLONE_THREAD; clone3's flags sit behind
	 * a pointer the filter cannot read, so it reports ENOSYS and the C library falls back to clone. */
	if (rc == 0)
		rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1, &thread);
	if (rc == 0)
		rc = seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0, NULL);
	if (rc == 0)
		rc = seccomp_load(ctx);
	seccomp_release(ctx);
	return rc;
}

int viridian_tap_queue_attach(int fd, int attach)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = attach ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
	return ioctl(fd, TUNSETQUEUE, &ifr);
}

int viridian_reap(int pid, int *code, int *signal_number)
{
	int status = 0;
	int rc;

	do {
		rc = waitpid(pid, &status, WNOHANG);
	} while (rc < 0 && errno == EINTR);
	if (rc <= 0)
		return rc;
	*code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	*signal_number = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
	return rc;
}
