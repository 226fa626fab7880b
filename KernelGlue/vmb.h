/* SPDX-License-Identifier: GPL-2.0 */
/*
 * viridian_vmbus: a VMBus core for QEMU guests served by viridian-host, with
 * the API of <linux/hyperv.h>, so that the kernel's own hv_storvsc, hv_netvsc
 * and hv_utils bind to the host's offers unchanged. The carrier is the one
 * viridian_glue uses (ivshmem-doorbell: shared region, doorbells, MSI-X);
 * hypercalls and synthetic MSRs go through the VP register blocks.
 *
 * The files that export symbols include the headers the matching files of
 * drivers/hv include, in the same order, and nothing else before them: the
 * symbol versions (modversions CRCs) are then those of hv_vmbus. For the same
 * reason this header includes nothing that <linux/hyperv.h> does not bring.
 */
#ifndef VMB_H
#define VMB_H

#include <linux/hyperv.h>

#include "include/uapi/viridian_glue.h"

struct pci_dev;

/* ivshmem BAR0 registers. */
#define VMB_REG_DOORBELL	0x0c
#define VMB_REGS_MIN		0x10

/* The VP register block (see Sources/PartitionLink/VPBlock.swift). */
#define VMB_VPB_SIZE		64
#define VMB_VPB_KIND		0
#define VMB_VPB_MSR		4
#define VMB_VPB_CONTROL		8
#define VMB_VPB_INPUT		16
#define VMB_VPB_OUTPUT		24
#define VMB_VPB_VALUE		32
#define VMB_VPB_RESULT		40
#define VMB_VPB_SEQUENCE	48
#define VMB_VPB_COMPLETED	56
#define VMB_EXIT_HYPERCALL	1
#define VMB_EXIT_WRITE_MSR	2
#define VMB_EXIT_READ_MSR	3
#define VMB_MAX_VPS		15

/* Synthetic MSRs and hypercalls used here. */
#define VMB_MSR_TIME_REF_COUNT	0x40000020
#define VMB_MSR_SCONTROL	0x40000080
#define VMB_MSR_SIEFP		0x40000082
#define VMB_MSR_SIMP		0x40000083
#define VMB_MSR_EOM		0x40000084
#define VMB_MSR_SINT0		0x40000090
#define VMB_CALL_POST_MESSAGE	0x005c
#define VMB_CALL_SIGNAL_EVENT	0x005d
#define VMB_CALL_FAST		BIT_ULL(16)
#define VMB_STATUS_TIMEOUT	0x78

/* The SINT of VMBus messages and events; the message connection ids. */
#define VMB_SINT		2
#define VMB_MSG_CONN_ID		1
#define VMB_MSG_CONN_ID_4	4

/* How long a request waits for the host's answer. */
#define VMB_ANSWER_TIMEOUT_MS	10000

/* Relids the host may use (the SIEFP area of one SINT has this many flags). */
#define VMB_MAX_RELIDS		HV_EVENT_FLAGS_COUNT

/* One VP's SynIC pages and its register block. */
struct vmb_vp {
	spinlock_t exit_lock;		/* the register block, seq */
	spinlock_t post_lock;		/* post_page; taken before exit_lock */
	u64 seq;
	void *simp;			/* message page */
	void *siefp;			/* event flags page */
	void *post_page;		/* HvPostMessage input */
};

/* A request waiting for the host's answer (a channel message). */
struct vmb_waiter {
	struct list_head node;
	u32 msgtype;
	u32 key;			/* relid, gpadl handle or 0 */
	struct vmbus_channel *channel;	/* whose rescind ends the wait, or NULL */
	struct completion done;
	u8 answer[HV_MESSAGE_PAYLOAD_BYTE_COUNT];
};

/* The bus: one bound ivshmem-doorbell function. */
struct vmb_bus {
	struct pci_dev *pdev;
	void __iomem *regs;
	struct vglue_shared_header *shm;
	resource_size_t shm_size;
	u32 vps;
	u32 host_peer;
	u32 generation;
	unsigned int nvec;
	wait_queue_head_t control_wq;
	struct vmb_vp vp[VMB_MAX_VPS];

	u32 msg_conn_id;
	void *monitor_pages[2];
	struct workqueue_struct *msg_wq;	/* ordered: messages, offers */
	struct work_struct msg_work;
	struct workqueue_struct *add_wq;	/* ordered: primary devices */
	struct workqueue_struct *sub_wq;	/* sub-channel callbacks */

	spinlock_t wait_lock;		/* waiters */
	struct list_head waiters;
	struct completion offers_done;

	struct mutex chan_mutex;	/* channels, sc_lists; never held across a wait */
	struct mutex close_mutex;	/* closing channels, removing sub-channels */
	struct list_head channels;	/* primary channels */
	spinlock_t relid_lock;		/* relids[] */
	struct vmbus_channel *relids[VMB_MAX_RELIDS];
	atomic_t next_gpadl;
	bool up;			/* the host negotiated a version */
};

extern struct vmb_bus *vmb;

/* vmb_pci.c */
int vmb_exit(u32 vp, u32 kind, u32 msr, u64 control, u64 input, u64 output,
	     u64 value, u64 *result, u64 *value_out);
void vmb_ring_doorbell(u32 vector);

/* vmb_hv.c */
int vmb_write_msr(u32 vp, u32 msr, u64 value);
int vmb_synic_setup(u32 vp);
void vmb_synic_teardown(u32 vp);
int vmb_post_message(const void *msg, u32 len, bool can_sleep);
void vmb_vp_interrupt(u32 vp);
u64 vmb_reference_counter(void);

/* vmb_connection.c */
int vmb_connect(void);
void vmb_disconnect(void);
void vmb_message_work(struct work_struct *work);
struct vmb_waiter *vmb_waiter_add(u32 msgtype, u32 key, struct vmbus_channel *channel);
void vmb_waiters_cancel(struct vmbus_channel *channel);
void vmb_waiter_remove(struct vmb_waiter *w);
int vmb_waiter_wait(struct vmb_waiter *w, unsigned int timeout_ms);
int vmb_request(const void *msg, u32 len, u32 msgtype, u32 key, struct vmbus_channel *channel,
		void *answer, u32 answer_len);

/* vmb_mgmt.c */
void vmb_on_offer(const struct vmbus_channel_offer_channel *offer);
void vmb_on_rescind(u32 relid);
void vmb_remove_all(void);
void vmb_relid_event(u32 relid);
void vmb_channels_release(struct vmbus_channel *primary);
void vmb_sub_remove(struct vmbus_channel *sc);

/* vmb_bus.c */
int vmb_bus_register(void);
void vmb_bus_unregister(void);
int vmb_device_add(struct vmbus_channel *channel);
void vmb_device_remove(struct vmbus_channel *channel);
void vmb_channel_event(struct vmbus_channel *channel);
void vmb_on_event(unsigned long data);

/* vmb_channel.c */
void vmb_signal_host(struct vmbus_channel *channel);

/* vmb_ring.c */
int vmb_ring_init(struct hv_ring_buffer_info *rbi, struct page *pages,
		  u32 page_count, u32 max_pkt_size);
void vmb_ring_cleanup(struct hv_ring_buffer_info *rbi);
int vmb_ring_write(struct vmbus_channel *channel, const struct kvec *kv,
		   u32 kv_count, u64 requestid);

#endif /* VMB_H */
