/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ARP responder: the host side of a pod link answers every ARP request of the
 * pod (its gateway and any other address) with the link's own MAC, as Cilium does. */
#pragma once

#include "common.h"
/* From linux/if_arp.h, which drags in libc headers under -target bpf. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arp_eth {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

/* Returns 1 when the packet was turned into a reply to send back, 0 to let it pass. */
static __always_inline int arp_respond(struct __sk_buff *skb, const __u8 *node_mac, __be32 own_ip)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth *arp = data + sizeof(*eth);
	__be32 sip, tip;

	if ((void *)(arp + 1) > data_end)
		return 0;
	if (arp->hrd != bpf_htons(ARPHRD_ETHER) || arp->pro != bpf_htons(ETH_P_IP) ||
	    arp->hln != ETH_ALEN || arp->pln != 4 || arp->op != bpf_htons(ARPOP_REQUEST))
		return 0;
	tip = arp->tip;
	sip = arp->sip;
	/* Gratuitous ARP and duplicate address detection for its own address: let pass. */
	if (tip == own_ip || tip == sip)
		return 0;

	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, node_mac, ETH_ALEN);
	arp->op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	__builtin_memcpy(arp->sha, node_mac, ETH_ALEN);
	arp->tip = sip;
	arp->sip = tip;
	return 1;
}
