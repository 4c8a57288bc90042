//! Desired load-balancing state: Services + EndpointSlices + this node's view in, the
//! contents of the datapath's service (frontend + backend slots), backend and rev-NAT maps
//! out. Pure and deterministic: the same input (and previous state) gives the same output.
//!
//! Semantics follow Kubernetes and Cilium's kube-proxy replacement:
//!
//! - Headless (`clusterIP: None`) and `ExternalName` services get nothing. Services without
//!   endpoints still get their frontends, with no backends, so the datapath can answer
//!   "service backend not found" at once.
//! - Frontends per service port: each cluster IP; for NodePort and LoadBalancer services
//!   (when the node has NodePort enabled) a `0.0.0.0:nodePort` / `[::]:nodePort`
//!   "surrogate" per IP family of the cluster IPs plus one per node IP of that family
//!   (Cilium expands the surrogate to the node addresses the same way); each
//!   `status.loadBalancer.ingress` IP; each `externalIPs` entry.
//! - Traffic policies, as Cilium models them with two scopes: when exactly one of
//!   `externalTrafficPolicy` and `internalTrafficPolicy` is `Local`, NodePort,
//!   LoadBalancer and ExternalIP frontends exist twice, an external-scope one (for traffic
//!   from outside the cluster, using the external policy) and an internal-scope one (for
//!   traffic from the cluster's own pods and nodes, using the internal policy); both carry
//!   the `two_scopes` flag, which tells the datapath to look in-cluster traffic up in the
//!   internal scope. Otherwise they have the external scope only, which then uses
//!   `externalTrafficPolicy`. ClusterIP frontends have the external scope only and use
//!   `internalTrafficPolicy`. "Local" keeps the backends whose `nodeName` is this node's,
//!   and (as Cilium does) those with no `nodeName` at all. (Cilium sets `two_scopes` on
//!   ExternalIP entries too but creates no internal-scope ExternalIP entry, so its
//!   datapath finds no service for in-cluster traffic to such an IP; here ExternalIPs get
//!   both scopes like LoadBalancer IPs, which is what kube-proxy does for in-cluster
//!   traffic to external addresses.)
//! - Backends come from the EndpointSlices labelled with the service's name (IPv4 and
//!   IPv6 slices; FQDN slices are ignored), matching the service port by port name and
//!   protocol (the slice carries the resolved target port number), and the frontend by IP
//!   family. Only an endpoint's first address is used (kube-proxy does the same). The same
//!   address:port/protocol from several slices or endpoints counts once (the "best" state
//!   wins).
//! - Endpoint conditions (nil `ready` = true, nil `serving` = `ready`, nil `terminating` =
//!   false), as Cilium classifies them: ready → active (even if also terminating, as
//!   kube-proxy does for `publishNotReadyAddresses`); not ready, serving and terminating →
//!   terminating; anything else (not serving, or not ready without terminating) is left out.
//! - Terminating backends keep their slot after the active ones (existing connections keep
//!   working; new ones never pick them) — unless the frontend has no active backend at
//!   all: then, as Cilium does (KEP-1669, "proxy terminating endpoints"), the serving
//!   terminating backends take the active slots and the frontend gets the
//!   `terminating_fallback` flag.
//! - Slot order: active backends by address then port, then terminating ones likewise.
//! - `sessionAffinity: ClientIP` sets the affinity timeout on every frontend of the service.
//! - A frontend address:port/protocol/scope claimed by two services goes to the first in
//!   namespace/name order (a node-IP NodePort frontend always yields to any other kind);
//!   the loser is reported in [`LbState::conflicts`]. Cilium lets the first writer win.
//!
//! Ids: a frontend's rev-NAT id (1..=65535) and a backend's id (1..) survive recomputation
//! when the frontend (or the backend's address:port/protocol) is unchanged, given the
//! previous state; new ones take the lowest free id, in sorted order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::model::{AddressType, EndpointSlice, Protocol, Service, ServiceType};

/// A backend's id in the backend map (node-local, stable across recomputations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BackendId(pub u32);

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What this node contributes.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// Compared with endpoints' `nodeName` for the Local traffic policies.
    pub node_name: &'a str,
    /// NodePort frontends are created on each of these.
    pub node_ips: &'a [IpAddr],
    /// Whether NodePort frontends exist at all (kube-proxy replacement on).
    pub nodeport_enabled: bool,
}

/// Which traffic a frontend serves (Cilium's service key scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Scope {
    /// Traffic from outside the cluster, or the only scope.
    External,
    /// Traffic from inside the cluster, when the traffic policies differ.
    Internal,
}

/// Why a frontend exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
    HostPort,
}

impl FrontendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIP => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIP => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::HostPort => "HostPort",
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service map key: address, port, protocol, scope (and why it exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
    pub kind: FrontendKind,
}

impl Frontend {
    /// The `0.0.0.0` / `[::]` NodePort entry: matched for any local address, never routable.
    pub fn is_surrogate(&self) -> bool {
        self.addr.is_unspecified()
    }

    /// The datapath map key (the kind is not part of it).
    pub fn key(&self) -> (IpAddr, u16, Protocol, Scope) {
        (self.addr, self.port, self.proto, self.scope)
    }
}

fn write_addr_port(f: &mut impl fmt::Write, addr: IpAddr, port: u16) -> fmt::Result {
    match addr {
        IpAddr::V4(a) => write!(f, "{a}:{port}"),
        IpAddr::V6(a) => write!(f, "[{a}]:{port}"),
    }
}

/// `10.96.0.10:53/UDP`, `[fd00::10]:53/UDP`, internal scope with a `/i` suffix.
impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_addr_port(f, self.addr, self.port)?;
        write!(f, "/{}", self.proto)?;
        if self.scope == Scope::Internal {
            f.write_str("/i")?;
        }
        Ok(())
    }
}

/// A backend's state in the backend map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum BackendState {
    /// Takes new connections.
    Active,
    /// Keeps its existing connections, takes no new ones (unless no backend is active).
    Terminating,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
        }
    }
}

/// A backend map entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRef {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    /// Active when active for any frontend using it.
    pub state: BackendState,
    pub node_name: Option<String>,
}

impl BackendRef {
    /// Identity of a backend (what its id is kept for).
    pub fn key(&self) -> (IpAddr, u16, Protocol) {
        (self.addr, self.port, self.proto)
    }

