/* SPDX-License-Identifier: GPL-2.0 */
/* The state and helpers shared by the viridian_glue source files. */
#ifndef VGLUE_H
#define VGLUE_H

#include <linux/bits.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/spinlock.h>
#include <linux/wait.h>

#include "include/uapi/viridian_glue.h"

/* ivshmem BAR0 registers (the mask and status registers only matter for INTx). */
#define VGLUE_REG_IVPOSITION	0x08
#define VGLUE_REG_DOORBELL	0x0c
#define VGLUE_REGS_MIN		0x10

/* mmap offsets: 0 is the shared region, buffers live from VGLUE_BUF_BASE up. */
#define VGLUE_BUF_BASE		BIT_ULL(32)
#define VGLUE_BUF_LIMIT		(256ULL << 20)	/* bytes of buffers per open */

/* How long release waits for the host to acknowledge a leave. */
#define VGLUE_LEAVE_TIMEOUT_MS	5000

struct vglue_dev;
struct vglue_file;

/* The dev_id of one MSI-X vector's interrupt handler. */
struct vglue_vector {
	struct vglue_dev *dev;
	unsigned int index;
};

/* One bound ivshmem-doorbell function. */
struct vglue_dev {
	struct kref ref;		/* one for the binding, one per open file */
	struct pci_dev *pdev;		/* holds a reference */
	void __iomem *regs;		/* BAR0 */
	struct vglue_shared_header *shm;	/* BAR2, mapped write-back */
	phys_addr_t shm_phys;
	resource_size_t shm_size;
	unsigned int nvec;		/* MSI-X vectors with a handler */
	int index;			/* from vglue_ida */
	char name[32];			/* viridian-glueN */
	struct miscdevice misc;

	struct mutex lock;		/* opener, gone, header writes, BAR access */
	struct vglue_file *opener;	/* the one open file, or NULL */
	bool gone;			/* unbound: BARs unmapped, irqs freed */

	wait_queue_head_t control_wq;	/* woken by the control vector */
	spinlock_t eventfd_lock;	/* eventfds[]; taken in hard irq context */
	struct eventfd_ctx *eventfds[VGLUE_MAX_VECTORS];
	struct vglue_vector vectors[VGLUE_MAX_VECTORS];
};

/* One open of the device (there is at most one at a time). */
struct vglue_file {
	struct vglue_dev *dev;
	struct address_space *mapping;	/* revoked at unbind */
	bool joined;			/* joined, and the host has not released it */
	u32 generation;			/* the generation this opener joined with */

	struct mutex buf_lock;		/* buffers, allocated */
	struct list_head buffers;	/* append-only until release */
	u64 allocated;			/* bytes of buffers so far */
};

/* The shared header is little-endian and written by another party. */
static inline u32 vglue_get32(const __u32 *field)
{
	return le32_to_cpu((__force __le32)READ_ONCE(*field));
}

static inline void vglue_set32(__u32 *field, u32 val)
{
	WRITE_ONCE(*field, (__force __u32)cpu_to_le32(val));
}

extern const struct file_operations vglue_fops;

/* vglue_pci.c */
void vglue_dev_put(struct vglue_dev *dev);

/* vglue_fops.c */
bool vglue_header_valid(struct vglue_dev *dev);
void vglue_leave(struct vglue_dev *dev, struct vglue_file *vf);

/* vglue_buffers.c */
long vglue_buf_alloc(struct vglue_file *vf, void __user *arg);
long vglue_buf_pfns(struct vglue_file *vf, void __user *arg);
int vglue_buf_mmap(struct vglue_file *vf, struct vm_area_struct *vma);
unsigned long vglue_buf_free_all(struct vglue_file *vf, bool leak);

#endif /* VGLUE_H */
