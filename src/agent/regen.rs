//! Regeneration: store objects + endpoints -> identities, ipcache and per-endpoint
//! policy, applied to the maps as a diff against what they hold (only changed
//! entries are written; allows go in before enforcement turns on, stale entries
//! go last).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::{IpNet, Ipv4Net};
use tracing::{debug, info, warn};

use super::{
    identity::LOCAL_IDENTITY_FLAG,
    models::Endpoint,
    source::{Changes, LocalEndpoint, NodeStatus, Snapshot},
    AgentError, AgentState,
};
use crate::{
    datapath::{
        maps::{
            EndpointInfo, EndpointKey, IpcacheEntry, PolicyKeyData, ENDPOINT_F_EGRESS_DENIES,
            ENDPOINT_F_EGRESS_ENFORCED, ENDPOINT_F_INGRESS_DENIES, ENDPOINT_F_INGRESS_ENFORCED,
        },
        policymap::lpm_keys,
    },
    policy::{
        labels::{reserved, IdentityInfo, IdentityKind, Labels},
        resolve::{referenced_cidrs, resolve, EndpointPolicy, EndpointView, ResolveContext},
        rule::{Protocol, Rule},
    },
};

/// The policy-related state the agent keeps between regenerations.
#[derive(Default)]
pub struct PolicyState {
    pub generation: Option<u64>,
    pub rules: Vec<Rule>,
    pub policy_names: Vec<String>,
    pub cidr_ids: BTreeMap<IpNet, u32>,
    pub ipcache: BTreeMap<Ipv4Net, IpcacheEntry>,
    pub entries: BTreeMap<(u32, PolicyKeyData), bool>,
    pub per_endpoint: BTreeMap<u16, EndpointPolicy>,
    pub identities: Vec<IdentityInfo>,
    pub regenerations: u64,
    /// Routes to other nodes' pod CIDRs: CIDR -> node address.
    pub node_routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// What this node last published of its endpoints.
    pub published: Option<Vec<LocalEndpoint>>,
    /// How long the last regeneration took.
    pub last_regeneration: std::time::Duration,
    /// Identities this node holds a reference on, by labels.
    pub label_ids: BTreeMap<Labels, u32>,
}

/// Reserved identities with their names, as Cilium numbers them.
pub fn reserved_identities() -> Vec<IdentityInfo> {
    [
        (reserved::HOST, "host"),
        (reserved::WORLD, "world"),
        (reserved::UNMANAGED, "unmanaged"),
        (reserved::HEALTH, "health"),
        (reserved::INIT, "init"),
        (reserved::REMOTE_NODE, "remote-node"),
        (reserved::KUBE_APISERVER, "kube-apiserver"),
        (reserved::INGRESS, "ingress"),
        (reserved::WORLD_IPV4, "world-ipv4"),
        (reserved::WORLD_IPV6, "world-ipv6"),
    ]
    .into_iter()
    .map(|(id, name)| IdentityInfo {
        id,
        labels: Labels::reserved(name),
        kind: IdentityKind::Reserved(name),
    })
    .collect()
}

fn parse_named_port(spec: &str) -> Option<(Protocol, u16)> {
    let (proto, port) = spec.split_once('/').unwrap_or(("TCP", spec));
    let proto = match proto.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => return None,
    };
    Some((proto, port.parse().ok()?))
}

impl AgentState {
    /// Security labels of an endpoint from the store's pod and namespace objects.
    fn endpoint_labels(&self, ep: &Endpoint, snap: &Snapshot) -> Labels {
        let ns = ep.k8s_namespace.clone().unwrap_or_else(|| "default".into());
        let pod = ep.k8s_pod_name.as_ref().and_then(|name| {
            snap.pods
                .iter()
                .find(|p| &p.name == name && p.namespace == ns)
        });
        let empty = BTreeMap::new();
        let ns_labels = snap.namespaces.get(&ns).unwrap_or(&empty);
        Labels::for_pod(
            &ns,
            pod.map(|p| &p.labels).unwrap_or(&empty),
            ns_labels,
            pod.and_then(|p| p.service_account.as_deref()),
            "default",
        )
    }

