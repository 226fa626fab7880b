// SPDX-License-Identifier: GPL-2.0
/*
 * The vmbus bus type: a device per primary channel, drivers matched by
 * class GUID, the sysfs attributes lsvmbus reads, and the channel events
 * handed to the drivers' callbacks.
 */

/* The headers of drivers/hv/vmbus_drv.c, in its order (symbol versions). */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/device.h>
#include <linux/interrupt.h>
#include <linux/sysctl.h>
#include <linux/slab.h>
#include <linux/acpi.h>
#include <linux/completion.h>
#include <linux/hyperv.h>
#include <linux/kernel_stat.h>
#include <linux/clockchips.h>
#include <linux/cpu.h>
#include <linux/sched/isolation.h>
#include <linux/sched/task_stack.h>
#include <linux/delay.h>
#include <linux/panic_notifier.h>
#include <linux/ptrace.h>
#include <linux/screen_info.h>
#include <linux/efi.h>
#include <linux/random.h>
#include <linux/kernel.h>
#include <linux/syscore_ops.h>
#include <linux/dma-map-ops.h>
#include <linux/pci.h>
#include <clocksource/hyperv_timer.h>
#include <linux/list.h>
#include <linux/bitops.h>
#include <asm/sync_bitops.h>
#include <asm/hyperv-tlfs.h>
#include <linux/atomic.h>
#include <linux/tracepoint.h>

#include "vmb.h"

#define VMB_VENDOR_MICROSOFT	0x1414

static ssize_t id_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", device_to_hv_device(dev)->channel->offermsg.child_relid);
}
static DEVICE_ATTR_RO(id);

static ssize_t class_id_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "{%pUl}\n", &device_to_hv_device(dev)->dev_type);
}
static DEVICE_ATTR_RO(class_id);

static ssize_t device_id_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "{%pUl}\n", &device_to_hv_device(dev)->dev_instance);
}
static DEVICE_ATTR_RO(device_id);

static ssize_t modalias_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "vmbus:%*phN\n", UUID_SIZE, &device_to_hv_device(dev)->dev_type);
}
static DEVICE_ATTR_RO(modalias);

static ssize_t vendor_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "0x%x\n", device_to_hv_device(dev)->vendor_id);
}
static DEVICE_ATTR_RO(vendor);

static ssize_t device_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "0x%x\n", device_to_hv_device(dev)->device_id);
}
static DEVICE_ATTR_RO(device);

/* "relid:cpu" of the primary and each sub-channel, one per line, as lsvmbus -vv shows. */
static ssize_t channel_vp_mapping_show(struct device *dev, struct device_attribute *attr,
				       char *buf)
{
	struct vmbus_channel *primary = device_to_hv_device(dev)->channel, *sc;
	int n;

	mutex_lock(&vmb->chan_mutex);
	n = sysfs_emit(buf, "%u:%u\n", primary->offermsg.child_relid, primary->target_cpu);
	list_for_each_entry(sc, &primary->sc_list, sc_list)
		n += sysfs_emit_at(buf, n, "%u:%u\n", sc->offermsg.child_relid, sc->target_cpu);
	mutex_unlock(&vmb->chan_mutex);
	return n;
}
static DEVICE_ATTR_RO(channel_vp_mapping);

static struct attribute *vmb_dev_attrs[] = {
	&dev_attr_id.attr,
	&dev_attr_class_id.attr,
	&dev_attr_device_id.attr,
	&dev_attr_modalias.attr,
	&dev_attr_vendor.attr,
	&dev_attr_device.attr,
	&dev_attr_channel_vp_mapping.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vmb_dev);

static int vmb_uevent(struct device *dev, struct kobj_uevent_env *env)
{
	return add_uevent_var(env, "MODALIAS=vmbus:%*phN", UUID_SIZE,
			      &device_to_hv_device(dev)->dev_type);
}

static const struct hv_vmbus_device_id *vmb_lookup(struct hv_driver *drv, struct hv_device *dev)
{
	const struct hv_vmbus_device_id *id = drv->id_table;

	for (; id && !guid_is_null(&id->guid); id++)
		if (guid_equal(&id->guid, &dev->dev_type))
			return id;
	return NULL;
}

static int vmb_match(struct device *dev, struct device_driver *driver)
{
	struct hv_driver *drv = drv_to_hv_drv(driver);
	struct hv_device *hv = device_to_hv_device(dev);

	if (is_hvsock_channel(hv->channel))
		return drv->hvsock;
	return vmb_lookup(drv, hv) != NULL;
}

static int vmb_probe(struct device *dev)
{
	struct hv_driver *drv = drv_to_hv_drv(dev->driver);
	struct hv_device *hv = device_to_hv_device(dev);
	int ret;

	if (!drv->probe)
		return -ENODEV;
	ret = drv->probe(hv, vmb_lookup(drv, hv));
	if (ret)
		dev_err(dev, "probe of %s failed (%d)\n", drv->name, ret);
	return ret;
}

