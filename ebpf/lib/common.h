/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared definitions for every entry program: includes, verdicts, directions. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define __always_inline inline __attribute__((always_inline))

/* Traffic directions, from the endpoint's point of view (as Cilium's metrics). */
#define METRIC_INGRESS 1 /* to the endpoint */
#define METRIC_EGRESS 2  /* from the endpoint */

/* Compile-time layout checks: one definition in C, one mirror in Rust, both asserted. */
#define ASSERT_SIZE(type, size) _Static_assert(sizeof(type) == (size), #type " size changed: update the Rust mirror")
