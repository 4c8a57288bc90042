// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Endpoint datapath, attached with TCX to the host side of each pod link:
 *   tcx ingress  = cil_from_container (packets the pod sends)
 *   tcx egress   = cil_to_container   (packets delivered to the pod)
 * Forwards between local pods by BPF redirect, answers the pod's ARP,
 * drops spoofed source addresses, enforces identity-based policy with
 * connection tracking (replies pass), counts per endpoint and per reason and
 * reports drops on the events ring buffer. */

#include "lib/common.h"
#include "lib/drop.h"
#include "lib/maps.h"
#include "lib/arp.h"
#include "lib/ipcache.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/nat.h"
#include "lib/l3.h"
#include "lib/encap.h"

/* Set at load time: ifindex of the tunnel device (cilium_vxlan) in tunnel routing
 * mode; 0 in native routing mode, where the node's routes carry traffic to other
 * nodes' pods. */
volatile const __u32 TUNNEL_IFINDEX = 0;

static __always_inline struct endpoint_info *lookup_self(struct __sk_buff *skb, __be32 *ip)
{
	struct lxc_if_key ik = { .ifindex = skb->ifindex };
	struct endpoint_key *k = bpf_map_lookup_elem(&cilium_lxc_if, &ik);

	if (!k)
		return 0;
	*ip = k->ip4;
	return bpf_map_lookup_elem(&cilium_lxc, k);
}

/* Returns the drop reason for a policy verdict. */
static __always_inline __u8 policy_drop_reason(int verdict)
{
	return verdict == POLICY_DENY_RULE ? DROP_POLICY_DENY : DROP_POLICY;
}

SEC("classifier")
int cil_from_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct endpoint_info *self, *dst;
	struct endpoint_key dk;
	struct iphdr *ip4;
	struct flow4 f;
	__be32 self_ip = 0;
	__u8 node_mac[ETH_ALEN];
	__u32 len = skb->len;
	__u16 proto;
	struct ct_entry *cte = 0;
	int translated = 0;
	int ct, err;

	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS);
	self = lookup_self(skb, &self_ip);
	if (!self)
		return drop(skb, DROP_UNKNOWN_SENDER, METRIC_EGRESS);
	update_ep_stats(self->lxc_id, 1, len);
	proto = eth->h_proto;

	if (proto == bpf_htons(ETH_P_ARP)) {
		__builtin_memcpy(node_mac, self->node_mac, ETH_ALEN);
		if (arp_respond(skb, node_mac, self_ip))
			return bpf_redirect(skb->ifindex, 0);
		return TC_ACT_OK;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		/* IPv6 is accepted in the data model; pods get no IPv6 address yet,
		 * so only link-local neighbour traffic appears here. */
		return TC_ACT_OK;
	}
	if (proto != bpf_htons(ETH_P_IP))
		return drop(skb, DROP_UNKNOWN_L3, METRIC_EGRESS);

	ip4 = data + sizeof(*eth);
	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5)
		return drop(skb, DROP_INVALID, METRIC_EGRESS);
	err = flow4_parse(skb, ip4, ETH_HLEN + ip4->ihl * 4, &f);
	if (err)
		return drop(skb, err, METRIC_EGRESS);
	if (f.saddr != self_ip)
		return drop_flow(skb, DROP_INVALID_SIP, METRIC_EGRESS, self->lxc_id, self->sec_id, 0, &f);

	/* Service translation for traffic that did not pass the socket hooks (a process
	 * outside the cluster's cgroup): DNAT to a backend here, before policy, which
	 * then sees the backend, as in Cilium. */
	if (f.proto == IPPROTO_TCP || f.proto == IPPROTO_UDP) {
		struct lb4_key lkey = {};
		struct lb4_service *svc = lb4_frontend_int(f.daddr, f.dport, f.proto, &lkey);

		if (svc) {
			struct iphdr *nip;
			struct l4 l;

			if (l4_parse(skb, &nip, &l) < 0)
				return drop(skb, DROP_INVALID, METRIC_EGRESS);
			err = lb4_dnat(skb, &l, f.saddr, f.daddr, svc, &lkey, 0);
			if (err == LB_NOT_TRANSLATED)
				goto untranslated;
			if (err)
				return drop_flow(skb, err, METRIC_EGRESS, self->lxc_id, self->sec_id, 0, &f);
			translated = 1;
			data = (void *)(long)skb->data;
			data_end = (void *)(long)skb->data_end;
			ip4 = data + sizeof(struct ethhdr);
			if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5)
				return drop(skb, DROP_INVALID, METRIC_EGRESS);
			err = flow4_parse(skb, ip4, ETH_HLEN + ip4->ihl * 4, &f);
			if (err)
				return drop(skb, err, METRIC_EGRESS);
		}
	}
