// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Tunnel device (TCX on cilium_vxlan, a flow-based "external" device):
 *   tcx ingress = cil_from_overlay: a decapsulated packet from another node; its VNI
 *                 is the sender's security identity. Packets for a local pod go
 *                 straight to the pod's link with the identity in skb->mark, where
 *                 cil_to_container enforces ingress policy on it; the rest go to the
 *                 node's stack.
 *   tcx egress  = cil_to_overlay: packets the node's stack routes into the tunnel
 *                 (the node itself, or traffic it forwards, to another node's pods):
 *                 the tunnel endpoint comes from the ipcache, the identity from the
 *                 source address. Packets bpf_lxc already encapsulated pass. */

#include "lib/common.h"
#include "lib/drop.h"
#include "lib/maps.h"
#include "lib/ipcache.h"
#include "lib/l3.h"
#include "lib/encap.h"

SEC("classifier")
int cil_from_overlay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_tunnel_key key = {};
	struct endpoint_info *dst;
	struct endpoint_key dk;
	struct iphdr *ip4;
	__u32 src_id;

	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_INGRESS);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip4 = data + sizeof(*eth);
	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5)
		return drop(skb, DROP_INVALID, METRIC_INGRESS);
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, DROP_NO_TUNNEL_KEY, METRIC_INGRESS);
	src_id = key.tunnel_id;
	/* Another node's own traffic is "remote-node" here, as in Cilium. */
	if (src_id == ID_HOST)
		src_id = ID_REMOTE_NODE;

	dk.ip4 = ip4->daddr;
	dst = bpf_map_lookup_elem(&cilium_lxc, &dk);
	if (dst && !(dst->flags & ENDPOINT_F_HOST)) {
		skb->mark = identity_to_mark(src_id);
		return redirect_to_endpoint(skb, dst, ip4->ttl, METRIC_INGRESS);
	}
	/* For the node itself (or a pod that is gone: the stack answers). */
	update_metrics(REASON_FORWARDED, METRIC_INGRESS, skb->len);
	return TC_ACT_OK;
}

SEC("classifier")
int cil_to_overlay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipcache_value *info;
	struct iphdr *ip4;
	__u32 src_id;

	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_OVERLAY) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS);
	/* IPv4 only for now; the kernel's own IPv6 neighbour traffic on the device has
	 * no tunnel metadata and the device discards it. */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip4 = data + sizeof(*eth);
	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5)
		return drop(skb, DROP_INVALID, METRIC_EGRESS);
	info = ipcache_lookup4(ip4->daddr);
	if (!info || !info->tunnel_endpoint)
		return drop(skb, DROP_NO_TUNNEL_ENDPOINT, METRIC_EGRESS);
	/* The node's addresses are "host"; forwarded traffic keeps its source's identity
	 * (an outside client is "world"). */
	src_id = ipcache_identity4(ip4->saddr);
	if (set_tunnel(skb, info->tunnel_endpoint, src_id) < 0)
		return drop(skb, DROP_WRITE_ERROR, METRIC_EGRESS);
	update_metrics(REASON_FORWARDED, METRIC_EGRESS, skb->len);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
