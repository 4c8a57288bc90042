/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking: an LRU hash of flows, created when a connection's first
 * packet is allowed, so replies pass without a policy lookup. Entries record
 * which hook created them: CT_EGRESS (the source endpoint sent it) or
 * CT_INGRESS (delivered to the destination endpoint). The agent removes expired
 * entries (garbage collection); an expired entry counts as a miss. */
#pragma once

#include "common.h"
#include <linux/tcp.h>
#include <linux/udp.h>

/* From linux/icmp.h, which drags in libc headers under -target bpf. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define CT_MAP_SIZE 262144

#define CT_EGRESS 0
#define CT_INGRESS 1

/* Lifetimes in seconds, as Cilium's defaults. */
#define CT_LIFETIME_TCP 21600
#define CT_LIFETIME_SYN 60
#define CT_LIFETIME_NONTCP 60
#define CT_CLOSE_TIMEOUT 10

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 nexthdr;
	__u8 dir; /* CT_EGRESS / CT_INGRESS */
	__u16 pad;
};
ASSERT_SIZE(struct ct_key, 16);

#define CT_F_TX_CLOSING 1 /* FIN/RST seen from the initiator */
#define CT_F_RX_CLOSING 2 /* FIN/RST seen from the responder */
#define CT_F_ESTABLISHED 4 /* a reply was seen */
#define CT_F_LB 8 /* the flow was DNATed to a service backend: its replies need rev-NAT */
#define CT_F_DSR 32 /* a NodePort flow whose LB node passed the service address (DSR): replies
		      * leave from the service address */
#define CT_F_VIA_STACK 16 /* a local pod's flow the node's stack delivered (netfilter may have
			   * translated it, e.g. kube-proxy's DNAT): replies go back through
			   * the stack, so its conntrack restores the addresses */

struct ct_entry {
	__u32 lifetime; /* expiry, seconds of CLOCK_MONOTONIC */
	__u16 flags;
	__u16 pad;
	__u32 src_sec_id;
	__u32 pad2;
	__u64 packets;
	__u64 bytes;
};
ASSERT_SIZE(struct ct_entry, 32);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ct4 SEC(".maps");

/* A parsed IPv4 flow; for ICMP echo the identifier is both ports, for other ICMP
 * the type is the "port" policy matches on. */
struct flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;  /* TCP: FIN=1 SYN=2 RST=4 ACK=16 */
	__u8 icmp_type;
	__u8 related;    /* ICMP error: passes as related traffic */
	__be16 policy_port; /* port (or ICMP type) the policy lookup uses */
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Parses L4 of an IPv4 packet at `l4off`. Returns 0, or a drop reason. */
static __always_inline int flow4_parse(struct __sk_buff *skb, struct iphdr *ip4, __u32 l4off, struct flow4 *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	f->saddr = ip4->saddr;
	f->daddr = ip4->daddr;
	f->proto = ip4->protocol;
	f->sport = 0;
	f->dport = 0;
	f->tcp_flags = 0;
	f->icmp_type = 0;
	f->related = 0;
	f->policy_port = 0;
	/* Non-first fragments carry no L4 header. */
	if (ip4->frag_off & bpf_htons(0x1fff))
		return 0;

	switch (ip4->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *th = data + l4off;
		if ((void *)(th + 1) > data_end)
			return 135;
		f->sport = th->source;
		f->dport = th->dest;
		f->tcp_flags = ((__u8 *)th)[13];
		f->policy_port = th->dest;
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* UDP and SCTP both start with source and destination port. */
		struct udphdr *uh = data + l4off;
		if ((void *)(uh + 1) > data_end)
			return 135;
		f->sport = uh->source;
		f->dport = uh->dest;
		f->policy_port = uh->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *ih = data + l4off;
		if ((void *)(ih + 1) > data_end)
			return 135;
		f->icmp_type = ih->type;
		f->policy_port = bpf_htons(ih->type);
		if (ih->type == ICMP_ECHO || ih->type == ICMP_ECHOREPLY) {
			f->sport = ih->un.echo.id;
			f->dport = ih->un.echo.id;
		} else if (ih->type == ICMP_DEST_UNREACH || ih->type == ICMP_TIME_EXCEEDED ||
			   ih->type == ICMP_PARAMETERPROB) {
			f->related = 1;
		}
		break;
	}
	default:
		break;
	}
	return 0;
}

