/* CSystem: the few Linux calls and constants Swift's Glibc module does not expose. */
#ifndef VIRIDIAN_CSYSTEM_H
#define VIRIDIAN_CSYSTEM_H

#include <stddef.h>
#include <stdint.h>

/* Creates an anonymous, sealable memory file (memfd_create with MFD_CLOEXEC). */
int viridian_memfd_create(const char *name);
/* A memfd of `size` bytes sealed against shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW |
   F_SEAL_SEAL): a peer it is sent to cannot truncate it under this process (which would turn the
   next access into SIGBUS). -1 with errno on failure. */
int viridian_memfd_create_sealed(const char *name, int64_t size);
/* The size of the file `fd` (fstat), or -1 with errno. */
int64_t viridian_fd_size(int fd);

/* Creates an eventfd with EFD_CLOEXEC (and EFD_NONBLOCK when nonblocking != 0). */
int viridian_eventfd(int nonblocking);

/* Maps `length` bytes of `fd` at `offset` over the fixed address `addr` (MAP_SHARED|MAP_FIXED). */
void *viridian_mmap_fixed_shared(void *addr, size_t length, int fd, int64_t offset);

/* Reserves `length` bytes of address space with no access. Returns NULL on failure. */
void *viridian_reserve(size_t length);

/* Maps `length` bytes of `fd` from `offset`, shared, read-write. Returns NULL on failure. */
void *viridian_mmap_shared(size_t length, int fd, int64_t offset);



/* Monotonic clock in nanoseconds. */
uint64_t viridian_now_ns(void);

/* Thread CPU time of the calling thread, in nanoseconds. */
uint64_t viridian_thread_cpu_ns(void);

/* epoll: create, add/modify/remove a descriptor with a 64-bit tag, wait for up to `max` events. */
int viridian_epoll_create(void);
int viridian_epoll_add(int epfd, int fd, uint64_t tag);
int viridian_epoll_remove(int epfd, int fd);
/* Fills tags[] and events[] (EPOLLIN=1, EPOLLERR/HUP=2 bits); returns the count or -1. */
int viridian_epoll_wait(int epfd, uint64_t *tags, uint32_t *events, int max, int timeout_ms);

/* Sends one datagram/seqpacket with up to 64 descriptors (SCM_RIGHTS). Returns bytes or -1. */
long viridian_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/* The same with MSG_DONTWAIT: -1 with EAGAIN instead of blocking when the peer's queue is full. */
long viridian_send_with_fds_nowait(int sock, const void *buf, size_t len, const int *fds, int nfds);
/* Receives one message and up to `max_fds` descriptors (set *nfds). Returns bytes, 0 at EOF, -1 on error.
   Descriptors beyond max_fds are closed. MSG_CMSG_CLOEXEC is set. */
long viridian_recv_with_fds(int sock, void *buf, size_t cap, int *fds, int max_fds, int *nfds);

/* Pins the calling thread to the CPUs in `mask` (bit n = CPU n). */
int viridian_pin_thread(uint64_t mask);

/* Makes SIGTERM, SIGINT (and SIGHUP) write 1 to `eventfd`; SIGPIPE is ignored. */
int viridian_route_signals_to(int eventfd);


/* accept4 with SOCK_CLOEXEC. */
int viridian_accept(int fd);

/* The pid of a Unix socket's peer (SO_PEERCRED), or 0. */
int viridian_peer_pid(int fd);
/* 1 if a Unix socket's peer runs as root or as this process's effective user (SO_PEERCRED), else 0. */
int viridian_peer_trusted(int fd);


/* Punches a hole (FALLOC_FL_PUNCH_HOLE | KEEP_SIZE). Returns 0 or -1. */
int viridian_punch_hole(int fd, int64_t offset, int64_t length);


/* preadv2 with RWF_NOWAIT: reads only what the page cache already holds. Returns bytes read,
   or -1 with errno EAGAIN when the read would block (or the kernel lacks RWF_NOWAIT). */
