//! `cilium agent --config-dir`: Cilium's configuration directory (the `cilium-config`
//! ConfigMap mounted as one file per option: file name = option, content = value) mapped
//! onto the agent's flags. Precedence: a flag given on the command line (or by its
//! environment variable) wins over the directory, which wins over the flag's default.
//!
//! [`MAPPED`] and [`NOT_IMPLEMENTED`] together name every key the install's ConfigMap
//! template renders (a unit test renders it and checks), so template and agent cannot drift.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, ArgMatches, ValueEnum};

use super::{AgentConfig, IdentityAllocationMode, LbMode, PolicyMode, RoutingMode};
use crate::datapath::link::TunnelProtocol;

/// Where the socket load balancer attaches when `kube-proxy-replacement` is true and the
/// directory has no `cgroup-root` (Cilium's default).
pub const DEFAULT_CGROUP_ROOT: &str = "/run/cilium/cgroupv2";

#[derive(Debug, thiserror::Error)]
pub enum ConfigDirError {
    #[error("reading the config directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config key {key:?} (file {path}) has the invalid value {value:?}{detail}; allowed values: {allowed}")]
    Invalid {
        key: String,
        path: PathBuf,
        value: String,
        /// ` (why)`, or empty.
        detail: String,
        allowed: String,
    },
}

/// The key/value pairs of a configuration directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDir {
    pub path: PathBuf,
    pub values: BTreeMap<String, String>,
}

