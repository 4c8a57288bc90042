//! Network policy, the pure layer: parsing Kubernetes NetworkPolicy and Cilium(Clusterwide)NetworkPolicy
//! into a neutral rule model, and resolving rules into per-endpoint policy map state.

pub mod labels;
pub mod names;
pub mod parse;
pub mod resolve;
pub mod rule;
pub mod selector;

#[cfg(test)]
mod tests;
