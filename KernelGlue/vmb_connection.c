// SPDX-License-Identifier: GPL-2.0
/*
 * The VMBus connection: version negotiation, the channel-message loop and
 * the requests that wait for the host's answers.
 */

/* The headers of drivers/hv/connection.c, in its order (symbol versions). */
#include <linux/kernel.h>
#include <linux/sched.h>
#include <linux/wait.h>
#include <linux/delay.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/hyperv.h>
#include <linux/export.h>
#include <linux/io.h>
#include <linux/set_memory.h>
#include <asm/mshyperv.h>
#include <linux/list.h>
#include <linux/bitops.h>
#include <asm/sync_bitops.h>
#include <asm/hyperv-tlfs.h>
#include <linux/atomic.h>
#include <linux/interrupt.h>
#include <linux/tracepoint.h>

#include "vmb.h"

/* The negotiated version; hv_utils and hv_netvsc read it. */
__u32 vmbus_proto_version;
EXPORT_SYMBOL_GPL(vmbus_proto_version);

/* Newest first, as Linux offers them; viridian-host speaks 4.0 up to 5.3. */
static const u32 vmb_versions[] = {
	VERSION_WIN10_V5_3, VERSION_WIN10_V5_2, VERSION_WIN10_V5_1,
	VERSION_WIN10_V5, VERSION_WIN10_V4_1, VERSION_WIN10,
};

struct vmb_waiter *vmb_waiter_add(u32 msgtype, u32 key, struct vmbus_channel *channel)
{
	struct vmb_waiter *w = kzalloc(sizeof(*w), GFP_KERNEL);
	unsigned long flags;

	if (!w)
		return NULL;
	w->msgtype = msgtype;
	w->key = key;
	w->channel = channel;
	init_completion(&w->done);
	spin_lock_irqsave(&vmb->wait_lock, flags);
	list_add_tail(&w->node, &vmb->waiters);
	spin_unlock_irqrestore(&vmb->wait_lock, flags);
	return w;
}

void vmb_waiter_remove(struct vmb_waiter *w)
{
	unsigned long flags;

	spin_lock_irqsave(&vmb->wait_lock, flags);
	list_del(&w->node);
	spin_unlock_irqrestore(&vmb->wait_lock, flags);
	kfree(w);
}

/* A rescinded channel gets no more answers: its requests stop waiting. */
void vmb_waiters_cancel(struct vmbus_channel *channel)
{
	struct vmb_waiter *w;
	unsigned long flags;

	spin_lock_irqsave(&vmb->wait_lock, flags);
	list_for_each_entry(w, &vmb->waiters, node)
		if (w->channel == channel)
			complete(&w->done);
	spin_unlock_irqrestore(&vmb->wait_lock, flags);
}

/* 0 once answered (or cancelled: the caller checks for a rescind), -ETIMEDOUT if the host stays silent. */
int vmb_waiter_wait(struct vmb_waiter *w, unsigned int timeout_ms)
{
	if (wait_for_completion_timeout(&w->done, msecs_to_jiffies(timeout_ms)))
		return 0;
	return -ETIMEDOUT;
}

/*
 * Posts @msg and waits for the host's answer of type @msgtype and @key (a
 * rescind of @channel ends the wait: the caller checks for it); a copy of the
 * answer goes to @answer.
 */
int vmb_request(const void *msg, u32 len, u32 msgtype, u32 key, struct vmbus_channel *channel,
		void *answer, u32 answer_len)
{
	struct vmb_waiter *w = vmb_waiter_add(msgtype, key, channel);
	int ret;

	if (!w)
		return -ENOMEM;
	ret = vmb_post_message(msg, len, true);
	if (!ret)
		ret = vmb_waiter_wait(w, VMB_ANSWER_TIMEOUT_MS);
	if (!ret && answer)
		memcpy(answer, w->answer, min_t(u32, answer_len, sizeof(w->answer)));
	vmb_waiter_remove(w);
	return ret;
}

