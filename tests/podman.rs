//! Privileged, real client: podman (CNI backend, runc, --rootfs of busybox-static)
//! runs containers on the project's CNI configuration inside a local cluster node.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::*;

struct Podman {
    dir: PathBuf,
    node_netns: PathBuf,
}

impl Podman {
    fn new(c: &LocalCluster) -> Self {
        let dir = std::env::temp_dir().join(format!("cilium-podman-{}", c.name));
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("busybox-static is installed (install/deps.sh)");
        for tool in ["sh", "ping", "sleep", "ip", "nc"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
        }
        let cni = c.dir().join("cni");
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\ndefault_network = \"cilium\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n",
                cni.join("bin").display(),
                cni.join("net.d").display()
            ),
        )
        .unwrap();
        Podman {
            dir,
            node_netns: c.node_netns(),
        }
    }

    /// podman, run in the node's namespace (the runtime's host), with its own storage.
    fn run(&self, args: &[&str]) -> Output {
        let ns = std::fs::File::open(&self.node_netns).unwrap();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(args);
        cilium::datapath::netns::enter_on_exec(&mut cmd, &ns);
        cmd.output().expect("podman is installed (install/deps.sh)")
    }

    fn rootfs(&self) -> String {
        self.dir.join("rootfs").display().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let storage = self.dir.join("storage");
        // Overlay mounts of podman's storage must go before the directory can.
        let _ = self.run(&["system", "reset", "-f"]);
        let _ = Command::new("umount").arg("-R").arg(&storage).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn endpoint_ip(c: &LocalCluster, pod: &str) -> Option<String> {
    c.json(&["endpoint", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["k8s_pod_name"] == pod)
        .map(|e| e["ipv4"].as_str().unwrap().to_string())
}

#[test]
fn podman_containers_get_network_and_reach_each_other() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-podman", "10.230.0.0/24");
    let p = Podman::new(&c);
    let rootfs = p.rootfs();

    // web answers "hi from web" on TCP 8080, one connection at a time, forever.
    let out = p.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8081:8080",
        "--rootfs",
        &rootfs,
        "sh",
        "-c",
        "while true; do echo hi from web | nc -l -p 8080; done",
    ]);
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let web_ip = endpoint_ip(&c, "web")
        .expect("podman's ADD registered an endpoint named after the container");
    assert!(
        web_ip.starts_with("10.230.0."),
        "got our address, not podman's fallback bridge: {web_ip}"
    );

    // A second container pings the first, and shows an address of ours on eth0.
    let script = format!("ip -4 addr show eth0 && ping -c 2 -W 2 {web_ip}");
    let out = p.run(&[
        "run", "--rm", "--name", "client", "--rootfs", &rootfs, "sh", "-c", &script,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client -> web: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("inet 10.230.0."), "{stdout}");
    assert!(stdout.contains("2 packets received"), "{stdout}");

    // A ClusterIP in front of web: containers are not in the cluster's cgroup, so the
    // per-packet (tc) load balancer in bpf_lxc translates their connection.
    c.apply_ok(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: 10.96.3.10\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n- addresses: [{web_ip}]\n"
    ));
    let out = p.run(&[
        "run",
        "--rm",
        "--name",
        "client2",
        "--rootfs",
        &rootfs,
        "sh",
        "-c",
        "nc 10.96.3.10 80 </dev/null",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hi from web"),
        "container -> ClusterIP: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The HostPort (podman -p 8081:8080, passed as runtimeConfig.portMappings) answers
    // on the node's address from the "outside" namespace.
    let outside = std::path::PathBuf::from(format!("/var/run/netns/cilium-{}.outside", c.name));
    let r = in_ns(&outside, || {
        cilium::cmd::probe::tcp("203.0.113.1:8081", None, std::time::Duration::from_secs(2))
            .unwrap()
    });
    assert!(
        r.response
            .as_deref()
            .unwrap_or_default()
            .contains("hi from web"),
        "HostPort from outside: {r:?}"
    );

    // --rm triggered DEL for the client; rm -f triggers DEL for web: every address is released.
    let out = p.run(&["rm", "-f", "-t", "0", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = c.json(&["status"]);
    assert_eq!(st["ipam_used"], 0, "podman rm released the addresses: {st}");
    assert_eq!(st["endpoints"], 0);
    let svcs = c.json(&["service", "list"]).to_string();
    assert!(
        !svcs.contains("cilium-hostport"),
        "the HostPort left with its pod: {svcs}"
    );
    assert!(
        !c.node_links().iter().any(|l| l.starts_with("lxc")),
        "no pod links left: {:?}",
        c.node_links()
    );
    assert!(Path::new(&rootfs).exists());
}
