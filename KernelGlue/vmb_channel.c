// SPDX-License-Identifier: GPL-2.0
/*
 * The channel API of <linux/hyperv.h>: open and close, GPADLs, packets out
 * and in, request ids, and the signal to the host.
 */

/* The headers of drivers/hv/channel.c, in its order (symbol versions). */
#include <linux/kernel.h>
#include <linux/sched.h>
#include <linux/wait.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/module.h>
#include <linux/hyperv.h>
#include <linux/uio.h>
#include <linux/interrupt.h>
#include <linux/set_memory.h>
#include <asm/page.h>
#include <asm/mshyperv.h>
#include <linux/list.h>
#include <linux/bitops.h>
#include <asm/sync_bitops.h>
#include <asm/hyperv-tlfs.h>
#include <linux/atomic.h>
#include <linux/tracepoint.h>

#include "vmb.h"

/*
 * GPADL_HEADER with its one range spelled out (the kernel's struct has an
 * array of ranges, each with a flexible PFN array, which sparse rejects).
 */
struct vmb_gpadl_header {
	struct vmbus_channel_message_header header;
	u32 child_relid;
	u32 gpadl;
	u16 range_buflen;
	u16 rangecount;
	u32 byte_count;
	u32 byte_offset;
	u64 pfn[];
} __packed;

/* PFNs a GPADL header message and a body message carry. */
#define VMB_HEADER_PFNS ((HV_MESSAGE_PAYLOAD_BYTE_COUNT - \
			  sizeof(struct vmb_gpadl_header)) / sizeof(u64))
#define VMB_BODY_PFNS ((HV_MESSAGE_PAYLOAD_BYTE_COUNT - \
			sizeof(struct vmbus_channel_gpadl_body)) / sizeof(u64))

/*
 * Tells the host a channel has something for it: through the doorbell of a
 * fast-signal slot if the host gave its connection one, else HvSignalEvent.
 */
void vmb_signal_host(struct vmbus_channel *channel)
{
	struct vglue_shared_header *h = vmb->shm;
	u32 conn = (u32)channel->sig_event, slot, slots;
	u64 result;

	channel->sig_events++;
	slots = min_t(u32, VGLUE_SIGNAL_SLOTS, VGLUE_MAX_VECTORS - 1 - vmb->vps);
	for (slot = 0; slot < slots; slot++) {
		if (le32_to_cpu((__force __le32)READ_ONCE(h->signal_slots[slot])) == conn) {
			vmb_ring_doorbell(1 + vmb->vps + slot);
			return;
		}
	}
	vmb_exit(raw_smp_processor_id() % vmb->vps, VMB_EXIT_HYPERCALL, 0,
		 VMB_CALL_SIGNAL_EVENT | VMB_CALL_FAST, conn, 0, 0, &result, NULL);
}

static u64 vmb_buffer_pfn(void *base, u32 page)
{
	void *p = (u8 *)base + ((size_t)page << PAGE_SHIFT);

	return is_vmalloc_addr(p) ? vmalloc_to_pfn(p) : PHYS_PFN(virt_to_phys(p));
}

/*
 * Describes @size bytes at @buffer (page aligned, linear or vmalloc'd) to the
 * host: a GPADL header with the first PFNs, bodies with the rest, then the
 * wait for GPADL_CREATED.
 */
