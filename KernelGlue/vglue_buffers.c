// SPDX-License-Identifier: GPL-2.0
/* The per-open pinned buffers: allocate, report their pfns, mmap, free. */

#include <linux/build_bug.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/nospec.h>
#include <linux/overflow.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "compat.h"
#include "vglue.h"

/* The ABI speaks of 4 KiB pages: a pfn is a guest-physical address >> 12. */
static_assert(PAGE_SHIFT == 12);

/*
 * A buffer: pages that need not be contiguous, at [offset, offset + size) of
 * the mmap offset space. Once on vf->buffers a buffer never changes and lives
 * until release, so it may be used after vf->buf_lock is dropped.
 */
struct vglue_buffer {
	struct list_head node;
	u64 offset;
	unsigned long npages;
	struct page *pages[];
};

static void vglue_buf_free_pages(struct vglue_buffer *buf, unsigned long count)
{
	while (count--)
		__free_page(buf->pages[count]);
}

long vglue_buf_alloc(struct vglue_file *vf, void __user *arg)
{
	struct vglue_buffer *buf;
	struct vglue_alloc req;
	unsigned long i;
	long ret = 0;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (!req.size || (req.size & ~PAGE_MASK) || req.size > VGLUE_BUF_LIMIT)
		return -EINVAL;

	mutex_lock(&vf->buf_lock);
	if (req.size > VGLUE_BUF_LIMIT - vf->allocated) {
		ret = -ENOMEM;
		goto out;
	}
	buf = kvzalloc(struct_size(buf, pages, req.size >> PAGE_SHIFT), GFP_KERNEL_ACCOUNT);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	buf->npages = req.size >> PAGE_SHIFT;
	for (i = 0; i < buf->npages; i++) {
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		buf->pages[i] = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);
		if (!buf->pages[i]) {
			ret = -ENOMEM;
			break;
		}
		cond_resched();
	}
	if (ret) {
		vglue_buf_free_pages(buf, i);
		kvfree(buf);
		goto out;
	}
	buf->offset = VGLUE_BUF_BASE + vf->allocated;
	vf->allocated += req.size;
	list_add_tail(&buf->node, &vf->buffers);
	req.offset = buf->offset;
out:
	mutex_unlock(&vf->buf_lock);
	if (!ret && copy_to_user(arg, &req, sizeof(req)))
		ret = -EFAULT;	/* the buffer stays until release */
	return ret;
}

/* The buffer holding mmap offset `offset`, or NULL. */
static struct vglue_buffer *vglue_buf_find(struct vglue_file *vf, u64 offset)
{
	struct vglue_buffer *buf, *found = NULL;

	mutex_lock(&vf->buf_lock);
	list_for_each_entry(buf, &vf->buffers, node) {
		if (offset >= buf->offset &&
		    offset - buf->offset < (u64)buf->npages << PAGE_SHIFT) {
			found = buf;
			break;
		}
	}
	mutex_unlock(&vf->buf_lock);
	return found;
}

long vglue_buf_pfns(struct vglue_file *vf, void __user *arg)
{
	struct vglue_buffer *buf;
	struct vglue_pfns req;
	u64 __user *out;
	u64 i;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	buf = vglue_buf_find(vf, req.offset);
	if (!buf || buf->offset != req.offset)
		return -EINVAL;
	if (req.first > buf->npages || req.count > buf->npages - req.first)
		return -EINVAL;

	out = u64_to_user_ptr(req.pfns);
	for (i = 0; i < req.count; i++) {
		unsigned long page = array_index_nospec(req.first + i, buf->npages);

		if (put_user((u64)page_to_pfn(buf->pages[page]), out + i))
			return -EFAULT;
	}
	return 0;
}

/* Maps the whole buffer at vma->vm_pgoff, or a page-aligned part of it. */
int vglue_buf_mmap(struct vglue_file *vf, struct vm_area_struct *vma)
{
	u64 offset = (u64)vma->vm_pgoff << PAGE_SHIFT;
	unsigned long first, count = vma_pages(vma);
	struct vglue_buffer *buf;

	buf = vglue_buf_find(vf, offset);
	if (!buf)
		return -EINVAL;
	first = (offset - buf->offset) >> PAGE_SHIFT;
	if (count > buf->npages - first)
		return -EINVAL;

	/* Ordinary RAM pages: vm_page_prot stays the default, cacheable one. */
	vglue_vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
	return vm_insert_pages(vma, vma->vm_start, buf->pages + first, &count);
}

/* Frees every buffer; with `leak`, keeps their pages and returns how many. */
unsigned long vglue_buf_free_all(struct vglue_file *vf, bool leak)
{
	struct vglue_buffer *buf, *next;
	unsigned long leaked = 0;

	list_for_each_entry_safe(buf, next, &vf->buffers, node) {
		if (leak)
			leaked += buf->npages;
		else
			vglue_buf_free_pages(buf, buf->npages);
		list_del(&buf->node);
		kvfree(buf);
	}
	return leaked;
}