long viridian_pread_nowait(int fd, void *buffer, size_t length, int64_t offset);

/* TAP devices. Opens (creating if missing) TAP `name` with IFF_NO_PI | IFF_VNET_HDR (10-byte
   virtio_net_hdr before every frame), IFF_MULTI_QUEUE if `multi_queue`. The kernel's name is
   written to `actual` (16 bytes). Returns the descriptor (non-blocking, close-on-exec) or -1. */
int viridian_tap_open(const char *name, int multi_queue, char *actual);
/* TUNSETOFFLOAD: which offloads (TUN_F_CSUM 1, TSO4 2, TSO6 4, TSO_ECN 8, UFO 16) the reader accepts. */
int viridian_tap_set_offload(int fd, unsigned flags);
/* TUNSETCARRIER: the TAP's carrier on or off. */
int viridian_tap_set_carrier(int fd, int on);
/* Sets an interface's MAC (6 bytes, NULL keeps it), MTU (0 keeps it) and IFF_UP (-1 keeps it). */
int viridian_netif_configure(const char *name, const uint8_t *mac, int mtu, int up);
/* Reads an interface's MAC (6 bytes), MTU and flags (IFF_UP 0x1, IFF_RUNNING 0x40, IFF_LOWER_UP 0x10000). */
int viridian_netif_query(const char *name, uint8_t *mac, int *mtu, unsigned *flags);
/* Moves the calling thread into network namespace `name` (/run/netns/NAME, as `ip netns` makes
   them). Returns a descriptor of the previous namespace for viridian_netns_restore, or -1. */
int viridian_netns_enter(const char *name);
/* Returns the calling thread to the namespace `saved` (closing it). */
int viridian_netns_restore(int saved);
/* readv / writev on a descriptor; -1 with errno on failure. */
long viridian_readv(int fd, const void *iov, int count);
long viridian_writev(int fd, const void *iov, int count);

/* KernelGlue: the module's ABI (shared with KernelGlue/), and ioctl on its device. Returns the
   ioctl's result, -1 with errno on failure (EINTR is retried). */
#include "viridian_glue.h"
int viridian_glue_ioctl(int fd, unsigned long request, void *arg);
/* The request numbers (function-like macros do not reach Swift). */
/* Descriptor words shared with another process (emulated DMA devices and their drivers):
 * a release store publishes what was written before it, an acquire load sees it. */
static inline void viridian_store_release_u32(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE); }
static inline uint32_t viridian_load_acquire_u32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }

static inline unsigned long viridian_glue_ioc_info(void) { return VGLUE_IOC_INFO; }
static inline unsigned long viridian_glue_ioc_set_eventfd(void) { return VGLUE_IOC_SET_EVENTFD; }
static inline unsigned long viridian_glue_ioc_ring(void) { return VGLUE_IOC_RING; }
static inline unsigned long viridian_glue_ioc_alloc(void) { return VGLUE_IOC_ALLOC; }
static inline unsigned long viridian_glue_ioc_pfns(void) { return VGLUE_IOC_PFNS; }
static inline unsigned long viridian_glue_ioc_join(void) { return VGLUE_IOC_JOIN; }

/* open(2) with O_CLOEXEC; -1 with errno. */
int viridian_open(const char *path, int flags, int mode);

/* FIFREEZE (freeze != 0) or FITHAW on the file system of the open directory fd; -1 with errno. */
int viridian_fsfreeze(int fd, int freeze);

/* renameat2(RENAME_NOREPLACE): fails with EEXIST rather than replace; -1 with errno. */
int viridian_rename_noreplace(int olddir, const char *oldname, int newdir, const char *newname);

/* openat(2) with O_CLOEXEC; -1 with errno. */
int viridian_openat(int dir, const char *path, int flags, int mode);

#endif