static int vmb_gpadl_create(struct vmbus_channel *channel, void *buffer, u32 size,
			    u32 *handle)
{
	u8 msg[HV_MESSAGE_PAYLOAD_BYTE_COUNT];
	struct vmb_gpadl_header *head = (void *)msg;
	struct vmbus_channel_gpadl_body *body = (void *)msg;
	struct vmbus_channel_gpadl_created *created;
	u32 pages = size >> PAGE_SHIFT, gpadl, i, n, done;
	struct vmb_waiter *w;
	int ret;

	if (!size || (size & ~PAGE_MASK) || offset_in_page(buffer))
		return -EINVAL;
	gpadl = atomic_inc_return(&vmb->next_gpadl);
	w = vmb_waiter_add(CHANNELMSG_GPADL_CREATED, gpadl, channel);
	if (!w)
		return -ENOMEM;

	memset(msg, 0, sizeof(msg));
	n = min_t(u32, pages, VMB_HEADER_PFNS);
	head->header.msgtype = CHANNELMSG_GPADL_HEADER;
	head->child_relid = channel->offermsg.child_relid;
	head->gpadl = gpadl;
	head->rangecount = 1;
	head->range_buflen = sizeof(struct gpa_range) + pages * sizeof(u64);
	head->byte_count = size;
	head->byte_offset = 0;
	for (i = 0; i < n; i++)
		head->pfn[i] = vmb_buffer_pfn(buffer, i);
	ret = vmb_post_message(msg, sizeof(*head) + n * sizeof(u64), true);
	for (done = n; !ret && done < pages; done += n) {
		memset(msg, 0, sizeof(msg));
		n = min_t(u32, pages - done, VMB_BODY_PFNS);
		body->header.msgtype = CHANNELMSG_GPADL_BODY;
		body->gpadl = gpadl;
		for (i = 0; i < n; i++)
			body->pfn[i] = vmb_buffer_pfn(buffer, done + i);
		ret = vmb_post_message(msg, sizeof(*body) + n * sizeof(u64), true);
	}
	if (!ret)
		ret = vmb_waiter_wait(w, VMB_ANSWER_TIMEOUT_MS);
	if (!ret) {
		created = (void *)w->answer;
		if (channel->rescind)
			ret = -ENODEV;
		else if (created->creation_status)
			ret = -EIO;
	}
	vmb_waiter_remove(w);
	if (!ret)
		*handle = gpadl;
	return ret;
}

int vmbus_establish_gpadl(struct vmbus_channel *channel, void *kbuffer, u32 size,
			  struct vmbus_gpadl *gpadl)
{
	int ret = vmb_gpadl_create(channel, kbuffer, size, &gpadl->gpadl_handle);

	if (!ret) {
		gpadl->buffer = kbuffer;
		gpadl->size = size;
		gpadl->decrypted = false;
	}
	return ret;
}
EXPORT_SYMBOL_GPL(vmbus_establish_gpadl);

int vmbus_teardown_gpadl(struct vmbus_channel *channel, struct vmbus_gpadl *gpadl)
{
	struct vmbus_channel_gpadl_teardown msg = {
		.header.msgtype = CHANNELMSG_GPADL_TEARDOWN,
		.child_relid = channel->offermsg.child_relid,
		.gpadl = gpadl->gpadl_handle,
	};
	int ret = 0;

	if (!gpadl->gpadl_handle)
		return 0;
	/* A rescinded channel's GPADLs are gone on the host already. */
	if (!channel->rescind && vmb->up)
		ret = vmb_request(&msg, sizeof(msg), CHANNELMSG_GPADL_TORNDOWN, gpadl->gpadl_handle,
				  channel, NULL, 0);
	/* Pages the host may still use are never freed by the caller then. */
	if (!ret)
		gpadl->gpadl_handle = 0;
	return ret;
}
EXPORT_SYMBOL_GPL(vmbus_teardown_gpadl);

static int vmb_requestor_init(struct vmbus_channel *channel)
{
	struct vmbus_requestor *r = &channel->requestor;
	u32 i, size = channel->rqstor_size;

	r->req_arr = kcalloc(size, sizeof(u64), GFP_KERNEL);
	r->req_bitmap = bitmap_zalloc(size, GFP_KERNEL);
	if (!r->req_arr || !r->req_bitmap) {
		kfree(r->req_arr);
		bitmap_free(r->req_bitmap);
		r->req_arr = NULL;
		r->req_bitmap = NULL;
		return -ENOMEM;
	}
	/* Free slots chain to the next one; the last ends the chain. */
	for (i = 0; i < size; i++)
		r->req_arr[i] = i + 1 < size ? i + 1 : U64_MAX;
	r->size = size;
	r->next_request_id = 0;
	spin_lock_init(&r->req_lock);
	return 0;
}

static void vmb_requestor_free(struct vmbus_channel *channel)
{
	kfree(channel->requestor.req_arr);
	bitmap_free(channel->requestor.req_bitmap);
	channel->requestor.req_arr = NULL;
	channel->requestor.req_bitmap = NULL;
}

