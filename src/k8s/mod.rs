//! Kubernetes resource types and API permissions shared by the agent, the operator and
//! `cilium install`.
pub mod crds;
pub mod rbac;