    /// Applies what changed in the store since the last regeneration: when only
    /// Services/EndpointSlices changed, just those services are recomputed and their
    /// map entries rewritten; anything else (or a service change that reaches other
    /// services) regenerates everything.
    pub async fn apply_store_changes(&mut self) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let (Some(source), Some(since)) = (&self.source, self.policy.generation) else {
            return self.regenerate().await;
        };
        let changes = source.changes_since(since)?;
        let t_changes = started.elapsed();
        if let Changes::Services { generation, keys } = changes {
            if let Some(writes) = self.regenerate_services_incremental(&keys)? {
                self.policy.generation = Some(generation);
                self.policy.regenerations += 1;
                self.policy.last_regeneration = started.elapsed();
                self.publish_status();
                info!(
                    writes,
                    generation,
                    services = keys.len(),
                    changes_ms = t_changes.as_secs_f64() * 1e3,
                    total_ms = self.policy.last_regeneration.as_secs_f64() * 1e3,
                    "services reprogrammed"
                );
                return Ok(());
            }
        }
        self.regenerate().await
    }

    /// Publishes datapath facts of this node through the source (no-op for the store).
    pub fn publish_status(&self) {
        if let Some(source) = &self.source {
            source.publish_status(&NodeStatus {
                kube_proxy_replacement: self.config.kube_proxy_replacement(),
                services: self.lb.state.as_ref().map_or(0, |s| s.services.len()),
                kube_proxy_chains: self.kube_proxy_chains,
            });
        }
    }

    /// Recomputes identities, ipcache and policy from the store and the endpoints,
    /// and applies the difference to the maps.
    pub async fn regenerate(&mut self) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let snap = match &self.source {
            Some(source) => source.snapshot()?,
            None => Snapshot::default(),
        };
        let t_snapshot = started.elapsed();
        let rules: Vec<Rule> = snap
            .policies
            .iter()
            .flat_map(|p| p.rules.iter().cloned())
            .collect();
        let node = self.config.node_name.clone();

        // 1. Endpoint identities.
        let eps: Vec<Endpoint> = self.endpoints.list().cloned().collect();
        let mut updated = Vec::new();
        let mut rewrite: BTreeSet<u16> = BTreeSet::new();
        let mut used: BTreeSet<Labels> = BTreeSet::new();
        for ep in &eps {
            let labels = self.endpoint_labels(ep, &snap);
            let old = Labels(ep.labels.clone());
            // Identities this node holds a reference on cannot change number: cache them.
            let id = match self.policy.label_ids.get(&labels) {
                Some(id) => *id,
                None => {
                    let id = self.allocator.allocate(&labels, &node)?;
                    self.policy.label_ids.insert(labels.clone(), id);
                    id
                }
            };
            used.insert(labels.clone());
            if ep.identity != id || old != labels {
                rewrite.insert(ep.id);
                let mut e = ep.clone();
                e.identity = id;
                e.labels = labels.0.clone();
                updated.push(e);
            }
        }

        // Release identities no local endpoint uses any more (and, on the first run,
        // references left from before a restart).
        if self.policy.generation.is_none() {
            if let Err(e) = self.allocator.retain_user(&node, &used) {
                warn!(error = %e, "reconciling identity references");
            }
        }
        let unused: Vec<Labels> = self
            .policy
            .label_ids
            .keys()
            .filter(|l| !used.contains(*l))
            .cloned()
            .collect();
        for l in unused {
            self.policy.label_ids.remove(&l);
            if let Err(e) = self.allocator.release(&l, &node) {
                warn!(error = %e, "releasing an identity");
            }
        }

        // 2. CIDR identities (node-local) for every prefix policy refers to.
        let cidrs = referenced_cidrs(&rules);
        self.policy.cidr_ids.retain(|c, _| cidrs.contains(c));
        for c in &cidrs {
            if !self.policy.cidr_ids.contains_key(c) {
                let used: BTreeSet<u32> = self.policy.cidr_ids.values().copied().collect();
                let id = (LOCAL_IDENTITY_FLAG..)
                    .find(|i| !used.contains(i))
                    .unwrap_or(LOCAL_IDENTITY_FLAG);
                self.policy.cidr_ids.insert(*c, id);
            }
        }
        let mut identities = reserved_identities();
        for (id, labels) in self.allocator.list()? {
            identities.push(IdentityInfo {
                id,
                labels,
                kind: IdentityKind::Endpoint,
            });
        }
        for (c, id) in &self.policy.cidr_ids {
            identities.push(IdentityInfo {
                id: *id,
                labels: Labels(BTreeMap::from([(format!("cidr:{c}"), String::new())])),
                kind: IdentityKind::Cidr(*c),
            });
        }
        for e in updated {
            self.endpoints.put(e)?;
        }
        let eps: Vec<Endpoint> = self.endpoints.list().cloned().collect();

        // 3. Desired ipcache.
        let mut want_ipcache: BTreeMap<Ipv4Net, IpcacheEntry> = BTreeMap::new();
        let local = IpcacheEntry::local;
        want_ipcache.insert(Ipv4Net::default(), local(reserved::WORLD));
        for (c, id) in &self.policy.cidr_ids {
            if let IpNet::V4(n) = c {
                want_ipcache.insert(*n, local(*id));
            }
        }
        want_ipcache.insert(host_net(self.router_v4()), local(reserved::HOST));
        // Other nodes: their addresses are remote-node, their endpoints carry their
        // identities; in tunnel mode their pods (and pod CIDRs, for addresses not yet
        // known) are reached through the tunnel to the node.
        let me = self.config.node_name.clone();
        let tunnel = self.tunnel_link.is_some();
        let mut node_of: BTreeMap<&str, Ipv4Addr> = BTreeMap::new();
        for n in &snap.nodes {
            if n.name == me {
                want_ipcache.insert(host_net(n.ip), local(reserved::HOST));
                continue;
            }
            node_of.insert(&n.name, n.ip);
            want_ipcache.insert(host_net(n.ip), local(reserved::REMOTE_NODE));
            if tunnel {
                want_ipcache.insert(
                    n.pod_cidr,
                    IpcacheEntry {
                        identity: reserved::WORLD,
                        tunnel: Some(n.ip),
                    },
                );
            }
        }
        for (node, eps) in &snap.endpoints {
            let Some(node_ip) = node_of.get(node.as_str()) else {
                continue;
            };
            for e in eps {
                want_ipcache.insert(
                    host_net(e.ip),
                    IpcacheEntry {
                        identity: e.identity,
                        tunnel: tunnel.then_some(*node_ip),
                    },
                );
            }
        }
        for ep in &eps {
            want_ipcache.insert(host_net(ep.ipv4), local(ep.identity));
        }

        // 4. Desired policy per endpoint.
        let mut cluster_ports: BTreeMap<String, BTreeSet<(Protocol, u16)>> = BTreeMap::new();
        for p in &snap.pods {
            for (name, spec) in &p.named_ports {
                if let Some(pp) = parse_named_port(spec) {
                    cluster_ports.entry(name.clone()).or_default().insert(pp);
                }
            }
        }
        let ctx = ResolveContext {
            identities: &identities,
            cluster_named_ports: &cluster_ports,
            enforcement: self.config.enable_policy.into(),
        };
        let mut want_entries: BTreeMap<(u32, PolicyKeyData), bool> = BTreeMap::new();
        let mut per_endpoint = BTreeMap::new();
        for ep in &eps {
            let ns = ep.k8s_namespace.clone().unwrap_or_else(|| "default".into());
            let pod = ep.k8s_pod_name.as_ref().and_then(|name| {
                snap.pods
                    .iter()
                    .find(|p| &p.name == name && p.namespace == ns)
            });
            let named: BTreeMap<String, (Protocol, u16)> = pod
                .map(|p| {
                    p.named_ports
                        .iter()
                        .filter_map(|(n, s)| parse_named_port(s).map(|pp| (n.clone(), pp)))
                        .collect()
                })
                .unwrap_or_default();
            let labels = Labels(ep.labels.clone());
            let view = EndpointView {
                id: ep.id,
                identity: ep.identity,
                labels: &labels,
                namespace: &ns,
                named_ports: &named,
            };
            let pol = resolve(&rules, &view, &ctx);
            for (k, v) in &pol.entries {
                for (len, data) in
                    lpm_keys(ep.id, k.identity, k.egress, k.proto, k.port_lo, k.port_hi)
                {
                    let deny = want_entries.entry((len, data)).or_insert(v.deny);
                    *deny |= v.deny;
                }
            }
            per_endpoint.insert(ep.id, pol);
        }

        // 5. Apply: routes to other nodes, ipcache, new/changed policy entries, endpoint
        //    flags, then removals.
        let t_policy = started.elapsed();
        let mut writes = self.regenerate_services(&snap)?;
        let t_services = started.elapsed();
        writes += self.regenerate_routes(&snap).await?;
        for (net, entry) in &want_ipcache {
            if self.policy.ipcache.get(net) != Some(entry) {
                self.datapath.ipcache_upsert(*net, *entry)?;
                writes += 1;
            }
        }
        for (key, deny) in &want_entries {
            if self.policy.entries.get(key) != Some(deny) {
                self.datapath.policy_insert(key.0, key.1, *deny)?;
                writes += 1;
            }
        }
        let old_flags: BTreeMap<u16, Option<u16>> = eps
            .iter()
            .map(|e| {
                (
                    e.id,
                    self.policy
                        .per_endpoint
                        .get(&e.id)
                        .map(|_| self.endpoint_flags(e)),
                )
            })
            .collect();
        self.policy.per_endpoint = per_endpoint;
        for ep in &eps {
            let pol = self.policy.per_endpoint.get(&ep.id);
            let mut e = ep.clone();
            e.ingress_enforced = pol.is_some_and(|p| p.ingress_enforced);
            e.egress_enforced = pol.is_some_and(|p| p.egress_enforced);
            let flags = self.endpoint_flags(&e);
            if old_flags.get(&ep.id).copied().flatten() != Some(flags) || rewrite.contains(&ep.id) {
                self.write_endpoint_map(&e)?;
                writes += 1;
            }
            if &e != ep {
                self.endpoints.put(e)?;
            }
        }
        for key in self.policy.entries.keys() {
            if !want_entries.contains_key(key) {
                self.datapath.policy_remove(key.0, key.1)?;
                writes += 1;
            }
        }
        for net in self.policy.ipcache.keys() {
            if !want_ipcache.contains_key(net) {
                self.datapath.ipcache_remove(*net)?;
                writes += 1;
            }
        }
        self.policy.ipcache = want_ipcache;
        self.policy.entries = want_entries;
        self.policy.identities = identities;
        self.policy.policy_names = snap
            .policies
            .iter()
            .map(|p| match &p.namespace {
                Some(ns) => format!("{}/{}/{}", p.kind, ns, p.name),
                None => format!("{}/{}", p.kind, p.name),
            })
            .collect();
        self.policy.rules = rules;
        self.policy.generation = Some(snap.generation);
        self.policy.regenerations += 1;
        self.publish_endpoints()?;
        self.publish_status();
        self.policy.last_regeneration = started.elapsed();
        if writes > 0 {
            info!(
                writes,
                generation = snap.generation,
                snapshot_ms = t_snapshot.as_secs_f64() * 1e3,
                policy_ms = (t_policy - t_snapshot).as_secs_f64() * 1e3,
                services_ms = (t_services - t_policy).as_secs_f64() * 1e3,
                total_ms = self.policy.last_regeneration.as_secs_f64() * 1e3,
                "datapath regenerated"
            );
        } else {
            debug!(generation = snap.generation, "regeneration: no change");
        }
        Ok(())
    }

    /// Routes to each other node's pod CIDR: native routing via the node's address;
    /// tunnel routing into the tunnel device (bpf_overlay encapsulates what the node
    /// itself sends there), from this node's address. Routes of nodes that left are
    /// removed.
    async fn regenerate_routes(&mut self, snap: &Snapshot) -> Result<usize, AgentError> {
        let (link, via) = match (self.tunnel_link, self.underlay_link) {
            (Some(t), _) => (t, false),
            (None, Some(u)) => (u, true),
            (None, None) => return Ok(0),
        };
        let want: BTreeMap<Ipv4Net, Ipv4Addr> = snap
            .nodes
            .iter()
            .filter(|n| n.name != self.config.node_name)
            .map(|n| (n.pod_cidr, n.ip))
            .collect();
        let mut writes = 0;
        for (cidr, node_ip) in &want {
            if self.policy.node_routes.get(cidr) != Some(node_ip) {
                let (gw, src) = if via {
                    (Some(*node_ip), None)
                } else {
                    (None, self.config.node_ip)
                };
                self.netlink
                    .replace_route_v4(cidr.network(), cidr.prefix_len(), link, gw, src)
                    .await?;
                writes += 1;
            }
        }
        for cidr in self
            .policy
            .node_routes
            .keys()
            .filter(|c| !want.contains_key(*c))
        {
            let msg_err = self
                .netlink
                .delete_route_v4(cidr.network(), cidr.prefix_len(), link, via)
                .await;
            if let Err(e) = msg_err {
                warn!(error = %e, %cidr, "removing the route of a node that left");
            }
            writes += 1;
        }
        self.policy.node_routes = want;
        Ok(writes)
    }

    /// Publishes this node's endpoints (address, identity) for the other nodes' ipcache.
    fn publish_endpoints(&mut self) -> Result<(), AgentError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        let eps: Vec<LocalEndpoint> = self
            .endpoints
            .list()
            .map(|e| LocalEndpoint {
                id: e.id,
                ip: e.ipv4,
                identity: e.identity,
                namespace: e.k8s_namespace.clone(),
                pod: e.k8s_pod_name.clone(),
            })
            .collect();
        if self.policy.published.as_ref() != Some(&eps) {
            source.publish_endpoints(&self.config.node_name, &eps)?;
            self.policy.published = Some(eps);
        }
        Ok(())
    }

    /// The datapath flags of an endpoint: enforcement per direction, and whether deny
    /// entries exist in a direction that is not enforced.
    fn endpoint_flags(&self, ep: &Endpoint) -> u16 {
        let mut flags = 0;
        if ep.ingress_enforced {
            flags |= ENDPOINT_F_INGRESS_ENFORCED;
        }
        if ep.egress_enforced {
            flags |= ENDPOINT_F_EGRESS_ENFORCED;
        }
        if let Some(p) = self.policy.per_endpoint.get(&ep.id) {
            for (k, v) in &p.entries {
                if v.deny {
                    flags |= if k.egress {
                        ENDPOINT_F_EGRESS_DENIES
                    } else {
                        ENDPOINT_F_INGRESS_DENIES
                    };
                }
            }
        }
        flags
    }

    /// Writes one endpoint's cilium_lxc entry (identity, enforcement flags).
    pub fn write_endpoint_map(&mut self, ep: &Endpoint) -> Result<(), AgentError> {
        let mac = crate::datapath::link::parse_mac(&ep.pod_mac).ok_or_else(|| {
            AgentError::BadRequest(format!("pod_mac {:?} is not a MAC address", ep.pod_mac))
        })?;
        let node_mac = crate::datapath::link::parse_mac(&ep.host_mac).ok_or_else(|| {
            AgentError::BadRequest(format!("host MAC {:?} is not a MAC address", ep.host_mac))
        })?;
        let flags = self.endpoint_flags(ep);
        self.datapath.upsert_endpoint(
            EndpointKey::new(ep.ipv4),
            EndpointInfo {
                ifindex: ep.host_ifindex,
                lxc_id: ep.id,
                flags,
                sec_id: ep.identity,
                mac,
                node_mac,
                pad: 0,
            },
        )?;
        Ok(())
    }
}

fn host_net(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).unwrap_or_default()
}
