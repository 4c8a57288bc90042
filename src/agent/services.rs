//! Services: the store's Services and EndpointSlices -> the LB maps, applied as a
//! diff (new backends and slots before the master entry that counts them, removals
//! after), so a change never exposes a half-written service.
use std::{collections::BTreeMap, net::IpAddr};

use tracing::info;

use super::{source::Snapshot, AgentError, AgentState};
use crate::{
    datapath::{
        loader::{DatapathError, LbMaps},
        maps::{
            Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, Lb6Backend, Lb6Key, MaglevKey, LB_SCOPE_EXT,
            LB_SCOPE_INT, SVC_F_AFFINITY, SVC_F_NODEPORT, SVC_F_SURROGATE, SVC_F_TWO_SCOPES,
        },
    },
    lb::{
        model::{
            AddressType, EndpointPort, EndpointSlice, Protocol, Service, ServicePort, ServiceType,
            SliceEndpoint, TargetPort,
        },
        state::{compute, BackendId, BackendState, FrontendKind, LbState, NodeView, Scope},
    },
};

/// What the agent programmed last.
#[derive(Default)]
pub struct LbProgrammed {
    pub state: Option<LbState>,
    /// Id bookkeeping of `state`, for incremental recomputation.
    pub index: crate::lb::state::LbIndex,
    pub maps: LbMaps,
    pub maglev: BTreeMap<MaglevKey, u32>,
    /// What each Maglev table was computed from, by rev-NAT id.
    pub maglev_inputs: BTreeMap<u16, Vec<(BackendId, String)>>,
}

fn v4(ip: IpAddr) -> Option<u32> {
    match ip {
        IpAddr::V4(a) => Some(u32::from_ne_bytes(a.octets())),
        IpAddr::V6(_) => None,
    }
}

fn proto(p: Protocol) -> u8 {
    p.number()
}

/// The map contents an LB state asks for: IPv4 frontends (socket and tc LB) and IPv6
/// frontends (socket LB).
pub fn desired_maps(state: &LbState) -> LbMaps {
    let mut m = LbMaps::default();
    for (id, be) in &state.backends {
        let state_code = match be.state {
            BackendState::Active => 0,
            _ => 1,
        };
        if let IpAddr::V6(a) = be.addr {
            m.backends6.insert(
                id.0,
                Lb6Backend {
                    address: a.octets(),
                    port: be.port.to_be(),
                    proto: proto(be.proto),
                    state: state_code,
                    pad: 0,
                },
            );
            continue;
        }
        let Some(address) = v4(be.addr) else { continue };
        m.backends.insert(
            id.0,
            Lb4Backend {
                address,
                port: be.port.to_be(),
                proto: proto(be.proto),
                state: match be.state {
                    BackendState::Active => 0,
                    _ => 1,
                },
                pad: 0,
            },
        );
    }
    for svc in &state.services {
        let fe = &svc.frontend;
        let scope = match fe.scope {
            Scope::External => LB_SCOPE_EXT,
            Scope::Internal => LB_SCOPE_INT,
        };
        let mut flags = 0;
        if svc.affinity_timeout.is_some() {
            flags |= SVC_F_AFFINITY;
        }
        if svc.flags.two_scopes {
            flags |= SVC_F_TWO_SCOPES;
        }
        if fe.kind == FrontendKind::NodePort {
            flags |= SVC_F_NODEPORT;
        }
        if fe.is_surrogate() {
            flags |= SVC_F_SURROGATE;
        }
        let slots: Vec<u32> = svc
            .backends
            .iter()
            .chain(svc.terminating.iter())
            .map(|b| b.0)
            .collect();
        // Slot 0: the master entry; slots 1..: one backend each.
        let entries = std::iter::once(Lb4Service {
            backend_id: svc.affinity_timeout.unwrap_or(0),
            count: svc.backends.len() as u16,
            rev_nat_index: svc.id,
            flags,
            flags2: 0,
            pad: 0,
        })
        .chain(slots.iter().map(|be| Lb4Service {
            backend_id: *be,
            count: 0,
            rev_nat_index: svc.id,
            flags,
            flags2: 0,
            pad: 0,
        }));
        if let IpAddr::V6(a) = fe.addr {
            for (slot, v) in entries.enumerate() {
                let key = Lb6Key {
                    address: a.octets(),
                    dport: fe.port.to_be(),
                    backend_slot: slot as u16,
                    proto: proto(fe.proto),
                    scope,
                    pad: [0; 2],
                };
                m.services6.insert(key, v);
            }
            continue;
        }
        let Some(address) = v4(fe.addr) else { continue };
        for (slot, v) in entries.enumerate() {
            let key = Lb4Key {
                address,
                dport: fe.port.to_be(),
                backend_slot: slot as u16,
                proto: proto(fe.proto),
                scope,
                pad: [0; 2],
            };
            m.services.insert(key, v);
        }
        m.revnat.insert(
            svc.id,
            Lb4RevNat {
                address,
                port: fe.port.to_be(),
                pad: 0,
            },
        );
    }
    m
}

