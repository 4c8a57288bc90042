// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level service load balancing (cgroup v2 sock_addr hooks): a connect()
 * or sendmsg() to a service frontend is translated to a backend before any
 * packet exists, so there is no per-packet NAT; recvmsg() and getpeername()
 * show the service address again. A service without backends refuses the
 * connection at once ("Service backend not found"). */

#include "lib/common.h"
#include "lib/drop.h"
#include "lib/maps.h"
#include "lib/lb.h"
#include "lib/ipcache.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1
#define ECONNREFUSED 111
#define DROP_NO_SERVICE 158 /* "Service backend not found" */

static __always_inline __u32 now_secs(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
}

static __always_inline struct lb4_service *lb4_lookup_service(__be32 addr, __be16 port, __u8 proto)
{
	struct lb4_key key = { .address = addr, .dport = port, .proto = proto, .scope = LB_SCOPE_EXT };
	struct lb4_service *svc = bpf_map_lookup_elem(&cilium_lb4_services, &key);

	/* In-cluster clients use the internal scope when the service has two. */
	if (svc && (svc->flags & SVC_F_TWO_SCOPES)) {
		key.scope = LB_SCOPE_INT;
		svc = bpf_map_lookup_elem(&cilium_lb4_services, &key);
	}
	return svc;
}

static __always_inline struct lb4_backend *lb4_pick(struct bpf_sock_addr *ctx, __be32 addr, __be16 port, __u8 proto,
						  struct lb4_service *svc, __u32 *backend_id)
{
	struct lb4_key key = { .address = addr, .dport = port, .proto = proto };
	struct lb_affinity_key akey = {};
	struct lb_affinity_val *aff;
	struct lb4_service *slot;
	struct lb4_backend *be;
	__u32 now = now_secs();

	if (svc->flags & SVC_F_TWO_SCOPES)
		key.scope = LB_SCOPE_INT;
	if (svc->flags & SVC_F_AFFINITY) {
		akey.client_cookie = bpf_get_netns_cookie(ctx);
		akey.rev_nat_id = svc->rev_nat_index;
		aff = bpf_map_lookup_elem(&cilium_lb_affinity, &akey);
		if (aff && aff->last_used + svc->backend_id >= now) {
			be = bpf_map_lookup_elem(&cilium_lb4_backends, &aff->backend_id);
			if (be && be->state == BE_STATE_ACTIVE) {
				*backend_id = aff->backend_id;
				aff->last_used = now;
				return be;
			}
		}
	}
	key.backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&cilium_lb4_services, &key);
	if (!slot)
		return 0;
	*backend_id = slot->backend_id;
	be = bpf_map_lookup_elem(&cilium_lb4_backends, backend_id);
	if (be && (svc->flags & SVC_F_AFFINITY)) {
		struct lb_affinity_val v = { .backend_id = *backend_id, .last_used = now };
		bpf_map_update_elem(&cilium_lb_affinity, &akey, &v, BPF_ANY);
	}
	return be;
}

/* Translates the destination of ctx; returns SYS_PROCEED or SYS_REJECT. */
static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx, __u8 proto)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	struct lb4_service *svc;
	struct lb4_backend *be;
	__u32 backend_id = 0;

	__be32 key_addr = addr;

	svc = lb4_lookup_service(addr, port, proto);
	if (!svc) {
		/* NodePort on any node's address (this node's or another's, as the ipcache
		 * knows them): the 0.0.0.0 surrogate, translated right here. */
		__u32 id = ipcache_identity4(addr);

		if (id != ID_HOST && id != ID_REMOTE_NODE)
			return SYS_PROCEED;
		svc = lb4_lookup_service(0, port, proto);
		if (!svc || !(svc->flags & SVC_F_SURROGATE))
			return SYS_PROCEED;
		key_addr = 0;
	}
	if (svc->count == 0) {
		update_metrics(DROP_NO_SERVICE, METRIC_EGRESS, 0);
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}
	be = lb4_pick(ctx, key_addr, port, proto, svc, &backend_id);
	if (!be) {
		update_metrics(DROP_NO_SERVICE, METRIC_EGRESS, 0);
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}
	{
		struct lb4_reverse_sk_key rk = {
			.cookie = bpf_get_socket_cookie(ctx),
			.address = be->address,
			.port = be->port,
		};
		struct lb4_reverse_sk rv = {
			.address = addr,
			.port = port,
			.rev_nat_index = svc->rev_nat_index,
		};
		bpf_map_update_elem(&cilium_lb4_reverse_sk, &rk, &rv, BPF_ANY);
	}
	ctx->user_ip4 = be->address;
	ctx->user_port = be->port;
	return SYS_PROCEED;
}

/* Shows the service address for a socket talking to one of its backends. */
static __always_inline void sock4_rev_xlate(struct bpf_sock_addr *ctx)
{
	struct lb4_reverse_sk_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_reverse_sk *rv = bpf_map_lookup_elem(&cilium_lb4_reverse_sk, &rk);

	if (rv) {
		ctx->user_ip4 = rv->address;
		ctx->user_port = rv->port;
	}
}

