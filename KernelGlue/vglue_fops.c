// SPDX-License-Identifier: GPL-2.0
/* The character device: open/release, join/leave, ioctls, shared-region mmap. */

#include <linux/eventfd.h>
#include <linux/fs.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/nospec.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "compat.h"
#include "vglue.h"

/* Whether the host has written a header we understand. */
bool vglue_header_valid(struct vglue_dev *dev)
{
	return le64_to_cpu((__force __le64)READ_ONCE(dev->shm->magic)) == VGLUE_SHM_MAGIC &&
	       vglue_get32(&dev->shm->abi_version) == VGLUE_ABI_VERSION;
}

/* Rings the host's control vector; dev->lock held, device present. */
static int vglue_ring_host_control(struct vglue_dev *dev)
{
	u32 peer = vglue_get32(&dev->shm->host_peer);

	if (peer > 0xffff)
		return -EIO;
	/* iowrite32() orders the header writes before it. */
	iowrite32(peer << 16 | VGLUE_VECTOR_CONTROL, dev->regs + VGLUE_REG_DOORBELL);
	return 0;
}

static bool vglue_host_released(struct vglue_dev *dev, u32 generation)
{
	return vglue_get32(&dev->shm->host_released) == generation;
}

/*
 * Leaves the host: dev->lock held, device present. vf->joined stays true if
 * the host did not acknowledge within the timeout, and then the opener's
 * pages must not be freed: the host may still write into them.
 */
void vglue_leave(struct vglue_dev *dev, struct vglue_file *vf)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(VGLUE_LEAVE_TIMEOUT_MS);

	if (vf->joined) {
		vglue_set32(&dev->shm->guest_state, VGLUE_GUEST_LEAVING);
		vglue_ring_host_control(dev);
		/* Woken by the control vector; polled too, in case it never comes. */
		while (!vglue_host_released(dev, vf->generation) &&
		       time_before(jiffies, deadline))
			wait_event_timeout(dev->control_wq,
					   vglue_host_released(dev, vf->generation),
					   msecs_to_jiffies(20));
		if (vglue_host_released(dev, vf->generation))
			vf->joined = false;
	}
	vglue_set32(&dev->shm->guest_state, VGLUE_GUEST_ABSENT);
}

static long vglue_join(struct vglue_file *vf)
{
	struct vglue_dev *dev = vf->dev;
	u32 generation;
	long ret;

	mutex_lock(&dev->lock);
	ret = -ENODEV;
	if (dev->gone)
		goto out;
	ret = -EAGAIN;
	if (!vglue_header_valid(dev))
		goto out;

	/* 0 is what host_released holds before any leave: never use it. */
	generation = vglue_get32(&dev->shm->guest_generation) + 1;
	if (!generation)
		generation = 1;
	vglue_set32(&dev->shm->guest_generation, generation);
	/* The host must see the new generation no later than READY. */
	virt_wmb();
	vglue_set32(&dev->shm->guest_state, VGLUE_GUEST_READY);
	vf->generation = generation;
	vf->joined = true;
	ret = vglue_ring_host_control(dev);
out:
	mutex_unlock(&dev->lock);
	return ret;
}

static long vglue_info(struct vglue_dev *dev, void __user *arg)
{
	struct vglue_info info = {
		.abi_version = VGLUE_ABI_VERSION,
		.vectors = dev->nvec,
		.shared_size = dev->shm_size,
	};
	bool gone;

	mutex_lock(&dev->lock);
	gone = dev->gone;
	if (!gone)
		info.peer_id = ioread32(dev->regs + VGLUE_REG_IVPOSITION);
	mutex_unlock(&dev->lock);
	if (gone)
		return -ENODEV;
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long vglue_ring(struct vglue_dev *dev, void __user *arg)
{
	struct vglue_ring req;
	long ret = 0;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.peer > 0xffff || req.vector >= VGLUE_MAX_VECTORS)
		return -EINVAL;

	mutex_lock(&dev->lock);
	if (dev->gone)
		ret = -ENODEV;
	else
		iowrite32(req.peer << 16 | req.vector, dev->regs + VGLUE_REG_DOORBELL);
	mutex_unlock(&dev->lock);
	return ret;
}

static struct eventfd_ctx *vglue_swap_eventfd(struct vglue_dev *dev, unsigned int vector,
					      struct eventfd_ctx *ctx)
{
	struct eventfd_ctx *old;

	spin_lock_irq(&dev->eventfd_lock);
	old = dev->eventfds[vector];
	dev->eventfds[vector] = ctx;
	spin_unlock_irq(&dev->eventfd_lock);
	return old;
}

static long vglue_set_eventfd(struct vglue_dev *dev, void __user *arg)
{
	struct eventfd_ctx *ctx = NULL;
	struct vglue_eventfd req;
	unsigned int vector;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.vector >= dev->nvec)
		return -EINVAL;
	vector = array_index_nospec(req.vector, dev->nvec);

	if (req.fd >= 0) {
		ctx = eventfd_ctx_fdget(req.fd);
		if (IS_ERR(ctx))
			return PTR_ERR(ctx);
	}
	ctx = vglue_swap_eventfd(dev, vector, ctx);
	if (ctx)
		eventfd_ctx_put(ctx);
	return 0;
}

