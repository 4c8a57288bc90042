//! Helpers for privileged integration tests: a local cluster guard that always
//! tears down, the built binary, and sockets opened inside pod namespaces.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_cilium");

/// True when the test can run; in CI (CI=true) a missing privilege is a failure, never a skip.
pub fn privileged() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("privileged test needs root, and CI=true forbids skipping it");
        }
        eprintln!("skipping: privileged test needs root");
    }
    root
}

pub fn cilium(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the cilium binary")
}

/// Runs and asserts success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = cilium(args);
    assert!(
        out.status.success(),
        "cilium {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A local cluster that is removed when the guard drops, even when the test panics.
pub struct LocalCluster {
    pub name: String,
}

impl LocalCluster {
    pub fn up(name: &str, pod_cidr: &str) -> Self {
        Self::up_with(name, pod_cidr, &[])
    }

    /// `up` with more `cilium local up` flags.
    pub fn up_with(name: &str, pod_cidr: &str, flags: &[&str]) -> Self {
        // A leftover of an interrupted earlier run goes first.
        let _ = cilium(&["local", "down", "--name", name]);
        let c = LocalCluster {
            name: name.to_string(),
        };
        let mut args = vec!["local", "up", "--name", name, "--pod-cidr", pod_cidr];
        args.extend_from_slice(flags);
        ok(&args);
        c
    }

    pub fn dir(&self) -> PathBuf {
        Path::new("/var/run/cilium-local").join(&self.name)
    }

    pub fn socket(&self) -> String {
        self.dir()
            .join("nodes/node1/cilium.sock")
            .display()
            .to_string()
    }

    pub fn node_netns(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/cilium-{}.node1", self.name))
    }

    pub fn pod_netns(&self, pod: &str) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/cilium-{}.pod-{pod}", self.name))
    }

    pub fn bpf_root(&self) -> String {
        format!("/sys/fs/bpf/cilium-local-{}/node1", self.name)
    }

    /// Starts a detached pod running `sleep infinity`; returns its IPv4 address.
    pub fn pod(&self, name: &str) -> String {
        let out = ok(&[
            "local",
            "run",
            "--cluster",
            &self.name,
            "--name",
            name,
            "-d",
            "--",
            "sleep",
            "infinity",
        ]);
        out.trim()
            .rsplit(' ')
            .next()
            .expect("pod IP in output")
            .to_string()
    }

    /// Runs a command in a pod; returns its output.
    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["local", "exec", "--cluster", &self.name, pod, "--"];
        args.extend_from_slice(cmd);
        cilium(&args)
    }

    pub fn ping(&self, pod: &str, dst: &str) -> bool {
        self.exec(pod, &["ping", "-c", "1", "-W", "2", dst])
            .status
            .success()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let socket = self.socket();
        let mut a = vec!["-H", socket.as_str()];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&ok(&a)).expect("JSON output")
    }

    /// Packets counted in the metrics map for a reason and direction.
    pub fn metric(&self, reason: u64, direction: &str) -> u64 {
        let root = self.bpf_root();
        let out = ok(&["bpf", "metrics", "list", "--bpf-root", &root, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == reason && e["direction"] == direction)
            .map(|e| e["packets"].as_u64().unwrap())
            .sum()
    }

    /// Runs `cilium local apply -f -` with `yaml` on stdin.
    pub fn apply(&self, yaml: &str) -> Output {
        self.local_stdin("apply", yaml)
    }

    /// Applies and waits until the agent has the new revision.
    pub fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.settle();
    }

    /// Deletes the objects in `yaml` and waits for the agent.
    pub fn delete_ok(&self, yaml: &str) {
        let out = self.local_stdin("delete", yaml);
        assert!(
            out.status.success(),
            "delete failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.settle();
    }

    fn local_stdin(&self, verb: &str, yaml: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .args(["local", verb, "--cluster", &self.name, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the cilium binary");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("writing stdin");
        child.wait_with_output().expect("waiting for cilium")
    }

    /// Waits until the agent has applied the store's current revision. The store is
    /// re-read each time: the agent's own writes (its endpoints, published for other
    /// nodes) move the revision on after a change.
    pub fn settle(&self) {
        let start = std::time::Instant::now();
        let mut last = (0, serde_json::Value::Null);
        while start.elapsed() < std::time::Duration::from_secs(10) {
            // The agent's revision first, then the store's: caught up only when what the
            // agent applied is at least what the store holds after it answered.
            let have = self.json(&["status"])["policy_revision"].clone();
            let want: u64 = std::fs::read_to_string(self.dir().join("store/generation"))
                .unwrap_or_default()
                .trim()
                .parse()
                .unwrap_or(0);
            if have.as_u64().is_some_and(|h| h >= want) {
                return;
            }
            last = (want, have);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "agent did not reach store revision {} (it reports {})",
            last.0, last.1
        );
    }

    /// Starts a detached pod with labels (k=v,...), optionally on a given node; returns its IPv4.
    pub fn run_pod(&self, node: Option<&str>, name: &str, labels: &str) -> String {
        let mut args = vec![
            "local",
            "run",
            "--cluster",
            &self.name,
            "--name",
            name,
            "--labels",
            labels,
        ];
        if let Some(n) = node {
            args.extend_from_slice(&["--node", n]);
        }
        args.extend_from_slice(&["-d", "--", "sleep", "infinity"]);
        ok(&args)
            .trim()
            .rsplit(' ')
            .next()
            .expect("pod IP in output")
            .to_string()
    }

    /// TCP connect from a pod: true when connected, false when it timed out (dropped);
    /// any other error (refused: nothing was dropped) fails the test.
    pub fn tcp(&self, from: &str, ip: &str, port: u16) -> bool {
        let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().expect("address");
        in_ns(
            &self.pod_netns(from),
            || match std::net::TcpStream::connect_timeout(
                &addr,
                std::time::Duration::from_millis(700),
            ) {
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => false,
                Err(e) => panic!(
                    "connect {from} -> {addr}: unexpected {e} (refused means no drop happened)"
                ),
            },
        )
    }

    /// Names of the links in the node's namespace.
    pub fn node_links(&self) -> Vec<String> {
        links_in(&self.node_netns())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let out = cilium(&["local", "down", "--name", &self.name]);
        if !out.status.success() {
            eprintln!(
                "local down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Link names inside a namespace.
pub fn links_in(ns: &Path) -> Vec<String> {
    cilium::datapath::netns::block_on_in_netns(ns, || async {
        let nl = cilium::datapath::link::Netlink::connect().unwrap();
        nl.links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect::<Vec<_>>()
    })
    .expect("entering namespace")
}

/// Runs `f` inside a namespace (sockets it opens stay there).
pub fn in_ns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    cilium::datapath::netns::in_netns(ns, f).expect("entering namespace")
}
