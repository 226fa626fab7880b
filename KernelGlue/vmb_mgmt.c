// SPDX-License-Identifier: GPL-2.0
/*
 * Channels: offers become channels (primary ones a device, sub-channels a
 * callback to their primary's driver), rescinds take them away; the
 * integration-service version negotiation helper.
 */

/* The headers of drivers/hv/channel_mgmt.c, in its order (symbol versions). */
#include <linux/kernel.h>
#include <linux/interrupt.h>
#include <linux/sched.h>
#include <linux/wait.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/cpu.h>
#include <linux/hyperv.h>
#include <asm/mshyperv.h>
#include <linux/sched/isolation.h>
#include <linux/bitops.h>
#include <asm/sync_bitops.h>
#include <asm/hyperv-tlfs.h>
#include <linux/atomic.h>
#include <linux/tracepoint.h>

#include "vmb.h"

void vmbus_set_sc_create_callback(struct vmbus_channel *primary_channel,
				  void (*sc_cr_cb)(struct vmbus_channel *new_sc))
{
	primary_channel->sc_creation_callback = sc_cr_cb;
}
EXPORT_SYMBOL_GPL(vmbus_set_sc_create_callback);

/* The first version of @wanted (newest first) that @offered lists, or -1. */
static int vmb_pick_version(const struct ic_version *offered, unsigned int count,
			    const int *wanted, int wanted_count)
{
	unsigned int j;
	int i;

	for (i = 0; i < wanted_count; i++)
		for (j = 0; j < count; j++)
			if (offered[j].major == (u16)(wanted[i] >> 16) &&
			    offered[j].minor == (u16)(wanted[i] & 0xffff))
				return wanted[i];
	return -1;
}

/*
 * Turns the host's ICMSG negotiate request in @buf into the answer: the
 * newest framework and service versions both sides know, or none. The
 * version counts come from the host and are checked against @buflen.
 */
bool vmbus_prep_negotiate_resp(struct icmsg_hdr *icmsghdrp, u8 *buf, u32 buflen,
			       const int *fw_version, int fw_vercnt,
			       const int *srv_version, int srv_vercnt,
			       int *nego_fw_version, int *nego_srv_version)
{
	struct icmsg_negotiate *neg = (struct icmsg_negotiate *)&buf[ICMSG_HDR];
	int fw = -1, srv = -1;
	u16 nfw, nsrv;

	if (buflen < ICMSG_HDR + offsetof(struct icmsg_negotiate, reserved))
		return false;
	icmsghdrp->icmsgsize = 0x10;
	nfw = neg->icframe_vercnt;
	nsrv = neg->icmsg_vercnt;
	if (nfw <= IC_VERSION_NEGOTIATION_MAX_VER_COUNT &&
	    nsrv <= IC_VERSION_NEGOTIATION_MAX_VER_COUNT &&
	    ICMSG_NEGOTIATE_PKT_SIZE(nfw, nsrv) <= buflen) {
		fw = vmb_pick_version(neg->icversion_data, nfw, fw_version, fw_vercnt);
		if (fw >= 0)
			srv = vmb_pick_version(neg->icversion_data + nfw, nsrv,
					       srv_version, srv_vercnt);
	}
	if (fw < 0 || srv < 0) {
		neg->icframe_vercnt = 0;
		neg->icmsg_vercnt = 0;
		fw = max(fw, 0);
		srv = 0;
	} else {
		neg->icframe_vercnt = 1;
		neg->icmsg_vercnt = 1;
	}
	if (nego_fw_version)
		*nego_fw_version = fw;
	if (nego_srv_version)
		*nego_srv_version = srv;
	/* The answer's two version slots lie inside the request checked above. */
	if (buflen >= ICMSG_NEGOTIATE_PKT_SIZE(1, 1)) {
		neg->icversion_data[0].major = fw >> 16;
		neg->icversion_data[0].minor = fw & 0xffff;
		neg->icversion_data[1].major = srv >> 16;
		neg->icversion_data[1].minor = srv & 0xffff;
	}
	return neg->icframe_vercnt == 1;
}
EXPORT_SYMBOL_GPL(vmbus_prep_negotiate_resp);

/* Called in the VP interrupt: the event of channel @relid. */
void vmb_relid_event(u32 relid)
{
	struct vmbus_channel *channel;

	if (relid >= VMB_MAX_RELIDS)
		return;
	spin_lock(&vmb->relid_lock);
	channel = vmb->relids[relid];
	if (channel)
		vmb_channel_event(channel);
	spin_unlock(&vmb->relid_lock);
}

static void vmb_relid_set(u32 relid, struct vmbus_channel *channel)
{
	unsigned long flags;

	spin_lock_irqsave(&vmb->relid_lock, flags);
	vmb->relids[relid] = channel;
	spin_unlock_irqrestore(&vmb->relid_lock, flags);
}

