//! The command line: parse, call library code, render (table or `-o json|yaml`).
pub mod connectivity;
pub mod echo;
pub mod install;
pub mod local;
pub mod migrate;
pub mod perf;
pub mod probe;
pub mod upgrade;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{
    agent::{self, client::Client},
    datapath::{self, loader, maps},
};

#[derive(Debug, Parser)]
#[command(
    name = "cilium",
    version,
    about = "eBPF-based networking, security and observability for Kubernetes, in one binary"
)]
pub struct Cli {
    /// Agent API socket (default: /var/run/cilium/cilium.sock, or the only local cluster's node)
    #[arg(short = 'H', long = "host", global = true, env = "CILIUM_SOCK")]
    host: Option<PathBuf>,
    /// Log level for agent logs (error, warn, info, debug, trace)
    #[arg(long, global = true, default_value = "info", env = "CILIUM_LOG_LEVEL")]
    log_level: String,
    /// Log format: text or json
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print version, commit, build target and the embedded eBPF objects
    Version {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run the node agent (DaemonSet entrypoint), or install its CNI plugin on the node
    Agent(AgentArgs),
    /// Run the operator (Deployment entrypoint): cluster-pool IPAM, identity and endpoint GC
    Operator(crate::operator::OperatorArgs),
    /// Show Cilium's status: of a cluster (--kubeconfig/--context/-n/--wait, or a kubeconfig
    /// found while no local agent is), or of a local agent (-H, the default socket, the
    /// only local cluster)
    Status {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        kube: install::KubeArgs,
        /// Namespace Cilium runs in (cluster status)
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Wait until Cilium is ready (cluster status)
        #[arg(long)]
        wait: bool,
        /// How long --wait waits
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        wait_duration: Duration,
    },
    /// Inspect endpoints
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Inspect the eBPF maps
    #[command(subcommand)]
    Bpf(BpfCmd),
    /// Security identities
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// The policy the agent enforces
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Connectivity tests against the local cluster or a Kubernetes cluster
    #[command(subcommand)]
    Connectivity(ConnectivityCmd),
    /// The connectivity test's HTTP JSON echo server
    EchoServer {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Name reported in every answer
        #[arg(long, default_value = "echo")]
        name: String,
    },
    /// Services and their backends (kube-proxy replacement)
    #[command(subcommand)]
    Service(ServiceCmd),
    /// One TCP or UDP exchange or ICMP echo from inside a pod, reported as JSON
    /// (connectivity test client)
    Probe {
        #[arg(value_parser = ["tcp", "udp", "icmp"])]
        protocol: String,
        /// HOST:PORT (several with --count: used in turn); icmp: an IPv4 address
        #[arg(required = true)]
        targets: Vec<String>,
        /// TCP: repeat connect + request/response this many times and report latency percentiles
        #[arg(long)]
        count: Option<usize>,
        /// With --count: also print every sample's time (`times_ms`)
        #[arg(long, requires = "count")]
        samples: bool,
        /// Data to send (UDP default: "ping")
        #[arg(long)]
        send: Option<String>,
        /// UDP: connect() the socket first
        #[arg(long)]
        connected: bool,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Do nothing until SIGTERM or SIGINT (the idle process of the connectivity test's
    /// client pods: the image holds no other program)
    #[command(hide = true)]
    Pause,
    /// Print datapath events live (drops with their reason)
    Monitor {
        /// Only events of this type
        #[arg(short = 't', long = "type", value_parser = ["drop"])]
        kind: Option<String>,
        /// Stop after this many events
        #[arg(short = 'n', long)]
        count: Option<usize>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// A local cluster of network namespaces on this host, with the real agent and datapath
    #[command(subcommand)]
    Local(LocalCmd),
    /// Install Cilium in a Kubernetes cluster (server-side apply, then wait until ready;
    /// --dry-run prints the manifests instead)
    Install(install::InstallArgs),
    /// Remove what `cilium install` created from a Kubernetes cluster (CRDs are kept
    /// unless --delete-crds)
    Uninstall(install::UninstallArgs),
    /// Change an installed Cilium: new values over the recorded ones, the objects that
    /// changed applied, the agents rolled one node at a time
    Upgrade(upgrade::UpgradeArgs),
    /// The container image of this binary
    #[command(subcommand)]
    Image(install::ImageCmd),
    /// Migrations of a Kubernetes cluster (kube-proxy to Cilium's kube-proxy replacement)
    #[command(subcommand)]
    Migrate(migrate::MigrateCmd),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    cmd: Option<AgentCmd>,
    #[command(flatten)]
    config: agent::AgentConfig,
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    /// Copy this executable to <cni-bin-dir>/cilium-cni and write
    /// <cni-conf-dir>/05-cilium.conflist (the DaemonSet's init container; idempotent)
    InstallCni(InstallCniArgs),
    /// Remove exactly <cni-bin-dir>/cilium-cni and <cni-conf-dir>/05-cilium.conflist
    /// (with --config-dir: only when its cni-uninstall says true; the preStop hook)
    UninstallCni(UninstallCniArgs),
}

#[derive(Debug, Args)]
struct UninstallCniArgs {
    #[command(flatten)]
    dirs: CniDirs,
    /// The mounted cilium-config: remove the files only when its `cni-uninstall` key is
    /// "true" (as Cilium's cni-uninstall.sh); without it, always
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CniDirs {
    /// Directory of CNI plugin binaries (the host's /opt/cni/bin)
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Directory of CNI network configurations (the host's /etc/cni/net.d)
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
}

#[derive(Debug, Args)]
struct InstallCniArgs {
    #[command(flatten)]
    dirs: CniDirs,
    /// The agent API socket the plugin talks to (written into the configuration list)
    #[arg(long, default_value = crate::cni::spec::DEFAULT_AGENT_SOCKET)]
    agent_socket: String,
}

#[derive(Debug, Subcommand)]
enum EndpointCmd {
    /// List the endpoints of the node
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

// Parsed once per run: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum ConnectivityCmd {
    /// Pod-to-pod throughput, request/response and connect/request/response rates,
    /// same node and across nodes, without and with an L4 policy
    Perf {
        #[command(flatten)]
        c: ClusterArg,
        /// Seconds per measurement
        #[arg(long, default_value_t = 3)]
        duration: u64,
        /// Keep the test workloads afterwards
        #[arg(long)]
        keep: bool,
    },
    /// Deploy test workloads and run the scenario suite (pod-to-pod, services, world,
    /// policies); non-zero exit when a test fails. On a Kubernetes cluster
    /// (--kubeconfig/--context/-n, or a kubeconfig found while no local cluster is up)
    /// or on the local cluster (--cluster, -H)
    Test {
        #[command(flatten)]
        c: ClusterArg,
        #[command(flatten)]
        kube: install::KubeArgs,
        /// Namespace Cilium runs in (Kubernetes)
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Namespace of the test workloads (Kubernetes)
        #[arg(long, default_value = connectivity::k8s::DEFAULT_TEST_NAMESPACE)]
        test_namespace: String,
        /// Image of the test pods (Kubernetes; default: the agent DaemonSet's)
        #[arg(long)]
        image: Option<String>,
        /// An HTTP server outside the cluster (Kubernetes: port 80), allowed by the
        /// to-cidr-external policy
        #[arg(long, default_value = "1.1.1.1")]
        external_ip: String,
        /// A second outside address, denied by the to-cidr-external policy (Kubernetes)
        #[arg(long, default_value = "1.0.0.1")]
        external_other_ip: String,
        /// Run only tests matching these regexes; a leading ! excludes
        #[arg(long = "test")]
        tests: Vec<String>,
        /// Skip tests that need a second node
        #[arg(long)]
        single_node: bool,
        /// How long an action waits for its connection (a drop shows as this timeout)
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        connect_timeout: Duration,
        /// How long an action waits for the answer once connected
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        request_timeout: Duration,
        /// Write a JUnit XML report
        #[arg(long)]
        junit_file: Option<PathBuf>,
        /// Keep the test workloads afterwards
        #[arg(long)]
        keep: bool,
        /// How many actions of a test run at once (cilium-cli runs whole tests in
        /// parallel namespaces; here tests share one namespace and its policies, so the
        /// parallelism is within a test)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        test_concurrency: u16,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// List frontends with their backends
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCmd {
    /// List identities (reserved, endpoint and CIDR ones)
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one identity
    Get {
        id: u32,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Show the policies in force and the revision
    Get {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum BpfCmd {
    /// The ipcache: prefix -> identity
    #[command(subcommand)]
    Ipcache(MapList),
    /// The connection tracking table
    #[command(subcommand)]
    Ct(MapList),
    /// Load-balancing maps: frontends -> backends by slot
    #[command(subcommand)]
    Lb(MapList),
    /// Policy map entries of one endpoint, with packet/byte counters
    #[command(subcommand)]
    Policy(PolicyMapCmd),
    /// Datapath metrics: forwarded and dropped packets by reason and direction
    #[command(subcommand)]
    Metrics(MapList),
    /// The endpoints map (cilium_lxc) with per-endpoint counters
    #[command(subcommand)]
    Endpoint(MapList),
}

#[derive(Debug, Subcommand)]
enum MapList {
    /// List the map's entries
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        /// bpffs directory of the node (default: the agent's)
        #[arg(long)]
        bpf_root: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyMapCmd {
    /// Entries of an endpoint (by endpoint id)
    Get {
        endpoint: u16,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        #[arg(long)]
        bpf_root: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ClusterArg {
    /// Name of the local cluster
    #[arg(
        long = "cluster",
        default_value = "default",
        env = "CILIUM_LOCAL_CLUSTER"
    )]
    cluster: String,
}

#[derive(Debug, Subcommand)]
enum LocalCmd {
    /// Create a local cluster (one node: a network namespace and its agent)
    Up {
        /// Name of the cluster (`--cluster`, as the other local commands, works too)
        #[arg(long, visible_alias = "cluster", default_value = "default")]
        name: String,
        /// Pod CIDR pool: one node takes it whole; with several, each gets a /24 of it
        /// (then give a larger pool, e.g. 10.200.0.0/16)
        #[arg(long, default_value = "10.200.0.0/24")]
        pod_cidr: ipnet::Ipv4Net,
        /// Number of nodes (network namespaces with an agent each, joined by an underlay)
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// How pod traffic crosses nodes: tunnel (encapsulated, identity in the VNI) or
        /// native (routes to each node's pod CIDR over the underlay)
        #[arg(long, value_enum, default_value = "tunnel")]
        routing: agent::RoutingMode,
        /// Encapsulation in tunnel mode
        #[arg(long, value_enum, default_value = "vxlan")]
        tunnel_protocol: crate::datapath::link::TunnelProtocol,
        /// Whether the agents replace kube-proxy (socket and per-packet service load
        /// balancing); `false` leaves services to iptables rules, as with kube-proxy
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
        kube_proxy_replacement: bool,
        /// How NodePort reaches backends on other nodes: snat, or dsr (direct server
        /// return; needs --routing native)
        #[arg(long, value_enum, default_value = "snat")]
        bpf_lb_mode: agent::LbMode,
        /// How long to wait for the agents
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Remove a local cluster and everything it created (idempotent)
    Down {
        /// Name of the cluster (`--cluster`, as the other local commands, works too)
        #[arg(long, visible_alias = "cluster", default_value = "default")]
        name: String,
    },
    /// Show nodes, agents and pods of a local cluster
    Status {
        #[command(flatten)]
        c: ClusterArg,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Start a pod through the real CNI plugin and run CMD inside it
    Run {
        #[command(flatten)]
        c: ClusterArg,
        /// Pod name
        #[arg(long)]
        name: String,
        /// Kubernetes namespace of the pod
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Pod labels, k=v[,k=v...]
        #[arg(long, value_parser = parse_labels, default_value = "")]
        labels: BTreeMap<String, String>,
        /// Named container ports, name=PROTO/port[,...] (e.g. http=TCP/8080)
        #[arg(long = "port", value_parser = parse_labels, default_value = "")]
        ports: BTreeMap<String, String>,
        /// HostPort, HOSTPORT:CONTAINERPORT[/tcp|udp] (repeatable): the pod's port on
        /// its node's addresses
        #[arg(short = 'p', long = "publish")]
        publish: Vec<local::HostPort>,
        /// Node to run on (default: the first)
        #[arg(long)]
        node: Option<String>,
        /// Leave the pod running in the background
        #[arg(short, long)]
        detach: bool,
        /// The command to run in the pod
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command inside a running pod
    Exec {
        #[command(flatten)]
        c: ClusterArg,
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove a pod (CNI DEL, namespace, processes)
    Rm {
        #[command(flatten)]
        c: ClusterArg,
        pod: String,
    },
    /// Add or replace policies (and namespaces) from YAML, all or nothing
    Apply {
        #[command(flatten)]
        c: ClusterArg,
        /// File, directory, or - for stdin
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove the objects named in YAML
    Delete {
        #[command(flatten)]
        c: ClusterArg,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Change a pod's labels: key=value sets, key- removes
    Label {
        #[command(flatten)]
        c: ClusterArg,
        pod: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Stop (and start again) a node's agent; the datapath keeps forwarding meanwhile
    RestartAgent {
        #[command(flatten)]
        c: ClusterArg,
        #[arg(long)]
        node: Option<String>,
        /// Only stop it
        #[arg(long)]
        stop: bool,
        /// Restart it with kube-proxy replacement on or off (kept for later restarts);
        /// turning it on removes kube-proxy's iptables chains from the node
        #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
        kube_proxy_replacement: Option<bool>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 2m or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 30s, 2m or 500ms")),
    }
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for kv in s.split(',').filter(|x| !x.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("label {kv:?} is not key=value"))?;
        if k.is_empty() {
            return Err(format!("label {kv:?} has an empty key"));
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

/// Entry point with a prefix of arguments inserted (argv[0] dispatch); returns the exit code.
pub fn main_with_prefix(prefix: &[&str]) -> i32 {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    for (i, p) in prefix.iter().enumerate() {
        args.insert(1 + i, (*p).into());
    }
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    }
}

/// One line for what the config directory set, one warning each for keys not acted on.
fn log_config_dir(a: &agent::config_dir::Applied, dir: &std::path::Path) {
    tracing::info!(
        dir = %dir.display(),
        applied = %a.applied.join(","),
        overridden_by_flags = %a.overridden.join(","),
        "configuration directory read"
    );
    if !a.not_implemented.is_empty() {
        tracing::warn!(
            keys = %a.not_implemented.join(","),
            "configuration keys accepted but not implemented by this agent yet; they have no effect"
        );
    }
    if !a.unknown.is_empty() {
        tracing::warn!(
            keys = %a.unknown.join(","),
            "unknown configuration keys ignored"
        );
    }
}

/// What the CiliumNodeConfigs of the cluster did to this node's configuration.
fn log_node_config(outcome: Option<&agent::node_config::Outcome>) {
    use agent::node_config::Outcome;
    match outcome {
        None | Some(Outcome::NotOnKubernetes) => {}
        Some(Outcome::Applied { configs, keys }) if configs.is_empty() => {
            tracing::debug!("no CiliumNodeConfig selects this node");
            debug_assert!(keys.is_empty());
        }
        Some(Outcome::Applied { configs, keys }) => tracing::info!(
            configs = %configs.join(","),
            keys = %keys.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            "CiliumNodeConfig overrides applied"
        ),
        Some(Outcome::Unreachable(reason)) => tracing::warn!(
            %reason,
            "could not read this node's CiliumNodeConfigs; using the configuration directory alone"
        ),
    }
}

fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        let _ = b.json().try_init();
    } else {
        let _ = b.try_init();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<i32> {
    match cli.cmd {
        Cmd::Version { output } => version(output),
        Cmd::Install(a) => install::run_install(a),
        Cmd::Uninstall(a) => install::run_uninstall(a),
        Cmd::Upgrade(a) => upgrade::run_upgrade(a),
        Cmd::Status {
            output,
            kube,
            namespace,
            wait,
            wait_duration,
        } if status_on_cluster(
            cli.host.is_some(),
            kube.given() || namespace.is_some() || wait,
        )? =>
        {
            let json = match output {
                Output::Json => true,
                Output::Table => false,
                Output::Yaml => bail!("cluster status prints text or -o json"),
            };
            let ns = namespace.unwrap_or_else(|| "kube-system".into());
            runtime()?.block_on(install::k8s_status(
                &kube.options(),
                &ns,
                wait,
                wait_duration,
                json,
            ))
        }
        Cmd::Image(c) => install::run_image(c),
        Cmd::Migrate(c) => migrate::run(c),
        Cmd::Agent(AgentArgs {
            cmd: Some(AgentCmd::InstallCni(a)),
            ..
        }) => {
            let opts = crate::cni::install::InstallOptions {
                agent_socket: a.agent_socket,
                ..crate::cni::install::InstallOptions::from_current_exe(
                    a.dirs.cni_bin_dir,
                    a.dirs.cni_conf_dir,
                )?
            };
            for c in crate::cni::install::install(&opts)? {
                println!("{}: {}", c.path.display(), c.action);
            }
            Ok(0)
        }
        Cmd::Agent(AgentArgs {
            cmd:
                Some(AgentCmd::UninstallCni(UninstallCniArgs {
                    dirs: d,
                    config_dir,
                })),
            ..
        }) => {
            if let Some(dir) = config_dir {
                let key = dir.join("cni-uninstall");
                let v = std::fs::read_to_string(&key).unwrap_or_default();
                if v.trim() != "true" {
                    println!(
                        "{} is not \"true\": leaving the CNI configuration in place",
                        key.display()
                    );
                    return Ok(0);
                }
            }
            for c in crate::cni::install::uninstall(&d.cni_bin_dir, &d.cni_conf_dir)? {
                println!("{}: {}", c.path.display(), c.action);
            }
            Ok(0)
        }
        Cmd::Agent(AgentArgs {
            cmd: None,
            config: mut cfg,
        }) => {
            let mut node_config = None;
            let applied = match (&cfg.config_dir, matches.subcommand_matches("agent")) {
                (Some(dir), Some(m)) => {
                    let mut dir = agent::config_dir::ConfigDir::read(dir)?;
                    // On Kubernetes, CiliumNodeConfigs selecting this node override keys.
                    if cfg.netns.is_none() {
                        node_config =
                            Some(agent::node_config::apply_at_start(&mut dir, &cfg.node_name));
                    }
                    Some((agent::config_dir::apply(&mut cfg, &dir, m)?, dir.path))
                }
                _ => None,
            };
            let explicit_level = matches!(
                matches.value_source("log_level"),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            );
            let level = if cfg.debug && !explicit_level {
                "debug"
            } else {
                cli.log_level.as_str()
            };
            init_logging(level, &cli.log_format);
            if let Some((a, dir)) = applied {
                log_config_dir(&a, &dir);
            }
            log_node_config(node_config.as_ref());
            // Enter the node's namespace before any thread exists, so every thread is in it.
            if let Some(ns) = &cfg.netns {
                datapath::netns::enter(ns)?;
            }
            runtime()?.block_on(agent::run(cfg))?;
            Ok(0)
        }
        Cmd::Operator(a) => {
            init_logging(&cli.log_level, &cli.log_format);
            runtime()?.block_on(crate::operator::run(a))?;
            Ok(0)
        }
        Cmd::Status { output, .. } => {
            let socket = resolve_socket(cli.host).map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}; for a Kubernetes cluster's status pass --kubeconfig FILE or --context NAME"
                )
            })?;
            let client = Client::new(socket);
            let st = runtime()?.block_on(client.status())?;
            render(output, &st, || {
                format!(
                    "Node:                   {}\nCilium:                 {} ({})\nPod CIDR:               {}{}\nRouter IP:              {}\nEndpoints:              {}\nIPAM:                   {} allocated\nBPF root:               {}\nKubeProxyReplacement:   {}\nRouting:                {} (MTU {})\nPolicy enforcement:     {} (revision {})\nUptime:                 {}s\n",
                    st.node_name,
                    st.state,
                    st.version,
                    st.pod_cidr_v4,
                    st.pod_cidr_v6.map(|c| format!(", {c}")).unwrap_or_default(),
                    st.router_ipv4,
                    st.endpoints,
                    st.ipam_used,
                    st.bpf_root,
                    st.kube_proxy_replacement,
                    st.routing,
                    st.mtu,
                    st.policy_enforcement,
                    st.policy_revision,
                    st.uptime_seconds
                )
            })
        }
        Cmd::Endpoint(EndpointCmd::List { output }) => {
            let client = Client::new(resolve_socket(cli.host)?);
            let eps = runtime()?.block_on(client.endpoints())?;
            render(output, &eps, || {
                let mut s = format!(
                    "{:<8} {:<10} {:<10} {:<9} {:<15} {:<16} {:<24} {}\n",
                    "ENDPOINT",
                    "POLICY-IN",
                    "POLICY-EG",
                    "IDENTITY",
                    "IPv4",
                    "INTERFACE",
                    "POD",
                    "LABELS"
                );
                for e in &eps {
                    let pod = match (&e.k8s_namespace, &e.k8s_pod_name) {
                        (Some(ns), Some(p)) => format!("{ns}/{p}"),
                        (None, Some(p)) => p.clone(),
                        _ => "-".into(),
                    };
                    let onoff = |b: bool| if b { "Enabled" } else { "Disabled" };
                    let labels: Vec<String> = crate::policy::labels::Labels(e.labels.clone())
                        .to_strings()
                        .into_iter()
                        .filter(|l| {
                            !l.starts_with("k8s:io.cilium.k8s.")
                                && !l.starts_with("k8s:io.kubernetes.pod.namespace")
                        })
                        .collect();
                    s += &format!(
                        "{:<8} {:<10} {:<10} {:<9} {:<15} {:<16} {:<24} {}\n",
                        e.id,
                        onoff(e.ingress_enforced),
                        onoff(e.egress_enforced),
                        e.identity,
                        e.ipv4,
                        e.host_ifname,
                        pod,
                        labels.join(",")
                    );
                }
                s
            })
        }
        Cmd::Bpf(BpfCmd::Metrics(MapList::List { output, bpf_root })) => {
            let root = resolve_bpf_root(cli.host, bpf_root)?;
            let entries: Vec<agent::models::MetricEntry> = loader::read_metrics(&root)?
                .into_iter()
                .map(|(k, v)| agent::models::MetricEntry {
                    reason: k.reason,
                    reason_name: maps::reason_name(k.reason).into(),
                    direction: maps::direction_name(k.dir).into(),
                    packets: v.packets,
                    bytes: v.bytes,
                })
                .collect();
            render(output, &entries, || {
                let mut s = format!(
                    "{:<8} {:<28} {:<10} {:>10} {:>12}\n",
                    "REASON", "DESCRIPTION", "DIRECTION", "PACKETS", "BYTES"
                );
                for e in &entries {
                    s += &format!(
                        "{:<8} {:<28} {:<10} {:>10} {:>12}\n",
                        e.reason, e.reason_name, e.direction, e.packets, e.bytes
                    );
                }
                s
            })
        }
        Cmd::Bpf(BpfCmd::Endpoint(MapList::List { output, bpf_root })) => {
            let root = resolve_bpf_root(cli.host, bpf_root)?;
            let stats: BTreeMap<u32, maps::EpStats> =
                loader::read_ep_stats(&root)?.into_iter().collect();
            let rows = loader::read_endpoints(&root)?;
            #[derive(Serialize)]
            struct Row {
                ip: String,
                id: u16,
                ifindex: u32,
                mac: String,
                node_mac: String,
                from_endpoint_packets: u64,
                from_endpoint_bytes: u64,
                to_endpoint_packets: u64,
                to_endpoint_bytes: u64,
            }
            let rows: Vec<Row> = rows
                .into_iter()
                .map(|(k, v)| {
                    let s = stats.get(&(v.lxc_id as u32)).copied().unwrap_or_default();
                    Row {
                        ip: k.addr().to_string(),
                        id: v.lxc_id,
                        ifindex: v.ifindex,
                        mac: datapath::link::mac_string(&v.mac),
                        node_mac: datapath::link::mac_string(&v.node_mac),
                        from_endpoint_packets: s.from_ep_packets,
                        from_endpoint_bytes: s.from_ep_bytes,
                        to_endpoint_packets: s.to_ep_packets,
                        to_endpoint_bytes: s.to_ep_bytes,
                    }
                })
                .collect();
            render(output, &rows, || {
                let mut s = format!(
                    "{:<15} {:<6} {:<8} {:<18} {:>10} {:>10}\n",
                    "IP", "ID", "IFINDEX", "MAC", "TX-PKTS", "RX-PKTS"
                );
                for r in &rows {
                    s += &format!(
                        "{:<15} {:<6} {:<8} {:<18} {:>10} {:>10}\n",
                        r.ip,
                        r.id,
                        r.ifindex,
                        r.mac,
                        r.from_endpoint_packets,
                        r.to_endpoint_packets
                    );
                }
                s
            })
        }
        Cmd::Connectivity(ConnectivityCmd::Test {
            c,
            kube,
            namespace,
            test_namespace,
            image,
            external_ip,
            external_other_ip,
            tests,
            single_node,
            connect_timeout,
            request_timeout,
            junit_file,
            keep,
            test_concurrency,
            output,
        }) => {
            let opts = connectivity::Options {
                cluster: c.cluster,
                tests,
                single_node,
                connect_timeout,
                request_timeout,
                json: matches!(output, Output::Json),
                junit_file,
                keep,
                concurrency: test_concurrency as usize,
            };
            // --cluster (or its variable) names a local cluster: that one.
            let local_named = matches!(
                matches
                    .subcommand_matches("connectivity")
                    .and_then(|m| m.subcommand_matches("test"))
                    .and_then(|m| m.value_source("cluster")),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            );
            let cluster_flags = kube.given() || namespace.is_some();
            if local_named && cluster_flags {
                bail!("--cluster names a local cluster, --kubeconfig/--context/-n a Kubernetes one: pass one or the other");
            }
            if !local_named && status_on_cluster(cli.host.is_some(), cluster_flags)? {
                if cli.host.is_some() {
                    bail!("-H asks a local agent: the connectivity test on Kubernetes takes --kubeconfig/--context/-n");
                }
                runtime()?.block_on(connectivity::k8s::run(
                    opts,
                    connectivity::k8s::K8sOptions {
                        cluster: kube.options(),
                        cilium_namespace: namespace.unwrap_or_else(|| "kube-system".into()),
                        test_namespace,
                        image,
                        external_ip,
                        external_other_ip,
                        ..Default::default()
                    },
                ))
            } else {
                runtime()?.block_on(connectivity::run(opts))
            }
        }
        Cmd::Connectivity(ConnectivityCmd::Perf { c, duration, keep }) => {
            runtime()?.block_on(perf::run(
                connectivity::Options {
                    cluster: c.cluster,
                    tests: vec![],
                    single_node: false,
                    connect_timeout: Duration::from_secs(1),
                    request_timeout: Duration::from_secs(2),
                    json: false,
                    junit_file: None,
                    keep,
                    concurrency: 1,
                },
                duration,
            ))
        }
        Cmd::Pause => {
            runtime()?.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("handling SIGTERM")?;
                tokio::select! {
                    _ = term.recv() => {}
                    r = tokio::signal::ctrl_c() => r.context("handling SIGINT")?,
                }
                anyhow::Ok(())
            })?;
            Ok(0)
        }
        Cmd::EchoServer { port, name } => {
            runtime()?.block_on(echo::serve(port, name))?;
            Ok(0)
        }
        Cmd::Service(ServiceCmd::List { output }) => {
            let client = Client::new(resolve_socket(cli.host)?);
            let svcs = runtime()?.block_on(client.services())?;
            render(output, &svcs, || {
                let mut s = format!(
                    "{:<4} {:<26} {:<12} {}\n",
                    "ID", "FRONTEND", "TYPE", "BACKENDS"
                );
                for v in &svcs {
                    let be = if v.backends.is_empty() {
                        "(none)".to_string()
                    } else {
                        v.backends
                            .join("\n                                            ")
                    };
                    s += &format!("{:<4} {:<26} {:<12} {}\n", v.id, v.frontend, v.kind, be);
                }
                s
            })
        }
        Cmd::Probe {
            protocol,
            targets,
            count,
            samples,
            send,
            connected,
            timeout,
        } => {
            if let Some(n) = count {
                if protocol != "tcp" {
                    bail!("--count measures TCP connect + request/response only");
                }
                let r = probe::tcp_latency(&targets, n, timeout, samples)?;
                println!("{}", serde_json::to_string(&r)?);
                return Ok(if r.failures == 0 { 0 } else { 1 });
            }
            if targets.len() != 1 {
                bail!("give one HOST:PORT (several only with --count)");
            }
            let r = if protocol == "tcp" {
                probe::tcp(&targets[0], send.as_deref(), timeout)?
            } else if protocol == "icmp" {
                probe::icmp(&targets[0], timeout)?
            } else {
                probe::udp(
                    &targets[0],
                    send.as_deref().unwrap_or("ping"),
                    connected,
                    timeout,
                )?
            };
            println!("{}", serde_json::to_string(&r)?);
            Ok(if r.ok { 0 } else { 1 })
        }
        Cmd::Bpf(BpfCmd::Lb(MapList::List { output, bpf_root })) => {
            let root = resolve_bpf_root(cli.host, bpf_root)?;
            let m = loader::read_lb(&root)?;
            #[derive(Serialize)]
            struct Row {
                frontend: String,
                rev_nat: u16,
                flags: u8,
                affinity_timeout: u32,
                backends: Vec<String>,
            }
            let proto = |p: u8| match p {
                6 => "TCP",
                17 => "UDP",
                132 => "SCTP",
                _ => "ANY",
            };
            // One row per master entry (slot 0), its slots in order; `backend` names a
            // backend id as `addr:port`, for either family.
            fn row<'a>(
                frontend: String,
                master: &crate::datapath::maps::Lb4Service,
                slots: impl Iterator<Item = (u16, &'a crate::datapath::maps::Lb4Service)>,
                backend: impl Fn(u32) -> Option<String>,
            ) -> Row {
                Row {
                    frontend,
                    rev_nat: master.rev_nat_index,
                    flags: master.flags,
                    affinity_timeout: master.backend_id,
                    backends: slots
                        .map(|(slot, sv)| match backend(sv.backend_id) {
                            Some(b) => format!(
                                "{b} (slot {slot}, id {}{})",
                                sv.backend_id,
                                if slot > master.count {
                                    ", terminating"
                                } else {
                                    ""
                                }
                            ),
                            None => format!("missing backend {} (slot {slot})", sv.backend_id),
                        })
                        .collect(),
                }
            }
            let scope = |s: u8| if s == 1 { " (internal)" } else { "" };
            let mut rows: Vec<Row> = Vec::new();
            for (k, v) in m.services.iter().filter(|(k, _)| k.backend_slot == 0) {
                let slots = m
                    .services
                    .iter()
                    .filter(|(s, _)| {
                        s.backend_slot > 0
                            && (s.address, s.dport, s.proto, s.scope)
                                == (k.address, k.dport, k.proto, k.scope)
                    })
                    .map(|(s, sv)| (s.backend_slot, sv));
                let ip = |a: u32| std::net::Ipv4Addr::from(a.to_ne_bytes());
                rows.push(row(
                    format!(
                        "{}:{}/{}{}",
                        ip(k.address),
                        u16::from_be(k.dport),
                        proto(k.proto),
                        scope(k.scope)
                    ),
                    v,
                    slots,
                    |id| {
                        m.backends
                            .get(&id)
                            .map(|b| format!("{}:{}", ip(b.address), u16::from_be(b.port)))
                    },
                ));
            }
            // IPv6 frontends (socket LB), the same shape.
            for (k, v) in m.services6.iter().filter(|(k, _)| k.backend_slot == 0) {
                let slots = m
                    .services6
                    .iter()
                    .filter(|(s, _)| {
                        s.backend_slot > 0
                            && (s.address, s.dport, s.proto, s.scope)
                                == (k.address, k.dport, k.proto, k.scope)
                    })
                    .map(|(s, sv)| (s.backend_slot, sv));
                let ip6 = std::net::Ipv6Addr::from;
                rows.push(row(
                    format!(
                        "[{}]:{}/{}{}",
                        ip6(k.address),
                        u16::from_be(k.dport),
                        proto(k.proto),
                        scope(k.scope)
                    ),
                    v,
                    slots,
                    |id| {
                        m.backends6
                            .get(&id)
                            .map(|b| format!("[{}]:{}", ip6(b.address), u16::from_be(b.port)))
                    },
                ));
            }
            render(output, &rows, || {
                let mut s = format!("{:<28} {}\n", "SERVICE ADDRESS", "BACKEND ADDRESS (SLOT)");
                for r in &rows {
                    s += &format!(
                        "{:<28} {} [rev-nat {}]\n",
                        r.frontend,
                        if r.backends.is_empty() {
                            "(no backends)".to_string()
                        } else {
                            r.backends.join(", ")
                        },
                        r.rev_nat
                    );
                }
                s
            })
        }
        Cmd::Identity(IdentityCmd::List { output }) => {
            let client = Client::new(resolve_socket(cli.host)?);
            let ids = runtime()?.block_on(client.identities())?;
            render(output, &ids, || {
                let mut s = format!("{:<10} {}\n", "ID", "LABELS");
                for i in &ids {
                    s += &format!("{:<10} {}\n", i.id, i.labels.join("\n           "));
                }
                s
            })
        }
        Cmd::Identity(IdentityCmd::Get { id, output }) => {
            let client = Client::new(resolve_socket(cli.host)?);
            let i = runtime()?.block_on(client.identity(id))?;
            render(output, &i, || {
                format!("{:<10} {}\n", i.id, i.labels.join("\n           "))
            })
        }
        Cmd::Policy(PolicyCmd::Get { output }) => {
            let client = Client::new(resolve_socket(cli.host)?);
            let p = runtime()?.block_on(client.policy())?;
            render(output, &p, || {
                let mut s = String::new();
                for n in &p.policies {
                    s += &format!("{n}\n");
                }
                s + &format!("Revision: {} ({} rules)\n", p.revision, p.rules)
            })
        }
        Cmd::Monitor {
            kind: _,
            count,
            output,
        } => {
            let client = Client::new(resolve_socket(cli.host)?);
            let mut seen = 0usize;
            runtime()?.block_on(client.monitor(|ev| {
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&ev).unwrap_or_default()),
                    Output::Yaml => {
                        print!("---\n{}", serde_yaml::to_string(&ev).unwrap_or_default())
                    }
                    Output::Table => println!(
                        "xx drop ({}) flow {} endpoint {}, identity {}->{}: {} -> {} {}",
                        ev.reason_name,
                        ev.direction.to_lowercase(),
                        ev.endpoint,
                        ev.src_identity,
                        ev.dst_identity,
                        ev.src,
                        ev.dst,
                        ev.protocol
                    ),
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                seen += 1;
                count.is_none_or(|c| seen < c)
            }))?;
            Ok(0)
        }
        Cmd::Bpf(BpfCmd::Ipcache(MapList::List { output, bpf_root })) => {
            let root = resolve_bpf_root(cli.host, bpf_root)?;
            #[derive(Serialize)]
            struct Row {
                prefix: String,
                identity: u32,
                #[serde(skip_serializing_if = "Option::is_none")]
                tunnel_endpoint: Option<std::net::Ipv4Addr>,
            }
            let rows: Vec<Row> = loader::read_ipcache(&root)?
                .into_iter()
                .map(|(n, e)| Row {
                    prefix: n.to_string(),
                    identity: e.identity,
                    tunnel_endpoint: e.tunnel,
                })
                .collect();
            render(output, &rows, || {
                let mut s = format!("{:<20} {}\n", "IP PREFIX/ADDRESS", "IDENTITY");
                for r in &rows {
                    s += &format!(
                        "{:<20} identity={} encryptkey=0 tunnelendpoint={}\n",
                        r.prefix,
                        r.identity,
                        r.tunnel_endpoint
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "0.0.0.0".into())
                    );
                }
                s
            })
        }
        Cmd::Bpf(BpfCmd::Ct(MapList::List { output, bpf_root })) => {
            let root = resolve_bpf_root(cli.host, bpf_root)?;
            #[derive(Serialize)]
            struct Row {
                direction: &'static str,
                protocol: u8,
                src: String,
                dst: String,
                lifetime: u32,
                flags: u16,
                packets: u64,
                bytes: u64,
                src_identity: u32,
            }
            let ip = |a: u32| std::net::Ipv4Addr::from(a.to_ne_bytes());
            let rows: Vec<Row> = loader::read_ct(&root)?
                .into_iter()
                .map(|(k, v)| Row {
                    direction: if k.dir == 0 { "OUT" } else { "IN" },
                    protocol: k.nexthdr,
                    src: format!("{}:{}", ip(k.saddr), u16::from_be(k.sport)),
                    dst: format!("{}:{}", ip(k.daddr), u16::from_be(k.dport)),
                    lifetime: v.lifetime,
                    flags: v.flags,
                    packets: v.packets,
                    bytes: v.bytes,
                    src_identity: v.src_sec_id,
                })
                .collect();
            render(output, &rows, || {
                let mut s = String::new();
                for r in &rows {
                    s += &format!(
                        "{} proto={} {} -> {} expires={} flags={:#x} packets={} bytes={} src_identity={}\n",
                        r.direction, r.protocol, r.src, r.dst, r.lifetime, r.flags, r.packets, r.bytes, r.src_identity
                    );
                }
                s
            })
        }
        Cmd::Bpf(BpfCmd::Policy(PolicyMapCmd::Get {
            endpoint,
            output,
            bpf_root,
        })) => {
            let root = resolve_bpf_root(cli.host, bpf_root)?;
            #[derive(Serialize)]
            struct Row {
                policy: &'static str,
                direction: &'static str,
                identity: u32,
                protocol: String,
                port_range: String,
                packets: u64,
                bytes: u64,
            }
            let rows: Vec<Row> = loader::read_policy(&root)?
                .into_iter()
                .filter(|(_, k, _)| k.ep_id == endpoint)
                .map(|(len, k, v)| Row {
                    policy: if v.flags & maps::POLICY_F_DENY != 0 {
                        "Deny"
                    } else {
                        "Allow"
                    },
                    direction: if k.egress != 0 { "Egress" } else { "Ingress" },
                    identity: k.sec_label,
                    protocol: match k.protocol {
                        0 => "ANY".into(),
                        1 => "ICMP".into(),
                        6 => "TCP".into(),
                        17 => "UDP".into(),
                        132 => "SCTP".into(),
                        n => n.to_string(),
                    },
                    port_range: match datapath::policymap::key_port_range(len, &k) {
                        None => "ANY".into(),
                        Some((a, b)) if a == b => a.to_string(),
                        Some((0, 65535)) => "ANY".into(),
                        Some((a, b)) => format!("{a}-{b}"),
                    },
                    packets: v.packets,
                    bytes: v.bytes,
                })
                .collect();
            render(output, &rows, || {
                let mut s = format!(
                    "{:<8} {:<10} {:<10} {:<8} {:<12} {:>10} {:>12}\n",
                    "POLICY", "DIRECTION", "IDENTITY", "PROTO", "PORT", "PACKETS", "BYTES"
                );
                for r in &rows {
                    s += &format!(
                        "{:<8} {:<10} {:<10} {:<8} {:<12} {:>10} {:>12}\n",
                        r.policy,
                        r.direction,
                        if r.identity == 0 {
                            "ANY".to_string()
                        } else {
                            r.identity.to_string()
                        },
                        r.protocol,
                        r.port_range,
                        r.packets,
                        r.bytes
                    );
                }
                s
            })
        }
        Cmd::Local(l) => run_local(l),
    }
}

fn run_local(cmd: LocalCmd) -> Result<i32> {
    let rt = runtime()?;
    match cmd {
        LocalCmd::Up {
            name,
            pod_cidr,
            nodes,
            routing,
            tunnel_protocol,
            kube_proxy_replacement,
            bpf_lb_mode,
            timeout,
        } => {
            let start = std::time::Instant::now();
            let c = rt.block_on(local::up(local::UpOptions {
                name: name.clone(),
                pod_cidr,
                nodes,
                timeout,
                routing,
                tunnel_protocol,
                kube_proxy_replacement,
                bpf_lb_mode,
            }))?;
            let list: Vec<String> = c
                .nodes
                .iter()
                .map(|n| format!("{} (pod CIDR {})", n.name, n.pod_cidr))
                .collect();
            println!(
                "✅ local cluster {name:?} is up in {:.1}s: {}; agent socket of {}: {}",
                start.elapsed().as_secs_f64(),
                list.join(", "),
                c.nodes[0].name,
                c.nodes[0].socket.display()
            );
            println!("   start a pod:  cilium local run --cluster {name} --name web -d -- sleep infinity");
            Ok(0)
        }
        LocalCmd::Down { name } => {
            let removed = rt.block_on(local::down(&name))?;
            if removed.is_empty() {
                println!("local cluster {name:?}: nothing to remove");
            } else {
                println!("🔥 local cluster {name:?} removed: {}", removed.join(", "));
            }
            Ok(0)
        }
        LocalCmd::Status { c, output } => {
            let cluster = local::Cluster::load(&c.cluster)?;
            #[derive(Serialize)]
            struct View {
                cluster: String,
                nodes: Vec<NodeView>,
                pods: Vec<local::PodRecord>,
            }
            #[derive(Serialize)]
            struct NodeView {
                name: String,
                pod_cidr: String,
                agent: String,
                endpoints: Option<usize>,
            }
            let nodes = cluster
                .nodes
                .iter()
                .map(|n| {
                    let st = rt.block_on(Client::new(&n.socket).status()).ok();
                    NodeView {
                        name: n.name.clone(),
                        pod_cidr: n.pod_cidr.to_string(),
                        agent: if st.is_some() {
                            "running".into()
                        } else if local::agent_alive(n) {
                            "not answering".into()
                        } else {
                            "stopped".into()
                        },
                        endpoints: st.map(|s| s.endpoints),
                    }
                })
                .collect();
            let v = View {
                cluster: cluster.name.clone(),
                nodes,
                pods: cluster.pods(),
            };
            render(output, &v, || {
                let mut s = format!(
                    "Cluster: {}\n\n{:<10} {:<18} {:<14} {}\n",
                    v.cluster, "NODE", "POD CIDR", "AGENT", "ENDPOINTS"
                );
                for n in &v.nodes {
                    s += &format!(
                        "{:<10} {:<18} {:<14} {}\n",
                        n.name,
                        n.pod_cidr,
                        n.agent,
                        n.endpoints.map(|e| e.to_string()).unwrap_or("-".into())
                    );
                }
                s += &format!(
                    "\n{:<16} {:<10} {:<15} {}\n",
                    "POD", "NODE", "IPv4", "LABELS"
                );
                for p in &v.pods {
                    let labels: Vec<String> =
                        p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    s += &format!(
                        "{:<16} {:<10} {:<15} {}\n",
                        p.name,
                        p.node,
                        p.ipv4.as_deref().unwrap_or("-"),
                        labels.join(",")
                    );
                }
                s
            })
        }
        LocalCmd::Run {
            c,
            name,
            namespace,
            labels,
            ports,
            publish,
            node,
            detach,
            command,
        } => rt.block_on(local::run(local::RunOptions {
            cluster: c.cluster,
            name,
            namespace,
            node,
            named_ports: ports,
            host_ports: publish,
            labels,
            detach,
            command,
        })),
        LocalCmd::Exec { c, pod, command } => local::exec(&c.cluster, &pod, &command),
        LocalCmd::Apply { c, files } => {
            let cluster = local::Cluster::load(&c.cluster)?;
            let mut text = String::new();
            for f in &files {
                text += &local::read_manifests(f)?;
                text += "\n---\n";
            }
            for line in cluster.store()?.apply(&text)? {
                println!("{line}");
            }
            Ok(0)
        }
        LocalCmd::Delete { c, files } => {
            let cluster = local::Cluster::load(&c.cluster)?;
            let mut text = String::new();
            for f in &files {
                text += &local::read_manifests(f)?;
                text += "\n---\n";
            }
            for line in cluster.store()?.delete(&text)? {
                println!("{line}");
            }
            Ok(0)
        }
        LocalCmd::Label { c, pod, changes } => {
            let labels = local::label(&c.cluster, &pod, &changes)?;
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("pod {pod} labeled: {}", l.join(","));
            Ok(0)
        }
        LocalCmd::Rm { c, pod } => {
            rt.block_on(local::rm(&c.cluster, &pod))?;
            println!("pod {pod} removed");
            Ok(0)
        }
        LocalCmd::RestartAgent {
            c,
            node,
            stop,
            kube_proxy_replacement,
        } => {
            rt.block_on(local::restart_agent(
                &c.cluster,
                node.as_deref(),
                stop,
                kube_proxy_replacement,
            ))?;
            println!("agent {}", if stop { "stopped" } else { "restarted" });
            Ok(0)
        }
    }
}

/// Whether `cilium status` asks the cluster (true) or a local agent (false): -H means
/// the agent; a cluster flag (--kubeconfig, --context, -n, --wait) means the cluster;
/// else the agent when its default socket exists or exactly one local cluster is up,
/// else the cluster when a kubeconfig is found.
fn status_on_cluster(host: bool, cluster_flags: bool) -> Result<bool> {
    match (host, cluster_flags) {
        (true, true) => bail!(
            "-H asks a local agent, --kubeconfig/--context/-n/--wait ask a cluster: pass one or the other"
        ),
        (true, false) => return Ok(false),
        (false, true) => return Ok(true),
        (false, false) => {}
    }
    if PathBuf::from(crate::cni::spec::DEFAULT_AGENT_SOCKET).exists()
        || local::Cluster::list().len() == 1
    {
        return Ok(false);
    }
    Ok(crate::k8s::cluster::default_kubeconfig_exists())
}

/// The agent socket: -H, else the default path, else the only local cluster's first node.
fn resolve_socket(host: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(h) = host {
        return Ok(PathBuf::from(
            h.to_string_lossy().trim_start_matches("unix://"),
        ));
    }
    let default = PathBuf::from(crate::cni::spec::DEFAULT_AGENT_SOCKET);
    if default.exists() {
        return Ok(default);
    }
    Ok(single_local_node()?.socket)
}

fn single_local_node() -> Result<local::NodeSpec> {
    let clusters = local::Cluster::list();
    match clusters.as_slice() {
        [one] => Ok(local::Cluster::load(one)?.node(None)?.clone()),
        [] => bail!(
            "no agent found: {} does not exist and no local cluster is up; start one with `cilium local up` or pass -H <socket>",
            crate::cni::spec::DEFAULT_AGENT_SOCKET
        ),
        many => bail!("several local clusters are up ({}): pass -H <socket> to pick an agent", many.join(", ")),
    }
}

fn resolve_bpf_root(host: Option<PathBuf>, root: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(r) = root {
        return Ok(r);
    }
    if let Some(h) = host {
        let st = runtime()?.block_on(Client::new(h).status())?;
        return Ok(PathBuf::from(st.bpf_root));
    }
    let default = PathBuf::from("/sys/fs/bpf/cilium");
    if default.exists() {
        return Ok(default);
    }
    Ok(single_local_node()?.bpf_root)
}

fn render<T: Serialize>(output: Output, v: &T, table: impl FnOnce() -> String) -> Result<i32> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(v)?),
        Output::Table => print!("{}", table()),
    }
    Ok(0)
}

fn version(output: Output) -> Result<i32> {
    #[derive(Serialize)]
    struct Obj {
        name: &'static str,
        size: usize,
        sha256: String,
    }
    #[derive(Serialize)]
    struct V {
        version: &'static str,
        commit: &'static str,
        target: &'static str,
        objects: Vec<Obj>,
    }
    let v = V {
        version: crate::VERSION,
        commit: crate::GIT_COMMIT,
        target: crate::BUILD_TARGET,
        objects: datapath::embedded_objects()
            .into_iter()
            .map(|(name, bytes)| Obj {
                name,
                size: bytes.len(),
                sha256: datapath::object_digest(bytes),
            })
            .collect(),
    };
    render(output, &v, || {
        let mut s = format!(
            "cilium {} (commit {}, {})\neBPF objects:\n",
            v.version, v.commit, v.target
        );
        for o in &v.objects {
            s += &format!(
                "  {:<14} {:>8} bytes  sha256:{}\n",
                o.name, o.size, o.sha256
            );
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands and probes of the rendered DaemonSet are ones this binary has: the init
    /// container and the agent parse with this CLI, and the probes hit the agent's health
    /// port and path.
    #[test]
    fn the_rendered_daemonset_calls_what_this_binary_has() {
        use k8s_openapi::{api::apps::v1::DaemonSet, apimachinery::pkg::util::intstr::IntOrString};
        let values = crate::install::Values::load(&Default::default()).expect("values");
        let docs =
            crate::install::render::render_documents(&values, "kube-system").expect("render");
        let ds = docs
            .iter()
            .find(|d| d.source == "templates/agent-daemonset.yaml")
            .expect("DaemonSet rendered");
        let ds: DaemonSet = serde_yaml::from_str(&ds.yaml).expect("a DaemonSet");
        let pod = ds.spec.and_then(|s| s.template.spec).expect("pod spec");
        let init = &pod.init_containers.unwrap_or_default()[0];
        let cli = Cli::try_parse_from(init.command.clone().unwrap_or_default())
            .expect("the init container's command parses");
        let Cmd::Agent(AgentArgs {
            cmd: Some(AgentCmd::InstallCni(a)),
            ..
        }) = cli.cmd
        else {
            panic!("the init container does not run `cilium agent install-cni`");
        };
        let mounts: Vec<String> = init
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_path)
            .collect();
        for dir in [&a.dirs.cni_bin_dir, &a.dirs.cni_conf_dir] {
            assert!(
                mounts.contains(&dir.display().to_string()),
                "{} is not mounted",
                dir.display()
            );
        }
        assert_eq!(a.agent_socket, crate::cni::spec::DEFAULT_AGENT_SOCKET);

        let agent_c = &pod.containers[0];
        let cli = Cli::try_parse_from(agent_c.command.clone().unwrap_or_default())
            .expect("the agent's command parses");
        let Cmd::Agent(AgentArgs { cmd: None, config }) = cli.cmd else {
            panic!("the agent container does not run `cilium agent`");
        };
        let config_dir = config.config_dir.expect("--config-dir");
        assert!(agent_c
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|m| std::path::Path::new(&m.mount_path) == config_dir));
        for probe in [
            &agent_c.startup_probe,
            &agent_c.liveness_probe,
            &agent_c.readiness_probe,
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.clone())
                .expect("httpGet");
            assert_eq!(get.port, IntOrString::Int(config.health_port.into()));
            assert_eq!(get.path.as_deref(), Some("/healthz"));
            assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
        }
    }

    #[test]
    fn durations_and_labels_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        let l = parse_labels("app=web,tier=front").unwrap();
        assert_eq!(l.get("app").map(String::as_str), Some("web"));
        assert!(parse_labels("app").unwrap_err().contains("key=value"));
        assert!(parse_labels("").unwrap().is_empty());
    }

    #[test]
    fn every_local_command_takes_the_cluster_as_cluster() {
        let cluster = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.cmd) {
            Ok(Cmd::Local(LocalCmd::Up { name, .. } | LocalCmd::Down { name })) => name,
            Ok(Cmd::Local(LocalCmd::Status { c, .. })) => c.cluster,
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(cluster(&["cilium", "local", "up", "--cluster", "a"]), "a");
        assert_eq!(cluster(&["cilium", "local", "up", "--name", "b"]), "b");
        assert_eq!(cluster(&["cilium", "local", "down", "--cluster", "c"]), "c");
        assert_eq!(
            cluster(&["cilium", "local", "status", "--cluster", "d"]),
            "d"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
