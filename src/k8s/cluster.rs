//! Connecting to a cluster as cilium-cli and kubectl do: a kubeconfig (`--kubeconfig`,
//! else `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account) and
//! an optional `--context`.
use std::path::{Path, PathBuf};

use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};

/// Where to find the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// A kubeconfig file; `None`: `$KUBECONFIG`, then `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig; `None`: its current context.
    pub context: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading the kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("using the kubeconfig{}", context.as_ref().map(|c| format!(" (context {c:?})")).unwrap_or_default())]
    Kubeconfig {
        context: Option<String>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no cluster found: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a \
         pod; pass --kubeconfig FILE (or --dry-run to print the manifests)"
    )]
    NoCluster,
    #[error("building the Kubernetes client for {url}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
}

/// A client for the cluster the options name, and the API server's URL.
pub async fn connect(opts: &ClusterOptions) -> Result<(Client, String), ClusterError> {
    let kopts = KubeConfigOptions {
        context: opts.context.clone(),
        ..Default::default()
    };
    let kubeconfig_err = |source| ClusterError::Kubeconfig {
        context: opts.context.clone(),
        source,
    };
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ClusterError::Read {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &kopts)
                .await
                .map_err(kubeconfig_err)?
        }
        // A context names a kubeconfig's; without one, a kubeconfig if there is one
        // (its errors are the user's to see), else the pod's service account.
        None if opts.context.is_some() || default_kubeconfig_exists() => {
            Config::from_kubeconfig(&kopts)
                .await
                .map_err(kubeconfig_err)?
        }
        None => Config::incluster().map_err(|_| ClusterError::NoCluster)?,
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| ClusterError::Client {
        url: url.clone(),
        source,
    })?;
    Ok((client, url))
}

/// Whether a kubeconfig would be found without flags: `$KUBECONFIG` names an existing
/// file, or `~/.kube/config` exists.
pub fn default_kubeconfig_exists() -> bool {
    if let Some(v) = std::env::var_os("KUBECONFIG") {
        if std::env::split_paths(&v).any(|p| !p.as_os_str().is_empty() && p.is_file()) {
            return true;
        }
    }
    std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".kube/config").is_file())
        .unwrap_or(false)
}

/// One line for a client error: the API's status code and message, else the error
/// chain (connection refused, TLS, ...).
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let phrase = hyper::StatusCode::from_u16(s.code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("");
            let msg = if s.message.is_empty() {
                String::new()
            } else {
                format!(": {}", s.message)
            };
            format!("the API server answered {} {phrase}{msg}", s.code)
        }
        other => {
            let mut out = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                let t = s.to_string();
                if !out.contains(&t) {
                    out.push_str(": ");
                    out.push_str(&t);
                }
                src = s.source();
            }
            out
        }
    }
}

/// The HTTP status of an API error, if it is one.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
