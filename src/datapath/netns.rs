//! Network namespace helpers: run code inside a namespace on a dedicated thread,
//! so the caller's own namespace never changes.
use std::{fs::File, path::Path};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} cannot be opened: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path} failed: {source}")]
    Enter {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("the thread working in network namespace {path} panicked")]
    Panicked { path: String },
}

/// Moves the calling thread into the namespace at `path`. Use at process start,
/// before any other thread exists, so that every later thread inherits it.
pub fn enter(path: &Path) -> Result<(), NetnsError> {
    let f = File::open(path).map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: path.display().to_string(),
        source,
    })
}

/// Runs `f` on a fresh thread that has entered the namespace at `path`.
/// Sockets created by `f` stay bound to that namespace.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: path.display().to_string(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked {
            path: path.display().to_string(),
        })?
    })
}

/// Like [`in_netns`] for async work: a current-thread tokio runtime inside the namespace.
pub fn block_on_in_netns<T: Send, Fut: std::future::Future<Output = T>>(
    path: &Path,
    f: impl FnOnce() -> Fut + Send,
) -> Result<T, NetnsError> {
    in_netns(path, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetnsError::Open {
                path: "tokio runtime".into(),
                source,
            })?;
        Ok(rt.block_on(f()))
    })?
}

/// Does the namespace file exist and is it a network namespace?
pub fn exists(path: &Path) -> bool {
    File::open(path).is_ok()
}

/// Makes `cmd` enter the namespace `ns` between fork and exec (the runtime's way
/// of starting a process in a pod). `ns` must stay open until the command is spawned.
pub fn enter_on_exec(cmd: &mut std::process::Command, ns: &File) {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let fd = ns.as_raw_fd();
    // SAFETY: setns is a single system call, async-signal-safe between fork and exec;
    // the descriptor is owned by the caller and open while the child starts.
    unsafe {
        cmd.pre_exec(move || {
            let f = std::os::fd::BorrowedFd::borrow_raw(fd);
            setns(f, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
}

/// Makes `cmd` move itself into the cgroup whose `cgroup.procs` is open as `procs`
/// between fork and exec (so its first connect() already meets the cgroup's hooks).
pub fn enter_cgroup_on_exec(cmd: &mut std::process::Command, procs: &File) {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let fd = procs.as_raw_fd();
    // SAFETY: write(2) on an open descriptor is async-signal-safe; "0" moves the
    // calling process. The descriptor is owned by the caller and open while the child starts.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Where the cgroup v2 hierarchy is mounted (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| std::path::PathBuf::from(dir))
    })
}
