//! `cilium agent --config-dir` through the real command line: which keys the agent took
//! from the directory, which an explicit flag overrode, the warnings for keys it does not
//! act on, and the error for a bad value. The agent is stopped before it touches the node
//! (`--netns` names a namespace that does not exist), so no privileges are needed.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cilium");

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str, pairs: &[(&str, &str)]) -> Self {
        let d = std::env::temp_dir().join(format!("cilium-cfgdir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in pairs {
            std::fs::write(d.join(k), v).unwrap();
        }
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn agent(dir: &Path, flags: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--log-format", "json", "agent", "--health-port", "0"])
        .arg(format!("--config-dir={}", dir.display()))
        .args(["--netns", "/nonexistent/cilium-test-ns"])
        .args(flags)
        .env_remove("CILIUM_LOG_LEVEL")
        .stdin(Stdio::null())
        .output()
        .expect("running the cilium binary")
}

/// The `fields` of the JSON log events with this message.
fn event(out: &Output, message: &str) -> Option<Value> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == message)
        .map(|v| v["fields"].clone())
}

#[test]
fn explicit_flags_override_the_directory_and_unimplemented_keys_only_warn() {
    let d = Dir::new(
        "precedence",
        &[
            ("routing-mode", "native"),
            ("enable-policy", "always"),
            ("bpf-lb-maglev-table-size", "251"),
            ("enable-hubble", "false"),
            ("cluster-name", "default"),
            ("a-future-option", "1"),
            ("..data", "ignored"),
        ],
    );
    let out = agent(&d.0, &["--routing-mode", "tunnel"]);
    // It got as far as entering the node's namespace: the directory was accepted.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/cilium-test-ns"), "{stderr}");

    let read = event(&out, "configuration directory read").expect("info event");
    assert_eq!(read["applied"], "enable-policy,bpf-lb-maglev-table-size");
    assert_eq!(read["overridden_by_flags"], "routing-mode");
    let ni = event(
        &out,
        "configuration keys accepted but not implemented by this agent yet; they have no effect",
    )
    .expect("one warning for unimplemented keys");
    assert_eq!(ni["keys"], "cluster-name,enable-hubble");
    let unknown = event(&out, "unknown configuration keys ignored").expect("unknown keys");
    assert_eq!(unknown["keys"], "a-future-option");
}

#[test]
fn a_bad_value_stops_the_agent_with_key_file_and_allowed_values() {
    let d = Dir::new("bad", &[("tunnel-protocol", "gre")]);
    let out = agent(&d.0, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"tunnel-protocol\""), "{stderr}");
    assert!(
        stderr.contains(&d.0.join("tunnel-protocol").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("vxlan, geneve"), "{stderr}");
    assert!(
        !stderr.contains("cilium-test-ns"),
        "stopped before the node: {stderr}"
    );
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let missing = std::env::temp_dir().join("cilium-no-such-config-dir");
    let out = agent(&missing, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}
