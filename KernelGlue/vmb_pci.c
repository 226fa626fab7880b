// SPDX-License-Identifier: GPL-2.0
/*
 * The carrier of viridian_vmbus: binds the ivshmem-doorbell function,
 * joins the host through the shared header, and turns VP exits into
 * register-block writes, a doorbell and a wait for the host's answer.
 */

#include <linux/delay.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <asm/mshyperv.h>

#include "vmb.h"

struct vmb_bus *vmb;

/* How long a VP exit may take before the host is taken for gone. */
#define VMB_EXIT_TIMEOUT_US	(5 * USEC_PER_SEC)
#define VMB_JOIN_TIMEOUT_MS	5000

static u32 vmb_get32(const __u32 *field)
{
	return le32_to_cpu((__force __le32)READ_ONCE(*field));
}

static void vmb_set32(__u32 *field, u32 val)
{
	WRITE_ONCE(*field, (__force __u32)cpu_to_le32(val));
}

void vmb_ring_doorbell(u32 vector)
{
	iowrite32((vmb->host_peer << 16) | vector, vmb->regs + VMB_REG_DOORBELL);
}

static void *vmb_block(u32 vp)
{
	return (u8 *)vmb->shm + VGLUE_VP_BLOCKS + vp * VMB_VPB_SIZE;
}

static void vmb_block_put(void *block, unsigned int off, u64 val)
{
	WRITE_ONCE(*(u64 *)((u8 *)block + off), val);
}

static u64 vmb_block_get(void *block, unsigned int off)
{
	return READ_ONCE(*(u64 *)((u8 *)block + off));
}

/*
 * One trapped instruction on VP @vp. Callable in any context: the answer is
 * polled (a host round trip is tens of microseconds), so exits of one VP are
 * serialised by a spinlock with interrupts off. Returns -ETIMEDOUT if the
 * host does not answer in time.
 */
int vmb_exit(u32 vp, u32 kind, u32 msr, u64 control, u64 input, u64 output,
	     u64 value, u64 *result, u64 *value_out)
{
	struct vmb_vp *v = &vmb->vp[vp];
	unsigned long flags, waited = 0;
	void *block = vmb_block(vp);
	u64 seq;
	int ret = 0;

	spin_lock_irqsave(&v->exit_lock, flags);
	seq = ++v->seq;
	WRITE_ONCE(*(u32 *)((u8 *)block + VMB_VPB_KIND), kind);
	WRITE_ONCE(*(u32 *)((u8 *)block + VMB_VPB_MSR), msr);
	vmb_block_put(block, VMB_VPB_CONTROL, control);
	vmb_block_put(block, VMB_VPB_INPUT, input);
	vmb_block_put(block, VMB_VPB_OUTPUT, output);
	vmb_block_put(block, VMB_VPB_VALUE, value);
	vmb_block_put(block, VMB_VPB_SEQUENCE, seq);
	/* The block and any input page are written before the host is rung. */
	wmb();
	vmb_ring_doorbell(1 + vp);
	/* Acquire: the result fields are read after the host's completion mark. */
	while (smp_load_acquire((u64 *)((u8 *)block + VMB_VPB_COMPLETED)) != seq) {
		if (waited++ >= VMB_EXIT_TIMEOUT_US) {
			ret = -ETIMEDOUT;
			break;
		}
		udelay(1);
	}
	if (!ret) {
		if (result)
			*result = vmb_block_get(block, VMB_VPB_RESULT);
		if (value_out)
			*value_out = vmb_block_get(block, VMB_VPB_VALUE);
	}
	spin_unlock_irqrestore(&v->exit_lock, flags);
	if (ret)
		pr_err_ratelimited("viridian_vmbus: VP %u: the host did not answer an exit\n", vp);
	return ret;
}

static irqreturn_t vmb_control_irq(int irq, void *data)
{
	wake_up(&vmb->control_wq);
	return IRQ_HANDLED;
}

static irqreturn_t vmb_vp_irq(int irq, void *data)
{
	struct vmb_vp *v = data;

	vmb_vp_interrupt(v - vmb->vp);
	return IRQ_HANDLED;
}

static bool vmb_header_ok(void)
{
	struct vglue_shared_header *h = vmb->shm;

	return le64_to_cpu((__force __le64)READ_ONCE(h->magic)) == VGLUE_SHM_MAGIC &&
	       vmb_get32(&h->abi_version) == VGLUE_ABI_VERSION &&
	       vmb_get32(&h->host_state) == VGLUE_HOST_SERVING;
}

