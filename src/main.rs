//! Dispatch only: argv[0] (`cilium-cni`, `cilium-agent`, `cilium-operator`) and the subcommand.

/// mimalloc, not glibc's malloc: glibc sorts the chunks freed since its last large
/// request on the next one, so after a full regeneration dropped a 10k-service snapshot
/// the agent's next allocation paid ~8 ms for it (the first service change took 10-13 ms
/// instead of under 1 ms).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let argv0 = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let code = match argv0.as_str() {
        "cilium-cni" => cilium::cni::main(),
        "cilium-agent" => cilium::cmd::main_with_prefix(&["agent"]),
        "cilium-operator" => cilium::cmd::main_with_prefix(&["operator"]),
        _ => cilium::cmd::main_with_prefix(&[]),
    };
    std::process::exit(code);
}