/// Writes the entries of `want` that `have` lacks or holds otherwise: those `first`
/// selects, then the rest (slots before the master entry that counts them).
fn put_changed<K: Ord + Copy, V: PartialEq + Copy>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
    first: impl Fn(&K) -> bool,
    mut put: impl FnMut(K, V) -> Result<(), DatapathError>,
) -> Result<usize, DatapathError> {
    let mut writes = 0;
    for pass in [true, false] {
        for (k, v) in want.iter().filter(|(k, _)| first(k) == pass) {
            if have.get(k) != Some(v) {
                put(*k, *v)?;
                writes += 1;
            }
        }
    }
    Ok(writes)
}

/// Removes the entries of `have` that `want` lacks: those `first` selects, then the
/// rest (master entries before their slots).
fn remove_gone<K: Ord, V>(
    have: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    first: impl Fn(&K) -> bool,
    mut remove: impl FnMut(&K) -> Result<(), DatapathError>,
) -> Result<usize, DatapathError> {
    let mut writes = 0;
    for pass in [true, false] {
        for k in have.keys().filter(|k| first(k) == pass) {
            if !want.contains_key(k) {
                remove(k)?;
                writes += 1;
            }
        }
    }
    Ok(writes)
}

/// Namespace of the services that stand for HostPorts.
pub const HOSTPORT_NAMESPACE: &str = "cilium-hostport";

impl AgentState {
    /// HostPorts as services: each mapping is a frontend on the node's addresses (or its
    /// hostIP) whose one backend is the pod's container port, as Cilium models them.
    fn host_port_services(&self, node_ips: &[IpAddr]) -> (Vec<Service>, Vec<EndpointSlice>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for ep in self.endpoints.list() {
            for m in &ep.port_mappings {
                let Some(protocol) = Protocol::from_k8s(&m.protocol.to_ascii_uppercase()) else {
                    continue;
                };
                let name = format!(
                    "ep{}-{}-{}",
                    ep.id,
                    m.host_port,
                    m.protocol.to_ascii_lowercase()
                );
                services.push(Service {
                    namespace: HOSTPORT_NAMESPACE.into(),
                    name: name.clone(),
                    type_: ServiceType::ClusterIP,
                    headless: false,
                    cluster_ips: vec![],
                    ports: vec![ServicePort {
                        name: None,
                        protocol,
                        port: m.host_port,
                        target_port: TargetPort::Number(m.container_port),
                        node_port: None,
                    }],
                    external_ips: m
                        .host_ip
                        .map(|ip| vec![ip])
                        .unwrap_or_else(|| node_ips.to_vec()),
                    load_balancer_ips: vec![],
                    session_affinity: None,
                    external_traffic_local: false,
                    internal_traffic_local: false,
                    has_selector: false,
                });
                slices.push(EndpointSlice {
                    namespace: HOSTPORT_NAMESPACE.into(),
                    name: format!("{name}-1"),
                    service_name: name,
                    address_type: AddressType::Ipv4,
                    ports: vec![EndpointPort {
                        name: None,
                        protocol,
                        port: Some(m.container_port),
                    }],
                    endpoints: vec![SliceEndpoint {
                        addresses: vec![IpAddr::V4(ep.ipv4)],
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                        node_name: Some(self.config.node_name.clone()),
                        zone: None,
                    }],
                });
            }
        }
        (services, slices)
    }

