// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Node devices (TCX): NodePort / LoadBalancer / ExternalIP traffic from outside.
 *   tcx ingress = cil_from_netdev: a packet to a frontend is DNATed to a backend
 *                 chosen by Maglev (and kept per flow), then routed to the pod;
 *   tcx egress  = cil_to_netdev:   the backend's reply gets the frontend back as
 *                 its source. The client address is preserved (no SNAT): backends
 *                 are local to this node in this mode. */

#include "lib/common.h"
#include "lib/drop.h"
#include "lib/maps.h"
#include "lib/lb.h"
#include "lib/nat.h"

/* Set at load time: the size of the Maglev tables the agent writes. */
volatile const __u32 MAGLEV_TABLE_SIZE = 16381;

SEC("classifier")
int cil_from_netdev(struct __sk_buff *skb)
{
	struct lb4_service *svc;
	struct lb4_key key = {};
	struct iphdr *ip4;
	struct l4 l;
	__u32 len = skb->len;
	int reason;

	if (l4_parse(skb, &ip4, &l) < 0)
		return TC_ACT_OK;
	svc = lb4_frontend(ip4->daddr, l.dport, l.proto, &key);
	if (!svc)
		return TC_ACT_OK;
	reason = lb4_dnat(skb, &l, ip4->saddr, ip4->daddr, svc, &key, MAGLEV_TABLE_SIZE);
	if (reason)
		return drop(skb, reason, METRIC_INGRESS);
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
