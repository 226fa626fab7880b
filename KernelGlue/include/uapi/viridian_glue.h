/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * viridian_glue.h - the user-space ABI of the KernelGlue module.
 *
 * One character device per bound ivshmem-doorbell function (PCI 1af4:1110),
 * /dev/viridian-glueN. The agent opens it (one opener at a time), maps the
 * shared region at offset 0, registers an eventfd per MSI-X vector, rings the
 * host's doorbell vectors, and allocates pinned buffers whose guest-physical
 * page frame numbers it reads back. The shared region header below is written
 * by both the host (viridian-host) and the guest (module and agent).
 */
#ifndef _UAPI_VIRIDIAN_GLUE_H
#define _UAPI_VIRIDIAN_GLUE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define VGLUE_ABI_VERSION	1
#define VGLUE_PCI_VENDOR	0x1af4
#define VGLUE_PCI_DEVICE	0x1110

/* Vectors on each side. Vector 0 is the control vector (join, leave). */
#define VGLUE_MAX_VECTORS	32
#define VGLUE_VECTOR_CONTROL	0

/* Shared region (ivshmem BAR2): header at 0, VP register blocks from VGLUE_VP_BLOCKS. */
#define VGLUE_SHM_MAGIC		0x31554c4756524956ULL	/* "VIRVGLU1" little-endian */
#define VGLUE_VP_BLOCKS		0x1000
#define VGLUE_SIGNAL_SLOTS	16

/* guest_state values (written by the module). */
#define VGLUE_GUEST_ABSENT	0
#define VGLUE_GUEST_READY	1
#define VGLUE_GUEST_LEAVING	2

/* host_state values (written by the host). */
#define VGLUE_HOST_ABSENT	0
#define VGLUE_HOST_SERVING	1

/*
 * The header at offset 0 of the shared region. All fields are little-endian.
 * The host fills magic .. vectors and signal_slots before the guest can run.
 * The module owns guest_state and guest_generation; the host acknowledges a
 * join by copying guest_generation into host_joined and a leave by copying it
 * into host_released, then raises the guest's control vector.
 */
struct vglue_shared_header {
	__u64 magic;
	__u32 abi_version;
	__u32 vp_count;
	__u32 host_peer;	/* the host's ivshmem peer id */
	__u32 vectors;		/* vectors per peer */
	__u32 host_state;
	__u32 guest_state;
	__u32 guest_generation;
	__u32 host_joined;
	__u32 host_released;
	__u32 reserved0;
	__u64 memory_bytes;	/* guest RAM the host maps */
	__u64 partition_id;
	char name[32];		/* partition name, NUL-padded */
	/* connection id per host signal vector (slot i = host vector 1 + vp_count + i), 0 = unused */
	__u32 signal_slots[VGLUE_SIGNAL_SLOTS];
};

/* VGLUE_IOC_INFO: what the device is. */
struct vglue_info {
	__u32 abi_version;
	__u32 vectors;		/* MSI-X vectors enabled */
	__u32 peer_id;		/* IVPosition: this guest's peer id */
	__u32 reserved;
	__u64 shared_size;	/* bytes of the shared region (mmap at offset 0) */
};

/* VGLUE_IOC_SET_EVENTFD: signal `fd` on every MSI-X interrupt of `vector`; fd < 0 clears. */
struct vglue_eventfd {
	__u32 vector;
	__s32 fd;
};

/* VGLUE_IOC_RING: write (peer << 16) | vector to the doorbell register. */
struct vglue_ring {
	__u32 peer;
	__u32 vector;
};

/*
 * VGLUE_IOC_ALLOC: allocate `size` bytes (a multiple of 4096) of zeroed pinned
 * pages; `offset` (out) is where to mmap them. Freed when the device is closed
 * and the host has released them.
 */
struct vglue_alloc {
	__u64 size;
	__u64 offset;
};

/*
 * VGLUE_IOC_PFNS: copy the guest page frame numbers (guest-physical address >> 12)
 * of pages [first, first + count) of the buffer mapped at `offset` to the __u64
 * array at user address `pfns`.
 */
struct vglue_pfns {
	__u64 offset;
	__u64 first;
	__u64 count;
	__u64 pfns;
};

#define VGLUE_IOC_MAGIC		0xB7
#define VGLUE_IOC_INFO		_IOR(VGLUE_IOC_MAGIC, 0, struct vglue_info)
#define VGLUE_IOC_SET_EVENTFD	_IOW(VGLUE_IOC_MAGIC, 1, struct vglue_eventfd)
#define VGLUE_IOC_RING		_IOW(VGLUE_IOC_MAGIC, 2, struct vglue_ring)
#define VGLUE_IOC_ALLOC		_IOWR(VGLUE_IOC_MAGIC, 3, struct vglue_alloc)
#define VGLUE_IOC_PFNS		_IOW(VGLUE_IOC_MAGIC, 4, struct vglue_pfns)
/* VGLUE_IOC_JOIN: bump guest_generation, set guest_state READY, ring the host's control vector. */
#define VGLUE_IOC_JOIN		_IO(VGLUE_IOC_MAGIC, 5)

#endif /* _UAPI_VIRIDIAN_GLUE_H */