untranslated:

	ct = ct_lookup4(&f, CT_EGRESS, len, &cte);
	if (translated && cte)
		cte->flags |= CT_F_LB;
	/* The reply of a NodePort flow another node sent here in DSR mode leaves from the
	 * service address, straight to the client. */
	if (ct == CT_REPLY && cte && (cte->flags & CT_F_DSR)) {
		err = lb4_rev_dnat(skb);
		if (err)
			return drop_flow(skb, err, METRIC_EGRESS, self->lxc_id, self->sec_id, 0, &f);
		update_metrics(REASON_FORWARDED, METRIC_EGRESS, len);
		return TC_ACT_OK;
	}
	if (ct != CT_REPLY && !f.related) {
		if (self->flags & (ENDPOINT_F_EGRESS_ENFORCED | ENDPOINT_F_EGRESS_DENIES)) {
			__u32 dst_id = ipcache_identity4(f.daddr);
			int verdict = policy_can_access(dst_id, self->lxc_id, 1, f.proto, f.policy_port, len);

			if (verdict == POLICY_DENY_DEFAULT && !(self->flags & ENDPOINT_F_EGRESS_ENFORCED))
				verdict = POLICY_ALLOW;
			if (verdict != POLICY_ALLOW)
				return drop_flow(skb, policy_drop_reason(verdict), METRIC_EGRESS, self->lxc_id,
						 self->sec_id, dst_id, &f);
		}
		if (ct == CT_NEW)
			ct_create4(&f, CT_EGRESS, self->sec_id, len, translated ? CT_F_LB : 0);
	}

	dk.ip4 = f.daddr;
	dst = bpf_map_lookup_elem(&cilium_lxc, &dk);
	if (dst && !(dst->flags & ENDPOINT_F_HOST)) {
		/* A reply of a flow the stack delivered goes back the same way: the stack's
		 * conntrack may have translated it (kube-proxy) and must restore it. */
		if (ct == CT_REPLY && cte && (cte->flags & CT_F_VIA_STACK)) {
			update_metrics(REASON_FORWARDED, METRIC_EGRESS, len);
			return TC_ACT_OK;
		}
		/* The identity travels in the mark, which also tells cil_to_container
		 * that this packet came straight from a local pod. */
		skb->mark = identity_to_mark(self->sec_id);
		return redirect_to_endpoint(skb, dst, ip4->ttl, METRIC_EGRESS);
	}

	/* A pod of another node, in tunnel mode: encapsulate with this endpoint's identity
	 * as VNI and hand the packet straight to the tunnel device. */
	if (TUNNEL_IFINDEX) {
		struct ipcache_value *info = ipcache_lookup4(f.daddr);

		if (info && info->tunnel_endpoint) {
			__u8 ttl = ip4->ttl;

			if (ttl <= 1)
				return TC_ACT_OK;
			if (ipv4_dec_ttl(skb, ttl) < 0 || set_tunnel(skb, info->tunnel_endpoint, self->sec_id) < 0)
				return drop(skb, DROP_WRITE_ERROR, METRIC_EGRESS);
			skb->mark = MARK_MAGIC_OVERLAY;
			update_metrics(REASON_FORWARDED, METRIC_EGRESS, len);
			return bpf_redirect(TUNNEL_IFINDEX, 0);
		}
	}

	/* Not a local pod: the node's stack routes it (node addresses, and the world). */
	update_metrics(REASON_FORWARDED, METRIC_EGRESS, len);
	return TC_ACT_OK;
}

