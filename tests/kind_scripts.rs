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
    let run = std::fs::metadata(all.iter().find(|p| p.ends_with("run.sh")).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert!(
        run.permissions().mode() & 0o111 != 0,
        "run.sh is executable"
    );
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
