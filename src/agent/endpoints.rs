//! The endpoint manager: endpoints as the agent knows them, persisted one file per
//! endpoint in the state directory so a restarted agent adopts them.
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use super::models::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("endpoint state file {path} is corrupt: {source}; remove it and re-create the pod")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no free endpoint id: 65535 endpoints exist on this node")]
    NoFreeId,
}

/// Endpoints by id, mirrored to `<state>/endpoints/<id>.json`.
#[derive(Debug)]
pub struct Endpoints {
    dir: PathBuf,
    by_id: BTreeMap<u16, Endpoint>,
}

impl Endpoints {
    /// Opens the state directory and reads every persisted endpoint.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("endpoints");
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        let mut by_id = BTreeMap::new();
        let rd = std::fs::read_dir(&dir).map_err(|source| StateError::Io {
            op: "reading",
            path: dir.clone(),
            source,
        })?;
        for entry in rd.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| StateError::Io {
                op: "reading",
                path: path.clone(),
                source,
            })?;
            let ep: Endpoint =
                serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                    path: path.clone(),
                    source,
                })?;
            by_id.insert(ep.id, ep);
        }
        Ok(Self { dir, by_id })
    }

    pub fn list(&self) -> impl Iterator<Item = &Endpoint> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: u16) -> Option<&Endpoint> {
        self.by_id.get(&id)
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Option<&Endpoint> {
        self.by_id
            .values()
            .find(|e| e.container_id == container_id && e.ifname == ifname)
    }

    /// The lowest unused endpoint id (0 is never used, as in Cilium).
    pub fn next_id(&self) -> Result<u16, StateError> {
        (1..=u16::MAX)
            .find(|id| !self.by_id.contains_key(id))
            .ok_or(StateError::NoFreeId)
    }

    /// Stores (and persists, atomically) an endpoint.
    pub fn put(&mut self, ep: Endpoint) -> Result<(), StateError> {
        let path = self.dir.join(format!("{}.json", ep.id));
        let tmp = self.dir.join(format!(".{}.json.tmp", ep.id));
        let bytes = serde_json::to_vec_pretty(&ep).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(|source| StateError::Io {
            op: "writing",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| StateError::Io {
            op: "renaming",
            path: path.clone(),
            source,
        })?;
        self.by_id.insert(ep.id, ep);
        Ok(())
    }

    /// Forgets an endpoint and its state file.
    pub fn remove(&mut self, id: u16) -> Option<Endpoint> {
        let ep = self.by_id.remove(&id)?;
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
        Some(ep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: u16, ctr: &str) -> Endpoint {
        Endpoint {
            id,
            container_id: ctr.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            host_ifname: "lxc0".into(),
            host_ifindex: 7,
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            ipv4: "10.0.0.2".parse().unwrap(),
            ipv6: None,
            k8s_namespace: None,
            k8s_pod_name: None,
            labels: Default::default(),
            identity: 0,
            ingress_enforced: false,
            egress_enforced: false,
            port_mappings: vec![],
            state: "ready".into(),
        }
    }

    #[test]
    fn endpoints_persist_across_reopen() {
        let dir = std::env::temp_dir().join(format!("cilium-ep-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut eps = Endpoints::open(&dir).unwrap();
            assert_eq!(eps.next_id().unwrap(), 1);
            eps.put(ep(1, "a")).unwrap();
            eps.put(ep(2, "b")).unwrap();
            assert_eq!(eps.next_id().unwrap(), 3);
            eps.remove(1);
            assert_eq!(eps.next_id().unwrap(), 1, "freed ids are reused");
        }
        let eps = Endpoints::open(&dir).unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps.find("b", "eth0").map(|e| e.id), Some(2));
        assert!(eps.find("a", "eth0").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_state_is_reported_with_path() {
        let dir = std::env::temp_dir().join(format!("cilium-ep-corrupt-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("endpoints")).unwrap();
        std::fs::write(dir.join("endpoints/9.json"), b"{not json").unwrap();
        let err = Endpoints::open(&dir).unwrap_err();
        assert!(err.to_string().contains("9.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