static int vmb_join(void)
{
	struct vglue_shared_header *h = vmb->shm;
	long left;

	vmb->generation = vmb_get32(&h->guest_generation) + 1;
	vmb_set32(&h->guest_generation, vmb->generation);
	vmb_set32(&h->guest_state, VGLUE_GUEST_READY);
	/* The header is written before the doorbell reaches the host. */
	wmb();
	vmb_ring_doorbell(VGLUE_VECTOR_CONTROL);
	left = wait_event_timeout(vmb->control_wq,
				  vmb_get32(&h->host_joined) == vmb->generation,
				  msecs_to_jiffies(VMB_JOIN_TIMEOUT_MS));
	return left ? 0 : -ETIMEDOUT;
}

static void vmb_leave(void)
{
	struct vglue_shared_header *h = vmb->shm;

	vmb_set32(&h->guest_state, VGLUE_GUEST_LEAVING);
	/* The state is written before the doorbell reaches the host. */
	wmb();
	vmb_ring_doorbell(VGLUE_VECTOR_CONTROL);
	wait_event_timeout(vmb->control_wq,
			   vmb_get32(&h->host_released) == vmb->generation,
			   msecs_to_jiffies(VMB_JOIN_TIMEOUT_MS));
	vmb_set32(&h->guest_state, VGLUE_GUEST_ABSENT);
}

static int vmb_map(struct pci_dev *pdev)
{
	resource_size_t start = pci_resource_start(pdev, 2);

	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < VMB_REGS_MIN ||
	    !(pci_resource_flags(pdev, 2) & IORESOURCE_MEM))
		return -ENODEV;
	vmb->shm_size = pci_resource_len(pdev, 2);
	if (vmb->shm_size < VGLUE_VP_BLOCKS + VMB_MAX_VPS * VMB_VPB_SIZE)
		return -ENODEV;
	vmb->regs = pci_iomap(pdev, 0, 0);
	if (!vmb->regs)
		return -ENOMEM;
	/* BAR2 is the host's RAM behind QEMU: cacheable, no side effects. */
	vmb->shm = memremap(start, vmb->shm_size, MEMREMAP_WB);
	if (!vmb->shm) {
		pci_iounmap(pdev, vmb->regs);
		return -ENOMEM;
	}
	return 0;
}

static void vmb_free_irqs(struct pci_dev *pdev, unsigned int count)
{
	while (count--)
		pci_free_irq(pdev, count, count ? (void *)&vmb->vp[count - 1] : vmb);
}

/* Vector 0: control; vectors 1..vps: each VP's SINT interrupt. */
static int vmb_setup_irqs(struct pci_dev *pdev)
{
	unsigned int i, want = 1 + vmb->vps;
	int ret;

	ret = pci_alloc_irq_vectors(pdev, want, want, PCI_IRQ_MSIX);
	if (ret < 0)
		return ret;
	ret = pci_request_irq(pdev, 0, vmb_control_irq, NULL, vmb, "vmbus-control");
	if (ret)
		goto err;
	for (i = 1; i < want; i++) {
		/* The irq is requested shared: its dev_id must not be NULL. */
		ret = pci_request_irq(pdev, i, vmb_vp_irq, NULL, &vmb->vp[i - 1],
				      "vmbus-vp%u", i - 1);
		if (ret) {
			vmb_free_irqs(pdev, i);
			goto err;
		}
	}
	vmb->nvec = want;
	return 0;
err:
	pci_free_irq_vectors(pdev);
	return ret;
}

static void vmb_destroy_wqs(void)
{
	if (vmb->sub_wq)
		destroy_workqueue(vmb->sub_wq);
	if (vmb->add_wq)
		destroy_workqueue(vmb->add_wq);
	if (vmb->msg_wq)
		destroy_workqueue(vmb->msg_wq);
}

