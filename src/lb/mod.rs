//! Service load balancing, pure part: Kubernetes Services and EndpointSlices in, the
//! desired contents of the datapath's service, backend and rev-NAT maps out (plus Maglev
//! lookup tables). No I/O and no privileges: the agent feeds objects in and programs the
//! maps from [`state::LbState`].
//!
//! - [`model`]: the Kubernetes objects, reduced to the fields used here.
//! - [`parse`]: YAML (multi-document, `kind: List`) to [`model`] with validation.
//! - [`state`]: objects + node view to frontends, backends and stable ids; text dump.
//! - [`maglev`]: Maglev consistent-hashing lookup tables.

pub mod maglev;
pub mod model;
pub mod parse;
pub mod state;

#[cfg(test)]
mod golden_tests;
