//! `cilium agent install-cni` / `uninstall-cni` (the DaemonSet's init container) against
//! temporary directories: what a node's runtime finds afterwards. No privileges needed.
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use cilium::cni::spec::{NetConfList, DEFAULT_AGENT_SOCKET};

const BIN: &str = env!("CARGO_BIN_EXE_cilium");

/// A fresh directory pair (bin, conf) under the system temp dir, removed on drop.
struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("cilium-cni-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("net.d")).unwrap();
        Dirs { root }
    }
    fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }
    fn conf(&self) -> PathBuf {
        self.root.join("net.d")
    }
    fn plugin(&self) -> PathBuf {
        self.bin().join("cilium-cni")
    }
    fn conflist(&self) -> PathBuf {
        self.conf().join("05-cilium.conflist")
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn run(verb: &str, bin: &Path, conf: &Path) -> Output {
    Command::new(BIN)
        .args(["agent", verb])
        .arg(format!("--cni-bin-dir={}", bin.display()))
        .arg(format!("--cni-conf-dir={}", conf.display()))
        .stdin(Stdio::null())
        .output()
        .expect("running the cilium binary")
}

fn ok(verb: &str, d: &Dirs) -> String {
    let out = run(verb, &d.bin(), &d.conf());
    assert!(
        out.status.success(),
        "{verb} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fail(verb: &str, bin: &Path, conf: &Path) -> String {
    let out = run(verb, bin, conf);
    assert!(!out.status.success(), "{verb} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn install_writes_the_plugin_and_a_conflist_the_runtime_parses_and_is_idempotent() {
    let d = Dirs::new("twice");
    let out = ok("install-cni", &d);
    assert!(out.contains("cilium-cni: installed"), "{out}");
    assert!(out.contains("05-cilium.conflist: installed"), "{out}");

    // The plugin is this very executable, executable by everyone.
    assert_eq!(
        std::fs::read(d.plugin()).unwrap(),
        std::fs::read(BIN).unwrap()
    );
    let meta = std::fs::metadata(d.plugin()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);

    // The list parses with the plugin's own spec types and names the cilium-cni plugin.
    let text = std::fs::read(d.conflist()).unwrap();
    let list = NetConfList::parse(&text).expect("a valid conflist");
    assert_eq!(list.cni_version, "1.0.0");
    assert_eq!(list.name, "cilium");
    assert_eq!(list.plugins.len(), 1);
    let p = &list.plugins[0];
    assert_eq!(p.plugin_type, "cilium-cni");
    assert_eq!(p.agent_socket_path(), DEFAULT_AGENT_SOCKET);
    assert_eq!(p.extra["capabilities"]["portMappings"], true);

    // Nothing else is left behind (no temporary files).
    assert_eq!(names(&d.bin()), ["cilium-cni"]);
    assert_eq!(names(&d.conf()), ["05-cilium.conflist"]);

    // Again: nothing changes, the files are not even rewritten.
    let (ino_p, ino_c) = (meta.ino(), std::fs::metadata(d.conflist()).unwrap().ino());
    let out = ok("install-cni", &d);
    assert!(out.contains("cilium-cni: unchanged"), "{out}");
    assert!(out.contains("05-cilium.conflist: unchanged"), "{out}");
    assert_eq!(std::fs::metadata(d.plugin()).unwrap().ino(), ino_p);
    assert_eq!(std::fs::metadata(d.conflist()).unwrap().ino(), ino_c);
    assert_eq!(std::fs::read(d.conflist()).unwrap(), text);
    assert_eq!(names(&d.bin()), ["cilium-cni"]);
}

#[test]
fn an_old_plugin_is_replaced_by_rename_never_in_place() {
    let d = Dirs::new("replace");
    std::fs::write(d.plugin(), b"old plugin").unwrap();
    std::fs::set_permissions(d.plugin(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(d.conflist(), b"{\"stale\": true}").unwrap();
    // What a running plugin process holds open.
    let held = std::fs::File::open(d.plugin()).unwrap();
    let old_ino = held.metadata().unwrap().ino();

    let out = ok("install-cni", &d);
    assert!(out.contains("cilium-cni: installed"), "{out}");
    let new = std::fs::metadata(d.plugin()).unwrap();
    assert_ne!(new.ino(), old_ino, "a new file, not the old one rewritten");
    assert_eq!(new.permissions().mode() & 0o7777, 0o755);
    // The old file's contents are intact for whoever still runs it.
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
    assert_eq!(s, "old plugin");
    NetConfList::parse(&std::fs::read(d.conflist()).unwrap()).expect("stale list replaced");
}

#[test]
fn uninstall_removes_exactly_the_two_files_and_is_idempotent() {
    let d = Dirs::new("uninstall");
    std::fs::write(d.bin().join("bridge"), b"another plugin").unwrap();
    std::fs::write(d.conf().join("10-other.conflist"), b"{}").unwrap();
    ok("install-cni", &d);
    let out = ok("uninstall-cni", &d);
    assert!(out.contains("cilium-cni: removed"), "{out}");
    assert!(out.contains("05-cilium.conflist: removed"), "{out}");
    assert_eq!(names(&d.bin()), ["bridge"]);
    assert_eq!(names(&d.conf()), ["10-other.conflist"]);
    let out = ok("uninstall-cni", &d);
    assert!(out.contains("cilium-cni: absent"), "{out}");
    assert!(out.contains("05-cilium.conflist: absent"), "{out}");
}

/// The agent container's preStop hook: `uninstall-cni --config-dir` removes the files
/// only when the mounted cilium-config's `cni-uninstall` says "true" (`cilium
/// uninstall` sets it); an agent restart or upgrade (false, or no key) leaves them.
#[test]
fn uninstall_with_config_dir_obeys_cni_uninstall() {
    let d = Dirs::new("prestop");
    let cfg = d.root.join("config-map");
    std::fs::create_dir_all(&cfg).unwrap();
    ok("install-cni", &d);
    let pre_stop = || {
        let out = Command::new(BIN)
            .args(["agent", "uninstall-cni"])
            .arg(format!("--cni-bin-dir={}", d.bin().display()))
            .arg(format!("--cni-conf-dir={}", d.conf().display()))
            .arg(format!("--config-dir={}", cfg.display()))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for value in [None, Some("false")] {
        if let Some(v) = value {
            std::fs::write(cfg.join("cni-uninstall"), v).unwrap();
        }
        let out = pre_stop();
        assert!(
            out.contains("leaving the CNI configuration in place"),
            "{out}"
        );
        assert_eq!(names(&d.bin()), ["cilium-cni"]);
        assert_eq!(names(&d.conf()), ["05-cilium.conflist"]);
    }
    std::fs::write(cfg.join("cni-uninstall"), "true").unwrap();
    let out = pre_stop();
    assert!(out.contains("05-cilium.conflist: removed"), "{out}");
    assert!(names(&d.bin()).is_empty() && names(&d.conf()).is_empty());
}

#[test]
fn missing_or_unusable_directories_are_errors_naming_the_path() {
    let d = Dirs::new("errors");
    let missing = d.root.join("no-such-dir");

    let e = fail("install-cni", &missing, &d.conf());
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    // Nothing was written anywhere.
    assert!(names(&d.conf()).is_empty());

    let e = fail("install-cni", &d.bin(), &missing);
    assert!(
        e.contains(&missing.display().to_string()) && e.contains("does not exist"),
        "{e}"
    );
    assert!(names(&d.bin()).is_empty());

    let file = d.root.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let e = fail("install-cni", &d.bin(), &file);
    assert!(
        e.contains(&file.display().to_string()) && e.contains("not a directory"),
        "{e}"
    );

    // sysfs refuses new files even to root: an unwritable directory for any user.
    let e = fail("install-cni", &d.bin(), Path::new("/sys"));
    assert!(e.contains("/sys/05-cilium.conflist"), "{e}");
    assert!(e.contains("writable"), "{e}");
    assert!(!names(Path::new("/sys"))
        .iter()
        .any(|n| n.contains("cilium")));

    let e = fail("uninstall-cni", &missing, &d.conf());
    assert!(e.contains(&missing.display().to_string()), "{e}");
}
