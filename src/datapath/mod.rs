//! The eBPF datapath: embedded objects, typed maps, the loader, netlink links and namespaces.
pub mod link;
pub mod loader;
pub mod maps;
pub mod netns;
pub mod policymap;

use sha2::{Digest, Sha256};

/// The endpoint program (bpf_lxc.c), compiled by build.rs.
pub static BPF_LXC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_lxc.o"));
/// The node-device program (bpf_host.c: NodePort from outside), compiled by build.rs.
pub static BPF_HOST: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_host.o"));
/// The socket load balancer (bpf_sock.c), compiled by build.rs.
pub static BPF_SOCK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_sock.o"));

/// The tunnel device program (bpf_overlay.c), compiled by build.rs.
pub static BPF_OVERLAY: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_overlay.o"));

/// Every eBPF object embedded in the binary, by name.
pub fn embedded_objects() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("bpf_lxc.o", BPF_LXC),
        ("bpf_sock.o", BPF_SOCK),
        ("bpf_host.o", BPF_HOST),
        ("bpf_overlay.o", BPF_OVERLAY),
    ]
}

/// A short content hash of an object, for `cilium version`.
pub fn object_digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