    /// Stable, node-independent name for [`super::maglev::table`]: `10.0.0.5:80/TCP`,
    /// `[fd00::5]:80/TCP`.
    pub fn maglev_key(&self) -> String {
        let mut s = String::new();
        let _ = write_addr_port(&mut s, self.addr, self.port);
        let _ = write!(s, "/{}", self.proto);
        s
    }
}

/// Per-frontend flags for the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ServiceFlags {
    /// `externalTrafficPolicy: Local` (set on all the service's frontends, as Cilium does).
    pub local_external: bool,
    /// `internalTrafficPolicy: Local` (likewise).
    pub local_internal: bool,
    /// The traffic policies differ, so this (non-ClusterIP) frontend has both scopes.
    pub two_scopes: bool,
    /// Reachable from outside the node: not a ClusterIP and not a surrogate.
    pub routable: bool,
    /// No active backend: serving terminating backends fill the slots.
    pub terminating_fallback: bool,
}

/// One frontend with its backend slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbService {
    /// Rev-NAT index (1..=65535).
    pub id: u16,
    pub frontend: Frontend,
    /// Backends new connections may pick, in slot order (slots 1..=len).
    pub backends: Vec<BackendId>,
    /// Terminating backends kept for existing connections, in the slots after `backends`.
    pub terminating: Vec<BackendId>,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub flags: ServiceFlags,
    /// Namespace and name of the owning Service.
    pub service: (String, String),
    pub port_name: Option<String>,
}

/// A frontend two services both wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendConflict {
    pub frontend: Frontend,
    /// Service that got it.
    pub owner: (String, String),
    /// Service that did not.
    pub rejected: (String, String),
}

/// The desired map contents.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LbState {
    /// Sorted by frontend.
    pub services: Vec<LbService>,
    /// Every backend some frontend refers to.
    pub backends: BTreeMap<BackendId, BackendRef>,
    /// Frontends not programmed because another service holds them.
    pub conflicts: Vec<FrontendConflict>,
    /// Frontends not programmed because all 65535 rev-NAT ids are taken.
    pub unallocated: Vec<Frontend>,
}

impl LbState {
    /// The entry for a frontend.
    pub fn service(&self, fe: &Frontend) -> Option<&LbService> {
        self.services
            .binary_search_by(|s| s.frontend.cmp(fe))
            .ok()
            .and_then(|i| self.services.get(i))
    }

    /// The id of a backend.
    pub fn backend_id(&self, addr: IpAddr, port: u16, proto: Protocol) -> Option<BackendId> {
        self.backends
            .iter()
            .find(|(_, b)| b.key() == (addr, port, proto))
            .map(|(id, _)| *id)
    }

    /// Input for [`super::maglev::table`]: the selectable backends of `svc` with their keys.
    pub fn maglev_backends(&self, svc: &LbService) -> Vec<(BackendId, String)> {
        svc.backends
            .iter()
            .filter_map(|id| self.backends.get(id).map(|b| (*id, b.maglev_key())))
            .collect()
    }
}

/// A backend candidate of one service port.
#[derive(Debug, Clone)]
struct Candidate {
    addr: IpAddr,
    port: u16,
    proto: Protocol,
    state: BackendState,
    node_name: Option<String>,
}

type BackendKey = (IpAddr, u16, Protocol);

impl Candidate {
    fn key(&self) -> BackendKey {
        (self.addr, self.port, self.proto)
    }
}

/// A wanted frontend before conflicts are settled.
struct Wanted {
    fe: Frontend,
    /// Node-IP NodePort expansions are secondary.
    primary: bool,
    svc: usize,
    port: usize,
}

/// Ids from `lo` up to `hi`, reusing previous ones, lowest free first for new ones.
struct IdAlloc<'a> {
    used: BTreeSet<u32>,
    next: u32,
    hi: u32,
    /// Ids held outside this computation (services not recomputed), less `released`.
    taken: Option<&'a Reserved>,
}

/// Ids that services outside an incremental computation hold: `all` minus `released`
/// (the ids of the services being recomputed).
#[derive(Debug, Default)]
pub struct Reserved {
    pub all: BTreeSet<u32>,
    pub released: BTreeSet<u32>,
}

impl Reserved {
    fn holds(&self, id: u32) -> bool {
        self.all.contains(&id) && !self.released.contains(&id)
    }
}

impl<'a> IdAlloc<'a> {
    fn new(lo: u32, hi: u32, taken: Option<&'a Reserved>) -> Self {
        IdAlloc {
            used: BTreeSet::new(),
            next: lo,
            hi,
            taken,
        }
    }

    pub(crate) fn taken(&self, id: u32) -> bool {
        self.taken.is_some_and(|t| t.holds(id))
    }

    /// Keeps `id` if it is in range and not taken yet.
    fn keep(&mut self, id: u32) -> bool {
        id >= 1 && id <= self.hi && !self.taken(id) && self.used.insert(id)
    }

    /// Call only after every `keep`.
    fn fresh(&mut self) -> Option<u32> {
        loop {
            if self.used.contains(&self.next) {
                self.next = self.next.checked_add(1)?;
            } else if let Some(t) = self.taken.filter(|t| t.holds(self.next)) {
                // Walk the run of held ids in order (an incremental computation starts
                // below thousands of them) instead of one lookup per id.
                let mut n = self.next;
                for id in t.all.range(n..) {
                    if *id != n || t.released.contains(id) {
                        break;
                    }
                    n = n.checked_add(1)?;
                }
                self.next = n;
            } else {
                break;
            }
        }
        if self.next > self.hi {
            return None;
        }
        self.used.insert(self.next);
        Some(self.next)
    }
}

/// An endpoint's state, `None` when it must not be used.
fn classify(ep: &super::model::SliceEndpoint) -> Option<BackendState> {
    if ep.is_ready() {
        Some(BackendState::Active)
    } else if ep.is_serving() && ep.is_terminating() {
        Some(BackendState::Terminating)
    } else {
        None
    }
}

/// Backend candidates of every port of `svc`, deduplicated per port.
fn port_candidates(svc: &Service, slices: &[&EndpointSlice]) -> Vec<Vec<Candidate>> {
    svc.ports
        .iter()
        .map(|sp| {
            let mut found: BTreeMap<BackendKey, Candidate> = BTreeMap::new();
            for slice in slices {
                let Some(port) = slice
                    .ports
                    .iter()
                    .find(|p| p.name == sp.name && p.protocol == sp.protocol)
                    .and_then(|p| p.port)
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let (Some(&addr), Some(state)) = (ep.addresses.first(), classify(ep)) else {
                        continue;
                    };
                    let cand = Candidate {
                        addr,
                        port,
                        proto: sp.protocol,
                        state,
                        node_name: ep.node_name.clone(),
                    };
                    match found.get_mut(&(addr, port, sp.protocol)) {
                        None => {
                            found.insert((addr, port, sp.protocol), cand);
                        }
                        Some(have) => {
                            if cand.state < have.state {
                                *have = cand;
                            } else if have.node_name.is_none() {
                                have.node_name = cand.node_name;
                            }
                        }
                    }
                }
            }
            found.into_values().collect()
        })
        .collect()
}

