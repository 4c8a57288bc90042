/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Datapath events on a ring buffer: drops with their reason and the flow's
 * identities (the agent turns them into `cilium monitor` lines and, later, Hubble flows). */
#pragma once

#include "common.h"
#include "conntrack.h"

#define EVENT_DROP 1

struct drop_event {
	__u64 ts_ns;
	__u32 src_id;
	__u32 dst_id;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 len;
	__u16 ep_id;
	__u8 type;
	__u8 reason;
	__u8 dir;
	__u8 proto;
	__u16 pad;
};
ASSERT_SIZE(struct drop_event, 40);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_events SEC(".maps");

static __always_inline int drop_flow(struct __sk_buff *skb, __u8 reason, __u8 dir, __u16 ep_id,
				     __u32 src_id, __u32 dst_id, struct flow4 *f)
{
	struct drop_event *ev = bpf_ringbuf_reserve(&cilium_events, sizeof(*ev), 0);

	if (ev) {
		ev->ts_ns = bpf_ktime_get_ns();
		ev->src_id = src_id;
		ev->dst_id = dst_id;
		ev->saddr = f->saddr;
		ev->daddr = f->daddr;
		ev->sport = f->sport;
		ev->dport = f->dport;
		ev->len = skb->len;
		ev->ep_id = ep_id;
		ev->type = EVENT_DROP;
		ev->reason = reason;
		ev->dir = dir;
		ev->proto = f->proto;
		ev->pad = 0;
		bpf_ringbuf_submit(ev, 0);
	}
	return drop(skb, reason, dir);
}
