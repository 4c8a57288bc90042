//! The scripts of `tests/kind/` (run by users with Docker and kind, not here): each
//! parses (`bash -n`), and passes shellcheck where shellcheck is installed.
use std::{path::PathBuf, process::Command};

fn scripts() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kind");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/kind exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    v.sort();
    v
}

#[test]
fn kind_scripts_parse() {
    let all = scripts();
    let names: Vec<String> = all
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"run.sh".to_string()), "{names:?}");
    for s in &all {
        let out = Command::new("bash")
            .arg("-n")
            .arg(s)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}: {}",
            s.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    use std::os::unix::fs::PermissionsExt;
    for name in ["run.sh", "migrate-kube-proxy.sh"] {
        let p = all
            .iter()
            .find(|p| p.ends_with(name))
            .unwrap_or_else(|| panic!("tests/kind/{name} exists"));
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{name} is executable");
    }
}

#[test]
fn the_migration_script_has_every_step() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kind/migrate-kube-proxy.sh"),
    )
    .unwrap();
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
fn kind_scripts_pass_shellcheck_where_installed() {
    let present = Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("shellcheck is not installed: only `bash -n` checked the kind scripts");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    for s in scripts() {
        let out = Command::new("shellcheck")
            .current_dir(root)
            .args(["-x", "-s", "bash"])
            .arg(&s)
            .output()
            .expect("shellcheck");
        assert!(
            out.status.success(),
            "{}:\n{}",
            s.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