/// Whether `fe` only uses this node's backends.
fn only_local(svc: &Service, fe: &Frontend) -> bool {
    match (fe.scope, fe.kind) {
        (Scope::Internal, _) => svc.internal_traffic_local,
        (Scope::External, FrontendKind::ClusterIP) => svc.internal_traffic_local,
        (Scope::External, FrontendKind::HostPort) => false,
        (Scope::External, _) => svc.external_traffic_local,
    }
}

/// Frontends `svc` wants.
fn wanted_frontends(svc: &Service, idx: usize, node: &NodeView<'_>, out: &mut Vec<Wanted>) {
    let scopes: &[Scope] = if svc.external_traffic_local != svc.internal_traffic_local {
        &[Scope::External, Scope::Internal]
    } else {
        &[Scope::External]
    };
    let has_v4 = svc.cluster_ips.iter().any(IpAddr::is_ipv4);
    let has_v6 = svc.cluster_ips.iter().any(IpAddr::is_ipv6);
    let mut families = Vec::new();
    if has_v4 {
        families.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    if has_v6 {
        families.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    let mut node_ips: Vec<IpAddr> = node
        .node_ips
        .iter()
        .copied()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    node_ips.sort();
    node_ips.dedup();

    for (pi, sp) in svc.ports.iter().enumerate() {
        let mut push =
            |addr: IpAddr, port: u16, scope: Scope, kind: FrontendKind, primary: bool| {
                out.push(Wanted {
                    fe: Frontend {
                        addr,
                        port,
                        proto: sp.protocol,
                        scope,
                        kind,
                    },
                    primary,
                    svc: idx,
                    port: pi,
                });
            };
        for &ip in &svc.cluster_ips {
            push(ip, sp.port, Scope::External, FrontendKind::ClusterIP, true);
        }
        if let (true, true, Some(np)) = (
            svc.type_.has_node_ports(),
            node.nodeport_enabled,
            sp.node_port,
        ) {
            for &scope in scopes {
                for &any in &families {
                    push(any, np, scope, FrontendKind::NodePort, true);
                    for &ip in node_ips.iter().filter(|ip| ip.is_ipv4() == any.is_ipv4()) {
                        push(ip, np, scope, FrontendKind::NodePort, false);
                    }
                }
            }
        }
        if svc.type_ == ServiceType::LoadBalancer {
            for &ip in &svc.load_balancer_ips {
                for &scope in scopes {
                    push(ip, sp.port, scope, FrontendKind::LoadBalancer, true);
                }
            }
        }
        for &ip in &svc.external_ips {
            for &scope in scopes {
                push(ip, sp.port, scope, FrontendKind::ExternalIP, true);
            }
        }
    }
}

/// A settled frontend with its backends, before ids.
struct Planned<'a> {
    fe: Frontend,
    svc: &'a Service,
    port_name: Option<String>,
    active: Vec<&'a Candidate>,
    terminating: Vec<&'a Candidate>,
    fallback: bool,
}

/// Computes the desired state. `prev` (the last result) keeps ids stable.
pub fn compute(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeView<'_>,
    prev: Option<&LbState>,
) -> LbState {
    let prev = prev.map(|p| {
        let mut fe = HashMap::with_capacity(p.services.len());
        for s in &p.services {
            fe.entry(s.frontend).or_insert(s.id);
        }
        let mut be = HashMap::with_capacity(p.backends.len());
        for (id, b) in &p.backends {
            be.entry(b.key()).or_insert(*id);
        }
        (fe, be)
    });
    let ids = prev.as_ref().map(|(fe, be)| PrevIds { fe, be });
    compute_reserving(services, slices, node, ids, None, None)
}

/// The ids a previous computation gave, by frontend and by backend address.
struct PrevIds<'a> {
    fe: &'a HashMap<Frontend, u16>,
    be: &'a HashMap<BackendKey, BackendId>,
}

