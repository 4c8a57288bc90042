/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-endpoint policy: one LPM trie for all endpoints, keyed by
 * (remote identity, endpoint, direction, protocol, port prefix).
 * Lookups are done for the remote identity and for identity 0 (any);
 * a deny from either wins. The agent writes entries so that deny precedence
 * holds under this lookup (see src/policy/resolve.rs). */
#pragma once

#include "common.h"

#define POLICY_MAP_SIZE 1048576
/* sec_label(32) + ep_id(16) + egress(8): always fully matched. */
#define POLICY_STATIC_PREFIX 56
#define POLICY_FULL_PREFIX (POLICY_STATIC_PREFIX + 8 + 16)

struct policy_key {
	__u32 prefixlen;
	__u32 sec_label;  /* remote identity, 0 = any */
	__u16 ep_id;
	__u8 egress;
	__u8 protocol;    /* 0 = any (then the port is wildcarded too) */
	__be16 dport;     /* for ICMP: the type, in the high byte order like a port */
	__u16 pad;
};
ASSERT_SIZE(struct policy_key, 16);

#define POLICY_F_DENY 1

struct policy_entry {
	__u8 flags;
	__u8 pad0;
	__be16 proxy_port; /* L7 redirection, later */
	__u32 pad1;
	__u64 packets;
	__u64 bytes;
};
ASSERT_SIZE(struct policy_entry, 24);

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_policy SEC(".maps");

#define POLICY_ALLOW 0
#define POLICY_DENY_DEFAULT 1 /* no matching entry */
#define POLICY_DENY_RULE 2    /* an explicit deny entry */

static __always_inline struct policy_entry *policy_lookup1(__u32 id, __u16 ep_id, __u8 egress, __u8 proto, __be16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_FULL_PREFIX,
		.sec_label = id,
		.ep_id = ep_id,
		.egress = egress,
		.protocol = proto,
		.dport = dport,
	};
	return bpf_map_lookup_elem(&cilium_policy, &key);
}

/* Verdict for a packet of `len` bytes; counts on the entry that decided. */
static __always_inline int policy_can_access(__u32 remote_id, __u16 ep_id, __u8 egress, __u8 proto, __be16 dport, __u32 len)
{
	struct policy_entry *specific = policy_lookup1(remote_id, ep_id, egress, proto, dport);
	struct policy_entry *any = policy_lookup1(0, ep_id, egress, proto, dport);
	struct policy_entry *hit = 0;
	int verdict = POLICY_DENY_DEFAULT;

	if (specific && (specific->flags & POLICY_F_DENY)) {
		hit = specific;
		verdict = POLICY_DENY_RULE;
	} else if (any && (any->flags & POLICY_F_DENY)) {
		hit = any;
		verdict = POLICY_DENY_RULE;
	} else if (specific) {
		hit = specific;
		verdict = POLICY_ALLOW;
	} else if (any) {
		hit = any;
		verdict = POLICY_ALLOW;
	}
	if (hit) {
		__sync_fetch_and_add(&hit->packets, 1);
		__sync_fetch_and_add(&hit->bytes, len);
	}
	return verdict;
}
