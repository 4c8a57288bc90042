/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-packet service translation shared by bpf_host (NodePort from outside) and
 * bpf_lxc (pod traffic that did not pass the socket hooks): L4 parsing,
 * address/port rewriting with checksum fixes, the flow -> backend NAT table
 * and the reply rev-NAT. */
#pragma once

#include "common.h"
#include "lb.h"

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

struct l4 {
	__u32 off;      /* L4 header offset */
	__u32 csum_off; /* 0 = no checksum to fix (UDP with checksum 0) */
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags; /* TCP: FIN=1 SYN=2 RST=4 ACK=16 */
};

/* NodePort DSR (Cilium's "opt" dispatch): the first packet of a flow to a remote
 * backend carries the service address in an IPv4 option; the backend's node keeps it
 * as the flow's reverse NAT and answers the client directly from the service address. */
#define DSR_IPV4_OPT_TYPE 0x9a /* IPOPT_COPY | 0x1a, as Cilium */
#define DSR_IPV4_OPT_LEN 8

struct dsr_opt4 {
	__u8 type;
	__u8 len;
	__be16 port;
	__be32 addr;
};

/* lb4_dnat's answer for a packet it leaves untranslated (see there). */
#define LB_NOT_TRANSLATED -1

static __always_inline int l4_parse(struct __sk_buff *skb, struct iphdr **ip, struct l4 *l)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4;
	__be16 *ports;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip4 = (void *)(eth + 1);
	if ((void *)(ip4 + 1) > data_end || ip4->ihl != 5 || (ip4->frag_off & bpf_htons(0x3fff)))
		return -1;
	if (ip4->protocol != IPPROTO_TCP && ip4->protocol != IPPROTO_UDP)
		return -1;
	l->off = ETH_HLEN + sizeof(*ip4);
	ports = (void *)(ip4 + 1);
	if ((void *)(ports + 4) > data_end)
		return -1;
	l->sport = ports[0];
	l->dport = ports[1];
	l->proto = ip4->protocol;
	l->tcp_flags = 0;
	if (l->proto == IPPROTO_TCP) {
		__u8 *th = (void *)ports;

		if ((void *)(th + 20) > data_end)
			return -1;
		l->csum_off = l->off + 16;
		l->tcp_flags = th[13];
	} else {
		l->csum_off = ports[3] ? l->off + 6 : 0;
	}
	*ip = ip4;
	return 0;
}

/* Rewrites an address (at addr_off) and a port (at port_off), fixing the checksums. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct l4 *l, __u32 addr_off, __be32 old_addr,
				   __be32 new_addr, __u32 port_off, __be16 old_port, __be16 new_port)
{
	if (l->csum_off) {
		if (bpf_l4_csum_replace(skb, l->csum_off, old_addr, new_addr, BPF_F_PSEUDO_HDR | 4) < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, l->csum_off, old_port, new_port, 2) < 0)
			return -1;
	}
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
		return -1;
	return 0;
}

static __always_inline struct lb4_service *lb4_frontend(__be32 daddr, __be16 dport, __u8 proto, struct lb4_key *key)
{
	struct lb4_service *svc;

	key->address = daddr;
	key->dport = dport;
	key->backend_slot = 0;
	key->proto = proto;
	key->scope = LB_SCOPE_EXT;
	svc = bpf_map_lookup_elem(&cilium_lb4_services, key);
	if (svc)
		return svc; /* node address:nodePort, ExternalIP, LoadBalancer */
	/* NodePort on any other address of this node: the 0.0.0.0 surrogate. */
	key->address = 0;
	svc = bpf_map_lookup_elem(&cilium_lb4_services, key);
	return svc && (svc->flags & SVC_F_SURROGATE) ? svc : 0;
}


/* The frontend as in-cluster clients see it (internal scope when it has two). */
static __always_inline struct lb4_service *lb4_frontend_int(__be32 daddr, __be16 dport, __u8 proto, struct lb4_key *key)
{
	struct lb4_service *svc;

	key->address = daddr;
	key->dport = dport;
	key->backend_slot = 0;
	key->proto = proto;
	key->scope = LB_SCOPE_EXT;
	svc = bpf_map_lookup_elem(&cilium_lb4_services, key);
	if (svc && (svc->flags & SVC_F_TWO_SCOPES)) {
		key->scope = LB_SCOPE_INT;
		svc = bpf_map_lookup_elem(&cilium_lb4_services, key);
	}
	if (svc && (svc->flags & SVC_F_SURROGATE))
		return 0;
	return svc;
}