    /// Recomputes services from the snapshot and writes the difference to the maps.
    pub fn regenerate_services(&mut self, snap: &Snapshot) -> Result<usize, AgentError> {
        let node_ips: Vec<IpAddr> = self.node_ips.iter().map(|a| IpAddr::V4(*a)).collect();
        let node = NodeView {
            node_name: &self.config.node_name,
            node_ips: &node_ips,
            // NodePort is on with the socket LB (pods and the node reach any node's
            // address) or with NodePort devices (traffic from outside).
            nodeport_enabled: self.config.kube_proxy_replacement(),
        };
        // Without kube-proxy replacement the node's kube-proxy (iptables) handles
        // services; the LB maps stay empty.
        let kpr = self.config.kube_proxy_replacement();
        let (snap_services, snap_slices) = if kpr {
            (&snap.services[..], &snap.slices[..])
        } else {
            (&[][..], &[][..])
        };
        let (hp_services, hp_slices) = if kpr {
            self.host_port_services(&node_ips)
        } else {
            Default::default()
        };
        let state = if hp_services.is_empty() {
            compute(snap_services, snap_slices, &node, self.lb.state.as_ref())
        } else {
            let services: Vec<_> = snap_services.iter().cloned().chain(hp_services).collect();
            let slices: Vec<_> = snap_slices.iter().cloned().chain(hp_slices).collect();
            compute(&services, &slices, &node, self.lb.state.as_ref())
        };
        let want = desired_maps(&state);
        let have = std::mem::take(&mut self.lb.maps);
        let mut writes = self.write_lb_diff(&want, &have)?;
        // Maglev tables of externally reachable frontends (NodePort, LoadBalancer, ExternalIP).
        let inputs = self.maglev_inputs(&state);
        writes += self.sync_maglev(inputs, None)?;
        if writes > 0 {
            info!(
                writes,
                services = state.services.len(),
                backends = state.backends.len(),
                "services programmed"
            );
        }
        self.lb.maps = want;
        self.lb.index = crate::lb::state::LbIndex::of(&state);
        self.lb.state = Some(state);
        Ok(writes)
    }

    /// The Maglev inputs (selectable backends with their keys) of the externally
    /// reachable frontends of `state` (with NodePort devices: the only traffic that
    /// uses Maglev), by rev-NAT id.
    fn maglev_inputs(&self, state: &LbState) -> BTreeMap<u16, Vec<(BackendId, String)>> {
        if self.config.devices.is_empty() {
            return BTreeMap::new();
        }
        state
            .services
            .iter()
            .filter(|s| s.frontend.kind != FrontendKind::ClusterIP)
            .map(|s| (s.id, state.maglev_backends(s)))
            .filter(|(_, b)| !b.is_empty())
            .collect()
    }

