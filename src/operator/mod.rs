//! The operator (`cilium operator`, argv[0] `cilium-operator`): cluster-wide work for
//! one elected replica at a time — cluster-pool IPAM (pod CIDRs for CiliumNodes) and
//! garbage collection of identities and endpoints. Every replica serves `/healthz`;
//! only the holder of the Lease runs the controllers, and it stops them the moment it
//! loses the Lease.
pub mod alloc;
pub mod gc;
pub mod health;
pub mod ipam;
pub mod leader;
