//! `cilium image build`: an OCI image archive whose only content is this binary.
//!
//! The archive is a tar of an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) that also carries Docker's `manifest.json`, so `podman load`,
//! `docker load`, `ctr images import` and `kind load image-archive` all take it. The
//! output is reproducible: file times are `SOURCE_DATE_EPOCH` (or 0), owners root.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use flate2::{write::GzEncoder, Compression};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Repository of the image `cilium image build` writes and the install deploys by default.
pub const DEFAULT_REPOSITORY: &str = "localhost/cilium";

/// `localhost/cilium:<version of this binary>`.
pub fn default_reference() -> String {
    format!("{DEFAULT_REPOSITORY}:{}", crate::VERSION)
}

/// Where the binary lives in the image, and the names it answers to (argv[0] dispatch).
pub const BINARY_PATH: &str = "usr/bin/cilium";
pub const ALIASES: &[&str] = &["cilium-cni", "cilium-agent", "cilium-operator"];

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0:?} is not an image reference like localhost/cilium:dev")]
    Reference(String),
    #[error("reading the binary {path}: {source}")]
    Binary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the image archive {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A parsed `name[:tag]` reference (`:latest` when no tag is given, as Docker does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub tag: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let bad = || ImageError::Reference(s.to_string());
        if s.is_empty() || s.contains('@') || s.chars().any(|c| c.is_whitespace()) {
            return Err(bad());
        }
        // A ':' after the last '/' separates the tag (a ':' before it is a registry port).
        let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
            None => (s, "latest"),
        };
        let name_ok = !name.is_empty()
            && !name.ends_with('/')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok || !tag_ok {
            return Err(bad());
        }
        Ok(Reference {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Built {
    pub reference: String,
    /// Digest of the image manifest (the image's id in OCI terms).
    pub manifest_digest: String,
    /// Digest of the config (the image id podman and docker show).
    pub config_digest: String,
    /// Digest of the uncompressed layer (rootfs diff id).
    pub layer_diff_id: String,
    pub archive_bytes: u64,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64, time: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(time);
    h.set_size(size);
    // ustar names up to 100 bytes: every path here is short.
    let _ = h.set_path(path);
    h
}

/// The layer: /usr/bin/cilium and its aliases, as an uncompressed tar.
fn layer_tar(binary: &[u8], time: u64) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["usr/", "usr/bin/", "tmp/"] {
        let mode = if dir == "tmp/" { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, dir, mode, 0, time);
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    let mut h = header(
        tar::EntryType::Regular,
        BINARY_PATH,
        0o755,
        binary.len() as u64,
        time,
    );
    h.set_cksum();
    b.append(&h, binary)?;
    for alias in ALIASES {
        let mut h = header(
            tar::EntryType::Symlink,
            &format!("usr/bin/{alias}"),
            0o777,
            0,
            time,
        );
        h.set_link_name("cilium")?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    b.into_inner()
}

/// Whether `elf` asks for a dynamic loader (has a PT_INTERP program header): such a
/// binary cannot run in an image that holds nothing else.
pub fn needs_dynamic_loader(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let rd16 = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let rd32 = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    // ELF64, little endian only (the targets this builds for).
    if elf.get(0..4) != Some(&b"\x7fELF"[..]) || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    (0..phnum).any(|i| rd32(phoff + i * phentsize) == Some(PT_INTERP))
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data)?;
    e.finish()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Writes the image archive of `binary` to `out`, tagged `reference`.
pub fn build(binary: &Path, reference: &Reference, out: &Path) -> Result<Built, ImageError> {
    let bin = std::fs::read(binary).map_err(|source| ImageError::Binary {
        path: binary.to_path_buf(),
        source,
    })?;
    let werr = |source| ImageError::Write {
        path: out.to_path_buf(),
        source,
    };
    let time = mtime();
    let layer = layer_tar(&bin, time).map_err(werr)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let layer_gz = gzip(&layer).map_err(werr)?;
    let layer_digest = sha256_hex(&layer_gz);
    let config = json!({
        "created": rfc3339(time),
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/cilium"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "cilium",
                "org.opencontainers.image.version": crate::VERSION,
                "org.opencontainers.image.revision": crate::GIT_COMMIT,
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": rfc3339(time),
            "created_by": "cilium image build",
        }],
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| werr(e.into()))?;
    let config_digest = sha256_hex(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": format!("sha256:{config_digest}"),
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": MEDIA_LAYER,
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_gz.len(),
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| werr(e.into()))?;
    let manifest_digest = sha256_hex(&manifest_bytes);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes.len(),
            "annotations": {
                "io.containerd.image.name": reference.to_string(),
                "org.opencontainers.image.ref.name": reference.tag,
            },
        }],
    });
    let docker_manifest = json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [reference.to_string()],
        "Layers": [format!("blobs/sha256/{layer_digest}")],
    }]);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".into(),
            serde_json::to_vec(&index).map_err(|e| werr(e.into()))?,
        ),
        (
            "manifest.json".into(),
            serde_json::to_vec(&docker_manifest).map_err(|e| werr(e.into()))?,
        ),
        (format!("blobs/sha256/{manifest_digest}"), manifest_bytes),
        (format!("blobs/sha256/{config_digest}"), config_bytes),
        (format!("blobs/sha256/{layer_digest}"), layer_gz),
    ];
    // Stable order: metadata first, then blobs.
    files[3..].sort_by(|a, b| a.0.cmp(&b.0));

    let tmp = out.with_extension("tmp");
    let write = || -> std::io::Result<u64> {
        let f = std::fs::File::create(&tmp)?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(tar::EntryType::Directory, dir, 0o755, 0, time);
            h.set_cksum();
            b.append(&h, std::io::empty())?;
        }
        for (name, data) in &files {
            let mut h = header(
                tar::EntryType::Regular,
                name,
                0o644,
                data.len() as u64,
                time,
            );
            h.set_cksum();
            b.append(&h, data.as_slice())?;
        }
        let mut w = b.into_inner()?;
        w.flush()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        Ok(std::fs::metadata(out)?.len())
    };
    let archive_bytes = write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(e)
    })?;
    Ok(Built {
        reference: reference.to_string(),
        manifest_digest: format!("sha256:{manifest_digest}"),
        config_digest: format!("sha256:{config_digest}"),
        layer_diff_id: diff_id,
        archive_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("localhost/cilium:0.1.0").expect("valid");
        assert_eq!(
            (r.name.as_str(), r.tag.as_str()),
            ("localhost/cilium", "0.1.0")
        );
        let r = Reference::parse("registry:5000/x/cilium").expect("valid");
        assert_eq!(
            (r.name.as_str(), r.tag.as_str()),
            ("registry:5000/x/cilium", "latest")
        );
        for bad in [
            "",
            "Cilium:x",
            "a b",
            "x:",
            "x@sha256:00",
            "repo/:t",
            "x:-t",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            default_reference(),
            format!("localhost/cilium:{}", crate::VERSION)
        );
    }

    #[test]
    fn detects_dynamic_binaries() {
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        // Test binaries are linked like the build; they are dynamic unless crt-static.
        let static_build = cfg!(target_feature = "crt-static");
        assert_eq!(needs_dynamic_loader(&me), !static_build);
        assert!(!needs_dynamic_loader(b"not an elf"));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn archive_layout_and_digests() {
        let dir = std::env::temp_dir().join(format!("cilium-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bin = dir.join("bin");
        std::fs::write(&bin, b"#!not really a binary\n").expect("write");
        let out = dir.join("img.tar");
        let built =
            build(&bin, &Reference::parse("localhost/cilium:t").unwrap(), &out).expect("build");
        let mut ar = tar::Archive::new(std::fs::File::open(&out).expect("open"));
        let mut names = Vec::new();
        let mut blobs = std::collections::BTreeMap::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).expect("read");
            if let Some(d) = name.strip_prefix("blobs/sha256/") {
                if !d.is_empty() {
                    assert_eq!(sha256_hex(&data), d, "blob {name} is content-addressed");
                }
            }
            blobs.insert(name.clone(), data);
            names.push(name);
        }
        assert!(names.contains(&"oci-layout".to_string()));
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], built.manifest_digest.as_str());
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "localhost/cilium:t"
        );
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "t");
        let docker: serde_json::Value = serde_json::from_slice(&blobs["manifest.json"]).unwrap();
        assert_eq!(docker[0]["RepoTags"][0], "localhost/cilium:t");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
