/* CSystem: the few Linux calls and constants Swift's Glibc module does not expose. */
#ifndef VIRIDIAN_CSYSTEM_H
#define VIRIDIAN_CSYSTEM_H

#include <stddef.h>
#include <stdint.h>

/* Creates an anonymous, sealable memory file (memfd_create with MFD_CLOEXEC). */
int viridian_memfd_create(const char *name);

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
#endif