impl ConfigDir {
    /// Reads every regular file of `path` (following symlinks, as a mounted ConfigMap's
    /// keys are) as one key; dotfiles (`..data`, `..2024_...`) and directories are skipped,
    /// values are trimmed of surrounding whitespace (as Cilium does).
    pub fn read(path: &Path) -> Result<Self, ConfigDirError> {
        let read_dir = |source| ConfigDirError::ReadDir {
            path: path.to_path_buf(),
            source,
        };
        let mut values = BTreeMap::new();
        for entry in std::fs::read_dir(path).map_err(read_dir)? {
            let entry = entry.map_err(read_dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let file = entry.path();
            let meta = std::fs::metadata(&file).map_err(|source| ConfigDirError::ReadFile {
                path: file.clone(),
                source,
            })?;
            if !meta.is_file() {
                continue;
            }
            let text =
                std::fs::read_to_string(&file).map_err(|source| ConfigDirError::ReadFile {
                    path: file.clone(),
                    source,
                })?;
            values.insert(name, text.trim().to_string());
        }
        Ok(Self {
            path: path.to_path_buf(),
            values,
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// A key this agent understands, and the flag it sets.
pub struct Mapped {
    /// Cilium's option name (the file name).
    pub key: &'static str,
    /// The clap id of the [`AgentConfig`] field it sets; that flag given explicitly wins.
    pub flag: &'static str,
    allowed: fn() -> String,
    /// Applies a value (other keys of the directory at hand); `Err` carries the detail.
    apply: fn(&mut AgentConfig, &str, &ConfigDir) -> Result<(), String>,
}

/// Keys mapped onto flags of `cilium agent`.
pub const MAPPED: &[Mapped] = &[
    Mapped {
        key: "routing-mode",
        flag: "routing_mode",
        allowed: variants::<RoutingMode>,
        apply: |c, v, _| enum_value(v).map(|m| c.routing_mode = m),
    },
    Mapped {
        key: "bpf-lb-mode",
        flag: "bpf_lb_mode",
        allowed: variants::<LbMode>,
        apply: |c, v, _| enum_value(v).map(|m| c.bpf_lb_mode = m),
    },
    Mapped {
        key: "tunnel-protocol",
        flag: "tunnel_protocol",
        allowed: variants::<TunnelProtocol>,
        apply: |c, v, _| enum_value(v).map(|p| c.tunnel_protocol = p),
    },
    Mapped {
        key: "tunnel-port",
        flag: "tunnel_port",
        allowed: || "0 (the protocol's default port) or a UDP port 1-65535".into(),
        apply: |c, v, _| {
            let p: u16 = number(v)?;
            c.tunnel_port = (p != 0).then_some(p);
            Ok(())
        },
    },
    Mapped {
        key: "identity-allocation-mode",
        flag: "identity_allocation_mode",
        allowed: variants::<IdentityAllocationMode>,
        apply: |c, v, _| enum_value(v).map(|m| c.identity_allocation_mode = m),
    },
    Mapped {
        key: "enable-policy",
        flag: "enable_policy",
        allowed: variants::<PolicyMode>,
        apply: |c, v, _| enum_value(v).map(|m| c.enable_policy = m),
    },
    Mapped {
        key: "bpf-lb-maglev-table-size",
        flag: "maglev_table_size",
        allowed: || list(crate::lb::maglev::SUPPORTED_SIZES.iter()),
        apply: |c, v, _| super::parse_maglev_size(v).map(|n| c.maglev_table_size = n),
    },
    Mapped {
        key: "mtu",
        flag: "mtu",
        allowed: || "0 (derived from the node's link) or 68-65535".into(),
        apply: |c, v, _| {
            let m: u32 = number(v)?;
            if m != 0 && !(68..=65535).contains(&m) {
                return Err(format!("{m} is out of range"));
            }
            c.mtu = (m != 0).then_some(m);
            Ok(())
        },
    },
    Mapped {
        key: "devices",
        flag: "devices",
        allowed: || "link names separated by commas or spaces (empty: none)".into(),
        apply: |c, v, _| {
            let devs: Vec<String> = v
                .split(|ch: char| ch == ',' || ch.is_whitespace())
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(bad) = devs
                .iter()
                .find(|d| d.len() > 15 || d.contains(['/', ':', '*', '+']))
            {
                return Err(format!("{bad:?} is not a link name"));
            }
            c.devices = devs;
            Ok(())
        },
    },
    Mapped {
        key: "debug",
        flag: "debug",
        allowed: || "true, false".into(),
        apply: |c, v, _| boolean(v).map(|b| c.debug = b),
    },
    // Socket load balancing (our --cgroup-root) is what kube-proxy replacement turns on;
    // Cilium's cgroup-root says where. Both keys set the one flag.
    Mapped {
        key: "kube-proxy-replacement",
        flag: "cgroup_root",
        allowed: || "true, false".into(),
        apply: |c, v, dir| {
            let on = boolean(v)?;
            c.cgroup_root =
                on.then(|| PathBuf::from(dir.get("cgroup-root").unwrap_or(DEFAULT_CGROUP_ROOT)));
            c.kube_proxy_replacement.get_or_insert(on);
            Ok(())
        },
    },
    Mapped {
        key: "cgroup-root",
        flag: "cgroup_root",
        allowed: || "an absolute path (used when kube-proxy-replacement is true)".into(),
        apply: |_, v, _| {
            if Path::new(v).is_absolute() {
                Ok(())
            } else {
                Err(String::new())
            }
        },
    },
    Mapped {
        key: "agent-health-port",
        flag: "health_port",
        allowed: || "0 (no health endpoint) or a TCP port 1-65535".into(),
        apply: |c, v, _| number(v).map(|p| c.health_port = p),
    },
    Mapped {
        key: "socket-path",
        flag: "socket",
        allowed: || "an absolute path".into(),
        apply: |c, v, _| {
            if !Path::new(v).is_absolute() {
                return Err(String::new());
            }
            c.socket = v.into();
            Ok(())
        },
    },
    Mapped {
        key: "ipam",
        flag: "ipam",
        allowed: variants::<super::publish_k8s::IpamMode>,
        apply: |c, v, _| enum_value(v).map(|m| c.ipam = m),
    },
    Mapped {
        key: "k8s-service-host",
        flag: "k8s_service_host",
        allowed: || "a host name or IP address (empty: the in-cluster address)".into(),
        apply: |c, v, _| {
            if v.contains(['/', ' ']) {
                return Err(String::new());
            }
            c.k8s_service_host = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
    },
    Mapped {
        key: "k8s-service-port",
        flag: "k8s_service_port",
        allowed: || "a TCP port 1-65535 (empty: 443)".into(),
        apply: |c, v, _| {
            c.k8s_service_port = match v {
                "" => None,
                v => Some(number::<u16>(v).and_then(|p| {
                    if p == 0 {
                        Err(String::new())
                    } else {
                        Ok(p)
                    }
                })?),
            };
            Ok(())
        },
    },
    Mapped {
        key: "conntrack-gc-interval",
        flag: "ct_gc_interval",
        allowed: || "0s (the default interval) or a duration like 30s, 5m, 1h".into(),
        apply: |c, v, _| {
            let secs = seconds(v).ok_or_else(String::new)?;
            if secs != 0 {
                c.ct_gc_interval = secs;
            }
            Ok(())
        },
    },
];

/// Keys the install renders that this agent accepts without acting on them yet, and
/// what it does instead. Each is named in one warning at start.
pub const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    (
        "cluster-name",
        "identities carry no cluster name (no cluster mesh)",
    ),
    ("cluster-id", "no cluster mesh"),
    (
        "cluster-pool-ipv4-cidr",
        "the operator's option: the agent takes its CIDR from its CiliumNode",
    ),
    (
        "cluster-pool-ipv4-mask-size",
        "the operator's option: the agent takes its CIDR from its CiliumNode",
    ),
    ("ipv4-native-routing-cidr", "no masquerading"),
    (
        "bpf-map-dynamic-size-ratio",
        "map sizes are fixed in the eBPF objects",
    ),
    (
        "bpf-ct-global-tcp-max",
        "map sizes are fixed in the eBPF objects",
    ),
    (
        "bpf-ct-global-any-max",
        "map sizes are fixed in the eBPF objects",
    ),
    ("bpf-lb-map-max", "map sizes are fixed in the eBPF objects"),
    (
        "bpf-policy-map-max",
        "map sizes are fixed in the eBPF objects",
    ),
    (
        "bpf-lb-algorithm",
        "Maglev for NodePort frontends when --devices are set, random otherwise",
    ),
    ("enable-hubble", "no Hubble server yet"),
];

/// Keys the install renders for another reader than the agent process: skipped here,
/// neither applied nor warned about.
pub const READ_ELSEWHERE: &[(&str, &str)] = &[(
    "cni-uninstall",
    "the agent container's preStop hook, `cilium agent uninstall-cni --config-dir`",
)];

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Keys whose value now holds.
    pub applied: Vec<String>,
    /// Keys not applied because their flag was given explicitly.
    pub overridden: Vec<String>,
    /// Keys of [`NOT_IMPLEMENTED`] present in the directory.
    pub not_implemented: Vec<String>,
    /// Keys this agent does not know at all.
    pub unknown: Vec<String>,
}

/// True when `flag` was given on the command line or by its environment variable.
fn explicit(matches: &ArgMatches, flag: &str) -> bool {
    matches!(
        matches.value_source(flag),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Applies `dir` to `config`, except where `matches` (the agent's parsed arguments) holds
/// an explicit flag. Every mapped key present is validated, overridden or not: an invalid
/// value is an error naming the key, its file and the allowed values, and changes nothing.
pub fn apply(
    config: &mut AgentConfig,
    dir: &ConfigDir,
    matches: &ArgMatches,
) -> Result<Applied, ConfigDirError> {
    let mut out = Applied::default();
    let mut next = config.clone();
    for m in MAPPED {
        let Some(value) = dir.get(m.key) else {
            continue;
        };
        let mut scratch = next.clone();
        (m.apply)(&mut scratch, value, dir).map_err(|detail| ConfigDirError::Invalid {
            key: m.key.to_string(),
            path: dir.path.join(m.key),
            value: value.to_string(),
            detail: if detail.is_empty() {
                detail
            } else {
                format!(" ({detail})")
            },
            allowed: (m.allowed)(),
        })?;
        if explicit(matches, m.flag) {
            out.overridden.push(m.key.to_string());
        } else {
            next = scratch;
            out.applied.push(m.key.to_string());
        }
    }
    for key in dir.values.keys() {
        if MAPPED.iter().any(|m| m.key == key) || READ_ELSEWHERE.iter().any(|(k, _)| k == key) {
            continue;
        }
        if NOT_IMPLEMENTED.iter().any(|(k, _)| k == key) {
            out.not_implemented.push(key.clone());
        } else {
            out.unknown.push(key.clone());
        }
    }
    *config = next;
    Ok(out)
}

fn variants<E: ValueEnum>() -> String {
    list(
        E::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string()),
    )
}

fn list<T: std::fmt::Display>(it: impl Iterator<Item = T>) -> String {
    it.map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

fn enum_value<E: ValueEnum>(v: &str) -> Result<E, String> {
    E::from_str(v, true).map_err(|_| String::new())
}

fn number<N: std::str::FromStr>(v: &str) -> Result<N, String> {
    v.parse().map_err(|_| String::new())
}

/// Go's strconv.ParseBool, as Cilium reads booleans.
fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(String::new()),
    }
}

/// A Go-style duration of whole seconds: `0`, `30s`, `5m`, `1h`, `1m30s`.
fn seconds(v: &str) -> Option<u64> {
    if v == "0" {
        return Some(0);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for ch in v.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    num.is_empty().then_some(total).filter(|_| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command, FromArgMatches};
    use std::collections::BTreeSet;

    fn parse(args: &[&str]) -> (AgentConfig, ArgMatches) {
        let cmd = AgentConfig::augment_args(Command::new("agent"));
        let m = cmd
            .try_get_matches_from(std::iter::once("agent").chain(args.iter().copied()))
            .expect("flags parse");
        (AgentConfig::from_arg_matches(&m).expect("config"), m)
    }

    fn dir(pairs: &[(&str, &str)]) -> ConfigDir {
        ConfigDir {
            path: "/cfg".into(),
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn applied(args: &[&str], pairs: &[(&str, &str)]) -> (AgentConfig, Applied) {
        let (mut c, m) = parse(args);
        let a = apply(&mut c, &dir(pairs), &m).expect("valid config dir");
        (c, a)
    }

    #[test]
    fn maps_keys_onto_flags() {
        let (c, a) = applied(
            &[],
            &[
                ("routing-mode", "native"),
                ("tunnel-protocol", "geneve"),
                ("tunnel-port", "6082"),
                ("enable-policy", "always"),
                ("bpf-lb-maglev-table-size", "65521"),
                ("mtu", "1400"),
                ("devices", "eth0, eth1 eth2"),
                ("debug", "true"),
                ("kube-proxy-replacement", "true"),
                ("cgroup-root", "/run/cg"),
                ("agent-health-port", "9999"),
                ("socket-path", "/run/x.sock"),
                ("conntrack-gc-interval", "1m30s"),
                ("identity-allocation-mode", "crd"),
                ("ipam", "kubernetes"),
                ("k8s-service-host", "192.0.2.1"),
                ("k8s-service-port", "6443"),
            ],
        );
        assert_eq!(c.routing_mode, RoutingMode::Native);
        assert_eq!(c.identity_allocation_mode, IdentityAllocationMode::Crd);
        assert_eq!(c.tunnel_protocol, TunnelProtocol::Geneve);
        assert_eq!(c.tunnel_port, Some(6082));
        assert_eq!(c.enable_policy, PolicyMode::Always);
        assert_eq!(c.maglev_table_size, 65521);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.devices, ["eth0", "eth1", "eth2"]);
        assert!(c.debug);
        assert_eq!(c.cgroup_root, Some(PathBuf::from("/run/cg")));
        assert_eq!(c.health_port, 9999);
        assert_eq!(c.socket, PathBuf::from("/run/x.sock"));
        assert_eq!(c.ct_gc_interval, 90);
        assert_eq!(c.ipam, crate::agent::publish_k8s::IpamMode::Kubernetes);
        assert_eq!(c.k8s_service_host.as_deref(), Some("192.0.2.1"));
        assert_eq!(c.k8s_service_port, Some(6443));
        assert_eq!(a.applied.len(), 17);
        assert!(a.overridden.is_empty() && a.unknown.is_empty());
    }

    #[test]
    fn zero_means_default_and_kpr_false_means_no_socket_lb() {
        let (c, _) = applied(
            &[],
            &[
                ("tunnel-port", "0"),
                ("mtu", "0"),
                ("kube-proxy-replacement", "false"),
                ("cgroup-root", "/run/cilium/cgroupv2"),
                ("conntrack-gc-interval", "0s"),
                ("devices", ""),
            ],
        );
        assert_eq!(c.tunnel_port, None);
        assert_eq!(c.mtu, None);
        assert_eq!(c.cgroup_root, None);
        assert_eq!(c.ct_gc_interval, 30);
        assert!(c.devices.is_empty());
        let (c, _) = applied(&[], &[("kube-proxy-replacement", "true")]);
        assert_eq!(c.cgroup_root, Some(PathBuf::from(DEFAULT_CGROUP_ROOT)));
    }

    #[test]
    fn flags_win_over_the_directory_which_wins_over_defaults() {
        let pairs = [
            ("routing-mode", "native"),
            ("enable-policy", "never"),
            ("bpf-lb-maglev-table-size", "251"),
            ("devices", "eth9"),
            ("kube-proxy-replacement", "true"),
        ];
        let (c, a) = applied(
            &[
                "--routing-mode",
                "tunnel",
                "--devices=eth0",
                "--cgroup-root",
                "/sys/fs/cgroup/x",
            ],
            &pairs,
        );
        assert_eq!(c.routing_mode, RoutingMode::Tunnel, "flag wins");
        assert_eq!(c.devices, ["eth0"], "flag wins");
        assert_eq!(c.cgroup_root, Some(PathBuf::from("/sys/fs/cgroup/x")));
        assert_eq!(
            c.enable_policy,
            PolicyMode::Never,
            "directory wins over default"
        );
        assert_eq!(c.maglev_table_size, 251, "directory wins over default");
        assert_eq!(
            a.overridden,
            ["routing-mode", "devices", "kube-proxy-replacement"]
        );
        // A flag given with its default value is still explicit.
        let (c, _) = applied(&["--enable-policy", "default"], &pairs);
        assert_eq!(c.enable_policy, PolicyMode::Default);
        // Without the key, the default stays.
        let (c, _) = applied(&[], &[]);
        assert_eq!(c.routing_mode, RoutingMode::Tunnel);
        assert_eq!(c.maglev_table_size, 16381);
        assert_eq!(c.health_port, super::super::DEFAULT_HEALTH_PORT);
    }

    #[test]
    fn invalid_values_name_key_file_and_allowed_values_and_change_nothing() {
        for (key, value, allowed) in [
            ("routing-mode", "vxlan", "tunnel, native"),
            ("tunnel-protocol", "gre", "vxlan, geneve"),
            ("enable-policy", "sometimes", "default, always, never"),
            ("bpf-lb-maglev-table-size", "1000", "251, 509"),
            ("debug", "yes", "true, false"),
            ("kube-proxy-replacement", "strict", "true, false"),
            ("mtu", "40", "68-65535"),
            ("tunnel-port", "70000", "1-65535"),
            ("cgroup-root", "relative", "absolute path"),
            ("conntrack-gc-interval", "5 minutes", "30s"),
            ("devices", "eth+", "link names"),
        ] {
            let (mut c, m) = parse(&[]);
            let before = format!("{c:?}");
            let d = dir(&[("enable-policy", "always"), (key, value)]);
            let e = apply(&mut c, &d, &m).expect_err(key).to_string();
            assert!(e.contains(&format!("{key:?}")), "{e}");
            assert!(e.contains(&format!("/cfg/{key}")), "{e}");
            assert!(e.contains(&format!("{value:?}")), "{e}");
            assert!(e.contains(allowed), "{key}: {e}");
            assert_eq!(format!("{c:?}"), before, "nothing applied");
        }
        // Invalid even when the flag overrides it: the ConfigMap is wrong either way.
        let (mut c, m) = parse(&["--routing-mode", "native"]);
        assert!(apply(&mut c, &dir(&[("routing-mode", "bad")]), &m).is_err());
    }

    #[test]
    fn unimplemented_and_unknown_keys_are_reported_not_fatal() {
        let (_, a) = applied(
            &[],
            &[
                ("enable-hubble", "false"),
                ("cluster-name", "default"),
                ("some-future-option", "1"),
            ],
        );
        assert_eq!(a.not_implemented, ["cluster-name", "enable-hubble"]);
        assert_eq!(a.unknown, ["some-future-option"]);
        assert!(a.applied.is_empty());
    }

    #[test]
    fn reads_a_mounted_configmap_directory() {
        let tmp = std::env::temp_dir().join(format!("cilium-cfgdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        // The kubelet's layout: ..<timestamp>/ holds the files, ..data links to it, and
        // each key is a symlink through ..data.
        let data = tmp.join("..2024_01_01_00_00_00.000000000");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("routing-mode"), "native\n").unwrap();
        std::fs::write(data.join("mtu"), "  1450 ").unwrap();
        std::os::unix::fs::symlink(data.file_name().unwrap(), tmp.join("..data")).unwrap();
        for k in ["routing-mode", "mtu"] {
            std::os::unix::fs::symlink(format!("..data/{k}"), tmp.join(k)).unwrap();
        }
        std::fs::create_dir(tmp.join("subdir")).unwrap();
        let d = ConfigDir::read(&tmp).unwrap();
        assert_eq!(
            d.values,
            BTreeMap::from([
                ("mtu".to_string(), "1450".to_string()),
                ("routing-mode".to_string(), "native".to_string()),
            ])
        );
        std::fs::remove_dir_all(&tmp).unwrap();
        let e = ConfigDir::read(&tmp).unwrap_err().to_string();
        assert!(e.contains(&tmp.display().to_string()), "{e}");
    }

    #[test]
    fn table_is_consistent_with_the_agent_flags() {
        let cmd = AgentConfig::augment_args(Command::new("agent"));
        let ids: BTreeSet<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
        let mut seen = BTreeSet::new();
        for m in MAPPED {
            assert!(
                ids.contains(m.flag),
                "{} maps to unknown flag {}",
                m.key,
                m.flag
            );
            assert!(seen.insert(m.key), "{} twice", m.key);
        }
        for (k, _) in NOT_IMPLEMENTED.iter().chain(READ_ELSEWHERE) {
            assert!(
                seen.insert(k),
                "{k} both mapped and not implemented, or twice"
            );
        }
    }

    /// The keys of the rendered `cilium-config` ConfigMap, for `--set` values.
    fn rendered_keys(set: &[&str]) -> BTreeSet<String> {
        use crate::install::{render::render_documents, ValueSources, Values};
        let values = Values::load(&ValueSources {
            set: set.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .expect("values");
        let docs = render_documents(&values, "kube-system").expect("render");
        let cm = docs
            .iter()
            .find(|d| d.source == "templates/configmap.yaml")
            .expect("the ConfigMap is rendered");
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            serde_yaml::from_str(&cm.yaml).expect("a ConfigMap");
        cm.data.unwrap_or_default().into_keys().collect()
    }

    #[test]
    fn every_key_the_install_renders_is_mapped_or_listed() {
        let mut all = BTreeSet::new();
        for set in [
            &[][..],
            &["routingMode=native,ipv4NativeRoutingCIDR=10.0.0.0/8"],
            &["kubeProxyReplacement=true,k8sServiceHost=10.0.0.1,k8sServicePort=6443"],
            &["ipam.mode=kubernetes"],
        ] {
            let keys = rendered_keys(set);
            for k in &keys {
                assert!(
                    MAPPED.iter().any(|m| m.key == k)
                        || NOT_IMPLEMENTED.iter().any(|(n, _)| n == k)
                        || READ_ELSEWHERE.iter().any(|(n, _)| n == k),
                    "the ConfigMap renders {k:?} (values {set:?}), which the agent neither \
                     maps (MAPPED) nor lists (NOT_IMPLEMENTED) in src/agent/config_dir.rs"
                );
            }
            all.extend(keys);
        }
        // No stale entries: everything listed as not implemented is something the
        // install renders.
        for (k, _) in NOT_IMPLEMENTED.iter().chain(READ_ELSEWHERE) {
            assert!(all.contains(*k), "{k} is listed but never rendered");
        }
    }

    #[test]
    fn the_rendered_default_configmap_applies_cleanly() {
        use crate::install::{ValueSources, Values};
        for set in [
            vec![],
            vec!["routingMode=native,ipv4NativeRoutingCIDR=10.0.0.0/8".to_string()],
            vec![
                "kubeProxyReplacement=true,k8sServiceHost=10.0.0.1,k8sServicePort=6443".to_string(),
            ],
        ] {
            let values = Values::load(&ValueSources {
                set,
                ..Default::default()
            })
            .expect("values");
            let d = ConfigDir {
                path: "/tmp/cilium/config-map".into(),
                values: values.settings.config_map(),
            };
            let (mut c, m) = parse(&[]);
            let a = apply(&mut c, &d, &m).expect("the install's ConfigMap is valid");
            assert!(a.unknown.is_empty(), "{:?}", a.unknown);
        }
    }
}
