//! Compiles every entry program in ebpf/ with clang -target bpf into OUT_DIR,
//! where src/datapath embeds them; records the git commit and target for `cilium version`.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch_include = format!(
        "/usr/include/{}-linux-gnu",
        env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=ebpf");
    let mut entries: Vec<PathBuf> = std::fs::read_dir("ebpf")
        .expect("ebpf/ directory missing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    if let Ok(lib) = std::fs::read_dir("ebpf/lib") {
        for e in lib.flatten() {
            println!("cargo:rerun-if-changed={}", e.path().display());
        }
    }
    for src in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
    {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name");
        let obj = out.join(format!("{stem}.o"));
        let status = Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-Wall",
                "-Werror",
                "-I",
                &arch_include,
                "-c",
            ])
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {clang} failed ({e}): install clang and libbpf-dev (install/deps.sh)"
                )
            });
        assert!(
            status.success(),
            "clang failed to compile {}",
            src.display()
        );
    }

    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CILIUM_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=CILIUM_BUILD_TARGET={}",
        env::var("TARGET").unwrap_or_default()
    );
    println!("cargo:rerun-if-changed=.git/HEAD");
}
