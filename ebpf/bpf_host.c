// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Node devices (TCX): NodePort / LoadBalancer / ExternalIP traffic from outside.
 *   tcx ingress = cil_from_netdev: a packet to a frontend is DNATed to a backend
 *                 chosen by Maglev (and kept per flow), then routed to the pod;
 *   tcx egress  = cil_to_netdev:   the backend's reply gets the frontend back as
 *                 its source.
 * A local backend sees the client's address. A backend on another node sees this
 * node's address (Cilium's SNAT mode): its reply comes back to this node, where
 * cil_from_netdev on the device holding the node address restores both ends, and
 * the stack forwards it to the client. */

#include "lib/common.h"
#include "lib/drop.h"
#include "lib/maps.h"
#include "lib/lb.h"
#include "lib/nat.h"

/* Set at load time: the size of the Maglev tables the agent writes. */
volatile const __u32 MAGLEV_TABLE_SIZE = 16381;
/* Set at load time: the node address remote backends are SNATed to (network order);
 * 0 = no SNAT (single node). */
volatile const __u32 NODE_IPV4 = 0;

/* Set at load time: 1 = NodePort to remote backends in DSR mode (the service address
 * travels to the backend's node in an IPv4 option, and the reply goes from there to the
 * client), 0 = SNAT to NODE_IPV4. */
volatile const __u32 LB_DSR = 0;

#define SNAT_PORT_MIN 32768
#define SNAT_PORT_RANGE 28232 /* up to 60999, as Linux's ephemeral range */
#define SNAT_TRIES 8

/* SNAT of NodePort flows to remote backends: the client flow -> its node port, and
 * the backend's reply tuple -> the client and frontend to restore. */
struct snat4_val {
	__be16 port;
	__u16 pad;
};
ASSERT_SIZE(struct snat4_val, 4);

struct snat4_rev_val {
	__be32 client;
	__be32 frontend;
	__be16 client_port;
	__be16 frontend_port;
};
ASSERT_SIZE(struct snat4_rev_val, 12);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_nat_key);
	__type(value, struct snat4_val);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_snat4_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_rnat_key); /* backend, node address, backend port, node port */
	__type(value, struct snat4_rev_val);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_snat4_rev SEC(".maps");

/* Sends a translated packet straight out of the device the FIB picks, resolving the
 * neighbour there: a packet whose source is now an address of this node must not go
 * up this node's stack (it would be a martian there). */