    /// Brings the Maglev tables to `want`: a table is computed and written only when its
    /// frontend's backends changed (a table is thousands of slots). With `only`, just
    /// those rev-NAT ids are considered (the others stay as they are).
    fn sync_maglev(
        &mut self,
        want: BTreeMap<u16, Vec<(BackendId, String)>>,
        only: Option<&std::collections::BTreeSet<u16>>,
    ) -> Result<usize, AgentError> {
        let m = self.config.maglev_table_size as usize;
        let mut writes = 0;
        let stale: Vec<u16> = self
            .lb
            .maglev_inputs
            .keys()
            .filter(|id| !want.contains_key(id) && only.is_none_or(|o| o.contains(id)))
            .copied()
            .collect();
        for (id, backends) in want {
            if self.lb.maglev_inputs.get(&id) == Some(&backends) {
                continue;
            }
            let table = match crate::lb::maglev::table(&backends, m) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, rev_nat = id, "no Maglev table");
                    continue;
                }
            };
            for (i, b) in table.iter().enumerate() {
                let k = MaglevKey {
                    rev_nat_index: id,
                    pad: 0,
                    index: i as u32,
                };
                if self.lb.maglev.get(&k) != Some(&b.0) {
                    self.datapath.maglev_put(k, b.0)?;
                    self.lb.maglev.insert(k, b.0);
                    writes += 1;
                }
            }
            self.lb.maglev_inputs.insert(id, backends);
        }
        for id in stale {
            let keys: Vec<MaglevKey> = self
                .lb
                .maglev
                .range(
                    MaglevKey {
                        rev_nat_index: id,
                        pad: 0,
                        index: 0,
                    }..=MaglevKey {
                        rev_nat_index: id,
                        pad: u16::MAX,
                        index: u32::MAX,
                    },
                )
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                self.datapath.maglev_remove(&k)?;
                self.lb.maglev.remove(&k);
                writes += 1;
            }
            self.lb.maglev_inputs.remove(&id);
        }
        Ok(writes)
    }

    /// Writes what `want` has and `have` lacks or differs in, then removes what only
    /// `have` has: backends and rev-NAT first, slots before the master entry that
    /// counts them; removals masters first. Returns the number of map writes.
    fn write_lb_diff(&mut self, want: &LbMaps, have: &LbMaps) -> Result<usize, AgentError> {
        let dp = &mut self.datapath;
        let slot = |k: &Lb4Key| k.backend_slot != 0;
        let slot6 = |k: &Lb6Key| k.backend_slot != 0;
        let mut writes = put_changed(
            &want.backends,
            &have.backends,
            |_| true,
            |k, v| dp.lb_backend_put(k, v),
        )?;
        writes += put_changed(
            &want.revnat,
            &have.revnat,
            |_| true,
            |k, v| dp.lb_revnat_put(k, v),
        )?;
        writes += put_changed(&want.services, &have.services, slot, |k, v| {
            dp.lb_service_put(k, v)
        })?;
        writes += remove_gone(
            &have.services,
            &want.services,
            |k| !slot(k),
            |k| dp.lb_service_remove(k),
        )?;
        writes += remove_gone(
            &have.revnat,
            &want.revnat,
            |_| true,
            |k| dp.lb_revnat_remove(*k),
        )?;
        writes += remove_gone(
            &have.backends,
            &want.backends,
            |_| true,
            |k| dp.lb_backend_remove(*k),
        )?;
        // IPv6, in the same order.
        writes += put_changed(
            &want.backends6,
            &have.backends6,
            |_| true,
            |k, v| dp.lb6_backend_put(k, v),
        )?;
        writes += put_changed(&want.services6, &have.services6, slot6, |k, v| {
            dp.lb6_service_put(k, v)
        })?;
        writes += remove_gone(
            &have.services6,
            &want.services6,
            |k| !slot6(k),
            |k| dp.lb6_service_remove(k),
        )?;
        writes += remove_gone(
            &have.backends6,
            &want.backends6,
            |_| true,
            |k| dp.lb6_backend_remove(*k),
        )?;
        Ok(writes)
    }

    /// Reprograms only the services named in `keys` (their store objects changed):
    /// `Ok(None)` when the change reaches other services and a full regeneration must
    /// decide. The diff is taken between the changed services' old and new entries.
    pub fn regenerate_services_incremental(
        &mut self,
        keys: &std::collections::BTreeSet<(String, String)>,
    ) -> Result<Option<usize>, AgentError> {
        if !self.config.kube_proxy_replacement() {
            return Ok(Some(0)); // kube-proxy handles services
        }
        let (Some(source), Some(mut state)) = (&self.source, self.lb.state.take()) else {
            return Ok(None);
        };
        let (services, slices) = source.services_for(keys);
        let node_ips: Vec<IpAddr> = self.node_ips.iter().map(|a| IpAddr::V4(*a)).collect();
        let node = NodeView {
            node_name: &self.config.node_name,
            node_ips: &node_ips,
            nodeport_enabled: self.config.kube_proxy_replacement(),
        };
        let Some(delta) = crate::lb::state::compute_incremental(
            &mut state,
            &mut self.lb.index,
            keys,
            &services,
            &slices,
            &node,
        ) else {
            self.lb.state = Some(state);
            return Ok(None);
        };
        self.lb.state = Some(state);
        let want = desired_maps(&delta.added);
        let have = desired_maps(&delta.removed);
        let mut writes = self.write_lb_diff(&want, &have)?;
        for k in have.services.keys() {
            self.lb.maps.services.remove(k);
        }
        for k in have.revnat.keys() {
            self.lb.maps.revnat.remove(k);
        }
        for k in have.backends.keys() {
            self.lb.maps.backends.remove(k);
        }
        for k in have.services6.keys() {
            self.lb.maps.services6.remove(k);
        }
        for k in have.backends6.keys() {
            self.lb.maps.backends6.remove(k);
        }
        self.lb.maps.services.extend(want.services);
        self.lb.maps.revnat.extend(want.revnat);
        self.lb.maps.backends.extend(want.backends);
        self.lb.maps.services6.extend(want.services6);
        self.lb.maps.backends6.extend(want.backends6);
        let ids: std::collections::BTreeSet<u16> = delta
            .removed
            .services
            .iter()
            .chain(&delta.added.services)
            .map(|s| s.id)
            .collect();
        let inputs = self.maglev_inputs(&delta.added);
        writes += self.sync_maglev(inputs, Some(&ids))?;
        Ok(Some(writes))
    }
}