/// [`compute`] for a subset of the services, with the frontend and backend ids the
/// other services hold kept out of the fresh ones.
fn compute_reserving(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeView<'_>,
    prev: Option<PrevIds<'_>>,
    fe_reserved: Option<&Reserved>,
    be_reserved: Option<&Reserved>,
) -> LbState {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if s.address_type == AddressType::Fqdn {
            continue;
        }
        by_service
            .entry((s.namespace.as_str(), s.service_name.as_str()))
            .or_default()
            .push(s);
    }
    for v in by_service.values_mut() {
        v.sort_by(|a, b| a.name.cmp(&b.name));
    }

    let mut svcs: Vec<&Service> = services
        .iter()
        .filter(|s| !s.headless && s.type_ != ServiceType::ExternalName)
        .collect();
    svcs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    svcs.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);

    let candidates: Vec<Vec<Vec<Candidate>>> = svcs
        .iter()
        .map(|s| {
            let sl = by_service
                .get(&(s.namespace.as_str(), s.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            port_candidates(s, sl)
        })
        .collect();

    let mut wanted = Vec::new();
    for (i, s) in svcs.iter().enumerate() {
        wanted_frontends(s, i, node, &mut wanted);
    }
    wanted.sort_by(|a, b| {
        a.fe.key()
            .cmp(&b.fe.key())
            .then(b.primary.cmp(&a.primary))
            .then(a.svc.cmp(&b.svc))
            .then(a.port.cmp(&b.port))
    });

    let name_of = |s: &Service| (s.namespace.clone(), s.name.clone());
    let mut conflicts = Vec::new();
    let mut planned: Vec<Planned<'_>> = Vec::new();
    let mut winner: Option<(usize, (IpAddr, u16, Protocol, Scope))> = None;
    for w in &wanted {
        if let Some((owner, key)) = winner {
            if key == w.fe.key() {
                conflicts.push(FrontendConflict {
                    frontend: w.fe,
                    owner: name_of(svcs[owner]),
                    rejected: name_of(svcs[w.svc]),
                });
                continue;
            }
        }
        winner = Some((w.svc, w.fe.key()));
        let svc = svcs[w.svc];
        let local = only_local(svc, &w.fe);
        let mut picked: Vec<&Candidate> = candidates[w.svc][w.port]
            .iter()
            .filter(|c| c.addr.is_ipv4() == w.fe.addr.is_ipv4())
            .filter(|c| !local || c.node_name.as_deref().is_none_or(|n| n == node.node_name))
            .collect();
        picked.sort_by_key(|c| (c.state, c.addr, c.port));
        let (mut active, mut terminating): (Vec<&Candidate>, Vec<&Candidate>) = picked
            .into_iter()
            .partition(|c| c.state == BackendState::Active);
        let fallback = active.is_empty() && !terminating.is_empty();
        if fallback {
            active = std::mem::take(&mut terminating);
        }
        planned.push(Planned {
            fe: w.fe,
            svc,
            port_name: svc.ports[w.port].name.clone(),
            active,
            terminating,
            fallback,
        });
    }

    let mut fe_alloc = IdAlloc::new(1, u32::from(u16::MAX), fe_reserved);
    let mut fe_ids: HashMap<Frontend, u16> = HashMap::new();
    planned.sort_by_key(|p| p.fe);
    if let Some(prev) = &prev {
        for p in &planned {
            if let Some(id) = prev.fe.get(&p.fe) {
                if fe_alloc.keep(u32::from(*id)) {
                    fe_ids.insert(p.fe, *id);
                }
            }
        }
    }
    let mut unallocated = Vec::new();
    let mut allocated: Vec<(u16, Planned<'_>)> = Vec::with_capacity(planned.len());
    for p in planned {
        match fe_ids.get(&p.fe) {
            Some(id) => allocated.push((*id, p)),
            None => match fe_alloc.fresh().and_then(|i| u16::try_from(i).ok()) {
                Some(id) => allocated.push((id, p)),
                None => unallocated.push(p.fe),
            },
        }
    }

    // Backend map: every referenced backend, Active if active anywhere.
    let mut refs: BTreeMap<BackendKey, BackendRef> = BTreeMap::new();
    for c in allocated
        .iter()
        .flat_map(|(_, p)| p.active.iter().chain(&p.terminating))
    {
        match refs.get_mut(&c.key()) {
            None => {
                refs.insert(
                    c.key(),
                    BackendRef {
                        addr: c.addr,
                        port: c.port,
                        proto: c.proto,
                        state: c.state,
                        node_name: c.node_name.clone(),
                    },
                );
            }
            Some(have) => {
                have.state = have.state.min(c.state);
                if have.node_name.is_none() {
                    have.node_name.clone_from(&c.node_name);
                }
            }
        }
    }

    let mut be_alloc = IdAlloc::new(1, u32::MAX, be_reserved);
    let mut be_ids: HashMap<BackendKey, BackendId> = HashMap::new();
    if let Some(prev) = &prev {
        for k in refs.keys() {
            if let Some(id) = prev.be.get(k) {
                // A backend other (not recomputed) services hold keeps its id: shared.
                if be_alloc.keep(id.0) || be_alloc.taken(id.0) {
                    be_ids.insert(*k, *id);
                }
            }
        }
    }
    let mut backends = BTreeMap::new();
    for (k, b) in refs {
        let id = match be_ids.get(&k) {
            Some(id) => *id,
            None => match be_alloc.fresh() {
                Some(id) => {
                    be_ids.insert(k, BackendId(id));
                    BackendId(id)
                }
                None => continue,
            },
        };
        backends.insert(id, b);
    }

    let mut out = Vec::with_capacity(allocated.len());
    for (id, p) in allocated {
        let ids = |cands: &[&Candidate]| -> Vec<BackendId> {
            cands
                .iter()
                .filter_map(|c| be_ids.get(&c.key()).copied())
                .collect()
        };
        let svc = p.svc;
        out.push(LbService {
            id,
            frontend: p.fe,
            backends: ids(&p.active),
            terminating: ids(&p.terminating),
            affinity_timeout: svc.session_affinity,
            flags: ServiceFlags {
                local_external: svc.external_traffic_local,
                local_internal: svc.internal_traffic_local,
                two_scopes: svc.external_traffic_local != svc.internal_traffic_local
                    && p.fe.kind != FrontendKind::ClusterIP,
                routable: p.fe.kind != FrontendKind::ClusterIP && !p.fe.is_surrogate(),
                terminating_fallback: p.fallback,
            },
            service: name_of(svc),
            port_name: p.port_name,
        });
    }

    LbState {
        services: out,
        backends,
        conflicts,
        unallocated,
    }
}

/// Bookkeeping of a computed state, for [`compute_incremental`]: every frontend id and
/// backend id, how many frontends refer to each backend (as active, as terminating),
/// which service holds each frontend key, each service's frontends, and each backend
/// address's id. With it a change costs the services it touches, not the whole state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LbIndex {
    pub fe_ids: BTreeSet<u32>,
    pub be_ids: BTreeSet<u32>,
    /// Backend id -> (references as active, references as terminating).
    pub be_refs: HashMap<u32, (u32, u32)>,
    fe_keys: HashMap<(IpAddr, u16, Protocol, Scope), (String, String)>,
    by_service: HashMap<(String, String), BTreeSet<Frontend>>,
    be_by_key: HashMap<BackendKey, BackendId>,
}

impl LbIndex {
    pub fn of(state: &LbState) -> Self {
        let mut ix = LbIndex::default();
        for s in &state.services {
            ix.add(s);
        }
        ix.be_ids = state.backends.keys().map(|b| b.0).collect();
        for (id, b) in &state.backends {
            ix.be_by_key.entry(b.key()).or_insert(*id);
        }
        ix
    }

    fn add(&mut self, s: &LbService) {
        self.fe_ids.insert(u32::from(s.id));
        self.fe_keys.insert(s.frontend.key(), s.service.clone());
        self.by_service
            .entry(s.service.clone())
            .or_default()
            .insert(s.frontend);
        for (b, active) in s.backend_refs() {
            let e = self.be_refs.entry(b.0).or_default();
            if active {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }

    fn remove(&mut self, s: &LbService) {
        self.fe_ids.remove(&u32::from(s.id));
        if self.fe_keys.get(&s.frontend.key()) == Some(&s.service) {
            self.fe_keys.remove(&s.frontend.key());
        }
        if let Some(set) = self.by_service.get_mut(&s.service) {
            set.remove(&s.frontend);
            if set.is_empty() {
                self.by_service.remove(&s.service);
            }
        }
        for (b, active) in s.backend_refs() {
            if let Some(e) = self.be_refs.get_mut(&b.0) {
                if active {
                    e.0 -= 1;
                } else {
                    e.1 -= 1;
                }
                if *e == (0, 0) {
                    self.be_refs.remove(&b.0);
                }
            }
        }
    }

    /// The merged state of a backend over the frontends that refer to it: active if
    /// active anywhere.
    fn backend_state(&self, id: u32) -> Option<BackendState> {
        match self.be_refs.get(&id)? {
            (0, 0) => None,
            (0, _) => Some(BackendState::Terminating),
            _ => Some(BackendState::Active),
        }
    }
}

impl LbService {
    /// Each backend reference with whether it counts as active: the selectable backends
    /// (unless they are a terminating fallback), then the terminating ones.
    fn backend_refs(&self) -> impl Iterator<Item = (BackendId, bool)> + '_ {
        let active = !self.flags.terminating_fallback;
        self.backends
            .iter()
            .map(move |b| (*b, active))
            .chain(self.terminating.iter().map(|b| (*b, false)))
    }
}

/// The result of an incremental computation: the new whole state, and the parts
/// that changed (to diff against each other for the maps).
pub struct LbDelta {
    /// The changed services' frontends as they were, with their backends.
    pub removed: LbState,
    /// The changed services' frontends as they are now, with their backends.
    pub added: LbState,
}

/// Recomputes only the services named in `changed` (given with their current objects in
/// `services` and `slices`; a name without a Service was deleted), updating `state` and
/// `index` in place, and returns what changed. Gives the same state [`compute`] would
/// over all services, or returns `None` (leaving `state` and `index` untouched) when
/// the change reaches beyond those services — a frontend or a backend another service
/// also has, earlier conflicts, exhausted ids — and only a full computation can say.
pub fn compute_incremental(
    state: &mut LbState,
    index: &mut LbIndex,
    changed: &BTreeSet<(String, String)>,
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeView<'_>,
) -> Option<LbDelta> {
    // Conflicts the changed services take part in are settled by a full run (the loser
    // may win now); conflicts among other services stay as they are.
    if !state.unallocated.is_empty()
        || state
            .conflicts
            .iter()
            .any(|c| changed.contains(&c.owner) || changed.contains(&c.rejected))
    {
        return None;
    }
    // The changed services' frontends as they are now, from the index.
    let mut removed: Vec<LbService> = changed
        .iter()
        .filter_map(|k| index.by_service.get(k))
        .flatten()
        .filter_map(|fe| state.service(fe).cloned())
        .collect();
    removed.sort_by_key(|s| s.frontend);
    let part = {
        let fe = Reserved {
            all: std::mem::take(&mut index.fe_ids),
            released: removed.iter().map(|s| u32::from(s.id)).collect(),
        };
        // A backend id is free again only when no other service refers to it.
        let mut old_refs: HashMap<u32, u32> = HashMap::new();
        for (b, _) in removed.iter().flat_map(LbService::backend_refs) {
            *old_refs.entry(b.0).or_default() += 1;
        }
        let be = Reserved {
            all: std::mem::take(&mut index.be_ids),
            released: old_refs
                .iter()
                .filter(|(id, n)| index.be_refs.get(id).map(|(a, t)| a + t) == Some(**n))
                .map(|(id, _)| *id)
                .collect(),
        };
        let fe_prev: HashMap<Frontend, u16> = removed.iter().map(|s| (s.frontend, s.id)).collect();
        let prev = PrevIds {
            fe: &fe_prev,
            be: &index.be_by_key,
        };
        let part = compute_reserving(services, slices, node, Some(prev), Some(&fe), Some(&be));
        index.fe_ids = fe.all;
        index.be_ids = be.all;
        part
    };
    if !part.conflicts.is_empty() || !part.unallocated.is_empty() {
        return None;
    }
    // A frontend key (any kind: the map key has none) an unchanged service holds: its
    // claim decides, in a full run.
    for s in &part.services {
        if index
            .fe_keys
            .get(&s.frontend.key())
            .is_some_and(|owner| !changed.contains(owner))
        {
            return None;
        }
    }
    // Backends: an id several services refer to is one map entry whose state merges
    // ("active if active anywhere"). Touched ids get their entry recomputed from every
    // service that still refers to them.
    let mut touched: BTreeSet<u32> = removed
        .iter()
        .flat_map(LbService::backend_refs)
        .map(|(b, _)| b.0)
        .collect();
    for (id, b) in &part.backends {
        // Another node name for an address other services hold: only a full run
        // knows which one wins.
        if let Some(have) = state.backends.get(id) {
            if have.node_name.is_some() && b.node_name.is_some() && have.node_name != b.node_name {
                return None;
            }
        }
        touched.insert(id.0);
    }
    let old_backends: BTreeMap<BackendId, BackendRef> = touched
        .iter()
        .filter_map(|b| {
            state
                .backends
                .get(&BackendId(*b))
                .map(|r| (BackendId(*b), r.clone()))
        })
        .collect();

    // Apply: services (kept sorted by frontend), then the touched backends.
    for s in &removed {
        index.remove(s);
        if let Ok(i) = state
            .services
            .binary_search_by(|o| o.frontend.cmp(&s.frontend))
        {
            state.services.remove(i);
        }
    }
    for s in &part.services {
        index.add(s);
        let i = state.services.partition_point(|o| o.frontend < s.frontend);
        state.services.insert(i, s.clone());
    }
    let mut new_backends = BTreeMap::new();
    for id in &touched {
        let key = BackendId(*id);
        match index.backend_state(*id) {
            None => {
                if let Some(old) = state.backends.remove(&key) {
                    if index.be_by_key.get(&old.key()) == Some(&key) {
                        index.be_by_key.remove(&old.key());
                    }
                }
                index.be_ids.remove(id);
            }
            Some(st) => {
                let mut r = match (state.backends.get(&key), part.backends.get(&key)) {
                    // The same id for another address: the old one's id was freed.
                    (Some(have), Some(new)) if have.key() != new.key() => new.clone(),
                    (Some(have), Some(new)) => {
                        let mut r = have.clone();
                        if r.node_name.is_none() {
                            r.node_name.clone_from(&new.node_name);
                        }
                        r
                    }
                    (Some(have), None) => have.clone(),
                    (None, Some(new)) => new.clone(),
                    (None, None) => continue,
                };
                r.state = st;
                if let Some(old) = state.backends.insert(key, r.clone()) {
                    if old.key() != r.key() && index.be_by_key.get(&old.key()) == Some(&key) {
                        index.be_by_key.remove(&old.key());
                    }
                }
                index.be_by_key.insert(r.key(), key);
                index.be_ids.insert(*id);
                new_backends.insert(key, r);
            }
        }
    }
    let mut added = part;
    added.backends = new_backends;
    Some(LbDelta {
        removed: LbState {
            services: removed,
            backends: old_backends,
            conflicts: vec![],
            unallocated: vec![],
        },
        added,
    })
}

/// One line per frontend, for golden tests and `cilium bpf lb list`:
///
/// `10.96.0.10:53/UDP (ClusterIP, id 3, kube-system/kube-dns:dns, affinity 10800s,
/// local-external) -> 10.0.0.5:53 [active] 10.0.0.6:53 [terminating]`
///
/// Backends are in slot order: the selectable ones, then the terminating ones kept for
/// existing connections; a frontend without backends ends in `-> (none)`. Conflicts
/// follow as `! <frontend> (<kind>) wanted by <ns/name>, held by <ns/name>`.
pub fn dump(state: &LbState) -> String {
    let mut s = String::new();
    for svc in &state.services {
        let _ = write!(
            s,
            "{} ({}, id {}, {}/{}",
            svc.frontend, svc.frontend.kind, svc.id, svc.service.0, svc.service.1
        );
        if let Some(p) = &svc.port_name {
            let _ = write!(s, ":{p}");
        }
        if let Some(t) = svc.affinity_timeout {
            let _ = write!(s, ", affinity {t}s");
        }
        let f = svc.flags;
        for (on, name) in [
            (f.local_external, "local-external"),
            (f.local_internal, "local-internal"),
            (f.two_scopes, "two-scopes"),
            (f.terminating_fallback, "terminating-fallback"),
        ] {
            if on {
                let _ = write!(s, ", {name}");
            }
        }
        s.push_str(") ->");
        if svc.backends.is_empty() && svc.terminating.is_empty() {
            s.push_str(" (none)");
        }
        let first_state = if f.terminating_fallback {
            BackendState::Terminating
        } else {
            BackendState::Active
        };
        for (ids, st) in [
            (&svc.backends, first_state),
            (&svc.terminating, BackendState::Terminating),
        ] {
            for id in ids {
                s.push(' ');
                match state.backends.get(id) {
                    Some(b) => {
                        let _ = write_addr_port(&mut s, b.addr, b.port);
                    }
                    None => {
                        let _ = write!(s, "#{id}?");
                    }
                }
                let _ = write!(s, " [{}]", st.as_str());
            }
        }
        s.push('\n');
    }
    for c in &state.conflicts {
        let _ = writeln!(
            s,
            "! {} ({}) wanted by {}/{}, held by {}/{}",
            c.frontend, c.frontend.kind, c.rejected.0, c.rejected.1, c.owner.0, c.owner.1
        );
    }
    for fe in &state.unallocated {
        let _ = writeln!(s, "! {fe} ({}) has no free id", fe.kind);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::maglev;
    use super::super::model::{ServicePort, TargetPort};
    use super::super::parse::parse_stream;
    use super::*;

    fn svc_yaml(name: &str, ip: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: {port}}}]}}\n---\n"
        )
    }

    fn slice_yaml(svc: &str, slice: &str, port: u16, addrs: &[&str]) -> String {
        let eps: Vec<String> = addrs
            .iter()
            .map(|a| format!("- addresses: [{a}]\n  nodeName: node-1\n"))
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {slice}, namespace: default, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
             addressType: IPv4\nports: [{{port: {port}}}]\nendpoints:\n{}---\n",
            eps.concat()
        )
    }

    const NODE_IPS: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10))];

    fn node() -> NodeView<'static> {
        NodeView {
            node_name: "node-1",
            node_ips: &NODE_IPS,
            nodeport_enabled: true,
        }
    }

    fn run(yaml: &str, prev: Option<&LbState>) -> LbState {
        let p = parse_stream(yaml).expect("valid input");
        compute(&p.services, &p.slices, &node(), prev)
    }

    fn ids_by_frontend(s: &LbState) -> BTreeMap<String, u16> {
        s.services
            .iter()
            .map(|x| (x.frontend.to_string(), x.id))
            .collect()
    }

    fn ids_by_backend(s: &LbState) -> BTreeMap<String, BackendId> {
        s.backends
            .iter()
            .map(|(id, b)| (b.maglev_key(), *id))
            .collect()
    }

    #[test]
    fn ids_survive_adding_and_removing_unrelated_services() {
        let a = svc_yaml("a", "10.96.0.1", 80)
            + &slice_yaml("a", "a-1", 8080, &["10.244.0.1", "10.244.0.2"]);
        let c = svc_yaml("c", "10.96.0.3", 80) + &slice_yaml("c", "c-1", 8080, &["10.244.0.5"]);
        let b = svc_yaml("b", "10.96.0.2", 80)
            + &slice_yaml("b", "b-1", 8080, &["10.244.0.3", "10.244.0.4"]);

        let s1 = run(&format!("{a}{c}"), None);
        assert_eq!(
            ids_by_frontend(&s1),
            BTreeMap::from([
                ("10.96.0.1:80/TCP".into(), 1),
                ("10.96.0.3:80/TCP".into(), 2)
            ])
        );

        // Adding "b" (sorting between a and c) moves no existing id; b takes id 3.
        let s2 = run(&format!("{a}{b}{c}"), Some(&s1));
        let f2 = ids_by_frontend(&s2);
        assert_eq!(f2["10.96.0.1:80/TCP"], 1);
        assert_eq!(f2["10.96.0.3:80/TCP"], 2);
        assert_eq!(f2["10.96.0.2:80/TCP"], 3);
        let b1 = ids_by_backend(&s1);
        let b2 = ids_by_backend(&s2);
        for (k, id) in &b1 {
            assert_eq!(b2[k], *id, "backend {k} kept its id");
        }
        assert_eq!(b2["10.244.0.3:8080/TCP"], BackendId(4));
        assert_eq!(b2["10.244.0.4:8080/TCP"], BackendId(5));

        // Without the previous state, ids would follow sort order instead.
        let fresh = run(&format!("{a}{b}{c}"), None);
        assert_eq!(ids_by_frontend(&fresh)["10.96.0.3:80/TCP"], 3);

        // Removing "a" frees id 1 and backends 1, 2; the others keep theirs.
        let s3 = run(&format!("{b}{c}"), Some(&s2));
        let f3 = ids_by_frontend(&s3);
        assert_eq!(f3.len(), 2);
        assert_eq!(f3["10.96.0.3:80/TCP"], 2);
        assert_eq!(f3["10.96.0.2:80/TCP"], 3);
        let b3 = ids_by_backend(&s3);
        assert_eq!(b3.len(), 3);
        assert!(!s3.backends.contains_key(&BackendId(1)));
        assert!(!s3.backends.contains_key(&BackendId(2)));

        // The next new frontend and backends take the lowest free ids.
        let d = svc_yaml("d", "10.96.0.4", 80)
            + &slice_yaml("d", "d-1", 8080, &["10.244.0.9", "10.244.0.8"]);
        let s4 = run(&format!("{b}{c}{d}"), Some(&s3));
        assert_eq!(ids_by_frontend(&s4)["10.96.0.4:80/TCP"], 1);
        let b4 = ids_by_backend(&s4);
        assert_eq!(b4["10.244.0.8:8080/TCP"], BackendId(1));
        assert_eq!(b4["10.244.0.9:8080/TCP"], BackendId(2));
        assert_eq!(b4["10.244.0.5:8080/TCP"], b3["10.244.0.5:8080/TCP"]);
    }

    #[test]
    fn a_removed_backend_frees_its_id() {
        let v1 = svc_yaml("a", "10.96.0.1", 80)
            + &slice_yaml(
                "a",
                "a-1",
                8080,
                &["10.244.0.1", "10.244.0.2", "10.244.0.3"],
            );
        let s1 = run(&v1, None);
        let id2 = s1.backend_id("10.244.0.2".parse().expect("ip"), 8080, Protocol::Tcp);
        assert_eq!(id2, Some(BackendId(2)));

        let v2 = svc_yaml("a", "10.96.0.1", 80)
            + &slice_yaml("a", "a-1", 8080, &["10.244.0.1", "10.244.0.3"]);
        let s2 = run(&v2, Some(&s1));
        assert!(!s2.backends.contains_key(&BackendId(2)));
        assert_eq!(s2.services[0].backends, vec![BackendId(1), BackendId(3)]);
        assert_eq!(s2.services[0].id, s1.services[0].id);

        let v3 = svc_yaml("a", "10.96.0.1", 80)
            + &slice_yaml(
                "a",
                "a-1",
                8080,
                &["10.244.0.1", "10.244.0.3", "10.244.0.7"],
            );
        let s3 = run(&v3, Some(&s2));
        assert_eq!(
            s3.backend_id("10.244.0.7".parse().expect("ip"), 8080, Protocol::Tcp),
            Some(BackendId(2))
        );
        assert_eq!(
            s3.services[0].backends,
            vec![BackendId(1), BackendId(3), BackendId(2)]
        );
    }

    #[test]
    fn a_backend_shared_by_two_services_has_one_id() {
        let y = svc_yaml("a", "10.96.0.1", 80)
            + &slice_yaml("a", "a-1", 8080, &["10.244.0.1"])
            + &svc_yaml("b", "10.96.0.2", 81)
            + &slice_yaml("b", "b-1", 8080, &["10.244.0.1"]);
        let s = run(&y, None);
        assert_eq!(s.backends.len(), 1);
        assert_eq!(s.services[0].backends, s.services[1].backends);
    }

    #[test]
    fn local_policy_falls_back_to_local_terminating_backends_per_frontend() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\n\
                 spec: {type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Local,\n\
                 ports: [{port: 80, nodePort: 30001}]}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: a-1, namespace: default, labels: {kubernetes.io/service-name: a}}\n\
                 addressType: IPv4\nports: [{port: 80}]\nendpoints:\n\
                 - {addresses: [10.244.1.1], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}\n\
                 - {addresses: [10.244.2.1], nodeName: node-2}\n";
        let s = run(y, None);
        let text = dump(&s);
        assert!(
            text.contains("192.168.1.10:30001/TCP (NodePort, id 4, default/a, local-external, two-scopes, terminating-fallback) -> 10.244.1.1:80 [terminating]\n"),
            "{text}"
        );
        assert!(
            text.contains("192.168.1.10:30001/TCP/i (NodePort, id 5, default/a, local-external, two-scopes) -> 10.244.2.1:80 [active] 10.244.1.1:80 [terminating]\n"),
            "{text}"
        );
        let be = s
            .backend_id("10.244.1.1".parse().expect("ip"), 80, Protocol::Tcp)
            .expect("id");
        assert_eq!(s.backends[&be].state, BackendState::Terminating);
        assert_eq!(s.backends[&be].node_name.as_deref(), Some("node-1"));
    }

    #[test]
    fn flags_and_lookup() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\n\
                 spec: {type: LoadBalancer, clusterIP: 10.96.0.1, sessionAffinity: ClientIP,\n\
                 ports: [{port: 80, nodePort: 30001}]}\n\
                 status: {loadBalancer: {ingress: [{ip: 203.0.113.1}]}}\n";
        let s = run(y, None);
        let fe = |addr: &str, port, kind| Frontend {
            addr: addr.parse().expect("ip"),
            port,
            proto: Protocol::Tcp,
            scope: Scope::External,
            kind,
        };
        let cip = s
            .service(&fe("10.96.0.1", 80, FrontendKind::ClusterIP))
            .expect("clusterip");
        assert!(!cip.flags.routable);
        assert_eq!(cip.affinity_timeout, Some(10800));
        let sur = s
            .service(&fe("0.0.0.0", 30001, FrontendKind::NodePort))
            .expect("surrogate");
        assert!(sur.frontend.is_surrogate());
        assert!(!sur.flags.routable);
        let np = s
            .service(&fe("192.168.1.10", 30001, FrontendKind::NodePort))
            .expect("nodeport");
        assert!(np.flags.routable);
        let lb = s
            .service(&fe("203.0.113.1", 80, FrontendKind::LoadBalancer))
            .expect("lb");
        assert!(lb.flags.routable && !lb.flags.two_scopes);
        assert!(s
            .service(&fe("203.0.113.2", 80, FrontendKind::LoadBalancer))
            .is_none());
        assert_eq!(s.services.len(), 4);
        let mut sorted = s.services.clone();
        sorted.sort_by_key(|a| a.frontend);
        assert_eq!(sorted, s.services);
    }

    #[test]
    fn maglev_input_from_state() {
        let y = svc_yaml("a", "10.96.0.1", 80)
            + &slice_yaml("a", "a-1", 8080, &["10.244.0.2", "10.244.0.1"]);
        let s = run(&y, None);
        let input = s.maglev_backends(&s.services[0]);
        assert_eq!(
            input,
            vec![
                (BackendId(1), "10.244.0.1:8080/TCP".to_string()),
                (BackendId(2), "10.244.0.2:8080/TCP".to_string())
            ]
        );
        let t = maglev::table(&input, 251).expect("table");
        assert_eq!(t.len(), 251);
        let v6 = BackendRef {
            addr: "fd00::5".parse().expect("ip"),
            port: 53,
            proto: Protocol::Udp,
            state: BackendState::Active,
            node_name: None,
        };
        assert_eq!(v6.maglev_key(), "[fd00::5]:53/UDP");
    }

    #[test]
    fn rev_nat_ids_run_out_at_65535() {
        // One service with 65,540 external IPs: 65,541 frontends with the ClusterIP.
        let mut svc = Service {
            namespace: "default".into(),
            name: "many".into(),
            type_: ServiceType::ClusterIP,
            headless: false,
            cluster_ips: vec!["10.96.0.1".parse().expect("ip")],
            ports: vec![ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(80),
                node_port: None,
            }],
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            session_affinity: None,
            external_traffic_local: false,
            internal_traffic_local: false,
            has_selector: false,
        };
        for i in 0..65540u32 {
            svc.external_ips
                .push(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)));
        }
        let s = compute(&[svc], &[], &node(), None);
        assert_eq!(s.services.len(), 65535);
        assert_eq!(s.unallocated.len(), 6);
        assert!(s.services.iter().all(|x| x.id >= 1));
    }

    #[test]
    fn empty_input() {
        let s = compute(&[], &[], &node(), None);
        assert_eq!(s, LbState::default());
        assert_eq!(dump(&s), "");
    }

    /// A service of the randomized model: ClusterIP, or NodePort, with its endpoints.
    #[derive(Clone)]
    struct Model {
        ip: u8,
        port: u16,
        node_port: Option<u16>,
        /// Last octets of the backend addresses (10.1.0.x); shared values share backends.
        backends: Vec<u8>,
        terminating: bool,
    }

    fn model_yaml(name: &str, m: &Model) -> String {
        let np = m
            .node_port
            .map(|p| format!(", nodePort: {p}"))
            .unwrap_or_default();
        let ty = if m.node_port.is_some() {
            "NodePort"
        } else {
            "ClusterIP"
        };
        let eps: String = m
            .backends
            .iter()
            .map(|b| {
                format!(
                    "- addresses: [10.1.0.{b}]\n  conditions: {{ready: {}, serving: true, terminating: {}}}\n",
                    !m.terminating, m.terminating
                )
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{type: {ty}, clusterIP: 10.96.0.{}, ports: [{{port: {}{np}}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{eps}---\n",
            m.ip, m.port
        )
    }

    #[test]
    fn incremental_equals_full_computation() {
        // A deterministic pseudo-random walk of adds, deletes, endpoint and port changes,
        // with overlapping frontends and shared backends now and then.
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut models: BTreeMap<String, Model> = BTreeMap::new();
        let all_yaml = |models: &BTreeMap<String, Model>| -> String {
            models.iter().map(|(n, m)| model_yaml(n, m)).collect()
        };
        let mut full = run("", None);
        let mut incr = full.clone();
        let mut index = LbIndex::of(&incr);
        let (mut fast, mut fallback) = (0, 0);
        for step in 0..400 {
            let k = rnd(40);
            let name = format!("svc{k}");
            let mut changed = BTreeSet::new();
            changed.insert(("default".to_string(), name.clone()));
            match rnd(5) {
                0 => {
                    models.remove(&name);
                }
                _ => {
                    let mut m = models.get(&name).cloned().unwrap_or(Model {
                        // Own cluster IP, but now and then one another service has.
                        ip: if rnd(50) == 0 {
                            rnd(40) as u8 + 1
                        } else {
                            k as u8 + 1
                        },
                        port: 80,
                        node_port: None,
                        backends: vec![],
                        terminating: false,
                    });
                    match rnd(6) {
                        0 => m.port = 80 + rnd(3) as u16,
                        1 => m.node_port = (rnd(2) == 0).then(|| 30000 + rnd(500) as u16),
                        2 => m.terminating = !m.terminating,
                        // Mostly unique backends; sometimes one shared with another service.
                        3 => m.backends = vec![rnd(6) as u8 + 1],
                        _ => {
                            let base = 10 + (k as u8) * 5;
                            m.backends = (0..1 + rnd(3) as u8).map(|i| base + i).collect();
                        }
                    }
                    models.insert(name.clone(), m);
                }
            }
            let all = parse_stream(&all_yaml(&models)).unwrap();
            let want = compute(&all.services, &all.slices, &node(), Some(&full));
            let mine = models
                .get(&name)
                .map(|m| parse_stream(&model_yaml(&name, m)).unwrap())
                .unwrap_or_default();
            let before = incr.clone();
            match compute_incremental(
                &mut incr,
                &mut index,
                &changed,
                &mine.services,
                &mine.slices,
                &node(),
            ) {
                Some(delta) => {
                    fast += 1;
                    if incr != want {
                        let (a, b) = (dump(&incr), dump(&want));
                        let only_incr: Vec<&str> =
                            a.lines().filter(|l| !b.lines().any(|x| x == *l)).collect();
                        let only_full: Vec<&str> =
                            b.lines().filter(|l| !a.lines().any(|x| x == *l)).collect();
                        panic!(
                            "step {step} ({name}): incremental differs\nincremental only: {only_incr:#?}\nfull only: {only_full:#?}\nbackends incr {:?}\nbackends full {:?}",
                            incr.backends, want.backends
                        );
                    }
                    for s in &delta.removed.services {
                        assert_eq!(s.service.1, name);
                    }
                    for s in &delta.added.services {
                        assert_eq!(s.service.1, name);
                    }
                }
                None => {
                    fallback += 1;
                    assert_eq!(
                        incr, before,
                        "step {step}: a refused change leaves the state"
                    );
                    incr = want.clone();
                    index = LbIndex::of(&incr);
                }
            }
            let fresh = LbIndex::of(&incr);
            assert_eq!(index.fe_ids, fresh.fe_ids, "step {step}: frontend ids");
            assert_eq!(index.be_ids, fresh.be_ids, "step {step}: backend ids");
            assert_eq!(index.be_refs, fresh.be_refs, "step {step}: backend refs");
            assert_eq!(index, fresh, "step {step}: the whole index");
            full = want;
        }
        eprintln!("{fast} changes incremental, {fallback} by full computation");
        assert!(
            fast > fallback,
            "most changes take the incremental path: {fast} fast, {fallback} full"
        );
    }
}