static __always_inline int fib_redirect(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct bpf_fib_lookup fib = {};
	int rc;

	if ((void *)(ip4 + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_INGRESS);
	fib.family = 2; /* AF_INET */
	fib.tos = ip4->tos;
	fib.l4_protocol = ip4->protocol;
	fib.tot_len = bpf_ntohs(ip4->tot_len);
	fib.ipv4_src = ip4->saddr;
	fib.ipv4_dst = ip4->daddr;
	fib.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return drop(skb, DROP_NO_FIB, METRIC_INGRESS);
	update_metrics(REASON_FORWARDED, METRIC_INGRESS, skb->len);
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}

/* The reply of a SNATed flow: back to client <- frontend. 1 if it was one, 0 if not,
 * negative on a write error. */
static __always_inline int snat4_rev(struct __sk_buff *skb, struct iphdr *ip4, struct l4 *l)
{
	struct lb4_rnat_key rk = {
		.backend = ip4->saddr,
		.client = ip4->daddr,
		.backend_port = l->sport,
		.client_port = l->dport,
		.proto = l->proto,
	};
	struct snat4_rev_val *rv = bpf_map_lookup_elem(&cilium_snat4_rev, &rk);
	struct snat4_rev_val v;

	if (!rv)
		return 0;
	v = *rv;
	if (nat_rewrite(skb, l, IP_DST_OFF, rk.client, v.client, l->off + 2, rk.client_port, v.client_port) < 0)
		return -1;
	if (nat_rewrite(skb, l, IP_SRC_OFF, rk.backend, v.frontend, l->off, rk.backend_port, v.frontend_port) < 0)
		return -1;
	return 1;
}

/* SNATs a DNATed client flow (now client -> backend) to the node address with a
 * port of its own. Returns 0, or a drop reason. */
static __always_inline int snat4_fwd(struct __sk_buff *skb, __be32 client, __be16 client_port, __be32 frontend,
				     __be16 frontend_port)
{
	struct lb4_nat_key fk = {
		.client = client,
		.frontend = frontend,
		.client_port = client_port,
		.frontend_port = frontend_port,
	};
	struct snat4_val *fv, nv = {};
	struct iphdr *ip4;
	struct l4 l;

	if (l4_parse(skb, &ip4, &l) < 0)
		return DROP_INVALID;
	fk.proto = l.proto;
	fv = bpf_map_lookup_elem(&cilium_snat4_fwd, &fk);
	if (fv) {
		nv = *fv;
	} else {
		struct lb4_rnat_key rk = {
			.backend = ip4->daddr,
			.client = NODE_IPV4,
			.backend_port = l.dport,
			.proto = l.proto,
		};
		struct snat4_rev_val rv = {
			.client = client,
			.frontend = frontend,
			.client_port = client_port,
			.frontend_port = frontend_port,
		};
		__u16 port = bpf_ntohs(client_port);
		int i, ok = 0;

		/* The client's own port when free, else random ones in the ephemeral range. */
		for (i = 0; i < SNAT_TRIES; i++) {
			if (i > 0 || port < SNAT_PORT_MIN)
				port = SNAT_PORT_MIN + bpf_get_prandom_u32() % SNAT_PORT_RANGE;
			rk.client_port = bpf_htons(port);
			if (bpf_map_update_elem(&cilium_snat4_rev, &rk, &rv, BPF_NOEXIST) == 0) {
				ok = 1;
				break;
			}
		}
		if (!ok)
			return DROP_NAT_NO_MAPPING;
		nv.port = rk.client_port;
		bpf_map_update_elem(&cilium_snat4_fwd, &fk, &nv, BPF_ANY);
	}
	if (nat_rewrite(skb, &l, IP_SRC_OFF, client, NODE_IPV4, l.off, client_port, nv.port) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

/* Inserts the DSR option (the frontend) after the IPv4 header of a DNATed packet.
 * Returns 0, or a drop reason. */
static __always_inline int dsr_set_opt4(struct __sk_buff *skb, __be32 frontend, __be16 frontend_port)
{
	struct dsr_opt4 opt = {
		.type = DSR_IPV4_OPT_TYPE,
		.len = DSR_IPV4_OPT_LEN,
		.port = frontend_port,
		.addr = frontend,
	};
	void *data, *data_end;
	struct iphdr *ip4;
	__be16 old_w0, new_w0, old_len, new_len;
	__s64 sum;

	if (bpf_skb_adjust_room(skb, DSR_IPV4_OPT_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_WRITE_ERROR;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip4 = data + ETH_HLEN;
	if ((void *)(ip4 + 1) > data_end)
		return DROP_INVALID;
	old_w0 = *(__be16 *)ip4; /* version, ihl, tos */
	old_len = ip4->tot_len;
	new_w0 = old_w0;
	((__u8 *)&new_w0)[0] = 0x40 | 7; /* version 4, ihl 7 */
	new_len = bpf_htons(bpf_ntohs(old_len) + DSR_IPV4_OPT_LEN);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &new_w0, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, tot_len), &new_len, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(struct iphdr), &opt, sizeof(opt), 0) < 0)
		return DROP_WRITE_ERROR;
	sum = bpf_csum_diff(0, 0, (__be32 *)&opt, sizeof(opt), 0);
	if (sum < 0 || bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_w0, new_w0, 2) < 0 ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_len, new_len, 2) < 0 ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, 0, sum, 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

SEC("classifier")
int cil_from_netdev(struct __sk_buff *skb)
{
	struct lb4_service *svc;
	struct lb4_key key = {};
	struct iphdr *ip4;
	struct l4 l;
	__u32 len = skb->len;
	int reason;

	__be32 client, frontend;
	__be16 client_port, frontend_port;

	if (l4_parse(skb, &ip4, &l) < 0)
		return TC_ACT_OK;
	if (NODE_IPV4 && ip4->daddr == NODE_IPV4) {
		reason = snat4_rev(skb, ip4, &l);
		if (reason < 0)
			return drop(skb, DROP_WRITE_ERROR, METRIC_INGRESS);
		if (reason > 0)
			return fib_redirect(skb);
	}
	if (LB_DSR) {
		/* A DSR reply crossing this node to its client: its source is a frontend of
		 * this node, which the stack would drop as a martian; send it on directly. */
		key.address = ip4->saddr;
		key.dport = l.sport;
		key.proto = l.proto;
		key.scope = LB_SCOPE_EXT;
		if (bpf_map_lookup_elem(&cilium_lb4_services, &key))
			return fib_redirect(skb);
	}
	svc = lb4_frontend(ip4->daddr, l.dport, l.proto, &key);
	if (!svc)
		return TC_ACT_OK;
	client = ip4->saddr;
	frontend = ip4->daddr;
	client_port = l.sport;
	frontend_port = l.dport;
	reason = lb4_dnat(skb, &l, client, frontend, svc, &key, MAGLEV_TABLE_SIZE);
	if (reason == LB_NOT_TRANSLATED)
		return TC_ACT_OK;
	if (reason)
		return drop(skb, reason, METRIC_INGRESS);
	if (NODE_IPV4) {
		struct endpoint_key ek = {};
		struct endpoint_info *ep;
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct iphdr *nip = data + ETH_HLEN;

		if ((void *)(nip + 1) > data_end)
			return drop(skb, DROP_INVALID, METRIC_INGRESS);
		ek.ip4 = nip->daddr;
		ep = bpf_map_lookup_elem(&cilium_lxc, &ek);
		/* A backend on another node. DSR: the first packet tells the backend's node
		 * the frontend, and the reply goes from there to the client. SNAT: the
		 * backend sees this node, so its reply comes back through here. */
		if (!ep || (ep->flags & ENDPOINT_F_HOST)) {
			if (LB_DSR) {
				if (l.proto == IPPROTO_UDP || (l.tcp_flags & 0x02 /* SYN */)) {
					reason = dsr_set_opt4(skb, frontend, frontend_port);
					if (reason)
						return drop(skb, reason, METRIC_INGRESS);
				}
				return fib_redirect(skb);
			}
			reason = snat4_fwd(skb, client, client_port, frontend, frontend_port);
			if (reason)
				return drop(skb, reason, METRIC_INGRESS);
			return fib_redirect(skb);
		}
	}
	update_metrics(REASON_FORWARDED, METRIC_INGRESS, len);
	return TC_ACT_OK;
}

SEC("classifier")
int cil_to_netdev(struct __sk_buff *skb)
{
	int reason = lb4_rev_dnat(skb);

	if (reason)
		return drop(skb, reason, METRIC_EGRESS);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
