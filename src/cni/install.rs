//! The node installer (`cilium agent install-cni`, the DaemonSet's init container): copies
//! the running executable to `<bin dir>/cilium-cni` and writes
//! `<conf dir>/05-cilium.conflist`, each through a temporary file, fsync and rename, so a
//! runtime never sees half a file and a running plugin is never overwritten in place.
//! `uninstall` removes exactly those two files.
use std::{
    fs::File,
    io::{BufReader, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::spec::DEFAULT_AGENT_SOCKET;

/// The plugin's file name in the CNI bin directory (the runtime execs it by `type`).
pub const PLUGIN_FILE: &str = "cilium-cni";
/// The network configuration list's file name (sorted early: runtimes take the first).
pub const CONFLIST_FILE: &str = "05-cilium.conflist";
/// The `cniVersion` of the written list.
pub const CONFLIST_VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the CNI {what} directory {path} does not exist (create it, or mount the host's directory there)")]
    MissingDir { what: &'static str, path: PathBuf },
    #[error("the CNI {what} directory {path} is not a directory")]
    NotDir { what: &'static str, path: PathBuf },
    #[error("cannot write {path} (the {what} directory must be writable by this user: run as root or mount it read-write)")]
    Write {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locating the running executable")]
    CurrentExe(#[source] std::io::Error),
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Host directory of CNI plugin binaries (mounted, e.g. /host/opt/cni/bin).
    pub bin_dir: PathBuf,
    /// Host directory of CNI network configurations (e.g. /host/etc/cni/net.d).
    pub conf_dir: PathBuf,
    /// The executable copied as the plugin (normally [`std::env::current_exe`]).
    pub executable: PathBuf,
    /// The agent's API socket as the plugin on the host sees it.
    pub agent_socket: String,
}

/// One file the installer manages and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileChange {
    pub path: PathBuf,
    /// `installed`, `unchanged` or `removed` / `absent`.
    pub action: &'static str,
}

/// The network configuration list the installer writes.
pub fn conflist(agent_socket: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": CONFLIST_VERSION,
        "name": "cilium",
        "plugins": [{
            "type": PLUGIN_FILE,
            "agentSocket": agent_socket,
            "capabilities": { "portMappings": true },
        }],
    })
}

impl InstallOptions {
    /// Installs from the running executable with the default agent socket.
    pub fn from_current_exe(bin_dir: PathBuf, conf_dir: PathBuf) -> Result<Self, InstallError> {
        Ok(Self {
            bin_dir,
            conf_dir,
            executable: std::env::current_exe().map_err(InstallError::CurrentExe)?,
            agent_socket: DEFAULT_AGENT_SOCKET.into(),
        })
    }
}

/// Installs the plugin, then the configuration list (a runtime that sees the list finds
/// the plugin). Idempotent: an identical file is left alone. Both directories must exist
/// before anything is written.
pub fn install(opts: &InstallOptions) -> Result<Vec<FileChange>, InstallError> {
    check_dir("bin", &opts.bin_dir)?;
    check_dir("conf", &opts.conf_dir)?;
    let plugin = opts.bin_dir.join(PLUGIN_FILE);
    let plugin_change = if same_contents(&opts.executable, &plugin)? {
        set_mode("bin", &plugin, 0o755)?;
        "unchanged"
    } else {
        let mut src = File::open(&opts.executable).map_err(|source| InstallError::Read {
            path: opts.executable.clone(),
            source,
        })?;
        write_atomic("bin", &opts.bin_dir, PLUGIN_FILE, 0o755, |f| {
            std::io::copy(&mut src, f).map(|_| ())
        })?;
        "installed"
    };
    let mut text =
        serde_json::to_vec_pretty(&conflist(&opts.agent_socket)).expect("a JSON value serializes");
    text.push(b'\n');
    let conf = opts.conf_dir.join(CONFLIST_FILE);
    let conf_change = if std::fs::read(&conf).is_ok_and(|old| old == text) {
        set_mode("conf", &conf, 0o644)?;
        "unchanged"
    } else {
        write_atomic("conf", &opts.conf_dir, CONFLIST_FILE, 0o644, |f| {
            f.write_all(&text)
        })?;
        "installed"
    };
    Ok(vec![
        FileChange {
            path: plugin,
            action: plugin_change,
        },
        FileChange {
            path: conf,
            action: conf_change,
        },
    ])
}

/// Removes the configuration list, then the plugin (exactly those two files; absent ones
/// are fine). A runtime that still reads the list afterwards finds no network, not a
/// network without its plugin.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<Vec<FileChange>, InstallError> {
    check_dir("conf", conf_dir)?;
    check_dir("bin", bin_dir)?;
    let mut out = Vec::new();
    for path in [conf_dir.join(CONFLIST_FILE), bin_dir.join(PLUGIN_FILE)] {
        let action = match std::fs::remove_file(&path) {
            Ok(()) => "removed",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "absent",
            Err(source) => return Err(InstallError::Remove { path, source }),
        };
        out.push(FileChange { path, action });
    }
    Ok(out)
}

fn check_dir(what: &'static str, path: &Path) -> Result<(), InstallError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InstallError::NotDir {
            what,
            path: path.into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(InstallError::MissingDir {
            what,
            path: path.into(),
        }),
        Err(source) => Err(InstallError::Read {
            path: path.into(),
            source,
        }),
    }
}

fn set_mode(what: &'static str, path: &Path, mode: u32) -> Result<(), InstallError> {
    let current = std::fs::metadata(path).map_err(|source| InstallError::Read {
        path: path.into(),
        source,
    })?;
    if current.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        InstallError::Write {
            what,
            path: path.into(),
            source,
        }
    })
}

/// True when `b` exists with exactly the bytes of `a`.
fn same_contents(a: &Path, b: &Path) -> Result<bool, InstallError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Read { path, source }
    };
    let (Ok(mb), ma) = (
        std::fs::metadata(b),
        std::fs::metadata(a).map_err(read_err(a))?,
    ) else {
        return Ok(false);
    };
    if !mb.is_file() || mb.len() != ma.len() {
        return Ok(false);
    }
    let mut ra = BufReader::new(File::open(a).map_err(read_err(a))?);
    let mut rb = BufReader::new(File::open(b).map_err(read_err(b))?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = ra.read(&mut ba).map_err(read_err(a))?;
        if n == 0 {
            return Ok(true);
        }
        rb.read_exact(&mut bb[..n]).map_err(read_err(b))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Writes `dir/name` through `dir/.name.tmp.<pid>`: contents, mode, fsync, rename over the
/// old file (whose inode a running process keeps), fsync of the directory. The temporary
/// file is removed when anything fails; errors name the destination.
fn write_atomic(
    what: &'static str,
    dir: &Path,
    name: &str,
    mode: u32,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), InstallError> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let dest = dir.join(name);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| (dest.clone(), e))?;
        fill(&mut f).map_err(|e| (dest.clone(), e))?;
        // The umask may have narrowed the mode of the new file.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| (dest.clone(), e))?;
        f.sync_all().map_err(|e| (dest.clone(), e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| (dest.clone(), e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (dir.to_path_buf(), e))
    })();
    result.map_err(|(path, source)| {
        let _ = std::fs::remove_file(&tmp);
        InstallError::Write { what, path, source }
    })
}
