//! kube-proxy's iptables rules on this node: counted, and removed when the agent
//! replaces kube-proxy (Cilium's migration step "the node's KUBE-* chains are gone").
//!
//! Only kube-proxy's chains go (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*, ...); the
//! chains kubelet owns (KUBE-KUBELET-CANARY, KUBE-FIREWALL) stay, since kubelet
//! recreates them and they do not translate services. The removal is one
//! `iptables-restore --noflush` transaction per table and family: rules in other
//! chains that jump to a kube-proxy chain are deleted, then the chains are flushed
//! and deleted. Connections kube-proxy already translated keep working: the kernel's
//! conntrack entries outlive the rules, and the datapath leaves such flows to it.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KubeProxyError {
    #[error("running {cmd}: {source} (is iptables installed on the node?)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

/// Fixed chain names kube-proxy's iptables mode creates.
const KUBE_PROXY_CHAINS: [&str; 8] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
];

/// Per-service/-endpoint chain prefixes kube-proxy creates.
const KUBE_PROXY_PREFIXES: [&str; 6] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-XLB-",
    "KUBE-EXT-",
];

/// Whether kube-proxy (not kubelet) owns a chain of this name.
pub fn is_kube_proxy_chain(name: &str) -> bool {
    KUBE_PROXY_CHAINS.contains(&name) || KUBE_PROXY_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Cilium's nat chains and the base chains that jump to them.
const CILIUM_NAT_CHAINS: [(&str, &str); 3] = [
    ("PREROUTING", "CILIUM_PRE_nat"),
    ("OUTPUT", "CILIUM_OUTPUT_nat"),
    ("POSTROUTING", "CILIUM_POST_nat"),
];

/// A rule that keeps connection tracking registered in the namespace (see
/// [`removal_script`]); it matches nothing it would change.
const KEEP_CONNTRACK: &str = "-A CILIUM_PRE_nat -m comment --comment \"cilium: keep conntrack for translated connections\" -m conntrack --ctstate DNAT -j RETURN";

/// The tables kube-proxy writes.
const TABLES: [&str; 3] = ["nat", "filter", "mangle"];

/// The two families, by their save/restore commands.
const FAMILIES: [(&str, &str); 2] = [
    ("iptables-save", "iptables-restore"),
    ("ip6tables-save", "ip6tables-restore"),
];

/// The kube-proxy chains in one table's `iptables-save` output.
pub fn chains_in(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| is_kube_proxy_chain(c))
        .map(str::to_string)
        .collect()
}

/// The `iptables-restore --noflush` input that removes kube-proxy's chains from one
/// table given its `iptables-save` output; None when there is nothing to remove.
pub fn removal_script(table: &str, save: &str) -> Option<String> {
    let chains = chains_in(save);
    if chains.is_empty() {
        return None;
    }
    let mut out = format!("*{table}\n");
    if table == "nat" {
        // Connections kube-proxy translated keep their NAT only while the namespace's
        // connection tracking and nat hooks stay registered. kube-proxy's DNAT rules
        // hold the conntrack reference and its jumps keep the nat base chains; when
        // they go (nf_tables backend, measured on kernel 6.18) every established
        // connection through a ClusterIP stalls. So Cilium's own nat chains are
        // hooked in, with one rule that uses conntrack, in the same transaction.
        for (base, chain) in CILIUM_NAT_CHAINS {
            if !save.lines().any(|l| l.starts_with(&format!(":{chain} "))) {
                out.push_str(&format!(":{chain} - [0:0]\n"));
            }
            let jump =
                format!("-A {base} -m comment --comment \"cilium-feeder: {chain}\" -j {chain}");
            if !save.lines().any(|l| l == jump) {
                out.push_str(&jump.replacen("-A ", "-I ", 1));
                out.push('\n');
            }
        }
        if !save.lines().any(|l| l == KEEP_CONNTRACK) {
            out.push_str(KEEP_CONNTRACK);
            out.push('\n');
        }
    }
    for line in save.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rule.split_whitespace().next().unwrap_or_default();
        if is_kube_proxy_chain(chain) {
            continue; // flushed below
        }
        let words: Vec<&str> = rule.split_whitespace().collect();
        let jumps = words.windows(2).any(|w| {
            matches!(w[0], "-j" | "--jump" | "-g" | "--goto") && is_kube_proxy_chain(w[1])
        });
        if jumps {
            out.push_str(&format!("-D {rule}\n"));
        }
    }
    for c in &chains {
        out.push_str(&format!("-F {c}\n"));
    }
    for c in &chains {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// The host's mount namespace as the agent's DaemonSet mounts it (hostPath /proc at
/// /hostproc, as Cilium's init containers use it): the image holds only our binary, so
/// iptables runs from the host's filesystem (in the node's network namespace, which the
/// agent shares).
pub const HOST_MOUNT_NS: &str = "/hostproc/1/ns/mnt";

/// Whether a program is on this process's PATH.
fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// A command for an iptables program: from PATH when it is there, else run in the
/// mount namespace `host_mnt` (the host's) when that exists.
pub fn iptables_command(cmd: &str, host_mnt: &std::path::Path) -> Command {
    if !on_path(cmd) && host_mnt.exists() {
        command_in_mount_ns(cmd, host_mnt)
    } else {
        Command::new(cmd)
    }
}

/// A command that runs in the mount namespace `mnt` (a /proc/PID/ns/mnt file): the
/// program and its files come from that namespace's filesystem.
pub fn command_in_mount_ns(cmd: &str, mnt: &std::path::Path) -> Command {
    let mut c = Command::new(cmd);
    if let Ok(ns) = std::fs::File::open(mnt) {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only setns(2) runs (async-signal-safe); the
        // file is owned by the closure, open until the command is dropped.
        unsafe {
            c.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)
            });
        }
    }
    c
}