/* Hands an answer to the first request waiting for it; false if none is. */
static bool vmb_answer(u32 msgtype, u32 key, const void *msg, u32 len)
{
	struct vmb_waiter *w;
	unsigned long flags;
	bool found = false;

	spin_lock_irqsave(&vmb->wait_lock, flags);
	list_for_each_entry(w, &vmb->waiters, node) {
		if (w->msgtype != msgtype || w->key != key || completion_done(&w->done))
			continue;
		memcpy(w->answer, msg, len);
		complete(&w->done);
		found = true;
		break;
	}
	spin_unlock_irqrestore(&vmb->wait_lock, flags);
	return found;
}

/* The smallest size of each message this core reads, by type. */
static u32 vmb_min_size(u32 msgtype)
{
	switch (msgtype) {
	case CHANNELMSG_OFFERCHANNEL:
		return sizeof(struct vmbus_channel_offer_channel);
	case CHANNELMSG_RESCIND_CHANNELOFFER:
		return sizeof(struct vmbus_channel_rescind_offer);
	case CHANNELMSG_OPENCHANNEL_RESULT:
		return sizeof(struct vmbus_channel_open_result);
	case CHANNELMSG_GPADL_CREATED:
		return sizeof(struct vmbus_channel_gpadl_created);
	case CHANNELMSG_GPADL_TORNDOWN:
		return sizeof(struct vmbus_channel_gpadl_torndown);
	case CHANNELMSG_VERSION_RESPONSE:
		return sizeof(struct vmbus_channel_version_response);
	default:
		return sizeof(struct vmbus_channel_message_header);
	}
}

static void vmb_dispatch(const u8 *msg, u32 len)
{
	const struct vmbus_channel_message_header *hdr = (const void *)msg;
	u32 type = hdr->msgtype;

	if (len < vmb_min_size(type)) {
		pr_warn_ratelimited("viridian_vmbus: message type %u of %u bytes dropped\n", type, len);
		return;
	}
	switch (type) {
	case CHANNELMSG_OFFERCHANNEL:
		vmb_on_offer((const void *)msg);
		break;
	case CHANNELMSG_RESCIND_CHANNELOFFER:
		vmb_on_rescind(((const struct vmbus_channel_rescind_offer *)msg)->child_relid);
		break;
	case CHANNELMSG_ALLOFFERS_DELIVERED:
		complete(&vmb->offers_done);
		break;
	case CHANNELMSG_OPENCHANNEL_RESULT:
		vmb_answer(type, ((const struct vmbus_channel_open_result *)msg)->child_relid, msg, len);
		break;
	case CHANNELMSG_GPADL_CREATED:
		vmb_answer(type, ((const struct vmbus_channel_gpadl_created *)msg)->gpadl, msg, len);
		break;
	case CHANNELMSG_GPADL_TORNDOWN:
		vmb_answer(type, ((const struct vmbus_channel_gpadl_torndown *)msg)->gpadl, msg, len);
		break;
	case CHANNELMSG_VERSION_RESPONSE:
	case CHANNELMSG_UNLOAD_RESPONSE:
		vmb_answer(type, 0, msg, len);
		break;
	default:
		/* MODIFYCHANNEL_RESPONSE and the rest: nothing here asks for them. */
		break;
	}
}

/*
 * Takes the message out of each VP's VMBus slot, frees the slot (telling the
 * host with EOM if it has more), then handles it. Runs on the ordered
 * message workqueue, so messages are handled in the order they came.
 */
void vmb_message_work(struct work_struct *work)
{
	u8 copy[HV_MESSAGE_PAYLOAD_BYTE_COUNT];
	bool more;
	u32 vp;

	do {
		more = false;
		for (vp = 0; vp < vmb->vps; vp++) {
			struct hv_message *slot;
			u32 len;

			if (!vmb->vp[vp].simp)
				continue;
			slot = (struct hv_message *)vmb->vp[vp].simp + VMB_SINT;
			if (READ_ONCE(slot->header.message_type) == HVMSG_NONE)
				continue;
			len = min_t(u32, READ_ONCE(slot->header.payload_size),
				    HV_MESSAGE_PAYLOAD_BYTE_COUNT);
			memset(copy, 0, sizeof(copy));
			memcpy(copy, slot->u.payload, len);
			WRITE_ONCE(slot->header.message_type, HVMSG_NONE);
			/* The slot is free before the host is asked for the next message. */
			mb();
			if (READ_ONCE(slot->header.message_flags.asu8) & 1)	/* msg_pending */
				vmb_write_msr(vp, VMB_MSR_EOM, 0);
			vmb_dispatch(copy, len);
			more = true;
		}
	} while (more);
}

