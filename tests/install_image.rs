//! `cilium image build`: the archive holds the binary and its aliases, `podman load`
//! takes it (Docker's manifest.json) and so does the OCI layout (`oci-archive:`, what
//! `ctr images import` reads), and the tag is the image `cilium install` deploys.
//!
//! Podman runs with a throwaway --root/--runroot/--tmpdir under a temp directory: no
//! global podman state is touched. Needs root and podman (install/deps.sh); in CI
//! (CI=true) their absence fails the test instead of skipping it. The test binary is
//! dynamically linked, so the image is loaded and inspected, never run.
use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_cilium");

fn can_run() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let podman = Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root && podman {
        return true;
    }
    let why = if root {
        "podman is not installed"
    } else {
        "it needs root"
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("image test cannot run ({why}), and CI=true forbids skipping it");
    }
    eprintln!("skipping: {why}");
    false
}

/// A temp directory with its own podman storage; removed (with the images) on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cilium-image-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch { dir }
    }

    fn podman(&self, args: &[&str]) -> Output {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        Command::new("podman")
            .args(["--root", &d("root"), "--runroot", &d("runroot")])
            .args(["--tmpdir", &d("tmp"), "--storage-driver", "vfs"])
            .args(["--events-backend", "none"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running podman")
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.podman(&["rmi", "--all", "--force"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The archive's files by name.
fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut ar = tar::Archive::new(std::fs::File::open(path).expect("open archive"));
    let mut files = BTreeMap::new();
    for e in ar.entries().expect("archive entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read entry");
        files.insert(name, data);
    }
    files
}

#[test]
fn image_build_archive_loads_in_podman() {
    if !can_run() {
        return;
    }
    let s = Scratch::new();
    let archive = s.dir.join("cilium.tar");
    // No --tag: the default reference, which must be the image the install deploys.
    let out = Command::new(BIN)
        .args(["image", "build", "-o"])
        .arg(&archive)
        .output()
        .expect("running cilium image build");
    assert!(
        out.status.success(),
        "cilium image build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values = cilium::install::Values::load(&Default::default()).expect("default values");
    let reference = values.settings.agent.image.reference.clone();
    assert_eq!(
        reference,
        format!("localhost/cilium:{}", env!("CARGO_PKG_VERSION"))
    );

    // What is inside: the binary, byte for byte, and its argv[0] aliases.
    let files = read_archive(&archive);
    let docker: Value = serde_json::from_slice(&files["manifest.json"]).expect("manifest.json");
    assert_eq!(docker[0]["RepoTags"][0], reference.as_str());
    let config_path = docker[0]["Config"].as_str().expect("Config");
    let config: Value = serde_json::from_slice(&files[config_path]).expect("config");
    let diff_id = config["rootfs"]["diff_ids"][0]
        .as_str()
        .expect("diff id")
        .to_string();
    let layer_path = docker[0]["Layers"][0].as_str().expect("layer");
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(files[layer_path].as_slice())
        .read_to_end(&mut layer)
        .expect("gunzip layer");
    assert_eq!(format!("sha256:{}", sha256_hex(&layer)), diff_id);
    let mut binary_sha = None;
    let mut links = BTreeMap::new();
    let mut tar = tar::Archive::new(layer.as_slice());
    for e in tar.entries().expect("layer entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        if name == "usr/bin/cilium" {
            assert_eq!(e.header().mode().expect("mode") & 0o777, 0o755);
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read binary");
            binary_sha = Some(sha256_hex(&data));
        } else if let Some(target) = e.link_name().expect("link") {
            links.insert(name, target.to_string_lossy().into_owned());
        }
    }
    let me = std::fs::read(BIN).expect("read the cilium binary");
    assert_eq!(
        binary_sha,
        Some(sha256_hex(&me)),
        "the layer holds this binary"
    );
    for alias in ["cilium-cni", "cilium-agent", "cilium-operator"] {
        assert_eq!(
            links.get(&format!("usr/bin/{alias}")).map(String::as_str),
            Some("cilium")
        );
    }

    // podman load (Docker archive format) takes it under the reference.
    let loaded = s.podman_ok(&["load", "-i", &archive.to_string_lossy()]);
    assert!(loaded.contains(&reference), "podman load said: {loaded}");
    let inspect: Value =
        serde_json::from_str(&s.podman_ok(&["image", "inspect", &reference])).expect("inspect");
    let img = &inspect[0];
    assert_eq!(
        img["Config"]["Entrypoint"],
        serde_json::json!(["/usr/bin/cilium"])
    );
    assert_eq!(img["RootFS"]["Layers"], serde_json::json!([diff_id]));
    assert_eq!(img["Os"], "linux");
    let config_digest = config_path.trim_start_matches("blobs/sha256/");
    assert_eq!(img["Id"], config_digest, "image id is the config digest");

    // The OCI layout of the same archive (what containerd imports) is valid too.
    s.podman_ok(&["rmi", "--force", &reference]);
    let pulled = s.podman_ok(&["pull", "-q", &format!("oci-archive:{}", archive.display())]);
    assert_eq!(pulled.trim(), config_digest);
}
