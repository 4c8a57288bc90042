//! `tests/kind/migrate-kube-proxy.sh` (run by users with Docker and kind, not here):
//! executable, parses (`bash -n`), and passes shellcheck where shellcheck is installed.
use std::{os::unix::fs::PermissionsExt, path::PathBuf, process::Command};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kind/migrate-kube-proxy.sh")
}

#[test]
fn the_migration_script_parses_and_is_executable() {
    let s = script();
    let mode = std::fs::metadata(&s)
        .expect("the script exists")
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "{} is executable", s.display());
    let out = Command::new("bash")
        .arg("-n")
        .arg(&s)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}: {}",
        s.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&s).unwrap();
    for step in [
        "kubeProxyMode: iptables",
        "image build",
        "--set kubeProxyReplacement=false",
        "status --wait",
        "migrate kube-proxy --all --yes",
        "connectivity test",
        "kind delete cluster",
    ] {
        assert!(text.contains(step), "the script has no {step:?}");
    }
}

#[test]
fn the_migration_script_passes_shellcheck_where_installed() {
    let present = Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("shellcheck is not installed: only `bash -n` checked the script");
        return;
    }
    let out = Command::new("shellcheck")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-x", "-s", "bash"])
        .arg(script())
        .output()
        .expect("shellcheck");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