/* Ids are slot + 1: 0 is what the host uses for packets nobody asked for. */
u64 vmbus_next_request_id(struct vmbus_channel *channel, u64 rqst_addr)
{
	struct vmbus_requestor *r = &channel->requestor;
	unsigned long flags;
	u64 slot;

	if (!channel->rqstor_size)
		return VMBUS_NO_RQSTOR;
	spin_lock_irqsave(&r->req_lock, flags);
	slot = r->next_request_id;
	if (!r->req_arr || slot >= r->size) {
		spin_unlock_irqrestore(&r->req_lock, flags);
		return VMBUS_RQST_ERROR;
	}
	r->next_request_id = r->req_arr[slot];
	r->req_arr[slot] = rqst_addr;
	set_bit(slot, r->req_bitmap);
	spin_unlock_irqrestore(&r->req_lock, flags);
	return slot + 1;
}
EXPORT_SYMBOL_GPL(vmbus_next_request_id);

/* The address behind a transaction id the host echoed, freeing its slot. */
u64 vmbus_request_addr(struct vmbus_channel *channel, u64 trans_id)
{
	struct vmbus_requestor *r = &channel->requestor;
	unsigned long flags;
	u64 addr, slot;

	if (!channel->rqstor_size)
		return VMBUS_NO_RQSTOR;
	if (!trans_id)
		return VMBUS_RQST_ERROR;
	slot = trans_id - 1;
	spin_lock_irqsave(&r->req_lock, flags);
	if (!r->req_arr || slot >= r->size || !test_bit(slot, r->req_bitmap)) {
		spin_unlock_irqrestore(&r->req_lock, flags);
		return VMBUS_RQST_ERROR;
	}
	addr = r->req_arr[slot];
	r->req_arr[slot] = r->next_request_id;
	r->next_request_id = slot;
	clear_bit(slot, r->req_bitmap);
	spin_unlock_irqrestore(&r->req_lock, flags);
	return addr;
}
EXPORT_SYMBOL_GPL(vmbus_request_addr);

/* No driver callback runs on @channel after this returns. */
static void vmb_callback_reset(struct vmbus_channel *channel)
{
	unsigned long flags;

	tasklet_disable(&channel->callback_event);
	spin_lock_irqsave(&channel->sched_lock, flags);
	channel->onchannel_callback = NULL;
	spin_unlock_irqrestore(&channel->sched_lock, flags);
	tasklet_enable(&channel->callback_event);
}

static void vmb_ring_free(struct vmbus_channel *channel)
{
	vmb_ring_cleanup(&channel->outbound);
	vmb_ring_cleanup(&channel->inbound);
	if (channel->ringbuffer_page)
		__free_pages(channel->ringbuffer_page,
			     get_order(channel->ringbuffer_pagecount << PAGE_SHIFT));
	channel->ringbuffer_page = NULL;
	channel->ringbuffer_pagecount = 0;
}

static int vmb_send_open(struct vmbus_channel *channel, void *userdata, u32 userdatalen)
{
	struct vmbus_channel_open_channel msg = {
		.header.msgtype = CHANNELMSG_OPENCHANNEL,
		.child_relid = channel->offermsg.child_relid,
		.openid = channel->offermsg.child_relid,
		.ringbuffer_gpadlhandle = channel->ringbuffer_gpadlhandle.gpadl_handle,
		.downstream_ringbuffer_pageoffset = channel->ringbuffer_send_offset,
		.target_vp = channel->target_cpu,
	};
	struct vmbus_channel_open_result result;
	int ret;

	if (userdatalen)
		memcpy(msg.userdata, userdata, userdatalen);
	ret = vmb_request(&msg, sizeof(msg), CHANNELMSG_OPENCHANNEL_RESULT,
			  channel->offermsg.child_relid, channel, &result, sizeof(result));
	if (ret)
		return ret;
	if (channel->rescind)
		return -ENODEV;
	return result.status ? -EAGAIN : 0;
}