SEC("classifier")
int cil_to_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct endpoint_info *self;
	struct iphdr *ip4;
	struct flow4 f;
	__be32 self_ip = 0;
	__u32 len = skb->len;
	struct ct_entry *cte = 0;
	__u32 src_id;
	int ct, err, from_mark;

	self = lookup_self(skb, &self_ip);
	if (!self)
		return drop(skb, DROP_UNKNOWN_SENDER, METRIC_INGRESS);
	update_ep_stats(self->lxc_id, 0, len);
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		goto pass;
	ip4 = data + sizeof(*eth);
	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5)
		return drop(skb, DROP_INVALID, METRIC_INGRESS);
	err = flow4_parse(skb, ip4, ETH_HLEN + ip4->ihl * 4, &f);
	if (err)
		return drop(skb, err, METRIC_INGRESS);

	/* Packets from the overlay carry their source's identity in the mark. */
	src_id = identity_from_mark(skb->mark);
	from_mark = src_id != 0;
	if (!src_id)
		src_id = ipcache_identity4(f.saddr);
	else
		skb->mark = 0;
	ct = ct_lookup4(&f, CT_INGRESS, len, &cte);
	if (ct != CT_REPLY && !f.related) {

		/* The node itself always reaches its pods (Cilium's allow-localhost). */
		if ((self->flags & (ENDPOINT_F_INGRESS_ENFORCED | ENDPOINT_F_INGRESS_DENIES)) && src_id != ID_HOST) {
			int verdict = policy_can_access(src_id, self->lxc_id, 0, f.proto, f.policy_port, len);

			if (verdict == POLICY_DENY_DEFAULT && !(self->flags & ENDPOINT_F_INGRESS_ENFORCED))
				verdict = POLICY_ALLOW;
			if (verdict != POLICY_ALLOW)
				return drop_flow(skb, policy_drop_reason(verdict), METRIC_INGRESS, self->lxc_id,
						 src_id, self->sec_id, &f);
		}
		if (ct == CT_NEW) {
			__u16 flags = 0;

			/* DSR: the LB node put the service address in an IPv4 option; the
			 * flow's replies get it back as their source (cil_from_container). */
			if (ip4->ihl == 7 && (f.proto == IPPROTO_TCP || f.proto == IPPROTO_UDP)) {
				struct dsr_opt4 *opt = (void *)(ip4 + 1);

				if ((void *)(opt + 1) <= data_end && opt->type == DSR_IPV4_OPT_TYPE &&
				    opt->len == DSR_IPV4_OPT_LEN) {
					struct lb4_rnat_key rk = {
						.backend = f.daddr,
						.client = f.saddr,
						.backend_port = f.dport,
						.client_port = f.sport,
						.proto = f.proto,
					};
					struct lb4_rnat_val rv = { .frontend = opt->addr,
								   .frontend_port = opt->port };

					bpf_map_update_elem(&cilium_lb4_rnat, &rk, &rv, BPF_ANY);
					flags |= CT_F_DSR;
				}
			}

			/* From a local pod but not redirected by cil_from_container: the stack
			 * forwarded it (and may have translated it). */
			if (!from_mark) {
				struct endpoint_key sk = { .ip4 = f.saddr };
				struct endpoint_info *src = bpf_map_lookup_elem(&cilium_lxc, &sk);

				if (src && !(src->flags & ENDPOINT_F_HOST))
					flags |= CT_F_VIA_STACK;
			}
			ct_create4(&f, CT_INGRESS, src_id, len, flags);
		}
	}
	/* A reply of a flow translated in from-container gets the service address back;
	 * conntrack says which flows those are, so other packets skip the lookup. */
	if (ct == CT_REPLY && cte && (cte->flags & CT_F_LB)) {
		err = lb4_rev_dnat(skb);
		if (err)
			return drop(skb, err, METRIC_INGRESS);
	}
pass:
	update_metrics(REASON_FORWARDED, METRIC_INGRESS, len);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
