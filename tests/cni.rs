//! Privileged: the CNI plugin exec'd the way a runtime does (argv[0] cilium-cni,
//! CNI_* variables, config on stdin, in the node's namespace), every spec version,
//! idempotent DEL, and bad input that must change nothing.
mod common;

use std::{
    io::Write,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
};

use common::*;
use serde_json::{json, Value};

struct Cni<'a> {
    c: &'a LocalCluster,
    socket: String,
}

impl<'a> Cni<'a> {
    fn new(c: &'a LocalCluster) -> Self {
        Self {
            c,
            socket: c.socket(),
        }
    }

    fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "cilium", "type": "cilium-cni", "agentSocket": self.socket})
    }

    /// Runs the plugin; returns (success, parsed stdout or Null).
    fn call(&self, command: &str, container: &str, netns: &str, stdin: &[u8]) -> (bool, Value) {
        let node_ns = std::fs::File::open(self.c.node_netns()).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg0("cilium-cni")
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !netns.is_empty() || command == "DEL" {
            cmd.env("CNI_NETNS", netns);
        }
        cilium::datapath::netns::enter_on_exec(&mut cmd, &node_ns);
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), v)
    }

    fn add(&self, version: &str, container: &str, netns: &str) -> (bool, Value) {
        self.call(
            "ADD",
            container,
            netns,
            self.conf(version).to_string().as_bytes(),
        )
    }

    fn del(&self, container: &str, netns: &str) -> (bool, Value) {
        self.call(
            "DEL",
            container,
            netns,
            self.conf("1.1.0").to_string().as_bytes(),
        )
    }

    fn netns(&self, name: &str) -> String {
        let path = self.c.pod_netns(name);
        let st = Command::new("ip")
            .args(["netns", "add", path.file_name().unwrap().to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        path.display().to_string()
    }

    fn ipam_used(&self) -> u64 {
        self.c.json(&["status"])["ipam_used"].as_u64().unwrap()
    }

    fn lxc_links(&self) -> Vec<String> {
        self.c
            .node_links()
            .into_iter()
            .filter(|l| l.starts_with("lxc") || l.starts_with("tmp"))
            .collect()
    }
}

#[test]
fn add_answers_in_each_spec_version_and_del_is_idempotent() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-cni", "10.220.0.0/24");
    let cni = Cni::new(&c);
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let ns = cni.netns(&format!("v{i}"));
        let ctr = format!("ctr-{i}");
        let (ok_, res) = cni.add(version, &ctr, &ns);
        assert!(ok_, "ADD {version}: {res}");
        assert_eq!(res["cniVersion"], *version);
        let ip = &res["ips"][0];
        assert!(ip["address"].as_str().unwrap().ends_with("/32"), "{res}");
        assert_eq!(ip["gateway"], "10.220.0.1");
        assert_eq!(
            ip.get("version").is_some(),
            version.starts_with("0."),
            "ips[].version only before 1.0.0: {res}"
        );
        assert_eq!(res["interfaces"][1]["sandbox"], ns.as_str());
        assert!(res["interfaces"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("lxc"));

        // CHECK with the result as prevResult passes.
        let mut conf = cni.conf(version);
        conf["prevResult"] = res.clone();
        let (checked, out) = cni.call("CHECK", &ctr, &ns, conf.to_string().as_bytes());
        assert!(checked, "CHECK {version}: {out}");
    }
    assert_eq!(cni.ipam_used(), 4);
    let eps = c.json(&["endpoint", "list"]);
    assert_eq!(eps.as_array().unwrap().len(), 4);
    assert_eq!(eps[0]["k8s_pod_name"], "p");

    // DEL twice, DEL with an empty CNI_NETNS, DEL of an unknown container: all succeed.
    let ns0 = c.pod_netns("v0").display().to_string();
    assert!(cni.del("ctr-0", &ns0).0);
    assert!(cni.del("ctr-0", &ns0).0, "second DEL succeeds");
    assert!(cni.del("ctr-1", "").0, "DEL with empty CNI_NETNS succeeds");
    assert!(cni.del("never-added", "/var/run/netns/does-not-exist").0);
    assert_eq!(cni.ipam_used(), 2, "DEL released the addresses");
    assert_eq!(
        cni.lxc_links().len(),
        2,
        "DEL removed the links: {:?}",
        cni.lxc_links()
    );

    // A released address is handed out again.
    let ns = cni.netns("again");
    let (ok_, res) = cni.add("1.0.0", "ctr-again", &ns);
    assert!(ok_, "{res}");
    assert_eq!(res["ips"][0]["address"], "10.220.0.2/32");

    // CHECK of an unknown container: code 3.
    let (checked, err) = cni.call(
        "CHECK",
        "unknown",
        &ns,
        cni.conf("1.1.0").to_string().as_bytes(),
    );
    assert!(!checked);
    assert_eq!(err["code"], 3, "{err}");

    // GC keeps the valid attachments and removes the rest.
    let mut conf = cni.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-again", "ifname": "eth0"}]);
    let (gc_ok, out) = cni.call("GC", "", "", conf.to_string().as_bytes());
    assert!(gc_ok, "GC: {out}");
    assert_eq!(cni.ipam_used(), 1);
    assert_eq!(
        cni.lxc_links().len(),
        1,
        "GC removed stale links: {:?}",
        cni.lxc_links()
    );

    // STATUS: agent up -> success.
    assert!(
        cni.call("STATUS", "", "", cni.conf("1.1.0").to_string().as_bytes())
            .0
    );
}

