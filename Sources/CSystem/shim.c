/* CSystem shim: thin wrappers over Linux calls that need _GNU_SOURCE or macros. */
#define _GNU_SOURCE
#include "CSystem.h"
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int viridian_memfd_create(const char *name) {
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

int viridian_memfd_create_sealed(const char *name, int64_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)size) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int64_t viridian_fd_size(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (int64_t)st.st_size : -1;
}

int viridian_eventfd(int nonblocking) {
    return eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
}

void *viridian_mmap_fixed_shared(void *addr, size_t length, int fd, int64_t offset) {
    void *p = mmap(addr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, (off_t)offset);
    return p == MAP_FAILED ? NULL : p;
}

void *viridian_reserve(size_t length) {
    void *p = mmap(NULL, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void *viridian_mmap_shared(size_t length, int fd, int64_t offset) {
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
    return p == MAP_FAILED ? NULL : p;
}

#include <time.h>

uint64_t viridian_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t viridian_thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int viridian_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int viridian_epoll_add(int epfd, int fd, uint64_t tag) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

int viridian_epoll_remove(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

int viridian_epoll_wait(int epfd, uint64_t *tags, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        tags[i] = evs[i].data.u64;
        events[i] = ((evs[i].events & EPOLLIN) ? 1u : 0u) | ((evs[i].events & (EPOLLERR | EPOLLHUP)) ? 2u : 0u);
    }
    return n;
}

static long send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds, int flags) {
    if (nfds < 0 || nfds > 64) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char buf[CMSG_SPACE(64 * sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    long r;
    do { r = sendmsg(sock, &msg, MSG_NOSIGNAL | flags); } while (r < 0 && errno == EINTR);
    return r;
}

long viridian_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    return send_with_fds(sock, buf, len, fds, nfds, 0);
}

long viridian_send_with_fds_nowait(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    return send_with_fds(sock, buf, len, fds, nfds, MSG_DONTWAIT);
}

long viridian_recv_with_fds(int sock, void *buf, size_t cap, int *fds, int max_fds, int *nfds) {
    struct iovec iov = { .iov_base = buf, .iov_len = cap };
    union { char buf[CMSG_SPACE(64 * sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    *nfds = 0;
    long r;
    do { r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (r < 0 && errno == EINTR);
    if (r < 0) return r;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *received = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*nfds < max_fds) fds[(*nfds)++] = received[i];
            else close(received[i]);
        }
    }
    if (msg.msg_flags & MSG_TRUNC) { errno = EMSGSIZE; return -1; }
    return r;
}

int viridian_pin_thread(uint64_t mask) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < 64; i++) if (mask & (1ull << i)) CPU_SET(i, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static int signal_fd = -1;

static void on_signal(int sig) {
    (void)sig;
    uint64_t one = 1;
    int saved = errno;
    if (signal_fd >= 0) { ssize_t w = write(signal_fd, &one, sizeof one); (void)w; }
    errno = saved;
}

int viridian_route_signals_to(int eventfd) {
    signal_fd = eventfd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL) || sigaction(SIGHUP, &sa, NULL)) return -1;
    signal(SIGPIPE, SIG_IGN);
    /* A parent may have started us with these blocked; threads created later inherit this mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL) == 0 ? 0 : -1;
}

int viridian_accept(int fd) {
    int r;
    do { r = accept4(fd, NULL, NULL, SOCK_CLOEXEC); } while (r < 0 && errno == EINTR);
    return r;
}

int viridian_peer_pid(int fd) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? cred.pid : 0;
}

int viridian_peer_trusted(int fd) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return 0;
    return cred.uid == 0 || cred.uid == geteuid();
}

#include <fcntl.h>
#include <linux/falloc.h>

int viridian_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}

#include <sys/uio.h>

long viridian_pread_nowait(int fd, void *buffer, size_t length, int64_t offset) {
#ifdef RWF_NOWAIT
    struct iovec iov = { .iov_base = buffer, .iov_len = length };
    long r = preadv2(fd, &iov, 1, (off_t)offset, RWF_NOWAIT);
    if (r < 0 && (errno == EOPNOTSUPP || errno == EINVAL)) errno = EAGAIN;
    return r;
#else
    (void)fd; (void)buffer; (void)length; (void)offset;
    errno = EAGAIN;
    return -1;
#endif
}

#include <stdio.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>

#ifndef TUNSETCARRIER
#define TUNSETCARRIER _IOW('T', 226, int)
#endif

int viridian_tap_open(const char *name, int multi_queue, char *actual) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi_queue ? IFF_MULTI_QUEUE : 0);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (actual) memcpy(actual, ifr.ifr_name, IFNAMSIZ);
    return fd;
}

int viridian_tap_set_offload(int fd, unsigned flags) { return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags); }

int viridian_tap_set_carrier(int fd, int on) { return ioctl(fd, TUNSETCARRIER, &on); }

int viridian_netif_configure(const char *name, const uint8_t *mac, int mtu, int up) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    int rc = 0;
    if (mac) {
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
        ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
        memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
        if (ioctl(s, SIOCSIFHWADDR, &ifr) != 0) rc = -1;
    }
    if (rc == 0 && mtu > 0) {
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
        ifr.ifr_mtu = mtu;
        if (ioctl(s, SIOCSIFMTU, &ifr) != 0) rc = -1;
    }
    if (rc == 0 && up >= 0) {
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
        if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) rc = -1;
        else {
            if (up) ifr.ifr_flags |= IFF_UP; else ifr.ifr_flags &= ~IFF_UP;
            if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) rc = -1;
        }
    }
    int e = errno;
    close(s);
    errno = e;
    return rc;
}

int viridian_netif_query(const char *name, uint8_t *mac, int *mtu, unsigned *flags) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    int rc = 0;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFHWADDR, &ifr) == 0) memcpy(mac, ifr.ifr_hwaddr.sa_data, 6); else rc = -1;
    if (ioctl(s, SIOCGIFMTU, &ifr) == 0) *mtu = ifr.ifr_mtu; else rc = -1;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) *flags = (unsigned short)ifr.ifr_flags; else rc = -1;
    int e = errno;
    close(s);
    errno = e;
    return rc;
}

int viridian_netns_enter(const char *name) {
    char path[300];
    snprintf(path, sizeof path, "/run/netns/%s", name);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) return -1;
    int saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (saved < 0 || setns(target, CLONE_NEWNET) != 0) {
        int e = errno;
        close(target);
        if (saved >= 0) close(saved);
        errno = e;
        return -1;
    }
    close(target);
    return saved;
}

int viridian_netns_restore(int saved) {
    int rc = setns(saved, CLONE_NEWNET);
    close(saved);
    return rc;
}

long viridian_readv(int fd, const void *iov, int count) { return readv(fd, (const struct iovec *)iov, count); }
long viridian_writev(int fd, const void *iov, int count) { return writev(fd, (const struct iovec *)iov, count); }

int viridian_glue_ioctl(int fd, unsigned long request, void *arg) {
    int r;
    do { r = ioctl(fd, request, arg); } while (r < 0 && errno == EINTR);
    return r;
}

int viridian_open(const char *path, int flags, int mode) {
    int r;
    do { r = open(path, flags | O_CLOEXEC, (mode_t)mode); } while (r < 0 && errno == EINTR);
    return r;
}

#include <linux/fs.h>
#include <sys/syscall.h>

int viridian_fsfreeze(int fd, int freeze) {
    return ioctl(fd, freeze ? FIFREEZE : FITHAW, 0);
}

int viridian_rename_noreplace(int olddir, const char *oldname, int newdir, const char *newname) {
    return (int)syscall(SYS_renameat2, olddir, oldname, newdir, newname, RENAME_NOREPLACE);
}

int viridian_openat(int dir, const char *path, int flags, int mode) {
    int r;
    do { r = openat(dir, path, flags | O_CLOEXEC, (mode_t)mode); } while (r < 0 && errno == EINTR);
    return r;
}
