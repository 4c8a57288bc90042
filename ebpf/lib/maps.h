/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps shared by the datapath programs. Every struct here has a #[repr(C)]
 * mirror in src/datapath/maps.rs; sizes are asserted on both sides.
 * Maps are pinned by name under the node's bpffs directory so the datapath
 * survives an agent restart. */
#pragma once

#include "common.h"

#define ENDPOINTS_MAP_SIZE 65536
#define METRICS_MAP_SIZE 1024

/* cilium_lxc: IPv4 address (network order) -> local endpoint. */
struct endpoint_key {
	__u32 ip4;
};
ASSERT_SIZE(struct endpoint_key, 4);

#define ENDPOINT_F_HOST 1              /* reserved for the node's own addresses */
#define ENDPOINT_F_INGRESS_ENFORCED 2  /* ingress policy: default deny */
#define ENDPOINT_F_EGRESS_ENFORCED 4   /* egress policy: default deny */
/* Not enforced, but deny rules exist (enableDefaultDeny: false): a lookup runs and
 * only an explicit deny drops. */
#define ENDPOINT_F_INGRESS_DENIES 8
#define ENDPOINT_F_EGRESS_DENIES 16

struct endpoint_info {
	__u32 ifindex;    /* host-side link of the endpoint */
	__u16 lxc_id;     /* endpoint id */
	__u16 flags;      /* ENDPOINT_F_* */
	__u32 sec_id;     /* security identity (policy builds on it) */
	__u8 mac[6];      /* the pod's MAC */
	__u8 node_mac[6]; /* MAC of the host side of the pod link */
	__u32 pad;
};
ASSERT_SIZE(struct endpoint_info, 24 + 4);

/* cilium_lxc_if: ifindex of a host-side pod link -> that endpoint's IPv4 key. */
struct lxc_if_key {
	__u32 ifindex;
};
ASSERT_SIZE(struct lxc_if_key, 4);

/* cilium_metrics: per-CPU forward/drop counters by reason and direction. */
struct metrics_key {
	__u8 reason; /* 0 = forwarded, else the drop reason code */
	__u8 dir;    /* METRIC_INGRESS / METRIC_EGRESS */
	__u16 pad1;
	__u32 pad2;
};
ASSERT_SIZE(struct metrics_key, 8);

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};
ASSERT_SIZE(struct metrics_value, 16);

/* cilium_ep_stats: per-CPU packet/byte counters of each endpoint. */
struct ep_stats_key {
	__u32 lxc_id;
};
ASSERT_SIZE(struct ep_stats_key, 4);

struct ep_stats {
	__u64 from_ep_packets; /* sent by the endpoint */
	__u64 from_ep_bytes;
	__u64 to_ep_packets;   /* delivered to the endpoint */
	__u64 to_ep_bytes;
};
ASSERT_SIZE(struct ep_stats, 32);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lxc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lxc_if_key);
	__type(value, struct endpoint_key);
	__uint(max_entries, ENDPOINTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lxc_if SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct ep_stats_key);
	__type(value, struct ep_stats);
	__uint(max_entries, ENDPOINTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ep_stats SEC(".maps");

static __always_inline void update_metrics(__u8 reason, __u8 dir, __u32 bytes)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value *val = bpf_map_lookup_elem(&cilium_metrics, &key);

	if (val) {
		val->packets += 1;
		val->bytes += bytes;
	} else {
		struct metrics_value init = { .packets = 1, .bytes = bytes };
		bpf_map_update_elem(&cilium_metrics, &key, &init, BPF_NOEXIST);
	}
}

static __always_inline void update_ep_stats(__u32 lxc_id, int from_ep, __u32 bytes)
{
	struct ep_stats_key key = { .lxc_id = lxc_id };
	struct ep_stats *s = bpf_map_lookup_elem(&cilium_ep_stats, &key);

	if (!s) {
		struct ep_stats init = {};
		bpf_map_update_elem(&cilium_ep_stats, &key, &init, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&cilium_ep_stats, &key);
		if (!s)
			return;
	}
	if (from_ep) {
		s->from_ep_packets += 1;
		s->from_ep_bytes += bytes;
	} else {
		s->to_ep_packets += 1;
		s->to_ep_bytes += bytes;
	}
}

static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 dir)
{
	update_metrics(reason, dir, skb->len);
	return TC_ACT_SHOT;
}
