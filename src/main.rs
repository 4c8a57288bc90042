//! Dispatch only: argv[0] (`cilium-cni`, `cilium-agent`, `cilium-operator`) and the subcommand.
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