static int vmb_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vglue_shared_header *h;
	unsigned int i;
	int ret;

	if (vmb)
		return -EBUSY;	/* one bus per guest, as on Hyper-V */
	if (pci_msix_vec_count(pdev) <= 0)
		return -ENODEV;	/* ivshmem-plain */
	vmb = kzalloc(sizeof(*vmb), GFP_KERNEL);
	if (!vmb)
		return -ENOMEM;
	vmb->pdev = pdev;
	init_waitqueue_head(&vmb->control_wq);
	spin_lock_init(&vmb->wait_lock);
	INIT_LIST_HEAD(&vmb->waiters);
	init_completion(&vmb->offers_done);
	mutex_init(&vmb->chan_mutex);
	mutex_init(&vmb->close_mutex);
	INIT_LIST_HEAD(&vmb->channels);
	spin_lock_init(&vmb->relid_lock);
	atomic_set(&vmb->next_gpadl, 0xE1E10);
	INIT_WORK(&vmb->msg_work, vmb_message_work);

	ret = pci_enable_device(pdev);
	if (ret)
		goto err_free;
	ret = pci_request_regions(pdev, KBUILD_MODNAME);
	if (ret)
		goto err_disable;
	pci_set_master(pdev);
	ret = vmb_map(pdev);
	if (ret)
		goto err_regions;
	h = vmb->shm;
	if (!vmb_header_ok()) {
		dev_err(&pdev->dev, "no serving viridian-host behind this device\n");
		ret = -ENODEV;
		goto err_unmap;
	}
	vmb->vps = vmb_get32(&h->vp_count);
	vmb->host_peer = vmb_get32(&h->host_peer);
	if (vmb->vps < 1 || vmb->vps > VMB_MAX_VPS || vmb->host_peer > 0xffff) {
		dev_err(&pdev->dev, "implausible header: %u VPs, host peer %u\n",
			vmb->vps, vmb->host_peer);
		ret = -ENODEV;
		goto err_unmap;
	}
	for (i = 0; i < vmb->vps; i++) {
		spin_lock_init(&vmb->vp[i].exit_lock);
		spin_lock_init(&vmb->vp[i].post_lock);
	}

	vmb->msg_wq = alloc_ordered_workqueue("vmbus_msg", 0);
	vmb->add_wq = alloc_ordered_workqueue("vmbus_add", 0);
	vmb->sub_wq = alloc_workqueue("vmbus_sub", 0, 0);
	if (!vmb->msg_wq || !vmb->add_wq || !vmb->sub_wq) {
		ret = -ENOMEM;
		goto err_wq;
	}
	ret = vmb_setup_irqs(pdev);
	if (ret) {
		dev_err(&pdev->dev, "%u MSI-X vectors not set up (%d)\n", 1 + vmb->vps, ret);
		goto err_wq;
	}
	ret = vmb_join();
	if (ret) {
		dev_err(&pdev->dev, "viridian-host did not acknowledge the join\n");
		goto err_irqs;
	}
	for (i = 0; i < vmb->vps; i++) {
		ret = vmb_synic_setup(i);
		if (ret)
			goto err_synic;
	}
	ret = vmb_connect();
	if (ret)
		goto err_synic;
	dev_info(&pdev->dev, "VMBus %u.%u with partition %.31s, %u VPs\n",
		 vmbus_proto_version >> 16, vmbus_proto_version & 0xffff,
		 h->name, vmb->vps);
	return 0;

err_synic:
	for (i = 0; i < vmb->vps; i++)
		vmb_synic_teardown(i);
	vmb_leave();
err_irqs:
	vmb_free_irqs(pdev, vmb->nvec);
	pci_free_irq_vectors(pdev);
err_wq:
	vmb_destroy_wqs();
err_unmap:
	memunmap(vmb->shm);
	pci_iounmap(pdev, vmb->regs);
err_regions:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
err_free:
	kfree(vmb);
	vmb = NULL;
	return ret;
}

static void vmb_remove(struct pci_dev *pdev)
{
	unsigned int i;

	vmb_remove_all();
	vmb_disconnect();
	for (i = 0; i < vmb->vps; i++)
		vmb_synic_teardown(i);
	vmb_leave();
	vmb_free_irqs(pdev, vmb->nvec);
	pci_free_irq_vectors(pdev);
	vmb_destroy_wqs();
	memunmap(vmb->shm);
	pci_iounmap(pdev, vmb->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	kfree(vmb);
	vmb = NULL;
}

/*
 * No MODULE_DEVICE_TABLE: udev must not load this module for the device that
 * viridian_glue serves the agent with. The test guest loads it by name.
 */
static const struct pci_device_id vmb_ids[] = {
	{ PCI_DEVICE(VGLUE_PCI_VENDOR, VGLUE_PCI_DEVICE) },
	{ }
};

static struct pci_driver vmb_driver = {
	.name = KBUILD_MODNAME,
	.id_table = vmb_ids,
	.probe = vmb_probe,
	.remove = vmb_remove,
};

static u64 (*vmb_saved_refcount)(void);

static int __init vmb_init(void)
{
	int ret = vmb_bus_register();

	if (ret)
		return ret;
	/* hv_utils' time sync reads the partition reference counter through this. */
	vmb_saved_refcount = hv_read_reference_counter;
	hv_read_reference_counter = vmb_reference_counter;
	ret = pci_register_driver(&vmb_driver);
	if (ret) {
		hv_read_reference_counter = vmb_saved_refcount;
		vmb_bus_unregister();
	}
	return ret;
}

static void __exit vmb_exit_module(void)
{
	pci_unregister_driver(&vmb_driver);
	hv_read_reference_counter = vmb_saved_refcount;
	vmb_bus_unregister();
}

module_init(vmb_init);
module_exit(vmb_exit_module);

MODULE_DESCRIPTION("A VMBus core for QEMU guests served by viridian-host");
MODULE_AUTHOR("The Viridian project");
MODULE_LICENSE("GPL");
