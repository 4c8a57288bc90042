/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Tunnel routing: the source security identity travels in the VNI of the
 * flow-based tunnel device (cilium_vxlan), as in Cilium; inside a node it
 * travels in skb->mark from the overlay program to the endpoint's program. */
#pragma once

#include "common.h"
#include "ipcache.h"

/* skb->mark layout (Cilium's MARK_MAGIC_IDENTITY): identity bits 0-15 in the upper
 * half, bits 16-23 in the low byte, magic in bits 8-11. */
#define MARK_MAGIC_MASK 0x0F00
#define MARK_MAGIC_IDENTITY 0x0F00
#define MARK_MAGIC_OVERLAY 0x0E00 /* tunnel key already set by bpf_lxc */

static __always_inline __u32 identity_to_mark(__u32 id)
{
	return ((id & 0xFFFF) << 16) | ((id >> 16) & 0xFF) | MARK_MAGIC_IDENTITY;
}

/* The identity a packet carries in its mark, or 0. */
static __always_inline __u32 identity_from_mark(__u32 mark)
{
	if ((mark & MARK_MAGIC_MASK) != MARK_MAGIC_IDENTITY)
		return 0;
	return ((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 16);
}

/* Sets the tunnel metadata the flow-based device encapsulates with: the remote node
 * (network order, as the ipcache holds it) and the source identity as VNI. */
static __always_inline int set_tunnel(struct __sk_buff *skb, __be32 tunnel_endpoint, __u32 src_id)
{
	struct bpf_tunnel_key key = {};

	key.remote_ipv4 = bpf_ntohl(tunnel_endpoint);
	key.tunnel_id = src_id & 0xFFFFFF;
	key.tunnel_ttl = 64;
	return bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX);
}