int vmbus_open(struct vmbus_channel *newchannel, u32 send_ringbuffer_size,
	       u32 recv_ringbuffer_size, void *userdata, u32 userdatalen,
	       void (*onchannelcallback)(void *context), void *context)
{
	struct vmbus_channel *ch = newchannel;
	u32 send_pages = send_ringbuffer_size >> PAGE_SHIFT;
	u32 pages = send_pages + (recv_ringbuffer_size >> PAGE_SHIFT);
	int ret;

	if ((send_ringbuffer_size | recv_ringbuffer_size) & ~PAGE_MASK ||
	    send_pages < 2 || pages - send_pages < 2 || userdatalen > MAX_USER_DEFINED_BYTES)
		return -EINVAL;
	if (ch->state != CHANNEL_OPEN_STATE)
		return -EINVAL;
	if (ch->rescind)
		return -ENODEV;
	ch->ringbuffer_page = alloc_pages(GFP_KERNEL | __GFP_ZERO, get_order(pages << PAGE_SHIFT));
	if (!ch->ringbuffer_page)
		return -ENOMEM;
	ch->ringbuffer_pagecount = pages;
	ch->ringbuffer_send_offset = send_pages;
	if (ch->rqstor_size) {
		ret = vmb_requestor_init(ch);
		if (ret)
			goto err_ring;
	}
	if (!ch->max_pkt_size)
		ch->max_pkt_size = VMBUS_DEFAULT_MAX_PKT_SIZE;
	ch->state = CHANNEL_OPENING_STATE;

	ret = vmbus_establish_gpadl(ch, page_address(ch->ringbuffer_page),
				    pages << PAGE_SHIFT, &ch->ringbuffer_gpadlhandle);
	if (ret)
		goto err_requestor;
	ret = vmb_ring_init(&ch->outbound, ch->ringbuffer_page, send_pages, 0);
	if (!ret)
		ret = vmb_ring_init(&ch->inbound, ch->ringbuffer_page + send_pages,
				    pages - send_pages, ch->max_pkt_size);
	if (ret)
		goto err_gpadl;
	/* Callbacks can run as soon as the host has the ring. */
	ch->channel_callback_context = context;
	WRITE_ONCE(ch->onchannel_callback, onchannelcallback);
	ret = vmb_send_open(ch, userdata, userdatalen);
	if (ret)
		goto err_callback;
	ch->state = CHANNEL_OPENED_STATE;
	return 0;

err_callback:
	vmb_callback_reset(ch);
err_gpadl:
	if (vmbus_teardown_gpadl(ch, &ch->ringbuffer_gpadlhandle)) {
		/* The host may still write the ring: it is leaked, not freed. */
		ch->ringbuffer_page = NULL;
	}
err_requestor:
	vmb_requestor_free(ch);
err_ring:
	vmb_ring_free(ch);
	ch->state = CHANNEL_OPEN_STATE;
	return ret;
}
EXPORT_SYMBOL_GPL(vmbus_open);

static void vmb_close_one(struct vmbus_channel *channel)
{
	struct vmbus_channel_close_channel msg = {
		.header.msgtype = CHANNELMSG_CLOSECHANNEL,
		.child_relid = channel->offermsg.child_relid,
	};

	vmb_callback_reset(channel);
	if (channel->state != CHANNEL_OPENED_STATE)
		return;
	channel->state = CHANNEL_OPEN_STATE;
	if (!channel->rescind && vmb->up)
		vmb_post_message(&msg, sizeof(msg), true);
	if (vmbus_teardown_gpadl(channel, &channel->ringbuffer_gpadlhandle)) {
		pr_warn("viridian_vmbus: relid %u: ring kept, the host did not tear down its GPADL\n",
			channel->offermsg.child_relid);
		channel->ringbuffer_page = NULL;
	}
	vmb_ring_free(channel);
	vmb_requestor_free(channel);
}

/*
 * Closes @channel. A sub-channel the host rescinded while it was open goes
 * away now (its rescind left that to the close: rescind_ref).
 */
static void vmb_close_and_release(struct vmbus_channel *channel)
{
	vmb_close_one(channel);
	if (channel->primary_channel && channel->rescind_ref)
		vmb_sub_remove(channel);
}

