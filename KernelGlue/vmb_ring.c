// SPDX-License-Identifier: GPL-2.0
/*
 * Ring buffers: a channel's outbound ring written under its lock with the
 * signalling rule of Linux (signal only when the host sees the ring go from
 * empty to not empty and has not masked interrupts), and the inbound ring
 * read through a private copy of each packet, so the host cannot change a
 * packet while a driver parses it. The rings are mapped once; reads and
 * writes wrap explicitly.
 */

/* The headers of drivers/hv/ring_buffer.c, in its order (symbol versions). */
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/hyperv.h>
#include <linux/uio.h>
#include <linux/vmalloc.h>
#include <linux/slab.h>
#include <linux/prefetch.h>
#include <linux/io.h>
#include <asm/mshyperv.h>
#include <linux/list.h>
#include <linux/bitops.h>
#include <asm/sync_bitops.h>
#include <asm/hyperv-tlfs.h>
#include <linux/atomic.h>
#include <linux/interrupt.h>
#include <linux/tracepoint.h>

#include "vmb.h"

/* Every packet is followed by the 8-byte "previous indices" trailer. */
#define VMB_TRAILER	sizeof(u64)

int vmb_ring_init(struct hv_ring_buffer_info *rbi, struct page *pages,
		  u32 page_count, u32 max_pkt_size)
{
	BUILD_BUG_ON(sizeof(struct hv_ring_buffer) != PAGE_SIZE);
	if (page_count < 2)
		return -EINVAL;
	rbi->ring_buffer = page_address(pages);
	rbi->ring_buffer->read_index = 0;
	rbi->ring_buffer->write_index = 0;
	rbi->ring_buffer->interrupt_mask = 0;
	/* This side honours pending_send_sz when it reads. */
	rbi->ring_buffer->feature_bits.value = 1;
	rbi->ring_size = page_count << PAGE_SHIFT;
	rbi->ring_size_div10_reciprocal = reciprocal_value(rbi->ring_size / 10);
	rbi->ring_datasize = rbi->ring_size - sizeof(struct hv_ring_buffer);
	rbi->priv_read_index = 0;
	rbi->pkt_buffer = NULL;
	rbi->pkt_buffer_size = 0;
	if (max_pkt_size) {
		rbi->pkt_buffer = kzalloc(max_pkt_size, GFP_KERNEL);
		if (!rbi->pkt_buffer)
			return -ENOMEM;
		rbi->pkt_buffer_size = max_pkt_size;
	}
	return 0;
}

void vmb_ring_cleanup(struct hv_ring_buffer_info *rbi)
{
	mutex_lock(&rbi->ring_buffer_mutex);
	rbi->ring_buffer = NULL;
	mutex_unlock(&rbi->ring_buffer_mutex);
	kfree(rbi->pkt_buffer);
	rbi->pkt_buffer = NULL;
	rbi->pkt_buffer_size = 0;
}

/* Copies @len bytes (at most the data size) in at @offset, wrapping; returns the next offset. */
static u32 vmb_copy_in(struct hv_ring_buffer_info *rbi, u32 offset, const void *src, u32 len)
{
	u8 *data = hv_get_ring_buffer(rbi);
	u32 size = rbi->ring_datasize;
	u32 first = min(len, size - offset);

	memcpy(data + offset, src, first);
	memcpy(data, (const u8 *)src + first, len - first);
	offset += len;
	return offset >= size ? offset - size : offset;
}

static void vmb_copy_out(const struct hv_ring_buffer_info *rbi, u32 offset, void *dst, u32 len)
{
	const u8 *data = hv_get_ring_buffer(rbi);
	u32 size = rbi->ring_datasize;
	u32 first = min(len, size - offset);

	memcpy(dst, data + offset, first);
	memcpy((u8 *)dst + first, data, len - first);
}

/* The host is told only when the ring it reads went from empty to not empty. */
static void vmb_signal_on_write(struct vmbus_channel *channel, u32 old_write)
{
	struct hv_ring_buffer *ring = channel->outbound.ring_buffer;

	/* The new write index is visible before the host's mask is read. */
	virt_mb();
	if (READ_ONCE(ring->interrupt_mask))
		return;
	/* The mask is read before the read index. */
	virt_rmb();
	if (old_write == READ_ONCE(ring->read_index)) {
		channel->intr_out_empty++;
		vmb_signal_host(channel);
	}
}

/*
 * Writes one packet (the descriptor first in @kv[0]) and its trailer. A packet
 * that asks for a completion gets its transaction id from the driver's
 * request-id callback. -EAGAIN when the ring has no room (the ring keeps one
 * byte free, so a full ring never looks empty).
 */
