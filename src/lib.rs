//! cilium: Kubernetes networking, security and observability with an eBPF dataplane,
//! as one binary: CLI, node agent, operator, CNI plugin.
pub mod agent;
pub mod cmd;
pub mod cni;
pub mod datapath;
pub mod install;
pub mod k8s;
pub mod lb;
pub mod operator;
pub mod policy;

/// Version string shown by `cilium version` and the agent.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit the binary was built from.
pub const GIT_COMMIT: &str = env!("CILIUM_GIT_COMMIT");
/// Rust target triple of the build.
pub const BUILD_TARGET: &str = env!("CILIUM_BUILD_TARGET");