static int vmb_initiate(u32 version)
{
	struct vmbus_channel_initiate_contact msg = {};
	struct vmbus_channel_version_response answer;
	int ret;

	msg.header.msgtype = CHANNELMSG_INITIATE_CONTACT;
	msg.vmbus_version_requested = version;
	msg.target_vcpu = 0;
	msg.msg_sint = VMB_SINT;
	msg.monitor_page1 = virt_to_phys(vmb->monitor_pages[0]);
	msg.monitor_page2 = virt_to_phys(vmb->monitor_pages[1]);
	vmb->msg_conn_id = version >= VERSION_WIN10_V5 ? VMB_MSG_CONN_ID_4 : VMB_MSG_CONN_ID;

	ret = vmb_request(&msg, sizeof(msg), CHANNELMSG_VERSION_RESPONSE, 0, NULL,
			  &answer, sizeof(answer));
	if (ret)
		return ret;
	if (!answer.version_supported)
		return -EPROTO;
	if (version >= VERSION_WIN10_V5)
		vmb->msg_conn_id = answer.msg_conn_id;
	return 0;
}

int vmb_connect(void)
{
	struct vmbus_channel_message_header request = {
		.msgtype = CHANNELMSG_REQUESTOFFERS,
	};
	unsigned int i;
	int ret = -EPROTO;

	vmb->monitor_pages[0] = (void *)get_zeroed_page(GFP_KERNEL);
	vmb->monitor_pages[1] = (void *)get_zeroed_page(GFP_KERNEL);
	if (!vmb->monitor_pages[0] || !vmb->monitor_pages[1]) {
		ret = -ENOMEM;
		goto err;
	}
	for (i = 0; i < ARRAY_SIZE(vmb_versions); i++) {
		ret = vmb_initiate(vmb_versions[i]);
		if (ret != -EPROTO)
			break;
	}
	if (ret) {
		pr_err("viridian_vmbus: no VMBus version agreed with the host (%d)\n", ret);
		goto err;
	}
	vmbus_proto_version = vmb_versions[i];
	vmb->up = true;
	reinit_completion(&vmb->offers_done);
	ret = vmb_post_message(&request, sizeof(request), true);
	if (ret)
		goto err;
	/* Devices come and bind in the background; the listing is complete here. */
	if (!wait_for_completion_timeout(&vmb->offers_done,
					 msecs_to_jiffies(VMB_ANSWER_TIMEOUT_MS)))
		pr_warn("viridian_vmbus: the host did not say all offers were delivered\n");
	return 0;
err:
	vmb->up = false;
	free_page((unsigned long)vmb->monitor_pages[0]);
	free_page((unsigned long)vmb->monitor_pages[1]);
	vmb->monitor_pages[0] = NULL;
	vmb->monitor_pages[1] = NULL;
	return ret;
}

/* UNLOAD: the host forgets this guest's channels and GPADLs. */
void vmb_disconnect(void)
{
	struct vmbus_channel_message_header msg = { .msgtype = CHANNELMSG_UNLOAD };

	if (!vmb->up)
		return;
	/* Whether or not the host answers, this guest is gone from the bus. */
	vmb_request(&msg, sizeof(msg), CHANNELMSG_UNLOAD_RESPONSE, 0, NULL, NULL, 0);
	vmb->up = false;
	flush_workqueue(vmb->msg_wq);
	/* The host let go of the monitor pages with the unload. */
	free_page((unsigned long)vmb->monitor_pages[0]);
	free_page((unsigned long)vmb->monitor_pages[1]);
}
