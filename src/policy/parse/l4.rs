//! The L4 part of Cilium rules: toPorts (ports, port ranges, protocols, named ports) and
//! icmps, validated as Cilium's CRD schema and rule sanitizer do.

use serde::Deserialize;

use super::validated::{
    validated_int_or_str, validated_map, validated_str, IntOrString, Unsupported,
};
use crate::policy::names::is_iana_svc_name;
use crate::policy::rule::{IcmpRule, IpFamily, PortRule, PortSpec, Protocol};

/// Cilium's limit on ports per toPorts item and on ICMP fields per icmps item.
const MAX_ITEMS: usize = 40;
const MAX_PORT: i64 = 65535;

/// ICMPv4 type names Cilium accepts.
const ICMPV4_TYPES: [(&str, u8); 14] = [
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// ICMPv6 type names Cilium accepts.
const ICMPV6_TYPES: [(&str, u8); 27] = [
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

/// toPorts protocols: TCP, UDP, SCTP, ANY (ICMP is matched with `icmps`).
#[derive(Debug, Clone, Copy)]
struct CnpProtocol(Protocol);

validated_str!(CnpProtocol, "a protocol", |s| {
    match s {
    "TCP" => Ok(CnpProtocol(Protocol::Tcp)),
    "UDP" => Ok(CnpProtocol(Protocol::Udp)),
    "SCTP" => Ok(CnpProtocol(Protocol::Sctp)),
    "ANY" => Ok(CnpProtocol(Protocol::Any)),
    _ => Err(format!(
        "unsupported protocol `{s}`, expected one of TCP, UDP, SCTP, ANY (ICMP is matched with `icmps`)"
    )),
}
});

/// A toPorts port: number 0..=65535 (0 = all ports) or an IANA service name.
#[derive(Debug, Clone)]
struct CnpPortValue(PortSpec);

fn cnp_port_number(n: i64) -> Result<CnpPortValue, String> {
    match n {
        0 => Ok(CnpPortValue(PortSpec::Any)),
        1..=MAX_PORT => Ok(CnpPortValue(PortSpec::Number(n as u16))),
        _ => Err(format!("port {n} out of range 0-65535")),
    }
}

validated_int_or_str!(CnpPortValue, "a port number or name", |v| match v {
    IntOrString::Int(n) => cnp_port_number(n),
    IntOrString::Str(s) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => {
        cnp_port_number(s.parse::<i64>().unwrap_or(i64::MAX))
    }
    IntOrString::Str(s) if is_iana_svc_name(&s, true) => {
        Ok(CnpPortValue(PortSpec::Named(s.to_ascii_lowercase())))
    }
    IntOrString::Str(s) => Err(format!(
        "invalid port `{s}`: must be a number 0-65535 or an IANA service name (at most 15 \
         alphanumerics or '-', at least one letter)"
    )),
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortProtocolRaw {
    port: Option<CnpPortValue>,
    end_port: Option<i64>,
    protocol: Option<CnpProtocol>,
}

#[derive(Debug, Clone)]
struct PortProtocol(PortRule);

impl TryFrom<PortProtocolRaw> for PortProtocol {
    type Error = String;
    fn try_from(raw: PortProtocolRaw) -> Result<Self, String> {
        let protocol = raw.protocol.map_or(Protocol::Any, |p| p.0);
        let port = raw.port.map_or(PortSpec::Any, |p| p.0);
        // endPort 0 is Cilium's "unset".
        let end_port = match (raw.end_port.filter(|e| *e != 0), &port) {
            (None, _) => None,
            (Some(e), _) if !(0..=MAX_PORT).contains(&e) => {
                return Err(format!("endPort {e} out of range 0-65535"))
            }
            (Some(_), PortSpec::Any) => {
                return Err("endPort requires a non-zero numeric port".to_string())
            }
            (Some(_), PortSpec::Named(n)) => {
                return Err(format!("endPort cannot be used with named port `{n}`"))
            }
            (Some(e), PortSpec::Number(p)) if e < i64::from(*p) => {
                return Err(format!("endPort {e} must not be less than port {p}"))
            }
            (Some(e), PortSpec::Number(_)) => Some(e as u16),
        };
        Ok(PortProtocol(PortRule {
            port,
            end_port,
            protocol,
        }))
    }
}
validated_map!(PortProtocol, PortProtocolRaw, "a port/protocol");

/// The ports of one toPorts item. An item without ports contributes nothing (Cilium adds an
/// entry per listed port only).
fn port_list(ports: Option<Vec<PortProtocol>>) -> Result<Vec<PortRule>, String> {
    let ports = ports.unwrap_or_default();
    if ports.len() > MAX_ITEMS {
        return Err(format!(
            "too many ports ({}), the maximum is {MAX_ITEMS}",
            ports.len()
        ));
    }
    Ok(ports.into_iter().map(|p| p.0).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortRuleRaw {
    ports: Option<Vec<PortProtocol>>,
    rules: Option<Unsupported>,
    listener: Option<Unsupported>,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Option<Unsupported>,
    #[serde(rename = "originatingTLS")]
    originating_tls: Option<Unsupported>,
    server_names: Option<Unsupported>,
}

/// One allow toPorts item.
#[derive(Debug, Clone)]
pub(crate) struct CnpPortRule(pub Vec<PortRule>);

impl TryFrom<PortRuleRaw> for CnpPortRule {
    type Error = String;
    fn try_from(raw: PortRuleRaw) -> Result<Self, String> {
        let _ = (
            raw.rules,
            raw.listener,
            raw.terminating_tls,
            raw.originating_tls,
            raw.server_names,
        );
        port_list(raw.ports).map(CnpPortRule)
    }
}
validated_map!(CnpPortRule, PortRuleRaw, "a toPorts item");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortDenyRuleRaw {
    ports: Option<Vec<PortProtocol>>,
}

/// One deny toPorts item (ports only).
#[derive(Debug, Clone)]
pub(crate) struct CnpPortDenyRule(pub Vec<PortRule>);

impl TryFrom<PortDenyRuleRaw> for CnpPortDenyRule {
    type Error = String;
    fn try_from(raw: PortDenyRuleRaw) -> Result<Self, String> {
        port_list(raw.ports).map(CnpPortDenyRule)
    }
}
validated_map!(CnpPortDenyRule, PortDenyRuleRaw, "a toPorts item");

#[derive(Debug, Clone, Copy)]
struct IcmpFamily(IpFamily);

validated_str!(IcmpFamily, "an IP family", |s| match s {
    "IPv4" => Ok(IcmpFamily(IpFamily::V4)),
    "IPv6" => Ok(IcmpFamily(IpFamily::V6)),
    _ => Err(format!("unknown family `{s}`, expected IPv4 or IPv6")),
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpFieldRaw {
    family: Option<IcmpFamily>,
    #[serde(rename = "type")]
    icmp_type: IntOrString,
}

#[derive(Debug, Clone, Copy)]
struct IcmpField(IcmpRule);

impl TryFrom<IcmpFieldRaw> for IcmpField {
    type Error = String;
    fn try_from(raw: IcmpFieldRaw) -> Result<Self, String> {
        let family = raw.family.map_or(IpFamily::V4, |f| f.0);
        let number = match &raw.icmp_type {
            IntOrString::Int(n) => Some(*n),
            IntOrString::Str(s) if s.bytes().all(|c| c.is_ascii_digit()) && !s.is_empty() => {
                Some(s.parse::<i64>().unwrap_or(i64::MAX))
            }
            IntOrString::Str(_) => None,
        };
        let icmp_type = match (number, &raw.icmp_type) {
            (Some(n), _) => {
                u8::try_from(n).map_err(|_| format!("ICMP type {n} out of range 0-255"))?
            }
            (None, IntOrString::Str(name)) => {
                let table: &[(&str, u8)] = match family {
                    IpFamily::V4 => &ICMPV4_TYPES,
                    IpFamily::V6 => &ICMPV6_TYPES,
                };
                table
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| *t)
                    .ok_or_else(|| {
                        let fam = if family == IpFamily::V4 {
                            "IPv4"
                        } else {
                            "IPv6"
                        };
                        format!("unknown ICMP type `{name}` for family {fam}")
                    })?
            }
            (None, IntOrString::Int(n)) => return Err(format!("invalid ICMP type {n}")),
        };
        Ok(IcmpField(IcmpRule { family, icmp_type }))
    }
}
validated_map!(IcmpField, IcmpFieldRaw, "an ICMP field");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpRuleRaw {
    fields: Option<Vec<IcmpField>>,
}

#[derive(Debug, Clone)]
pub(crate) struct IcmpRules(pub Vec<IcmpRule>);

impl TryFrom<IcmpRuleRaw> for IcmpRules {
    type Error = String;
    fn try_from(raw: IcmpRuleRaw) -> Result<Self, String> {
        let fields = raw.fields.unwrap_or_default();
        if fields.len() > MAX_ITEMS {
            return Err(format!(
                "too many ICMP fields ({}), the maximum is {MAX_ITEMS}",
                fields.len()
            ));
        }
        Ok(IcmpRules(fields.into_iter().map(|f| f.0).collect()))
    }
}
validated_map!(IcmpRules, IcmpRuleRaw, "an icmps item");