static void vmb_remove(struct device *dev)
{
	struct hv_driver *drv = dev->driver ? drv_to_hv_drv(dev->driver) : NULL;

	if (drv && drv->remove)
		drv->remove(device_to_hv_device(dev));
}

static void vmb_shutdown(struct device *dev)
{
	struct hv_driver *drv = dev->driver ? drv_to_hv_drv(dev->driver) : NULL;

	if (drv && drv->shutdown)
		drv->shutdown(device_to_hv_device(dev));
}

static struct bus_type vmb_bus_type = {
	.name = "vmbus",
	.match = vmb_match,
	.probe = vmb_probe,
	.remove = vmb_remove,
	.shutdown = vmb_shutdown,
	.uevent = vmb_uevent,
	.dev_groups = vmb_dev_groups,
};

int vmb_bus_register(void)
{
	return bus_register(&vmb_bus_type);
}

void vmb_bus_unregister(void)
{
	bus_unregister(&vmb_bus_type);
}

int __vmbus_driver_register(struct hv_driver *hv_driver, struct module *owner,
			    const char *mod_name)
{
	hv_driver->driver.name = hv_driver->name;
	hv_driver->driver.owner = owner;
	hv_driver->driver.mod_name = mod_name;
	hv_driver->driver.bus = &vmb_bus_type;
	spin_lock_init(&hv_driver->dynids.lock);
	INIT_LIST_HEAD(&hv_driver->dynids.list);
	return driver_register(&hv_driver->driver);
}
EXPORT_SYMBOL_GPL(__vmbus_driver_register);

void vmbus_driver_unregister(struct hv_driver *hv_driver)
{
	driver_unregister(&hv_driver->driver);
}
EXPORT_SYMBOL_GPL(vmbus_driver_unregister);

static void vmb_device_release(struct device *dev)
{
	struct hv_device *hv = device_to_hv_device(dev);

	vmb_channels_release(hv->channel);
	kfree(hv);
}

static void vmb_device_free(struct device *dev)
{
	kfree(device_to_hv_device(dev));
}

/* A device for a primary channel; its driver (if loaded) probes it here. */
int vmb_device_add(struct vmbus_channel *channel)
{
	struct hv_device *hv = kzalloc(sizeof(*hv), GFP_KERNEL);
	int ret;

	if (!hv)
		return -ENOMEM;
	hv->dev_type = channel->offermsg.offer.if_type;
	hv->dev_instance = channel->offermsg.offer.if_instance;
	hv->vendor_id = VMB_VENDOR_MICROSOFT;
	hv->channel = channel;
	hv->device.bus = &vmb_bus_type;
	hv->device.parent = &vmb->pdev->dev;
	hv->device.release = vmb_device_release;
	hv->device.dma_parms = &hv->dma_parms;
	hv->device.dma_mask = &hv->dma_mask;
	hv->dma_mask = DMA_BIT_MASK(64);
	hv->device.coherent_dma_mask = DMA_BIT_MASK(64);
	channel->device_obj = hv;
	dev_set_name(&hv->device, "%pUl", &hv->dev_instance);
	ret = device_register(&hv->device);
	if (ret) {
		/* Not registered: the channel is the caller's to free. */
		channel->device_obj = NULL;
		hv->device.release = vmb_device_free;
		put_device(&hv->device);
		dev_err(&vmb->pdev->dev, "device for relid %u not registered (%d)\n",
			channel->offermsg.child_relid, ret);
	}
	return ret;
}

void vmb_device_remove(struct vmbus_channel *channel)
{
	if (channel->device_obj)
		device_unregister(&channel->device_obj->device);
}

/*
 * The host signalled @channel (VP interrupt, hard irq context): its driver's
 * callback runs now, or in the channel's tasklet, by the callback mode it set.
 */
void vmb_channel_event(struct vmbus_channel *channel)
{
	void (*callback)(void *context);

	if (channel->rescind)
		return;
	spin_lock(&channel->sched_lock);
	callback = channel->onchannel_callback;
	if (callback) {
		channel->interrupts++;
		switch (channel->callback_mode) {
		case HV_CALL_ISR:
			callback(channel->channel_callback_context);
			break;
		case HV_CALL_BATCHED:
			hv_begin_read(&channel->inbound);
			fallthrough;
		case HV_CALL_DIRECT:
			tasklet_schedule(&channel->callback_event);
			break;
		}
	}
	spin_unlock(&channel->sched_lock);
}

/* The channel tasklet: batched channels read until the ring stays empty. */
void vmb_on_event(unsigned long data)
{
	struct vmbus_channel *channel = (struct vmbus_channel *)data;
	void (*callback)(void *context) = READ_ONCE(channel->onchannel_callback);

	if (!callback)
		return;
	callback(channel->channel_callback_context);
	if (channel->callback_mode != HV_CALL_BATCHED)
		return;
	if (hv_end_read(&channel->inbound)) {
		hv_begin_read(&channel->inbound);
		tasklet_schedule(&channel->callback_event);
	}
}
