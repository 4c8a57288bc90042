//! The local store: Kubernetes-shaped objects (pods' labels, namespaces, network
//! policies) kept as files in a directory. `cilium local` writes it; every agent of
//! the local cluster reads it and reacts when its generation changes.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::policy::parse::{parse_stream, PolicyError, PolicyObject};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Service(#[from] crate::lb::parse::LbError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
}

/// A pod as the local store keeps it: what policy needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodObject {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub service_account: Option<String>,
    /// Named container ports: name -> "TCP/8080".
    #[serde(default)]
    pub named_ports: BTreeMap<String, String>,
}

/// A node of the cluster as its agent announces it (Cilium's CiliumNode, reduced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeObject {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    pub pod_cidr: ipnet::Ipv4Net,
}

/// An endpoint as its node publishes it for the others (address and identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEndpoint {
    pub ip: std::net::Ipv4Addr,
    pub identity: u32,
}

/// The store's journal: "<generation> <file relative to the store>" per changed file.
const JOURNAL: &str = "journal";

/// What changed in the store since a generation.
#[derive(Debug, Clone)]
pub struct StoreChanges {
    /// The generation these changes lead to.
    pub generation: u64,
    /// Where the next read of the journal starts.
    pub offset: u64,
    /// Files written or removed.
    pub files: Vec<PathBuf>,
}

/// Everything in the store at one generation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub pods: Vec<PodObject>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub policies: Vec<PolicyObject>,
    pub services: Vec<crate::lb::model::Service>,
    pub slices: Vec<crate::lb::model::EndpointSlice>,
    pub nodes: Vec<NodeObject>,
    /// Endpoints published by each node.
    pub endpoints: BTreeMap<String, Vec<RemoteEndpoint>>,
}

pub struct Store {
    dir: PathBuf,
    /// Parsed objects by file, reused while the file is unchanged (size and mtime),
    /// so a change re-parses one file, not the whole store.
    cache: std::sync::Mutex<ParseCache>,
}

type FileStamp = (std::time::SystemTime, u64);

type ServiceKey = (String, String);

/// The parse cache, with the files that hold each service's Service and EndpointSlices,
/// so the objects of a few services are found without walking every file.
#[derive(Default)]
struct ParseCache {
    files: std::collections::HashMap<PathBuf, (FileStamp, Cached)>,
    by_service: std::collections::HashMap<ServiceKey, BTreeSet<PathBuf>>,
}

impl ParseCache {
    fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn get(&self, path: &Path) -> Option<&(FileStamp, Cached)> {
        self.files.get(path)
    }

    fn insert(&mut self, path: PathBuf, stamp: FileStamp, c: Cached) {
        self.remove(&path);
        for key in c.service_keys() {
            self.by_service.entry(key).or_default().insert(path.clone());
        }
        self.files.insert(path, (stamp, c));
    }

    fn remove(&mut self, path: &Path) -> Option<(FileStamp, Cached)> {
        let old = self.files.remove(path)?;
        for key in old.1.service_keys() {
            if let Some(set) = self.by_service.get_mut(&key) {
                set.remove(path);
                if set.is_empty() {
                    self.by_service.remove(&key);
                }
            }
        }
        Some(old)
    }

    fn retain(&mut self, keep: &std::collections::HashSet<PathBuf>) {
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !keep.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.remove(&p);
        }
    }
}

#[derive(Clone)]
enum Cached {
    Policies(Vec<PolicyObject>),
    Services(
        Vec<crate::lb::model::Service>,
        Vec<crate::lb::model::EndpointSlice>,
    ),
}

impl Cached {
    /// The services whose Service or EndpointSlices this holds.
    fn service_keys(&self) -> BTreeSet<ServiceKey> {
        let mut keys = BTreeSet::new();
        if let Cached::Services(svcs, slices) = self {
            for s in svcs {
                keys.insert((s.namespace.clone(), s.name.clone()));
            }
            for s in slices {
                keys.insert((s.namespace.clone(), s.service_name.clone()));
            }
        }
        keys
    }
}

