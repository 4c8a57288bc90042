/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Router hop helpers: TTL decrement and delivery to a local endpoint's link. */
#pragma once

#include "common.h"
#include "drop.h"
#include "maps.h"

#define IP_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))
#ifndef IP_CSUM_OFF
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#endif

/* Decrements the TTL and fixes the IPv4 checksum, as a router hop does. */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb, __u8 ttl)
{
	__u16 old = bpf_htons((__u16)ttl << 8);
	__u16 new = bpf_htons((__u16)(ttl - 1) << 8);
	__u8 nttl = ttl - 1;

	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, IP_TTL_OFF, &nttl, 1, 0) < 0)
		return -1;
	return 0;
}

/* Delivers to a local endpoint: one router hop, then its link's egress (where
 * cil_to_container enforces ingress policy). */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, struct endpoint_info *dst, __u8 ttl,
						__u8 dir)
{
	__u32 len = skb->len;

	/* TTL 1 would expire here: let the stack answer with ICMP time exceeded. */
	if (ttl <= 1)
		return TC_ACT_OK;
	if (ipv4_dec_ttl(skb, ttl) < 0)
		return drop(skb, DROP_WRITE_ERROR, dir);
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), dst->mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), dst->node_mac, ETH_ALEN, 0) < 0)
		return drop(skb, DROP_WRITE_ERROR, dir);
	update_metrics(REASON_FORWARDED, dir, len);
	return bpf_redirect(dst->ifindex, 0);
}
