//! Kubernetes resource types and API permissions shared by the agent, the operator and
//! `cilium install`; the client side of `cilium install/uninstall/status` on a cluster.
pub mod apply;
pub mod cluster;
pub mod crds;
#[cfg(test)]
pub mod fake_api;
pub mod migrate;
pub mod rbac;
pub mod status;
pub mod upgrade;