/* IPv6: the same steps on the lb6 maps (no NodePort surrogate: nodes have no IPv6
 * addresses in the ipcache yet). */
static __always_inline struct lb4_service *lb6_lookup_service(struct lb6_key *key)
{
	struct lb4_service *svc;

	key->backend_slot = 0;
	key->scope = LB_SCOPE_EXT;
	svc = bpf_map_lookup_elem(&cilium_lb6_services, key);
	if (svc && (svc->flags & SVC_F_TWO_SCOPES)) {
		key->scope = LB_SCOPE_INT;
		svc = bpf_map_lookup_elem(&cilium_lb6_services, key);
	}
	return svc;
}

static __always_inline struct lb6_backend *lb6_pick(struct bpf_sock_addr *ctx, struct lb6_key *key,
						  struct lb4_service *svc, __u32 *backend_id)
{
	struct lb_affinity_key akey = {};
	struct lb_affinity_val *aff;
	struct lb4_service *slot;
	struct lb6_backend *be;
	__u32 now = now_secs();

	if (svc->flags & SVC_F_AFFINITY) {
		akey.client_cookie = bpf_get_netns_cookie(ctx);
		akey.rev_nat_id = svc->rev_nat_index;
		aff = bpf_map_lookup_elem(&cilium_lb_affinity, &akey);
		if (aff && aff->last_used + svc->backend_id >= now) {
			be = bpf_map_lookup_elem(&cilium_lb6_backends, &aff->backend_id);
			if (be && be->state == BE_STATE_ACTIVE) {
				*backend_id = aff->backend_id;
				aff->last_used = now;
				return be;
			}
		}
	}
	key->backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&cilium_lb6_services, key);
	if (!slot)
		return 0;
	*backend_id = slot->backend_id;
	be = bpf_map_lookup_elem(&cilium_lb6_backends, backend_id);
	if (be && (svc->flags & SVC_F_AFFINITY)) {
		struct lb_affinity_val v = { .backend_id = *backend_id, .last_used = now };
		bpf_map_update_elem(&cilium_lb_affinity, &akey, &v, BPF_ANY);
	}
	return be;
}

static __always_inline int sock6_xlate(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct lb6_key key = {};
	struct lb4_service *svc;
	struct lb6_backend *be;
	__u32 backend_id = 0;
	__be16 port = (__be16)ctx->user_port;

	key.address[0] = ctx->user_ip6[0];
	key.address[1] = ctx->user_ip6[1];
	key.address[2] = ctx->user_ip6[2];
	key.address[3] = ctx->user_ip6[3];
	key.dport = port;
	key.proto = proto;
	svc = lb6_lookup_service(&key);
	if (!svc)
		return SYS_PROCEED;
	if (svc->count == 0) {
		update_metrics(DROP_NO_SERVICE, METRIC_EGRESS, 0);
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}
	be = lb6_pick(ctx, &key, svc, &backend_id);
	if (!be) {
		update_metrics(DROP_NO_SERVICE, METRIC_EGRESS, 0);
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}
	{
		struct lb6_reverse_sk_key rk = {
			.cookie = bpf_get_socket_cookie(ctx),
			.port = be->port,
		};
		struct lb6_reverse_sk rv = {
			.port = port,
			.rev_nat_index = svc->rev_nat_index,
		};

		__builtin_memcpy(rk.address, be->address, 16);
		__builtin_memcpy(rv.address, key.address, 16);
		bpf_map_update_elem(&cilium_lb6_reverse_sk, &rk, &rv, BPF_ANY);
	}
	ctx->user_ip6[0] = be->address[0];
	ctx->user_ip6[1] = be->address[1];
	ctx->user_ip6[2] = be->address[2];
	ctx->user_ip6[3] = be->address[3];
	ctx->user_port = be->port;
	return SYS_PROCEED;
}

static __always_inline void sock6_rev_xlate(struct bpf_sock_addr *ctx)
{
	struct lb6_reverse_sk_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.port = (__be16)ctx->user_port,
	};
	struct lb6_reverse_sk *rv;

	rk.address[0] = ctx->user_ip6[0];
	rk.address[1] = ctx->user_ip6[1];
	rk.address[2] = ctx->user_ip6[2];
	rk.address[3] = ctx->user_ip6[3];
	rv = bpf_map_lookup_elem(&cilium_lb6_reverse_sk, &rk);
	if (rv) {
		ctx->user_ip6[0] = rv->address[0];
		ctx->user_ip6[1] = rv->address[1];
		ctx->user_ip6[2] = rv->address[2];
		ctx->user_ip6[3] = rv->address[3];
		ctx->user_port = rv->port;
	}
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	return ctx->type == 2 /* SOCK_DGRAM */ ? IPPROTO_UDP : IPPROTO_TCP;
}

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx, sock_proto(ctx));
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_rev_xlate(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_rev_xlate(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/connect6")
int cil_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock6_xlate(ctx, sock_proto(ctx));
}

SEC("cgroup/sendmsg6")
int cil_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_xlate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg6")
int cil_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	sock6_rev_xlate(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int cil_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	sock6_rev_xlate(ctx);
	return SYS_PROCEED;
}

char __license[] SEC("license") = "Dual BSD/GPL";