/* Chooses (or recalls, per flow) the backend of `svc` for a client flow and DNATs the
 * packet to it. `maglev_size` 0 picks a random slot. Returns 0, a drop reason, or
 * LB_NOT_TRANSLATED for a TCP packet other than a SYN of a flow this datapath never
 * translated: a connection opened before it balanced the service (kube-proxy's, while
 * a node migrates to kube-proxy replacement), which the stack's conntrack keeps
 * translating. Choosing a backend for it would reset the connection. */
static __always_inline int lb4_dnat(struct __sk_buff *skb, struct l4 *l, __be32 saddr, __be32 daddr,
				    struct lb4_service *svc, struct lb4_key *key, __u32 maglev_size)
{
	struct lb4_nat_key nk = {};
	struct lb4_nat_val *nat, nv = {};
	struct lb4_backend *be = 0;

	nk.client = saddr;
	nk.frontend = daddr;
	nk.client_port = l->sport;
	nk.frontend_port = l->dport;
	nk.proto = l->proto;
	nat = bpf_map_lookup_elem(&cilium_lb4_nat, &nk);
	if (nat) {
		nv = *nat;
	} else {
		__u32 *id = 0;

		if (l->proto == IPPROTO_TCP && !(l->tcp_flags & 0x02 /* SYN */))
			return LB_NOT_TRANSLATED;
		if (svc->count == 0)
			return 158; /* Service backend not found */
		if (maglev_size) {
			struct lb_maglev_key mk = { .rev_nat_index = svc->rev_nat_index };

			mk.index = bpf_get_hash_recalc(skb) % maglev_size;
			id = bpf_map_lookup_elem(&cilium_lb_maglev, &mk);
		}
		if (id) {
			be = bpf_map_lookup_elem(&cilium_lb4_backends, id);
		} else {
			struct lb4_service *slot;

			key->backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
			slot = bpf_map_lookup_elem(&cilium_lb4_services, key);
			if (slot)
				be = bpf_map_lookup_elem(&cilium_lb4_backends, &slot->backend_id);
		}
		if (!be)
			return 158;
		nv.backend = be->address;
		nv.backend_port = be->port;
		nv.rev_nat_index = svc->rev_nat_index;
		bpf_map_update_elem(&cilium_lb4_nat, &nk, &nv, BPF_ANY);
		{
			struct lb4_rnat_key rk = {
				.backend = nv.backend,
				.client = saddr,
				.backend_port = nv.backend_port,
				.client_port = l->sport,
				.proto = l->proto,
			};
			struct lb4_rnat_val rv = { .frontend = daddr, .frontend_port = l->dport };

			bpf_map_update_elem(&cilium_lb4_rnat, &rk, &rv, BPF_ANY);
		}
	}
	if (nat_rewrite(skb, l, IP_DST_OFF, daddr, nv.backend, l->off + 2, l->dport, nv.backend_port) < 0)
		return 141; /* Error writing to packet */
	return 0;
}

/* A backend's reply to a translated flow gets the frontend back as its source.
 * Returns 0 (also when nothing matched), or a drop reason. */
static __always_inline int lb4_rev_dnat(struct __sk_buff *skb)
{
	struct lb4_rnat_key rk = {};
	struct lb4_rnat_val *rv;
	struct iphdr *ip4;
	struct l4 l;
	__be32 saddr;

	if (l4_parse(skb, &ip4, &l) < 0)
		return 0;
	saddr = ip4->saddr;
	rk.backend = saddr;
	rk.client = ip4->daddr;
	rk.backend_port = l.sport;
	rk.client_port = l.dport;
	rk.proto = l.proto;
	rv = bpf_map_lookup_elem(&cilium_lb4_rnat, &rk);
	if (!rv)
		return 0;
	if (nat_rewrite(skb, &l, IP_SRC_OFF, saddr, rv->frontend, l.off, l.sport, rv->frontend_port) < 0)
		return 141;
	return 0;
}