/*
 * Closing a primary channel closes its sub-channels first. The channel lock
 * is not held while a close waits for the host (the message loop takes it).
 */
void vmbus_close(struct vmbus_channel *channel)
{
	struct vmbus_channel *sc, *open;

	mutex_lock(&vmb->close_mutex);
	while (!channel->primary_channel) {
		open = NULL;
		mutex_lock(&vmb->chan_mutex);
		list_for_each_entry(sc, &channel->sc_list, sc_list) {
			if (sc->state == CHANNEL_OPENED_STATE) {
				open = sc;
				break;
			}
		}
		mutex_unlock(&vmb->chan_mutex);
		if (!open)
			break;
		vmb_close_and_release(open);
	}
	vmb_close_and_release(channel);
	mutex_unlock(&vmb->close_mutex);
}
EXPORT_SYMBOL_GPL(vmbus_close);

int vmbus_sendpacket(struct vmbus_channel *channel, void *buffer, u32 bufferLen,
		     u64 requestid, enum vmbus_packet_type type, u32 flags)
{
	struct vmpacket_descriptor desc;
	u32 len = sizeof(desc) + bufferLen, aligned = ALIGN(len, sizeof(u64));
	u64 zero = 0;
	struct kvec kv[3] = {
		{ .iov_base = &desc, .iov_len = sizeof(desc) },
		{ .iov_base = buffer, .iov_len = bufferLen },
		{ .iov_base = &zero, .iov_len = aligned - len },
	};

	desc.type = type;
	desc.offset8 = sizeof(desc) >> 3;
	desc.len8 = aligned >> 3;
	desc.flags = flags;
	desc.trans_id = VMBUS_RQST_INIT;
	return vmb_ring_write(channel, kv, 3, requestid);
}
EXPORT_SYMBOL(vmbus_sendpacket);

int vmbus_sendpacket_mpb_desc(struct vmbus_channel *channel, struct vmbus_packet_mpb_array *desc,
			      u32 desc_size, void *buffer, u32 bufferlen, u64 requestid)
{
	u32 len = desc_size + bufferlen, aligned = ALIGN(len, sizeof(u64));
	u64 zero = 0;
	struct kvec kv[3] = {
		{ .iov_base = desc, .iov_len = desc_size },
		{ .iov_base = buffer, .iov_len = bufferlen },
		{ .iov_base = &zero, .iov_len = aligned - len },
	};

	desc->type = VM_PKT_DATA_USING_GPA_DIRECT;
	desc->flags = VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED;
	desc->dataoffset8 = desc_size >> 3;
	desc->length8 = aligned >> 3;
	desc->transactionid = VMBUS_RQST_INIT;
	desc->reserved = 0;
	/* rangecount is the caller's: hv_netvsc sends one range per page buffer. */
	return vmb_ring_write(channel, kv, 3, requestid);
}
EXPORT_SYMBOL_GPL(vmbus_sendpacket_mpb_desc);

/*
 * The next packet's payload (past its descriptor) into @buffer. With no
 * packet, *@buffer_actual_len is 0. A payload larger than @bufferlen stays
 * in the ring: -ENOBUFS, with its length in *@buffer_actual_len.
 */
int vmbus_recvpacket(struct vmbus_channel *channel, void *buffer, u32 bufferlen,
		     u32 *buffer_actual_len, u64 *requestid)
{
	struct vmpacket_descriptor *desc;
	u32 offset, len;

	*buffer_actual_len = 0;
	*requestid = 0;
	if (!bufferlen)
		return -EINVAL;
	desc = hv_pkt_iter_first(channel);
	if (!desc)
		return 0;
	offset = (u32)desc->offset8 << 3;
	len = ((u32)desc->len8 << 3) - offset;
	*buffer_actual_len = len;
	*requestid = desc->trans_id;
	if (len > bufferlen)
		return -ENOBUFS;
	memcpy(buffer, (u8 *)desc + offset, len);
	__hv_pkt_iter_next(channel, desc);
	hv_pkt_iter_close(channel);
	return 0;
}
EXPORT_SYMBOL(vmbus_recvpacket);
