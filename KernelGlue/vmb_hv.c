// SPDX-License-Identifier: GPL-2.0
/*
 * The hypervisor interface viridian_vmbus needs: synthetic MSRs, the SynIC
 * message and event pages of each VP, HvPostMessage, the VP interrupt and
 * the partition reference counter.
 */

#include <linux/delay.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <asm/sync_bitops.h>

#include "vmb.h"

/* The SIMP/SIEFP enable bit. */
#define VMB_PAGE_ENABLE		BIT_ULL(0)
#define VMB_SINT_AUTO_EOI	BIT_ULL(17)
/* Any vector: the carrier raises the VP's MSI-X vector, not this one. */
#define VMB_SINT_VECTOR		0xf3

int vmb_write_msr(u32 vp, u32 msr, u64 value)
{
	u64 result;
	int ret = vmb_exit(vp, VMB_EXIT_WRITE_MSR, msr, 0, 0, 0, value, &result, NULL);

	if (ret)
		return ret;
	return result ? -EIO : 0;
}

static int vmb_read_msr(u32 vp, u32 msr, u64 *value)
{
	u64 result;
	int ret = vmb_exit(vp, VMB_EXIT_READ_MSR, msr, 0, 0, 0, 0, &result, value);

	if (ret)
		return ret;
	return result ? -EIO : 0;
}

int vmb_synic_setup(u32 vp)
{
	struct vmb_vp *v = &vmb->vp[vp];
	int ret;

	v->simp = (void *)get_zeroed_page(GFP_KERNEL);
	v->siefp = (void *)get_zeroed_page(GFP_KERNEL);
	v->post_page = (void *)get_zeroed_page(GFP_KERNEL);
	if (!v->simp || !v->siefp || !v->post_page) {
		ret = -ENOMEM;
		goto err;
	}
	ret = vmb_write_msr(vp, VMB_MSR_SIMP, virt_to_phys(v->simp) | VMB_PAGE_ENABLE);
	if (!ret)
		ret = vmb_write_msr(vp, VMB_MSR_SIEFP, virt_to_phys(v->siefp) | VMB_PAGE_ENABLE);
	if (!ret)
		ret = vmb_write_msr(vp, VMB_MSR_SINT0 + VMB_SINT,
				    VMB_SINT_VECTOR | VMB_SINT_AUTO_EOI);
	if (!ret)
		ret = vmb_write_msr(vp, VMB_MSR_SCONTROL, 1);
	if (!ret)
		return 0;
	pr_err("viridian_vmbus: VP %u refused its SynIC setup (%d)\n", vp, ret);
err:
	vmb_synic_teardown(vp);
	return ret;
}

void vmb_synic_teardown(u32 vp)
{
	struct vmb_vp *v = &vmb->vp[vp];

	/* Pages the host may still hold are kept if it does not let go of them. */
	if (v->simp && (vmb_write_msr(vp, VMB_MSR_SIMP, 0) ||
			vmb_write_msr(vp, VMB_MSR_SIEFP, 0))) {
		pr_warn("viridian_vmbus: VP %u: SynIC pages leaked\n", vp);
		return;
	}
	free_page((unsigned long)v->simp);
	free_page((unsigned long)v->siefp);
	free_page((unsigned long)v->post_page);
	v->simp = NULL;
	v->siefp = NULL;
	v->post_page = NULL;
}

/* HvPostMessage's input block. */
struct vmb_post_input {
	u32 connection_id;
	u32 reserved;
	u32 message_type;
	u32 payload_size;
	u8 payload[HV_MESSAGE_PAYLOAD_BYTE_COUNT];
} __packed;

static u16 vmb_post_once(u32 vp, const void *msg, u32 len)
{
	struct vmb_vp *v = &vmb->vp[vp];
	struct vmb_post_input *in = v->post_page;
	unsigned long flags;
	u64 result = VMB_STATUS_TIMEOUT;

	spin_lock_irqsave(&v->post_lock, flags);
	in->connection_id = vmb->msg_conn_id;
	in->reserved = 0;
	in->message_type = 1;	/* a VMBus channel message */
	in->payload_size = len;
	memcpy(in->payload, msg, len);
	if (vmb_exit(vp, VMB_EXIT_HYPERCALL, 0, VMB_CALL_POST_MESSAGE,
		     virt_to_phys(in), 0, 0, &result, NULL))
		result = VMB_STATUS_TIMEOUT;
	spin_unlock_irqrestore(&v->post_lock, flags);
	return result & 0xffff;
}

/*
 * Posts a channel message to the host, retrying while it is short of buffers
 * (HV_STATUS_INSUFFICIENT_MEMORY or _BUFFERS), with a doubling back-off.
 */
int vmb_post_message(const void *msg, u32 len, bool can_sleep)
{
	unsigned int tries;
	u32 delay_us = 1;
	u16 status = 0;

	if (len > HV_MESSAGE_PAYLOAD_BYTE_COUNT)
		return -EMSGSIZE;
	for (tries = 0; tries < 100; tries++) {
		status = vmb_post_once(raw_smp_processor_id() % vmb->vps, msg, len);
		if (status == HV_STATUS_SUCCESS)
			return 0;
		if (status != HV_STATUS_INSUFFICIENT_MEMORY &&
		    status != HV_STATUS_INSUFFICIENT_BUFFERS)
			break;
		if (can_sleep && delay_us >= 20)
			usleep_range(delay_us, 2 * delay_us);
		else
			udelay(delay_us);
		if (delay_us < 2000)
			delay_us *= 2;
	}
	pr_err_ratelimited("viridian_vmbus: HvPostMessage failed with status 0x%x\n", status);
	return status == VMB_STATUS_TIMEOUT ? -ETIMEDOUT : -EIO;
}

/*
 * The interrupt of VP @vp: channels with their event flag set first, then the
 * message slot of the VMBus SINT (handled in process context).
 */
void vmb_vp_interrupt(u32 vp)
{
	struct vmb_vp *v = &vmb->vp[vp];
	union hv_synic_event_flags *events;
	struct hv_message *msg;
	unsigned long relid;

	if (!v->siefp)
		return;
	events = (union hv_synic_event_flags *)v->siefp + VMB_SINT;
	for_each_set_bit(relid, events->flags, VMB_MAX_RELIDS)
		if (sync_test_and_clear_bit(relid, events->flags) && relid)
			vmb_relid_event(relid);
	msg = (struct hv_message *)v->simp + VMB_SINT;
	if (READ_ONCE(msg->header.message_type) != HVMSG_NONE)
		queue_work(vmb->msg_wq, &vmb->msg_work);
}

/* The partition reference counter, in 100 ns units, read from VP 0. */
u64 vmb_reference_counter(void)
{
	u64 value = 0;

	if (!vmb || vmb_read_msr(0, VMB_MSR_TIME_REF_COUNT, &value))
		return 0;
	return value;
}