int vmb_ring_write(struct vmbus_channel *channel, const struct kvec *kv,
		   u32 kv_count, u64 requestid)
{
	struct hv_ring_buffer_info *rbi = &channel->outbound;
	const struct vmpacket_descriptor *desc = kv[0].iov_base;
	u64 trans_id = requestid, indices;
	u32 total = VMB_TRAILER, write, old_write, i;
	unsigned long flags;

	if (channel->rescind)
		return -ENODEV;
	for (i = 0; i < kv_count; i++)
		total += kv[i].iov_len;

	spin_lock_irqsave(&rbi->ring_lock, flags);
	if (!rbi->ring_buffer || hv_get_bytes_to_write(rbi) <= total) {
		channel->out_full_total++;
		if (!channel->out_full_flag) {
			channel->out_full_first++;
			channel->out_full_flag = true;
		}
		spin_unlock_irqrestore(&rbi->ring_lock, flags);
		return -EAGAIN;
	}
	channel->out_full_flag = false;
	if (desc->flags == VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED &&
	    channel->next_request_id_callback) {
		u64 id = channel->next_request_id_callback(channel, requestid);

		if (id == VMBUS_RQST_ERROR) {
			spin_unlock_irqrestore(&rbi->ring_lock, flags);
			return -EAGAIN;
		}
		if (id != VMBUS_NO_RQSTOR)
			trans_id = id;
	}
	old_write = rbi->ring_buffer->write_index;
	write = old_write;
	for (i = 0; i < kv_count; i++)
		write = vmb_copy_in(rbi, write, kv[i].iov_base, kv[i].iov_len);
	/* The descriptor's transaction id, 8-aligned, never split by the wrap. */
	vmb_copy_in(rbi, (old_write + offsetof(struct vmpacket_descriptor, trans_id)) %
		    rbi->ring_datasize, &trans_id, sizeof(trans_id));
	indices = (u64)old_write << 32;
	write = vmb_copy_in(rbi, write, &indices, sizeof(indices));
	/* The packet is in the ring before the host can see the new index. */
	virt_mb();
	rbi->ring_buffer->write_index = write;
	spin_unlock_irqrestore(&rbi->ring_lock, flags);

	vmb_signal_on_write(channel, old_write);
	if (channel->rescind) {
		if (trans_id != requestid && channel->request_addr_callback)
			channel->request_addr_callback(channel, trans_id);
		return -ENODEV;
	}
	return 0;
}

/* Bytes the host has written past this side's private read index. */
static u32 vmb_readable(const struct hv_ring_buffer_info *rbi)
{
	/* Acquire: the packet bytes are read after the index that covers them. */
	u32 write = virt_load_acquire(&rbi->ring_buffer->write_index);
	u32 read = rbi->priv_read_index;
	u32 size = rbi->ring_datasize;

	if (write >= size)
		return 0;	/* a host that wrote this is not believed */
	return write >= read ? write - read : size - read + write;
}

/*
 * The next packet, copied out of the ring: its length and data offset are
 * the host's claims, clamped to what is readable and to the copy buffer.
 */
struct vmpacket_descriptor *hv_pkt_iter_first(struct vmbus_channel *channel)
{
	struct hv_ring_buffer_info *rbi = &channel->inbound;
	struct vmpacket_descriptor *copy = rbi->pkt_buffer;
	u32 avail, len, offset;

	if (!rbi->ring_buffer || !copy)
		return NULL;
	avail = vmb_readable(rbi);
	if (avail < sizeof(*copy))
		return NULL;
	avail = min(avail, rbi->pkt_buffer_size);
	vmb_copy_out(rbi, rbi->priv_read_index, copy, sizeof(*copy));
	len = (u32)copy->len8 << 3;
	offset = (u32)copy->offset8 << 3;
	if (len < sizeof(*copy) || len > avail)
		len = avail & ~7U;
	if (offset < sizeof(*copy) || offset > len)
		offset = sizeof(*copy);
	vmb_copy_out(rbi, rbi->priv_read_index, copy, len);
	copy->len8 = len >> 3;
	copy->offset8 = offset >> 3;
	return copy;
}
EXPORT_SYMBOL_GPL(hv_pkt_iter_first);

struct vmpacket_descriptor *__hv_pkt_iter_next(struct vmbus_channel *channel,
					       const struct vmpacket_descriptor *desc)
{
	struct hv_ring_buffer_info *rbi = &channel->inbound;
	u32 next = rbi->priv_read_index + ((u32)desc->len8 << 3) + VMB_TRAILER;

	rbi->priv_read_index = next % rbi->ring_datasize;
	return hv_pkt_iter_first(channel);
}
EXPORT_SYMBOL_GPL(__hv_pkt_iter_next);

/*
 * Publishes what was read. A host waiting for room (pending_send_sz) is
 * signalled when this read gave it enough, and only then.
 */
void hv_pkt_iter_close(struct vmbus_channel *channel)
{
	struct hv_ring_buffer_info *rbi = &channel->inbound;
	u32 start, read, room, pending, size = rbi->ring_datasize;

	if (!rbi->ring_buffer)
		return;
	/* The packets are copied out before the host may overwrite them. */
	virt_rmb();
	start = rbi->ring_buffer->read_index;
	rbi->ring_buffer->read_index = rbi->priv_read_index;
	/* The new read index is visible before pending_send_sz is read. */
	virt_mb();
	pending = READ_ONCE(rbi->ring_buffer->pending_send_sz);
	if (!pending)
		return;
	/* pending_send_sz is read before the write index. */
	virt_rmb();
	room = hv_get_bytes_to_write(rbi);
	if (start >= size)
		return;
	read = rbi->priv_read_index >= start ? rbi->priv_read_index - start :
					       size - start + rbi->priv_read_index;
	/* Signal if the host could not write before this read and can now. */
	if (room > pending && room - read <= pending) {
		channel->intr_in_full++;
		vmb_signal_host(channel);
	}
}
EXPORT_SYMBOL_GPL(hv_pkt_iter_close);
