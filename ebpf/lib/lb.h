/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service load balancing maps (IPv4), laid out as Cilium's lb4 maps:
 * a service is a master entry (slot 0: backend count, flags, affinity timeout,
 * rev-NAT index) plus one entry per slot 1..count naming a backend. */
#pragma once

#include "common.h"

#define LB_SERVICE_MAP_SIZE 65536
#define LB_BACKENDS_MAP_SIZE 65536
#define LB_REV_NAT_MAP_SIZE 65536
#define LB_AFFINITY_MAP_SIZE 65536
#define LB_REVERSE_SK_MAP_SIZE 262144

#define LB_SCOPE_EXT 0
#define LB_SCOPE_INT 1

#define SVC_F_AFFINITY 1
#define SVC_F_TWO_SCOPES 2
#define SVC_F_NODEPORT 4
#define SVC_F_SURROGATE 8 /* 0.0.0.0:nodePort */

struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot; /* 0 = master entry */
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};
ASSERT_SIZE(struct lb4_key, 12);

struct lb4_service {
	__u32 backend_id; /* slot > 0: the backend; slot 0: affinity timeout (s) */
	__u16 count;      /* slot 0: active backends */
	__u16 rev_nat_index;
	__u8 flags;
	__u8 flags2;
	__u16 pad;
};
ASSERT_SIZE(struct lb4_service, 12);

#define BE_STATE_ACTIVE 0
#define BE_STATE_TERMINATING 1

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state;
	__u32 pad;
};
ASSERT_SIZE(struct lb4_backend, 12);

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};
ASSERT_SIZE(struct lb4_reverse_nat, 8);

struct lb_affinity_key {
	__u64 client_cookie; /* netns cookie of the client (socket LB) */
	__u32 rev_nat_id;
	__u32 pad;
};
ASSERT_SIZE(struct lb_affinity_key, 16);

struct lb_affinity_val {
	__u32 backend_id;
	__u32 last_used; /* seconds, CLOCK_MONOTONIC */
};
ASSERT_SIZE(struct lb_affinity_val, 8);

struct lb4_reverse_sk_key {
	__u64 cookie; /* socket cookie */
	__be32 address; /* backend */
	__be16 port;
	__u16 pad;
};
ASSERT_SIZE(struct lb4_reverse_sk_key, 16);

struct lb4_reverse_sk {
	__be32 address; /* service frontend */
	__be16 port;
	__u16 rev_nat_index;
};
ASSERT_SIZE(struct lb4_reverse_sk, 8);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, LB_SERVICE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB_BACKENDS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB_REV_NAT_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, LB_AFFINITY_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_reverse_sk_key);
	__type(value, struct lb4_reverse_sk);
	__uint(max_entries, LB_REVERSE_SK_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_reverse_sk SEC(".maps");

/* IPv6 (socket LB): the same master/slot layout; backend ids are shared with IPv4
 * (one id space), values of the service map are struct lb4_service. */
struct lb6_key {
	__u32 address[4];
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};
ASSERT_SIZE(struct lb6_key, 24);

struct lb6_backend {
	__u32 address[4];
	__be16 port;
	__u8 proto;
	__u8 state;
	__u32 pad;
};
ASSERT_SIZE(struct lb6_backend, 24);

struct lb6_reverse_sk_key {
	__u64 cookie;
	__u32 address[4]; /* backend */
	__be16 port;
	__u16 pad;
	__u32 pad2;
};
ASSERT_SIZE(struct lb6_reverse_sk_key, 32);

struct lb6_reverse_sk {
	__u32 address[4]; /* service frontend */
	__be16 port;
	__u16 rev_nat_index;
};
ASSERT_SIZE(struct lb6_reverse_sk, 20);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb6_key);
	__type(value, struct lb4_service);
	__uint(max_entries, LB_SERVICE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb6_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb6_backend);
	__uint(max_entries, LB_BACKENDS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb6_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb6_reverse_sk_key);
	__type(value, struct lb6_reverse_sk);
	__uint(max_entries, LB_REVERSE_SK_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb6_reverse_sk SEC(".maps");

/* Maglev lookup tables of externally reachable services: (rev-NAT index, slot) -> backend. */
#define LB_MAGLEV_MAP_SIZE (1 << 20)

struct lb_maglev_key {
	__u16 rev_nat_index;
	__u16 pad;
	__u32 index;
};
ASSERT_SIZE(struct lb_maglev_key, 8);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_maglev_key);
	__type(value, __u32);
	__uint(max_entries, LB_MAGLEV_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb_maglev SEC(".maps");

/* NodePort connections: the client's tuple toward the frontend -> chosen backend, so
 * every packet of a flow meets the same backend (and a removed one keeps its flows). */
struct lb4_nat_key {
	__be32 client;
	__be32 frontend;
	__be16 client_port;
	__be16 frontend_port;
	__u8 proto;
	__u8 pad[3];
};
ASSERT_SIZE(struct lb4_nat_key, 16);

struct lb4_nat_val {
	__be32 backend;
	__be16 backend_port;
	__u16 rev_nat_index;
};
ASSERT_SIZE(struct lb4_nat_val, 8);

/* Replies: (backend, client) tuple -> the frontend to restore as the source. */
struct lb4_rnat_key {
	__be32 backend;
	__be32 client;
	__be16 backend_port;
	__be16 client_port;
	__u8 proto;
	__u8 pad[3];
};
ASSERT_SIZE(struct lb4_rnat_key, 16);

struct lb4_rnat_val {
	__be32 frontend;
	__be16 frontend_port;
	__u16 pad;
};
ASSERT_SIZE(struct lb4_rnat_val, 8);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_nat_key);
	__type(value, struct lb4_nat_val);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_rnat_key);
	__type(value, struct lb4_rnat_val);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_rnat SEC(".maps");
