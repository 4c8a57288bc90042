/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Drop reasons: Cilium's numeric codes (metrics store -code as reason; 0 = forwarded). */
#pragma once

#define REASON_FORWARDED 0
#define DROP_INVALID_SIP 132   /* "Invalid source ip" */
#define DROP_POLICY 133        /* "Policy denied" */
#define DROP_INVALID 134       /* "Invalid packet" */
#define DROP_CT_INVALID_HDR 135 /* "CT: Truncated or invalid header" */
#define DROP_UNKNOWN_L3 139    /* "Unknown L3 target address" / unsupported ethertype */
#define DROP_WRITE_ERROR 141   /* "Error writing to packet" */
#define DROP_POLICY_DENY 181   /* "Policy denied by denylist" */
#define DROP_NO_TUNNEL_KEY 147  /* "No tunnel/encapsulation key" */
#define DROP_UNROUTABLE 151     /* "Unroutable" */
#define DROP_NO_TUNNEL_ENDPOINT 160 /* "No tunnel/encapsulation endpoint" */
#define DROP_NAT_NO_MAPPING 167 /* "No mapping for NAT masquerade" */
#define DROP_NO_FIB 169         /* "No FIB entry found" */
#define DROP_UNKNOWN_SENDER 172 /* "Unknown sender endpoint": program runs on a link with no endpoint */
