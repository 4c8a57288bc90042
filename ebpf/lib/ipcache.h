/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ipcache: longest-prefix match from an address to its security identity
 * (and, for remote nodes, the tunnel endpoint). Layout as Cilium's. */
#pragma once

#include "common.h"

#define IPCACHE_MAP_SIZE 512000
#define IPCACHE_STATIC_PREFIX 32 /* pad1 + cluster_id + family, always matched */

#define ID_UNKNOWN 0
#define ID_HOST 1
#define ID_WORLD 2
#define ID_REMOTE_NODE 6

struct ipcache_key {
	__u32 prefixlen; /* IPCACHE_STATIC_PREFIX + address bits */
	__u16 pad1;
	__u8 cluster_id;
	__u8 family; /* 4 or 6 (Linux AF_* numbers are not used on purpose) */
	__u32 ip[4]; /* IPv4 in ip[0], network order */
};
ASSERT_SIZE(struct ipcache_key, 24);

struct ipcache_value {
	__u32 sec_identity;
	__u32 tunnel_endpoint; /* network order; 0 = local */
	__u8 flags;
	__u8 pad[3];
};
ASSERT_SIZE(struct ipcache_value, 12);

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, IPCACHE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ipcache SEC(".maps");

static __always_inline struct ipcache_value *ipcache_lookup4(__be32 addr)
{
	struct ipcache_key key = {
		.prefixlen = IPCACHE_STATIC_PREFIX + 32,
		.family = 4,
	};

	key.ip[0] = addr;
	return bpf_map_lookup_elem(&cilium_ipcache, &key);
}

static __always_inline __u32 ipcache_identity4(__be32 addr)
{
	struct ipcache_value *v = ipcache_lookup4(addr);

	return v ? v->sec_identity : ID_WORLD;
}