fn save(cmd: &str, table: &str) -> Result<Option<String>, KubeProxyError> {
    let out = match iptables_command(cmd, std::path::Path::new(HOST_MOUNT_NS))
        .args(["-t", table])
        .output()
    {
        Ok(o) => o,
        // ip6tables may be absent where iptables is present.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && cmd.starts_with("ip6") => {
            return Ok(None)
        }
        Err(source) => {
            return Err(KubeProxyError::Spawn {
                cmd: cmd.into(),
                source,
            })
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // A family or table the kernel does not have holds no kube-proxy rules.
        if stderr.contains("not exist") || stderr.contains("not supported") {
            return Ok(None);
        }
        return Err(KubeProxyError::Failed {
            cmd: format!("{cmd} -t {table}"),
            stderr,
        });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// What one pass over the node's iptables found and did.
#[derive(Debug, Default)]
pub struct Chains {
    /// kube-proxy chains removed by this pass.
    pub removed: usize,
    /// kube-proxy chains left (kept, or their removal failed).
    pub remaining: usize,
    /// The first removal that failed (its table's chains count as remaining).
    pub failed: Option<KubeProxyError>,
}

/// Reads each table of both families once, counts kube-proxy's chains and, with
/// `remove`, removes them and the rules jumping to them (one transaction per table).
/// An error means iptables could not be read at all.
pub fn sync(remove: bool) -> Result<Chains, KubeProxyError> {
    let mut out = Chains::default();
    for (save_cmd, restore_cmd) in FAMILIES {
        for table in TABLES {
            let Some(s) = save(save_cmd, table)? else {
                continue;
            };
            let n = chains_in(&s).len();
            let script = if remove {
                removal_script(table, &s)
            } else {
                None
            };
            match script.map(|script| restore(restore_cmd, table, &script)) {
                Some(Ok(())) => out.removed += n,
                Some(Err(e)) => {
                    out.remaining += n;
                    out.failed.get_or_insert(e);
                }
                None => out.remaining += n,
            }
        }
    }
    Ok(out)
}

/// Feeds `script` to `iptables-restore --noflush` (or ip6tables-restore).
fn restore(restore_cmd: &str, table: &str, script: &str) -> Result<(), KubeProxyError> {
    let mut child = iptables_command(restore_cmd, std::path::Path::new(HOST_MOUNT_NS))
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| KubeProxyError::Spawn {
            cmd: restore_cmd.into(),
            source,
        })?;
    let written = child
        .stdin
        .take()
        .map(|mut i| i.write_all(script.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|source| KubeProxyError::Spawn {
            cmd: restore_cmd.into(),
            source,
        })?;
    if !out.status.success() || !matches!(written, Some(Ok(()))) {
        return Err(KubeProxyError::Failed {
            cmd: format!("{restore_cmd} --noflush (table {table})"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAT: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-ABC - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XYZ - [0:0]
:OTHER - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE
-A OTHER -j KUBE-KUBELET-CANARY
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-ABC -p tcp -m tcp -j DNAT --to-destination 10.0.0.5:8080
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-XYZ
-A KUBE-SVC-XYZ -j KUBE-SEP-ABC
COMMIT
"#;

    #[test]
    fn kube_proxy_chains_are_told_from_kubelets() {
        assert!(is_kube_proxy_chain("KUBE-SERVICES"));
        assert!(is_kube_proxy_chain("KUBE-SVC-4N57TFCL4MD7ZTDA"));
        assert!(is_kube_proxy_chain("KUBE-SEP-ABC"));
        assert!(!is_kube_proxy_chain("KUBE-KUBELET-CANARY"));
        assert!(!is_kube_proxy_chain("KUBE-FIREWALL"));
        assert!(!is_kube_proxy_chain("CILIUM_POST_nat"));
        assert_eq!(
            chains_in(NAT),
            [
                "KUBE-MARK-MASQ",
                "KUBE-NODEPORTS",
                "KUBE-POSTROUTING",
                "KUBE-SEP-ABC",
                "KUBE-SERVICES",
                "KUBE-SVC-XYZ"
            ]
        );
    }

    #[test]
    fn removal_deletes_jumps_then_flushes_and_deletes_the_chains() {
        let script = removal_script("nat", NAT).unwrap();
        assert_eq!(
            script,
            "*nat\n\
             :CILIUM_PRE_nat - [0:0]\n\
             -I PREROUTING -m comment --comment \"cilium-feeder: CILIUM_PRE_nat\" -j CILIUM_PRE_nat\n\
             :CILIUM_OUTPUT_nat - [0:0]\n\
             -I OUTPUT -m comment --comment \"cilium-feeder: CILIUM_OUTPUT_nat\" -j CILIUM_OUTPUT_nat\n\
             :CILIUM_POST_nat - [0:0]\n\
             -I POSTROUTING -m comment --comment \"cilium-feeder: CILIUM_POST_nat\" -j CILIUM_POST_nat\n\
             -A CILIUM_PRE_nat -m comment --comment \"cilium: keep conntrack for translated connections\" -m conntrack --ctstate DNAT -j RETURN\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -D POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             -F KUBE-MARK-MASQ\n-F KUBE-NODEPORTS\n-F KUBE-POSTROUTING\n-F KUBE-SEP-ABC\n\
             -F KUBE-SERVICES\n-F KUBE-SVC-XYZ\n\
             -X KUBE-MARK-MASQ\n-X KUBE-NODEPORTS\n-X KUBE-POSTROUTING\n-X KUBE-SEP-ABC\n\
             -X KUBE-SERVICES\n-X KUBE-SVC-XYZ\n\
             COMMIT\n"
        );
        // Kubelet's chain, the jump to it and unrelated rules are untouched.
        assert!(!script.contains("CANARY") && !script.contains("MASQUERADE"));
        // Once there, Cilium's chains and rules are not added again.
        let after = format!(
            "{}{}",
            NAT.replace("COMMIT\n", ""),
            ":CILIUM_PRE_nat - [0:0]\n:CILIUM_OUTPUT_nat - [0:0]\n:CILIUM_POST_nat - [0:0]\n\
             -A PREROUTING -m comment --comment \"cilium-feeder: CILIUM_PRE_nat\" -j CILIUM_PRE_nat\n\
             -A OUTPUT -m comment --comment \"cilium-feeder: CILIUM_OUTPUT_nat\" -j CILIUM_OUTPUT_nat\n\
             -A POSTROUTING -m comment --comment \"cilium-feeder: CILIUM_POST_nat\" -j CILIUM_POST_nat\n\
             -A CILIUM_PRE_nat -m comment --comment \"cilium: keep conntrack for translated connections\" -m conntrack --ctstate DNAT -j RETURN\nCOMMIT\n"
        );
        let again = removal_script("nat", &after).unwrap();
        assert!(!again.contains("CILIUM"), "{again}");
    }

    #[test]
    fn nothing_to_remove_is_no_script() {
        assert_eq!(
            removal_script(
                "filter",
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"
            ),
            None
        );
    }
}