static __always_inline __u32 ct_now(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
}

#define CT_NEW 0
#define CT_ESTABLISHED 1 /* a further packet of the creating direction */
#define CT_REPLY 2       /* a packet against the creating direction */

static __always_inline struct ct_entry *ct_get(struct ct_key *k, __u32 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&cilium_ct4, k);

	if (e && e->lifetime < now) {
		bpf_map_delete_elem(&cilium_ct4, k);
		return 0;
	}
	return e;
}

static __always_inline void ct_account(struct ct_entry *e, struct flow4 *f, int reply, __u32 len, __u32 now)
{
	__u32 life = CT_LIFETIME_NONTCP;

	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, len);
	if (f->proto == IPPROTO_TCP) {
		if (f->tcp_flags & (TCP_FIN | TCP_RST))
			e->flags |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
		if (reply)
			e->flags |= CT_F_ESTABLISHED;
		if (f->tcp_flags & TCP_RST)
			life = CT_CLOSE_TIMEOUT;
		else if ((e->flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING)) == (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
			life = CT_CLOSE_TIMEOUT;
		else if (e->flags & CT_F_ESTABLISHED)
			life = CT_LIFETIME_TCP;
		else
			life = CT_LIFETIME_SYN;
	} else if (reply) {
		e->flags |= CT_F_ESTABLISHED;
	}
	e->lifetime = now + life;
}

/* A bare SYN on an entry whose flow is closing opens a new connection on a reused
 * address tuple (Cilium's CT_REOPENED): the entry's flags describe the old flow
 * (how it was delivered, whether it was translated), so it is dropped and the new
 * flow goes through policy and gets an entry of its own. */
static __always_inline struct ct_entry *ct_get_open(struct ct_key *k, struct flow4 *f, __u32 now)
{
	struct ct_entry *e = ct_get(k, now);

	if (e && f->proto == IPPROTO_TCP && (f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
	    (e->flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING))) {
		bpf_map_delete_elem(&cilium_ct4, k);
		return 0;
	}
	return e;
}

/* Looks the flow up from the point of view of hook `dir`: an entry this hook
 * created (ESTABLISHED) or one the opposite hook created for the reverse flow
 * (REPLY). */
static __always_inline int ct_lookup4(struct flow4 *f, __u8 dir, __u32 len, struct ct_entry **found)
{
	__u32 now = ct_now();
	struct ct_key fwd = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.nexthdr = f->proto, .dir = dir,
	};
	struct ct_key rev = {
		.saddr = f->daddr, .daddr = f->saddr, .sport = f->dport, .dport = f->sport,
		.nexthdr = f->proto, .dir = dir == CT_EGRESS ? CT_INGRESS : CT_EGRESS,
	};
	struct ct_entry *e;

	*found = 0;
	e = ct_get_open(&rev, f, now);
	if (e) {
		ct_account(e, f, 1, len, now);
		*found = e;
		return CT_REPLY;
	}
	e = ct_get_open(&fwd, f, now);
	if (e) {
		ct_account(e, f, 0, len, now);
		*found = e;
		return CT_ESTABLISHED;
	}
	return CT_NEW;
}

static __always_inline void ct_create4(struct flow4 *f, __u8 dir, __u32 src_id, __u32 len, __u16 flags)
{
	__u32 now = ct_now();
	struct ct_key k = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.nexthdr = f->proto, .dir = dir,
	};
	struct ct_entry e = { .src_sec_id = src_id, .flags = flags };

	ct_account(&e, f, 0, len, now);
	bpf_map_update_elem(&cilium_ct4, &k, &e, BPF_ANY);
}