static struct vmbus_channel *vmb_relid_get(u32 relid)
{
	struct vmbus_channel *channel;
	unsigned long flags;

	spin_lock_irqsave(&vmb->relid_lock, flags);
	channel = vmb->relids[relid];
	spin_unlock_irqrestore(&vmb->relid_lock, flags);
	return channel;
}

static struct vmbus_channel *vmb_channel_alloc(const struct vmbus_channel_offer_channel *offer)
{
	struct vmbus_channel *ch = kzalloc(sizeof(*ch), GFP_KERNEL);
	unsigned int cpus;

	if (!ch)
		return NULL;
	spin_lock_init(&ch->sched_lock);
	init_completion(&ch->rescind_event);
	INIT_LIST_HEAD(&ch->sc_list);
	INIT_LIST_HEAD(&ch->listentry);
	tasklet_init(&ch->callback_event, vmb_on_event, (unsigned long)ch);
	spin_lock_init(&ch->outbound.ring_lock);
	spin_lock_init(&ch->inbound.ring_lock);
	mutex_init(&ch->outbound.ring_buffer_mutex);
	mutex_init(&ch->inbound.ring_buffer_mutex);
	ch->offermsg = *offer;
	ch->monitor_grp = offer->monitorid / 32;
	ch->monitor_bit = offer->monitorid % 32;
	ch->is_dedicated_interrupt = offer->is_dedicated_interrupt != 0;
	ch->sig_event = offer->connection_id;
	ch->callback_mode = HV_CALL_BATCHED;
	ch->state = CHANNEL_OPEN_STATE;
	/* VP n's interrupt serves the channels targeted at CPU n. */
	cpus = min_t(unsigned int, num_online_cpus(), vmb->vps);
	ch->target_cpu = offer->child_relid % max(cpus, 1U);
	return ch;
}

static void vmb_channel_free(struct vmbus_channel *ch)
{
	tasklet_kill(&ch->callback_event);
	kfree(ch);
}

static void vmb_relid_released(u32 relid)
{
	struct vmbus_channel_relid_released msg = {
		.header.msgtype = CHANNELMSG_RELID_RELEASED,
		.child_relid = relid,
	};

	vmb_post_message(&msg, sizeof(msg), true);
}

static void vmb_add_primary(struct work_struct *work)
{
	struct vmbus_channel *ch = container_of(work, struct vmbus_channel, add_channel_work);

	if (vmb_device_add(ch)) {
		mutex_lock(&vmb->chan_mutex);
		list_del_init(&ch->listentry);
		mutex_unlock(&vmb->chan_mutex);
		vmb_relid_set(ch->offermsg.child_relid, NULL);
		vmb_relid_released(ch->offermsg.child_relid);
		vmb_channel_free(ch);
	}
}

static void vmb_add_sub(struct work_struct *work)
{
	struct vmbus_channel *ch = container_of(work, struct vmbus_channel, add_channel_work);
	struct vmbus_channel *primary = ch->primary_channel;

	if (primary->sc_creation_callback && !ch->rescind)
		primary->sc_creation_callback(ch);
	/* A rescind waits for this: the driver is done with the offer. */
	smp_store_release(&ch->probe_done, true);
}

/* A closed sub-channel is forgotten: RELID_RELEASED, freed. Under close_mutex. */
void vmb_sub_remove(struct vmbus_channel *sc)
{
	u32 relid = sc->offermsg.child_relid;

	mutex_lock(&vmb->chan_mutex);
	list_del_init(&sc->sc_list);
	mutex_unlock(&vmb->chan_mutex);
	vmb_relid_set(relid, NULL);
	if (vmb->up)
		vmb_relid_released(relid);
	vmb_channel_free(sc);
}

static struct vmbus_channel *vmb_find_primary(const guid_t *instance)
{
	struct vmbus_channel *ch;

	list_for_each_entry(ch, &vmb->channels, listentry)
		if (guid_equal(&ch->offermsg.offer.if_instance, instance))
			return ch;
	return NULL;
}