static long vglue_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct vglue_file *vf = file->private_data;
	void __user *argp = (void __user *)arg;

	switch (cmd) {
	case VGLUE_IOC_INFO:
		return vglue_info(vf->dev, argp);
	case VGLUE_IOC_SET_EVENTFD:
		return vglue_set_eventfd(vf->dev, argp);
	case VGLUE_IOC_RING:
		return vglue_ring(vf->dev, argp);
	case VGLUE_IOC_ALLOC:
		return vglue_buf_alloc(vf, argp);
	case VGLUE_IOC_PFNS:
		return vglue_buf_pfns(vf, argp);
	case VGLUE_IOC_JOIN:
		return vglue_join(vf);
	}
	return -ENOTTY;
}

/*
 * The shared region is inserted page by page at fault time rather than all at
 * mmap time, so that unbind can revoke it without racing a half-done mmap:
 * once ->gone is set (under dev->lock, which every fault takes), no fault can
 * insert a page any more, and the ones already inserted are zapped.
 */
static vm_fault_t vglue_shm_fault(struct vm_fault *vmf)
{
	struct vglue_file *vf = vmf->vma->vm_file->private_data;
	struct vglue_dev *dev = vf->dev;
	vm_fault_t ret = VM_FAULT_SIGBUS;

	mutex_lock(&dev->lock);
	if (!dev->gone && vmf->pgoff < dev->shm_size >> PAGE_SHIFT)
		ret = vmf_insert_pfn(vmf->vma, vmf->address,
				     (dev->shm_phys >> PAGE_SHIFT) + vmf->pgoff);
	mutex_unlock(&dev->lock);
	return ret;
}

static const struct vm_operations_struct vglue_shm_vm_ops = {
	.fault = vglue_shm_fault,
};

static int vglue_shm_mmap(struct vglue_file *vf, struct vm_area_struct *vma)
{
	struct vglue_dev *dev = vf->dev;
	bool gone;

	if (vma_pages(vma) > dev->shm_size >> PAGE_SHIFT)
		return -EINVAL;
	mutex_lock(&dev->lock);
	gone = dev->gone;
	mutex_unlock(&dev->lock);
	if (gone)
		return -ENODEV;
	/*
	 * vm_page_prot stays the default (cacheable) protection: the PAT
	 * memtype of each inserted pfn comes from the kernel's write-back
	 * mapping of BAR2 (see vglue_map_bars()), so user space and the
	 * kernel see the region with the same caching, the one that suits
	 * host RAM.
	 */
	vglue_vm_flags_set(vma, VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
	vma->vm_ops = &vglue_shm_vm_ops;
	return 0;
}

static int vglue_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct vglue_file *vf = file->private_data;

	/* A private mapping would copy on write: it would not be shared. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_pgoff == 0)
		return vglue_shm_mmap(vf, vma);
	if (vma->vm_pgoff >= VGLUE_BUF_BASE >> PAGE_SHIFT)
		return vglue_buf_mmap(vf, vma);
	return -EINVAL;
}

static int vglue_open(struct inode *inode, struct file *file)
{
	struct vglue_dev *dev = container_of(file->private_data, struct vglue_dev, misc);
	struct vglue_file *vf;
	int ret = 0;

	vf = kzalloc(sizeof(*vf), GFP_KERNEL);
	if (!vf)
		return -ENOMEM;
	vf->dev = dev;
	vf->mapping = file->f_mapping;
	mutex_init(&vf->buf_lock);
	INIT_LIST_HEAD(&vf->buffers);

	/* misc_open() runs under misc_deregister()'s lock: dev is not gone. */
	mutex_lock(&dev->lock);
	if (dev->opener) {
		ret = -EBUSY;
	} else if (!vglue_header_valid(dev)) {
		dev_warn_ratelimited(&dev->pdev->dev,
				     "%s: the host has not written the shared header (magic %#llx, abi %u): is viridian-host attached?\n",
				     dev->name,
				     le64_to_cpu((__force __le64)READ_ONCE(dev->shm->magic)),
				     vglue_get32(&dev->shm->abi_version));
		ret = -EAGAIN;
	} else {
		dev->opener = vf;
		kref_get(&dev->ref);
	}
	mutex_unlock(&dev->lock);

	if (ret) {
		kfree(vf);
		return ret;
	}
	file->private_data = vf;
	return nonseekable_open(inode, file);
}

static int vglue_release(struct inode *inode, struct file *file)
{
	struct vglue_file *vf = file->private_data;
	struct vglue_dev *dev = vf->dev;
	unsigned long leaked;
	unsigned int i;

	for (i = 0; i < VGLUE_MAX_VECTORS; i++) {
		struct eventfd_ctx *ctx = vglue_swap_eventfd(dev, i, NULL);

		if (ctx)
			eventfd_ctx_put(ctx);
	}

	mutex_lock(&dev->lock);
	if (!dev->gone)		/* else vglue_remove() has left already */
		vglue_leave(dev, vf);
	dev->opener = NULL;
	mutex_unlock(&dev->lock);

	leaked = vglue_buf_free_all(vf, vf->joined);
	if (leaked)
		dev_warn(&dev->pdev->dev,
			 "%s: the host did not release generation %u: leaking %lu pages it may still write to\n",
			 dev->name, vf->generation, leaked);
	kfree(vf);
	vglue_dev_put(dev);
	return 0;
}

const struct file_operations vglue_fops = {
	.owner = THIS_MODULE,
	.open = vglue_open,
	.release = vglue_release,
	.unlocked_ioctl = vglue_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = vglue_mmap,
};
