//! `cilium operator` flags and the `--config-dir` keys it reads (the cilium-config
//! ConfigMap, as the agent reads it). A flag given on the command line wins over the
//! directory, which wins over the default; a bad value is an error naming the key and
//! where it came from.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{
    alloc::{parse_pools, ClusterPool, PoolConfigError},
    leader::LeaseConfig,
};
use crate::agent::config_dir::{ConfigDir, ConfigDirError};
use clap::{ArgAction, Args};

/// Upstream's defaults.
pub const DEFAULT_IDENTITY_GC_INTERVAL: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_IDENTITY_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_CEP_GC_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How often the IPAM controller re-plans over its CiliumNode store with no event (it
/// runs on every CiliumNode event; failed writes are retried within a second).
pub const DEFAULT_IPAM_RESYNC: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// Directory of the mounted cilium-config ConfigMap (one file per key)
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Elect one active replica through a Lease (`--leader-elect=false`: run the
    /// controllers at once; only for a single replica)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Namespace of the leader election Lease
    #[arg(long, env = "CILIUM_K8S_NAMESPACE", default_value = "kube-system")]
    pub leader_election_namespace: String,
    /// How long a silent leader keeps the standbys waiting
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps leading without renewing
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// Interval between lease acquire/renew attempts
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_election_retry_period: Duration,
    /// Address of the health endpoint (GET /healthz)
    #[arg(long, default_value = "127.0.0.1:9234")]
    pub operator_api_serve_addr: SocketAddr,
    /// IPAM mode (config key `ipam`); the operator allocates in `cluster-pool` mode only
    #[arg(long)]
    pub ipam: Option<String>,
    /// IPv4 CIDRs node pod CIDRs are carved from (config key `cluster-pool-ipv4-cidr`)
    #[arg(long)]
    pub cluster_pool_ipv4_cidr: Option<String>,
    /// Prefix length of each node's pod CIDR (config key `cluster-pool-ipv4-mask-size`)
    #[arg(long)]
    pub cluster_pool_ipv4_mask_size: Option<String>,
    /// Interval of the identity garbage collector; 0 disables it
    #[arg(long)]
    pub identity_gc_interval: Option<String>,
    /// How long an identity no endpoint uses is kept before it is deleted
    #[arg(long)]
    pub identity_heartbeat_timeout: Option<String>,
    /// Interval of the CiliumEndpoint garbage collector; 0 disables it
    #[arg(long)]
    pub cilium_endpoint_gc_interval: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub leader_elect: bool,
    pub namespace: String,
    pub lease: LeaseConfig,
    pub serve_addr: SocketAddr,
    /// `Some` in cluster-pool IPAM mode: the pools, nothing allocated (each IPAM pass
    /// starts from a clone and rebuilds from the CiliumNodes).
    pub cluster_pool: Option<ClusterPool>,
    pub ipam_resync: Duration,
    /// `None`: disabled.
    pub identity_gc_interval: Option<Duration>,
    pub identity_heartbeat_timeout: Duration,
    /// `None`: disabled.
    pub cep_gc_interval: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Dir(#[from] ConfigDirError),
    #[error("{key} ({source_of}): {value:?} is invalid: {detail}")]
    Invalid {
        key: &'static str,
        source_of: String,
        value: String,
        detail: String,
    },
    /// `source_of`: where the pools came from (the error chain carries the detail).
    #[error("{source_of}")]
    Pool {
        source_of: String,
        #[source]
        source: PoolConfigError,
    },
    #[error("leader election: the renew deadline ({renew:?}) must be shorter than the lease duration ({lease:?}) and longer than the retry period ({retry:?})")]
    Lease {
        lease: Duration,
        renew: Duration,
        retry: Duration,
    },
}

/// A value and where it came from.
struct Val {
    value: String,
    from: String,
}

fn pick(flag: &Option<String>, flag_name: &str, dir: Option<&ConfigDir>, key: &str) -> Option<Val> {
    if let Some(v) = flag {
        return Some(Val {
            value: v.clone(),
            from: format!("flag --{flag_name}"),
        });
    }
    let dir = dir?;
    dir.get(key).map(|v| Val {
        value: v.to_string(),
        from: format!("file {}", dir.path.join(key).display()),
    })
}

fn duration_of(
    key: &'static str,
    v: Option<Val>,
    default: Duration,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = v else {
        return Ok(Some(default));
    };
    let d = parse_duration(&v.value).map_err(|detail| ConfigError::Invalid {
        key,
        source_of: v.from,
        value: v.value.clone(),
        detail,
    })?;
    Ok((!d.is_zero()).then_some(d))
}

impl OperatorArgs {
    /// Reads `--config-dir` (if given) and resolves every setting.
    pub fn resolve(&self) -> Result<OperatorConfig, ConfigError> {
        let dir = match &self.config_dir {
            Some(p) => Some(ConfigDir::read(p)?),
            None => None,
        };
        self.resolve_with(dir.as_ref())
    }

    pub fn resolve_with(&self, dir: Option<&ConfigDir>) -> Result<OperatorConfig, ConfigError> {
        let lease = LeaseConfig {
            lease_duration: self.leader_election_lease_duration,
            renew_deadline: self.leader_election_renew_deadline,
            retry_period: self.leader_election_retry_period,
        };
        if lease.renew_deadline >= lease.lease_duration
            || lease.retry_period >= lease.renew_deadline
        {
            return Err(ConfigError::Lease {
                lease: lease.lease_duration,
                renew: lease.renew_deadline,
                retry: lease.retry_period,
            });
        }
        let ipam = pick(&self.ipam, "ipam", dir, "ipam")
            .map(|v| v.value)
            .unwrap_or_else(|| "cluster-pool".into());
        let cluster_pool = if ipam == "cluster-pool" {
            let cidr = pick(
                &self.cluster_pool_ipv4_cidr,
                "cluster-pool-ipv4-cidr",
                dir,
                "cluster-pool-ipv4-cidr",
            );
            let from = cidr
                .as_ref()
                .map(|v| v.from.clone())
                .unwrap_or_else(|| "not set".into());
            let pools = parse_pools(cidr.as_ref().map(|v| v.value.as_str()).unwrap_or(""))
                .map_err(|source| ConfigError::Pool {
                    source_of: from.clone(),
                    source,
                })?;
            let mask = match pick(
                &self.cluster_pool_ipv4_mask_size,
                "cluster-pool-ipv4-mask-size",
                dir,
                "cluster-pool-ipv4-mask-size",
            ) {
                None => 24,
                Some(v) => v.value.parse::<u8>().map_err(|_| ConfigError::Invalid {
                    key: "cluster-pool-ipv4-mask-size",
                    source_of: v.from.clone(),
                    value: v.value.clone(),
                    detail: "not a prefix length 1-32".into(),
                })?,
            };
            Some(
                ClusterPool::new(&pools, mask).map_err(|source| ConfigError::Pool {
                    source_of: from,
                    source,
                })?,
            )
        } else {
            None
        };
        Ok(OperatorConfig {
            leader_elect: self.leader_elect,
            namespace: self.leader_election_namespace.clone(),
            lease,
            serve_addr: self.operator_api_serve_addr,
            cluster_pool,
            ipam_resync: DEFAULT_IPAM_RESYNC,
            identity_gc_interval: duration_of(
                "identity-gc-interval",
                pick(
                    &self.identity_gc_interval,
                    "identity-gc-interval",
                    dir,
                    "identity-gc-interval",
                ),
                DEFAULT_IDENTITY_GC_INTERVAL,
            )?,
            identity_heartbeat_timeout: duration_of(
                "identity-heartbeat-timeout",
                pick(
                    &self.identity_heartbeat_timeout,
                    "identity-heartbeat-timeout",
                    dir,
                    "identity-heartbeat-timeout",
                ),
                DEFAULT_IDENTITY_HEARTBEAT_TIMEOUT,
            )?
            .unwrap_or(Duration::ZERO),
            cep_gc_interval: duration_of(
                "cilium-endpoint-gc-interval",
                pick(
                    &self.cilium_endpoint_gc_interval,
                    "cilium-endpoint-gc-interval",
                    dir,
                    "cilium-endpoint-gc-interval",
                ),
                DEFAULT_CEP_GC_INTERVAL,
            )?,
        })
    }
}

/// A Go-style duration: `0`, `500ms`, `30s`, `5m`, `1h`, `1m30s`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("{v:?} is not a duration like 30s, 5m, 1h30m or 500ms");
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    if v.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(bad()),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: OperatorArgs,
    }

    fn args(a: &[&str]) -> OperatorArgs {
        T::try_parse_from(std::iter::once("operator").chain(a.iter().copied()))
            .expect("flags parse")
            .a
    }

    fn dir(pairs: &[(&str, &str)]) -> ConfigDir {
        ConfigDir {
            path: "/tmp/cilium/config-map".into(),
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "5", "5x", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_config_dir() {
        let c = args(&["--leader-elect"])
            .resolve_with(Some(&dir(&[
                ("ipam", "cluster-pool"),
                ("cluster-pool-ipv4-cidr", "10.0.0.0/8 172.16.0.0/12"),
                ("cluster-pool-ipv4-mask-size", "26"),
                ("identity-gc-interval", "0"),
                ("routing-mode", "tunnel"),
            ])))
            .expect("valid");
        assert!(c.leader_elect);
        assert_eq!(c.namespace, "kube-system");
        assert_eq!(c.lease, LeaseConfig::default());
        assert_eq!(c.serve_addr.to_string(), "127.0.0.1:9234");
        let cp = c.cluster_pool.expect("cluster-pool");
        assert_eq!(cp.mask(), 26);
        assert_eq!(cp.pools().len(), 2);
        assert_eq!(c.identity_gc_interval, None, "0 disables");
        assert_eq!(
            c.identity_heartbeat_timeout,
            DEFAULT_IDENTITY_HEARTBEAT_TIMEOUT
        );
        assert_eq!(c.cep_gc_interval, Some(DEFAULT_CEP_GC_INTERVAL));
    }

    #[test]
    fn flags_win_over_the_directory() {
        let c = args(&[
            "--cluster-pool-ipv4-mask-size=20",
            "--cilium-endpoint-gc-interval=1m",
            "--leader-elect=false",
        ])
        .resolve_with(Some(&dir(&[
            ("cluster-pool-ipv4-cidr", "10.0.0.0/8"),
            ("cluster-pool-ipv4-mask-size", "not-a-number"),
        ])))
        .expect("the flag hides the bad file value");
        assert!(!c.leader_elect);
        assert_eq!(c.cluster_pool.map(|p| p.mask()), Some(20));
        assert_eq!(c.cep_gc_interval, Some(Duration::from_secs(60)));
    }

    #[test]
    fn other_ipam_modes_disable_the_allocator() {
        let c = args(&[])
            .resolve_with(Some(&dir(&[("ipam", "kubernetes")])))
            .expect("valid");
        assert!(c.cluster_pool.is_none());
    }

    /// The error and its sources, as `cilium` prints them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s += &format!(": {c}");
            cur = c.source();
        }
        s
    }

    #[test]
    fn bad_values_name_key_and_file() {
        let e = args(&[])
            .resolve_with(Some(&dir(&[
                ("cluster-pool-ipv4-cidr", "10.0.0.0/8"),
                ("cluster-pool-ipv4-mask-size", "abc"),
            ])))
            .map(|_| ())
            .map_err(|e| chain(&e))
            .unwrap_err();
        assert!(
            e.contains("cluster-pool-ipv4-mask-size")
                && e.contains("/tmp/cilium/config-map/cluster-pool-ipv4-mask-size"),
            "{e}"
        );
        let e = args(&[])
            .resolve_with(Some(&dir(&[
                ("cluster-pool-ipv4-cidr", "10.0.0.0/24"),
                ("cluster-pool-ipv4-mask-size", "16"),
            ])))
            .map(|_| ())
            .map_err(|e| chain(&e))
            .unwrap_err();
        assert!(
            e.contains("mask-size 16") && e.contains("10.0.0.0/24"),
            "{e}"
        );
        let e = chain(&args(&[]).resolve_with(None).unwrap_err());
        assert!(e.contains("cluster-pool-ipv4-cidr is empty"), "{e}");
        let e = args(&[])
            .resolve_with(Some(&dir(&[
                ("cluster-pool-ipv4-cidr", "10.0.0.0/8"),
                ("identity-heartbeat-timeout", "soon"),
            ])))
            .map(|_| ())
            .map_err(|e| chain(&e))
            .unwrap_err();
        assert!(
            e.contains("identity-heartbeat-timeout") && e.contains("soon"),
            "{e}"
        );
        let e = args(&["--leader-election-renew-deadline=20s"])
            .resolve_with(Some(&dir(&[("cluster-pool-ipv4-cidr", "10.0.0.0/8")])))
            .map(|_| ())
            .map_err(|e| chain(&e))
            .unwrap_err();
        assert!(e.contains("renew deadline"), "{e}");
    }
}