void vmb_on_offer(const struct vmbus_channel_offer_channel *offer)
{
	u32 relid = offer->child_relid;
	struct vmbus_channel *ch, *primary = NULL;

	if (relid == 0 || relid >= VMB_MAX_RELIDS || vmb_relid_get(relid)) {
		pr_warn("viridian_vmbus: offer of relid %u refused (out of range or in use)\n", relid);
		return;
	}
	ch = vmb_channel_alloc(offer);
	if (!ch)
		return;
	mutex_lock(&vmb->chan_mutex);
	if (offer->offer.sub_channel_index) {
		primary = vmb_find_primary(&offer->offer.if_instance);
		if (!primary || !primary->device_obj || primary->rescind) {
			mutex_unlock(&vmb->chan_mutex);
			pr_warn("viridian_vmbus: sub-channel %u without its primary\n", relid);
			vmb_channel_free(ch);
			return;
		}
		/* As in Linux, only the primary has the device (device_obj). */
		ch->primary_channel = primary;
		list_add_tail(&ch->sc_list, &primary->sc_list);
	} else {
		list_add_tail(&ch->listentry, &vmb->channels);
	}
	mutex_unlock(&vmb->chan_mutex);
	vmb_relid_set(relid, ch);
	if (primary) {
		INIT_WORK(&ch->add_channel_work, vmb_add_sub);
		queue_work(vmb->sub_wq, &ch->add_channel_work);
	} else {
		INIT_WORK(&ch->add_channel_work, vmb_add_primary);
		queue_work(vmb->add_wq, &ch->add_channel_work);
	}
}

/* A primary's device is gone (its driver closed it): the channels go too. */
void vmb_channels_release(struct vmbus_channel *primary)
{
	struct vmbus_channel *sc, *tmp;
	LIST_HEAD(subs);

	/* close_mutex: a rescind work of one of these channels checks they still exist. */
	mutex_lock(&vmb->close_mutex);
	mutex_lock(&vmb->chan_mutex);
	list_del_init(&primary->listentry);
	list_splice_init(&primary->sc_list, &subs);
	mutex_unlock(&vmb->chan_mutex);
	list_for_each_entry_safe(sc, tmp, &subs, sc_list) {
		vmb_relid_set(sc->offermsg.child_relid, NULL);
		if (vmb->up)
			vmb_relid_released(sc->offermsg.child_relid);
		vmb_channel_free(sc);
	}
	vmb_relid_set(primary->offermsg.child_relid, NULL);
	if (vmb->up)
		vmb_relid_released(primary->offermsg.child_relid);
	mutex_unlock(&vmb->close_mutex);
	vmb_channel_free(primary);
}

/* The removal of a rescinded primary's device, queued behind its addition. */
struct vmb_rescind {
	struct work_struct work;
	struct vmbus_channel *channel;
	u32 relid;
};

static void vmb_rescind_work(struct work_struct *work)
{
	struct vmb_rescind *r = container_of(work, struct vmb_rescind, work);
	struct vmbus_channel *ch = r->channel;
	u32 relid = r->relid;
	bool listed;

	kfree(r);
	for (;;) {
		mutex_lock(&vmb->close_mutex);
		/* Freed meanwhile (its device released at unload): nothing to do. */
		if (vmb_relid_get(relid) != ch) {
			mutex_unlock(&vmb->close_mutex);
			return;
		}
		/* A sub-channel's driver callback may still be opening it (and failing now). */
		if (!ch->primary_channel || smp_load_acquire(&ch->probe_done))
			break;
		mutex_unlock(&vmb->close_mutex);
		usleep_range(1000, 2000);
	}
	if (ch->primary_channel) {
		if (ch->state == CHANNEL_OPENED_STATE)
			ch->rescind_ref = true;	/* vmbus_close removes it */
		else
			vmb_sub_remove(ch);
		mutex_unlock(&vmb->close_mutex);
		return;
	}
	mutex_lock(&vmb->chan_mutex);
	listed = !list_empty(&ch->listentry);
	list_del_init(&ch->listentry);
	mutex_unlock(&vmb->chan_mutex);
	mutex_unlock(&vmb->close_mutex);
	/* Unlisted, it is freed only by the release this removal leads to. */
	if (listed)
		vmb_device_remove(ch);
}

void vmb_on_rescind(u32 relid)
{
	struct vmb_rescind *r;
	struct vmbus_channel *ch;

	if (relid == 0 || relid >= VMB_MAX_RELIDS)
		return;
	ch = vmb_relid_get(relid);
	if (!ch || ch->rescind)
		return;
	ch->rescind = true;
	vmb_waiters_cancel(ch);
	complete(&ch->rescind_event);
	if (ch->chn_rescind_callback)
		ch->chn_rescind_callback(ch);
	/* A primary's add work may not have run yet: the removal queues behind it. */
	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return;
	r->channel = ch;
	r->relid = relid;
	INIT_WORK(&r->work, vmb_rescind_work);
	queue_work(vmb->add_wq, &r->work);
}

/* Module removal: every device goes, which closes and frees the channels. */
void vmb_remove_all(void)
{
	struct vmbus_channel *ch;

	flush_workqueue(vmb->add_wq);
	flush_workqueue(vmb->sub_wq);
	for (;;) {
		mutex_lock(&vmb->chan_mutex);
		ch = list_first_entry_or_null(&vmb->channels, struct vmbus_channel, listentry);
		if (ch)
			list_del_init(&ch->listentry);
		mutex_unlock(&vmb->chan_mutex);
		if (!ch)
			break;
		vmb_device_remove(ch);
	}
}
