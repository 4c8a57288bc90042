//! The CNI plugin (argv[0] `cilium-cni`): ADD / DEL / CHECK / VERSION / STATUS / GC.
//! It builds the pod's link, asks the agent for addresses and hands the endpoint over.
pub mod install;
pub mod plugin;
pub mod spec;

use std::io::{IsTerminal, Read, Write};

use spec::{CniEnv, CniError, Command, ErrorCode, NetConf, LATEST_VERSION};

/// Runs one CNI invocation from the process environment and stdin; returns the exit code.
pub fn main() -> i32 {
    let env = match CniEnv::from_lookup(|k| std::env::var(k).ok()) {
        Ok(e) => e,
        Err(e) => return fail(&e, LATEST_VERSION),
    };
    let cmd = match env.require_command() {
        Ok(c) => c,
        Err(e) => return fail(&e, LATEST_VERSION),
    };
    let mut stdin = Vec::new();
    if !std::io::stdin().is_terminal() {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            return fail(
                &CniError::new(
                    ErrorCode::IoFailure,
                    format!("reading the network configuration from stdin: {e}"),
                ),
                LATEST_VERSION,
            );
        }
    }
    if cmd == Command::Version {
        let asked = NetConf::peek_cni_version(&stdin);
        return emit(&spec::version_result(asked.as_deref()));
    }
    let version = NetConf::peek_cni_version(&stdin)
        .filter(|v| spec::is_supported_version(v))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    let conf = match NetConf::parse(&stdin) {
        Ok(c) => c,
        Err(e) => return fail(&e, &version),
    };
    if let Err(e) = env.validate_for(cmd) {
        return fail(&e, &version);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &CniError::new(ErrorCode::IoFailure, format!("starting the runtime: {e}")),
                &version,
            )
        }
    };
    match rt.block_on(plugin::run(cmd, &env, &conf)) {
        Ok(Some(out)) => emit(&out),
        Ok(None) => 0,
        Err(e) => fail(&e, &version),
    }
}

fn emit(v: &serde_json::Value) -> i32 {
    let mut out = std::io::stdout().lock();
    let ok = serde_json::to_writer(&mut out, v).is_ok() && out.write_all(b"\n").is_ok();
    if ok {
        0
    } else {
        1
    }
}

/// Prints the spec's error JSON on stdout (and a line on stderr for humans); exit code 1.
fn fail(e: &CniError, version: &str) -> i32 {
    let _ = emit(&e.to_json(version));
    if e.details.is_empty() {
        eprintln!("cilium-cni: {}", e.msg);
    } else {
        eprintln!("cilium-cni: {}: {}", e.msg, e.details);
    }
    1
}
