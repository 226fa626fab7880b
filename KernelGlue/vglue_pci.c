// SPDX-License-Identifier: GPL-2.0
/* Binds ivshmem-doorbell functions: BARs, MSI-X vectors, the misc device. */

#include <linux/eventfd.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "compat.h"
#include "vglue.h"

static DEFINE_IDA(vglue_ida);

static void vglue_dev_free(struct kref *ref)
{
	struct vglue_dev *dev = container_of(ref, struct vglue_dev, ref);

	pci_dev_put(dev->pdev);
	kfree(dev);
}

void vglue_dev_put(struct vglue_dev *dev)
{
	kref_put(&dev->ref, vglue_dev_free);
}

static irqreturn_t vglue_irq(int irq, void *data)
{
	struct vglue_vector *vec = data;
	struct vglue_dev *dev = vec->dev;
	struct eventfd_ctx *ctx;

	if (vec->index == VGLUE_VECTOR_CONTROL)
		wake_up(&dev->control_wq);

	spin_lock(&dev->eventfd_lock);
	ctx = dev->eventfds[vec->index];
	if (ctx)
		vglue_eventfd_signal(ctx);
	spin_unlock(&dev->eventfd_lock);
	return IRQ_HANDLED;
}

static void vglue_free_irqs(struct vglue_dev *dev, unsigned int count)
{
	while (count--)
		pci_free_irq(dev->pdev, count, &dev->vectors[count]);
}

static int vglue_setup_irqs(struct vglue_dev *dev)
{
	struct pci_dev *pdev = dev->pdev;
	unsigned int i, count;
	int ret;

	/* ivshmem-plain has the same id but no MSI-X: it is not ours. */
	ret = pci_msix_vec_count(pdev);
	if (ret <= 0)
		return -ENODEV;

	ret = pci_alloc_irq_vectors(pdev, 1, min(ret, VGLUE_MAX_VECTORS), PCI_IRQ_MSIX);
	if (ret < 0)
		return ret;
	count = ret;

	for (i = 0; i < count; i++) {
		int err;

		dev->vectors[i].dev = dev;
		dev->vectors[i].index = i;
		err = pci_request_irq(pdev, i, vglue_irq, NULL, &dev->vectors[i],
				      "%s-%u", dev->name, i);
		if (err) {
			vglue_free_irqs(dev, i);
			pci_free_irq_vectors(pdev);
			return err;
		}
	}
	dev->nvec = count;
	return 0;
}

static int vglue_map_bars(struct vglue_dev *dev)
{
	struct pci_dev *pdev = dev->pdev;

	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < VGLUE_REGS_MIN ||
	    !(pci_resource_flags(pdev, 2) & IORESOURCE_MEM))
		return -ENODEV;

	dev->shm_phys = pci_resource_start(pdev, 2);
	dev->shm_size = pci_resource_len(pdev, 2);
	if (dev->shm_size < PAGE_SIZE || (dev->shm_size & ~PAGE_MASK) ||
	    (dev->shm_phys & ~PAGE_MASK))
		return -ENODEV;

	dev->regs = pci_iomap(pdev, 0, 0);
	if (!dev->regs)
		return -ENOMEM;

	/*
	 * BAR2 is not device memory: QEMU backs it with the host's RAM (a
	 * memory backend the host process maps too), so reads and writes have
	 * no side effects and cacheable access is coherent with the host. Map
	 * it write-back. The whole BAR is mapped (not only the header page) so
	 * that the PAT memtype of the range is reserved as write-back: user
	 * mappings inserted at fault time inherit it, and the kernel and user
	 * views can never conflict.
	 */
	dev->shm = memremap(dev->shm_phys, dev->shm_size, MEMREMAP_WB);
	if (!dev->shm) {
		pci_iounmap(pdev, dev->regs);
		return -ENOMEM;
	}
	return 0;
}

static void vglue_unmap_bars(struct vglue_dev *dev)
{
	memunmap(dev->shm);
	pci_iounmap(dev->pdev, dev->regs);
}

static int vglue_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vglue_dev *dev;
	int ret;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	kref_init(&dev->ref);
	mutex_init(&dev->lock);
	spin_lock_init(&dev->eventfd_lock);
	init_waitqueue_head(&dev->control_wq);
	dev->pdev = pci_dev_get(pdev);

	ret = pci_enable_device(pdev);
	if (ret)
		goto err_put;
	ret = pci_request_regions(pdev, KBUILD_MODNAME);
	if (ret)
		goto err_disable;
	/* MSI-X messages are memory writes by the function: it must be a bus master. */
	pci_set_master(pdev);

	ret = vglue_map_bars(dev);
	if (ret)
		goto err_regions;

	ret = ida_alloc(&vglue_ida, GFP_KERNEL);
	if (ret < 0)
		goto err_unmap;
	dev->index = ret;
	snprintf(dev->name, sizeof(dev->name), "viridian-glue%d", dev->index);

	ret = vglue_setup_irqs(dev);
	if (ret)
		goto err_ida;

	pci_set_drvdata(pdev, dev);
	dev->misc.minor = MISC_DYNAMIC_MINOR;
	dev->misc.name = dev->name;
	dev->misc.fops = &vglue_fops;
	dev->misc.parent = &pdev->dev;
	dev->misc.mode = 0600;
	ret = misc_register(&dev->misc);
	if (ret)
		goto err_irqs;

	dev_info(&pdev->dev, "%s: %u vectors, %pa bytes shared%s\n", dev->name,
		 dev->nvec, &dev->shm_size,
		 vglue_header_valid(dev) ? "" : ", host header not written yet");
	return 0;

err_irqs:
	vglue_free_irqs(dev, dev->nvec);
	pci_free_irq_vectors(pdev);
err_ida:
	ida_free(&vglue_ida, dev->index);
err_unmap:
	vglue_unmap_bars(dev);
err_regions:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
err_put:
	vglue_dev_put(dev);
	return ret;
}

/*
 * Unbinding with the device open: no new open can start once misc_deregister()
 * returns (misc opens are serialised with it). The open file keeps the state
 * alive through its kref; here the opener leaves the host as at release, its
 * mappings of the shared region are zapped (they fault in page by page, and a
 * fault after this sees ->gone and gets SIGBUS), and every later ioctl or mmap
 * returns -ENODEV. Its buffers stay until it closes: they are ordinary pages.
 */
static void vglue_remove(struct pci_dev *pdev)
{
	struct vglue_dev *dev = pci_get_drvdata(pdev);

	misc_deregister(&dev->misc);

	mutex_lock(&dev->lock);
	if (dev->opener) {
		vglue_leave(dev, dev->opener);
		unmap_mapping_range(dev->opener->mapping, 0, dev->shm_size, 1);
	}
	dev->gone = true;
	mutex_unlock(&dev->lock);

	vglue_free_irqs(dev, dev->nvec);
	pci_free_irq_vectors(pdev);
	vglue_unmap_bars(dev);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	ida_free(&vglue_ida, dev->index);
	vglue_dev_put(dev);
}

static const struct pci_device_id vglue_ids[] = {
	{ PCI_DEVICE(VGLUE_PCI_VENDOR, VGLUE_PCI_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vglue_ids);

static struct pci_driver vglue_driver = {
	.name = KBUILD_MODNAME,
	.id_table = vglue_ids,
	.probe = vglue_probe,
	.remove = vglue_remove,
};
module_pci_driver(vglue_driver);

MODULE_DESCRIPTION("Viridian VMBus glue over QEMU's ivshmem-doorbell");
MODULE_AUTHOR("The Viridian project");
MODULE_LICENSE("GPL");