const POLICY_KINDS: [&str; 3] = [
    "NetworkPolicy",
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One object of an applied stream, with the file it is stored in.
struct Doc {
    kind: String,
    id: String,
    file: PathBuf,
    value: serde_yaml::Value,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        for sub in [
            "pods",
            "namespaces",
            "policies",
            "services",
            "nodes",
            "endpoints",
        ] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            cache: Default::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes whenever anything in the store changes.
    pub fn generation(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("generation"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Increments the generation under an exclusive lock (several agents and the CLI
    /// write the store at once), after journaling which files the new generation
    /// changed, so readers can apply just those.
    fn bump(&self, changed: &[&Path]) -> Result<(), StoreError> {
        let lock_path = self.dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, e)| StoreError::Io {
                path: lock_path.clone(),
                source: e.into(),
            },
        )?;
        let next = self.generation() + 1;
        let mut lines = String::new();
        for p in changed {
            if let Ok(rel) = p.strip_prefix(&self.dir) {
                lines.push_str(&format!("{next} {}\n", rel.display()));
            }
        }
        let journal = self.dir.join(JOURNAL);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .map_err(io(&journal))?;
        std::io::Write::write_all(&mut f, lines.as_bytes()).map_err(io(&journal))?;
        let path = self.dir.join("generation");
        Self::write_atomic(&path, next.to_string().as_bytes())
    }

    /// The files changed after generation `since` up to the current one, reading the
    /// journal from byte `offset` (what an earlier call returned). None when the
    /// journal cannot tell (missing, or it does not reach back to `since`): read all.
    pub fn changes_since(&self, since: u64, offset: u64) -> Option<StoreChanges> {
        let generation = self.generation();
        let journal = self.dir.join(JOURNAL);
        let mut f = std::fs::File::open(&journal).ok()?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text).ok()?;
        let mut out = StoreChanges {
            generation,
            offset,
            files: Vec::new(),
        };
        let mut consumed = 0usize;
        for line in text.split_inclusive('\n') {
            if !line.ends_with('\n') {
                break; // being written
            }
            let (g, rel) = line.trim_end().split_once(' ')?;
            let g: u64 = g.parse().ok()?;
            if g > generation {
                break; // belongs to a generation not yet published
            }
            if g > since {
                out.files.push(self.dir.join(rel));
            }
            consumed += line.len();
        }
        out.offset = offset + consumed as u64;
        // Every generation after `since` must have left its lines (a generation bump
        // without files, e.g. an empty apply, leaves none: then nothing changed).
        Some(out)
    }

    /// Where the journal's lines of generations up to `generation` end, reading from
    /// byte `offset`: after a full read of the store at `generation`, the next
    /// [`Store::changes_since`] starts there instead of re-reading the whole journal
    /// (after a bulk apply, tens of thousands of lines: the first change paid for it).
    pub fn journal_offset_after(&self, generation: u64, offset: u64) -> u64 {
        let journal = self.dir.join(JOURNAL);
        let Ok(mut f) = std::fs::File::open(&journal) else {
            return offset;
        };
        if std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).is_err() {
            return offset;
        }
        let mut text = String::new();
        if std::io::Read::read_to_string(&mut f, &mut text).is_err() {
            return offset;
        }
        let mut consumed = 0usize;
        for line in text.split_inclusive('\n') {
            let g = line
                .split_once(' ')
                .and_then(|(g, _)| g.parse::<u64>().ok());
            match g {
                Some(g) if line.ends_with('\n') && g <= generation => consumed += line.len(),
                _ => break,
            }
        }
        offset + consumed as u64
    }

    /// Whether every file in `files` holds Services or EndpointSlices.
    pub fn only_services(&self, files: &[PathBuf]) -> bool {
        let dir = self.dir.join("services");
        files.iter().all(|f| f.parent() == Some(dir.as_path()))
    }

    /// Re-reads changed Service/EndpointSlice files into the parse cache (a full
    /// [`Store::snapshot`] must have filled it) and returns the services they touch, as
    /// (namespace, name), before and after the change. None when the cache is cold.
    pub fn refresh_services(
        &self,
        files: &[PathBuf],
    ) -> Result<Option<BTreeSet<ServiceKey>>, StoreError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.is_empty() {
            return Ok(None);
        }
        let mut keys = BTreeSet::new();
        for path in files {
            if let Some((_, old)) = cache.remove(path) {
                keys.extend(old.service_keys());
            }
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(path)(e)),
            };
            let stamp = (meta.modified().map_err(io(path))?, meta.len());
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            let p = crate::lb::parse::parse_stream(&text)?;
            let c = Cached::Services(p.services, p.slices);
            keys.extend(c.service_keys());
            cache.insert(path.clone(), stamp, c);
        }
        Ok(Some(keys))
    }

    /// The cached Services and EndpointSlices of the given services.
    pub fn services_for(
        &self,
        keys: &BTreeSet<ServiceKey>,
    ) -> (
        Vec<crate::lb::model::Service>,
        Vec<crate::lb::model::EndpointSlice>,
    ) {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (mut services, mut slices) = (Vec::new(), Vec::new());
        let files: BTreeSet<&PathBuf> = keys
            .iter()
            .filter_map(|k| cache.by_service.get(k))
            .flatten()
            .collect();
        for path in files {
            if let Some((_, Cached::Services(svcs, sls))) = cache.get(path) {
                let wanted =
                    |ns: &str, name: &str| keys.contains(&(ns.to_string(), name.to_string()));
                for s in svcs {
                    if wanted(&s.namespace, &s.name) {
                        services.push(s.clone());
                    }
                }
                for s in sls {
                    if wanted(&s.namespace, &s.service_name) {
                        slices.push(s.clone());
                    }
                }
            }
        }
        (services, slices)
    }

    /// Writes through a temporary file unique to this process, then renames.
    fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    fn pod_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir
            .join("pods")
            .join(format!("{namespace}_{name}.json"))
    }

    pub fn put_pod(&self, pod: &PodObject) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec_pretty(pod).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let path = self.pod_path(&pod.namespace, &pod.name);
        Self::write_atomic(&path, &bytes)?;
        self.bump(&[&path])
    }

    /// Announces a node (its agent does this at start).
    pub fn put_node(&self, node: &NodeObject) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec_pretty(node).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let path = self.dir.join("nodes").join(format!("{}.json", node.name));
        Self::write_atomic(&path, &bytes)?;
        self.bump(&[&path])
    }

    /// Removes a node and what it published (its CiliumNode object went away): the
    /// other agents drop its routes, tunnel endpoints and ipcache entries.
    pub fn delete_node(&self, name: &str) -> Result<(), StoreError> {
        let node = self.dir.join("nodes").join(format!("{name}.json"));
        let eps = self.dir.join("endpoints").join(format!("{name}.json"));
        if !node.exists() {
            return Err(StoreError::NotFound(format!(
                "node {name} is not in the store"
            )));
        }
        for p in [&node, &eps] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(p)(e)),
            }
        }
        self.bump(&[&node, &eps])
    }

    /// Publishes a node's endpoints for the other nodes.
    pub fn put_endpoints(&self, node: &str, eps: &[RemoteEndpoint]) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec_pretty(eps).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let path = self.dir.join("endpoints").join(format!("{node}.json"));
        Self::write_atomic(&path, &bytes)?;
        self.bump(&[&path])
    }

    pub fn get_pod(&self, namespace: &str, name: &str) -> Result<PodObject, StoreError> {
        let p = self.pod_path(namespace, name);
        let b = std::fs::read(&p)
            .map_err(|_| StoreError::NotFound(format!("pod {namespace}/{name} not found")))?;
        serde_json::from_slice(&b).map_err(|e| StoreError::Invalid(format!("{}: {e}", p.display())))
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), StoreError> {
        let path = self.pod_path(namespace, name);
        let _ = std::fs::remove_file(&path);
        self.bump(&[&path])
    }

    /// Splits and validates a YAML stream; nothing is written when any document is invalid.
    fn docs(&self, yaml: &str) -> Result<Vec<Doc>, StoreError> {
        // Policies are validated by the policy layer (all or nothing).
        parse_stream(yaml)?;
        // Services and EndpointSlices are validated by the load-balancing layer.
        crate::lb::parse::parse_stream(yaml)?;
        let mut docs = Vec::new();
        let mut values = Vec::new();
        for de in serde_yaml::Deserializer::from_str(yaml) {
            let v = serde_yaml::Value::deserialize(de)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            if v.get("kind").and_then(|k| k.as_str()) == Some("List") {
                if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
                    values.extend(items.iter().cloned());
                }
                continue;
            }
            values.push(v);
        }
        for v in values {
            let kind = v
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let meta = v.get("metadata");
            let name = meta
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_string();
            let (id, file) = if POLICY_KINDS.contains(&kind.as_str()) {
                let ns_part = if kind == "CiliumClusterwideNetworkPolicy" {
                    "_"
                } else {
                    ns.as_str()
                };
                (
                    format!(
                        "{kind}/{}{name}",
                        if ns_part == "_" {
                            String::new()
                        } else {
                            format!("{ns}/")
                        }
                    ),
                    self.dir
                        .join("policies")
                        .join(format!("{kind}_{ns_part}_{name}.yaml")),
                )
            } else if kind == "Service" || kind == "EndpointSlice" {
                (
                    format!("{kind}/{ns}/{name}"),
                    self.dir
                        .join("services")
                        .join(format!("{kind}_{ns}_{name}.yaml")),
                )
            } else if kind == "Namespace" {
                (
                    format!("Namespace/{name}"),
                    self.dir.join("namespaces").join(format!("{name}.yaml")),
                )
            } else {
                return Err(StoreError::Invalid(format!(
                    "kind {kind:?} ({name}) is not supported by the local store yet: use NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, Service, EndpointSlice or Namespace"
                )));
            };
            if name.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "a {kind} without metadata.name: give it a name"
                )));
            }
            docs.push(Doc {
                kind,
                id,
                file,
                value: v,
            });
        }
        Ok(docs)
    }

    /// Adds or replaces every object of a YAML stream, all or nothing.
    pub fn apply(&self, yaml: &str) -> Result<Vec<String>, StoreError> {
        let docs = self.docs(yaml)?;
        let mut staged = Vec::new();
        for d in &docs {
            let text =
                serde_yaml::to_string(&d.value).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let tmp = d.file.with_extension("staged");
            std::fs::write(&tmp, text).map_err(io(&tmp))?;
            staged.push((tmp, d.file.clone()));
        }
        for (tmp, file) in &staged {
            std::fs::rename(tmp, file).map_err(io(file))?;
        }
        let files: Vec<&Path> = docs.iter().map(|d| d.file.as_path()).collect();
        self.bump(&files)?;
        Ok(docs
            .into_iter()
            .map(|d| format!("{} configured", d.id))
            .collect())
    }

    /// Removes every object of a YAML stream; all must exist, or nothing is removed.
    pub fn delete(&self, yaml: &str) -> Result<Vec<String>, StoreError> {
        let docs = self.docs(yaml)?;
        if let Some(missing) = docs.iter().find(|d| !d.file.exists()) {
            return Err(StoreError::NotFound(format!(
                "{} not found; nothing was deleted",
                missing.id
            )));
        }
        for d in &docs {
            std::fs::remove_file(&d.file).map_err(io(&d.file))?;
        }
        let files: Vec<&Path> = docs.iter().map(|d| d.file.as_path()).collect();
        self.bump(&files)?;
        Ok(docs
            .into_iter()
            .map(|d| format!("{} deleted ({})", d.id, d.kind))
            .collect())
    }

    /// Reads everything. Stored policies were validated when applied.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let generation = self.generation();
        let mut snap = Snapshot {
            generation,
            ..Default::default()
        };
        for path in sorted_files(&self.dir.join("pods"), "json")? {
            let b = std::fs::read(&path).map_err(io(&path))?;
            snap.pods.push(
                serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?,
            );
        }
        for path in sorted_files(&self.dir.join("namespaces"), "yaml")? {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let v: serde_yaml::Value = serde_yaml::from_str(&text)
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?;
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let labels: BTreeMap<String, String> =
                serde_yaml::from_value(v["metadata"]["labels"].clone()).unwrap_or_default();
            snap.namespaces.insert(name, labels);
        }
        for path in sorted_files(&self.dir.join("nodes"), "json")? {
            let b = std::fs::read(&path).map_err(io(&path))?;
            snap.nodes.push(
                serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?,
            );
        }
        for path in sorted_files(&self.dir.join("endpoints"), "json")? {
            let b = std::fs::read(&path).map_err(io(&path))?;
            let node = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            snap.endpoints.insert(
                node,
                serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?,
            );
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        for (sub, is_policy) in [("policies", true), ("services", false)] {
            for path in sorted_files(&self.dir.join(sub), "yaml")? {
                let meta = std::fs::metadata(&path).map_err(io(&path))?;
                let stamp = (meta.modified().map_err(io(&path))?, meta.len());
                seen.insert(path.clone());
                let parsed = match cache.get(&path) {
                    Some((s, c)) if *s == stamp => c.clone(),
                    _ => {
                        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                        let c = if is_policy {
                            Cached::Policies(parse_stream(&text)?.policies)
                        } else {
                            let p = crate::lb::parse::parse_stream(&text)?;
                            Cached::Services(p.services, p.slices)
                        };
                        cache.insert(path.clone(), stamp, c.clone());
                        c
                    }
                };
                match parsed {
                    Cached::Policies(p) => snap.policies.extend(p),
                    Cached::Services(s, e) => {
                        snap.services.extend(s);
                        snap.slices.extend(e);
                    }
                }
            }
        }
        cache.retain(&seen);
        Ok(snap)
    }
}

fn sorted_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, StoreError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    Ok(v)
}
