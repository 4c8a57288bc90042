//! Privileged: `cilium connectivity test` against a two-node local cluster passes
//! every scenario (tunnel and native routing), honours --test filters and --single-node, writes JUnit, and
//! fails (non-zero) when the datapath breaks an expectation; `up` twice is refused and `down`
//! after the suite leaves nothing on the host.
mod common;

use common::*;

#[test]
fn connectivity_test_passes_on_a_two_node_cluster() {
    if !privileged() {
        return;
    }
    let _ = cilium(&["local", "down", "--name", "t-conn"]);
    let c = LocalCluster {
        name: "t-conn".into(),
    };
    ok(&[
        "local",
        "up",
        "--name",
        "t-conn",
        "--nodes",
        "2",
        "--pod-cidr",
        "10.228.0.0/16",
    ]);
    let junit = std::env::temp_dir().join("cilium-t-conn-junit.xml");
    let out = ok(&[
        "connectivity",
        "test",
        "--cluster",
        "t-conn",
        "--junit-file",
        junit.to_str().unwrap(),
    ]);
    assert!(
        out.contains("All 18 tests (60 actions) successful, 0 tests skipped"),
        "{out}"
    );
    for action in [
        "pod-to-pod (other node)",
        "pod-to-hostport",
        "pod-to-remote-nodeport",
        "outside-to-nodeport (backend on other node)",
        "client denied (other node)",
    ] {
        assert!(out.contains(&format!("✅ {action}")), "{action}: {out}");
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("failures=\"0\"") && xml.contains("testcase name=\"all-egress-deny\""),
        "{xml}"
    );
    let _ = std::fs::remove_file(&junit);

    // Filters as cilium-cli: regexes, ! excludes; --single-node skips the other-node test.
    let out = ok(&[
        "connectivity",
        "test",
        "--cluster",
        "t-conn",
        "--test",
        "no-policies",
        "--test",
        "!extra",
        "--single-node",
    ]);
    assert!(
        out.contains("All 2 tests"),
        "only no-policies and the drop check ran: {out}"
    );
    assert!(!out.contains("[no-policies-other-node]"), "{out}");

    // A policy the suite does not expect breaks an expectation: non-zero exit and the drops are shown.
    let block = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: block-echo}\nspec:\n  endpointSelector: {matchLabels: {kind: echo}}\n  ingressDeny:\n  - fromEntities: [all]\n";
    c.apply_ok(block);
    let out = cilium(&[
        "connectivity",
        "test",
        "--cluster",
        "t-conn",
        "--test",
        "^no-policies$",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("1/2 tests failed"), "{stdout}");
    assert!(
        stdout.contains("Policy denied by denylist"),
        "the drops that explain it: {stdout}"
    );
    assert!(
        c.json(&["endpoint", "list"]).as_array().unwrap().is_empty(),
        "workloads cleaned up"
    );

    c.delete_ok(block);

    // `up` of a cluster that is up is refused and leaves it as it was.
    let again = cilium(&[
        "local",
        "up",
        "--name",
        "t-conn",
        "--nodes",
        "2",
        "--pod-cidr",
        "10.228.0.0/16",
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("is already up") && err.contains("cilium local down --name t-conn"),
        "{err}"
    );
    let out = ok(&[
        "connectivity",
        "test",
        "--cluster",
        "t-conn",
        "--test",
        "^no-policies-other-node$",
    ]);
    assert!(
        out.contains("All 2 tests"),
        "still a working cluster: {out}"
    );

    // After a full suite, `down` leaves nothing of the cluster on the host.
    let up = leftovers("t-conn");
    for what in [
        "netns ",
        "/sys/fs/bpf/",
        "/var/run/cilium-local/",
        "cgroup ",
        "process ",
    ] {
        assert!(
            up.iter().any(|l| l.starts_with(what)),
            "{what} of a running cluster is seen: {up:?}"
        );
    }
    ok(&["local", "down", "--name", "t-conn"]);
    assert_eq!(leftovers("t-conn"), Vec::<String>::new());
}

/// What of local cluster `name` is on the host: namespaces, pins, state, cgroups,
/// processes whose command line names it.
fn leftovers(name: &str) -> Vec<String> {
    let tag = format!("cilium-{name}.");
    let mut found = Vec::new();
    let entries = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for n in entries("/var/run/netns") {
        if n.starts_with(&tag) {
            found.push(format!("netns {n}"));
        }
    }
    for p in [
        format!("/sys/fs/bpf/cilium-local-{name}"),
        format!("/var/run/cilium-local/{name}"),
    ] {
        if std::path::Path::new(&p).exists() {
            found.push(p);
        }
    }
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        for n in entries(root) {
            if n.starts_with(&tag) {
                found.push(format!("cgroup {root}/{n}"));
            }
        }
    }
    for pid in entries("/proc") {
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&format!("/cilium-local/{name}/")) || cmd.contains(&tag) {
            found.push(format!("process {pid}: {cmd}"));
        }
    }
    found
}

#[test]
fn connectivity_test_passes_with_native_routing() {
    if !privileged() {
        return;
    }
    let _ = cilium(&["local", "down", "--name", "t-conn-native"]);
    let _c = LocalCluster {
        name: "t-conn-native".into(),
    };
    ok(&[
        "local",
        "up",
        "--name",
        "t-conn-native",
        "--nodes",
        "2",
        "--pod-cidr",
        "10.230.0.0/16",
        "--routing",
        "native",
    ]);
    let out = ok(&[
        "connectivity",
        "test",
        "--cluster",
        "t-conn-native",
        "--test-concurrency",
        "4",
    ]);
    assert!(
        out.contains("All 18 tests (60 actions) successful, 0 tests skipped"),
        "{out}"
    );
}

#[test]
fn connectivity_perf_prints_rates_for_both_pairs_with_and_without_policy() {
    if !privileged() {
        return;
    }
    let _ = cilium(&["local", "down", "--name", "t-perf"]);
    let _c = LocalCluster {
        name: "t-perf".into(),
    };
    ok(&[
        "local",
        "up",
        "--name",
        "t-perf",
        "--nodes",
        "2",
        "--pod-cidr",
        "10.229.0.0/16",
    ]);
    let out = ok(&[
        "connectivity",
        "perf",
        "--cluster",
        "t-perf",
        "--duration",
        "1",
    ]);
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("Gb/s")).collect();
    assert_eq!(
        rows.len(),
        6,
        "two baselines, then same/other node × no policy/L4 policy: {out}"
    );
    assert!(
        rows[0].starts_with("bare veth") && rows[1].starts_with("underlay"),
        "{out}"
    );
    assert!(
        rows[2..].iter().all(|r| {
            let w: Vec<&str> = r.split_whitespace().collect();
            let at = w.iter().position(|x| *x == "Gb/s").unwrap();
            w[at + 1].parse::<f64>().is_ok()
        }),
        "every pair has a throughput ratio to its baseline: {out}"
    );
    for r in rows {
        let words: Vec<&str> = r.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "Gb/s").unwrap();
        assert!(
            !std::path::Path::new("/var/run/netns/cilium-t-perf.perf-a").exists(),
            "baseline namespaces removed"
        );
        let gbps: f64 = words[at - 1].parse().unwrap();
        assert!(gbps > 0.1, "a real stream went through: {r}");
    }
}