#[test]
fn bad_input_gets_spec_errors_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-cnibad", "10.221.0.0/29");
    let cni = Cni::new(&c);
    let ns = cni.netns("x");
    let used = cni.ipam_used();
    let links = cni.lxc_links();

    let (ok_, err) = cni.call("ADD", "c1", &ns, b"{\"cniVersion\": \"1.0.0\", ");
    assert!(!ok_);
    assert_eq!(err["code"], 6, "malformed JSON: {err}");

    let (ok_, err) = cni.add("0.2.0", "c1", &ns);
    assert!(!ok_);
    assert_eq!(err["code"], 1, "unknown cniVersion: {err}");
    assert!(
        err["msg"].as_str().unwrap().contains("1.1.0"),
        "lists supported versions: {err}"
    );

    let (ok_, err) = cni.add("1.0.0", "c1", "");
    assert!(!ok_);
    assert_eq!(err["code"], 4, "missing CNI_NETNS: {err}");
    assert!(err["msg"].as_str().unwrap().contains("CNI_NETNS"), "{err}");

    let (ok_, err) = cni.add("1.0.0", "c1", "/var/run/netns/no-such-namespace");
    assert!(!ok_);
    assert_eq!(err["code"], 4, "nonexistent netns: {err}");

    let mut conf = cni.conf("1.0.0");
    conf["agentSocket"] = json!("/var/run/cilium-local/t-cnibad/nowhere.sock");
    let (ok_, err) = cni.call("ADD", "c1", &ns, conf.to_string().as_bytes());
    assert!(!ok_);
    assert_eq!(err["code"], 100, "agent not running: {err}");
    assert!(
        err["msg"].as_str().unwrap().contains("cilium local up"),
        "says what to do: {err}"
    );
    let (ok_, err) = cni.call("STATUS", "", "", conf.to_string().as_bytes());
    assert!(!ok_);
    assert_eq!(err["code"], 50, "STATUS with the agent down: {err}");

    assert_eq!(cni.ipam_used(), used, "no address leaked");
    assert_eq!(cni.lxc_links(), links, "no link left behind");

    // A /29 has 5 pod addresses (.1 is the router): the 6th ADD fails cleanly.
    for i in 0..5 {
        let ns = cni.netns(&format!("full{i}"));
        let (ok_, res) = cni.add("1.0.0", &format!("full-{i}"), &ns);
        assert!(ok_, "{res}");
    }
    let links = cni.lxc_links();
    let ns = cni.netns("overflow");
    let (ok_, err) = cni.add("1.0.0", "overflow", &ns);
    assert!(!ok_);
    assert_eq!(err["code"], 101, "pool exhausted: {err}");
    assert!(err["msg"].as_str().unwrap().contains("exhausted"), "{err}");
    assert_eq!(
        cni.lxc_links(),
        links,
        "no orphan link after the failed ADD"
    );
    assert_eq!(cni.ipam_used(), 5);
}

#[test]
fn version_is_answered_for_any_runtime() {
    let out = Command::new(BIN)
        .arg0("cilium-cni")
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin
                .take()
                .unwrap()
                .write_all(br#"{"cniVersion":"0.4.0"}"#)?;
            ch.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "0.4.0");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    for want in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&want), "{supported:?}");
    }
}
