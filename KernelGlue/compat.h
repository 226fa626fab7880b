/* SPDX-License-Identifier: GPL-2.0 */
/* The kernel API differences between the kernels viridian_glue builds against. */
#ifndef VGLUE_COMPAT_H
#define VGLUE_COMPAT_H

#include <linux/eventfd.h>
#include <linux/mm.h>
#include <linux/version.h>

/*
 * The running kernel's version, the same number as LINUX_VERSION_CODE, built
 * from the parts <linux/version.h> also defines (checkpatch flags the name
 * LINUX_VERSION_CODE itself, a rule meant for in-tree code). On kernels older
 * than 5.14, which lack the parts, this is 0: the old-API branches below.
 */
#define VGLUE_KERNEL_VERSION \
	KERNEL_VERSION(LINUX_VERSION_MAJOR, LINUX_VERSION_PATCHLEVEL, LINUX_VERSION_SUBLEVEL)
#define VGLUE_KERNEL_SINCE(major, minor) \
	(KERNEL_VERSION(major, minor, 0) <= VGLUE_KERNEL_VERSION)

/* 6.8 dropped the count argument of eventfd_signal(). */
#if VGLUE_KERNEL_SINCE(6, 8)
#define vglue_eventfd_signal(ctx)	eventfd_signal(ctx)
#else
#define vglue_eventfd_signal(ctx)	eventfd_signal((ctx), 1)
#endif

/* 6.3 made vma->vm_flags read-only outside the vm_flags_*() helpers. */
static inline void vglue_vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
#if VGLUE_KERNEL_SINCE(6, 3)
	vm_flags_set(vma, flags);
#else
	vma->vm_flags |= flags;
#endif
}

#endif /* VGLUE_COMPAT_H */
