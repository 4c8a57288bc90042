//! `cilium migrate kube-proxy`: parse the flags, show the plan, ask, run with progress
//! (bars per node on a terminal, lines otherwise); Ctrl-C stops with the way to resume.
use std::{
    collections::BTreeMap,
    io::{BufRead, IsTerminal, Write},
    sync::Mutex,
    time::Duration,
};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::install::KubeArgs;
use crate::k8s::{
    cluster,
    migrate::{
        model::NodeState, Action, Lines, Migrator, Options, Prepared, Report, Selection, Summary,
    },
};

#[derive(Debug, Subcommand)]
pub enum MigrateCmd {
    /// Move the cluster from kube-proxy to Cilium's kube-proxy replacement node by node
    /// (cordon, label, kube-proxy leaves, agent restarted, verified, uncordon), recorded on
    /// the cluster: --resume continues an interrupted run, --rollback restores kube-proxy
    KubeProxy(KubeProxyArgs),
}

#[derive(Debug, Args)]
pub struct KubeProxyArgs {
    /// Nodes to migrate, in this order (comma-separated)
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NODE,...",
        conflicts_with = "all"
    )]
    nodes: Vec<String>,
    /// Migrate every node (by name)
    #[arg(long)]
    all: bool,
    /// Print the preflight result and the plan, change nothing
    #[arg(long)]
    dry_run: bool,
    /// Continue the recorded migration (after an interruption or a failed verification)
    #[arg(long, conflicts_with_all = ["nodes", "all", "rollback"])]
    resume: bool,
    /// Restore kube-proxy on the migrated nodes, last migrated first
    #[arg(long, conflicts_with_all = ["nodes", "all"])]
    rollback: bool,
    /// Do not ask for confirmation
    #[arg(short = 'y', long)]
    yes: bool,
    /// Nodes migrated at the same time
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    max_unavailable: u16,
    /// Limit of each wait (kube-proxy leaving a node, the agent Ready, verification)
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    timeout: Duration,
    /// Namespace Cilium runs in
    #[arg(short = 'n', long, default_value = "kube-system")]
    namespace: String,
    /// Name of the kube-proxy DaemonSet (and of its ConfigMap)
    #[arg(long, default_value = "kube-proxy")]
    kube_proxy_name: String,
    /// Namespace of the kube-proxy DaemonSet
    #[arg(long, default_value = "kube-system")]
    kube_proxy_namespace: String,
    /// At the end, also delete kube-proxy's ConfigMap
    #[arg(long)]
    delete_kube_proxy_config: bool,
    #[command(flatten)]
    kube: KubeArgs,
}

impl KubeProxyArgs {
    fn options(&self) -> Result<Options> {
        let (action, nodes) = match (self.resume, self.rollback) {
            (true, _) => (Action::Resume, Selection::Recorded),
            (_, true) => (Action::Rollback, Selection::Recorded),
            _ if self.all => (Action::Migrate, Selection::All),
            _ if !self.nodes.is_empty() => {
                let mut names: Vec<String> = Vec::new();
                for n in &self.nodes {
                    let n = n.trim();
                    if n.is_empty() {
                        bail!("--nodes has an empty name; give node names separated by commas");
                    }
                    if !names.iter().any(|x| x == n) {
                        names.push(n.to_string());
                    }
                }
                (Action::Migrate, Selection::Names(names))
            }
            _ => bail!(
                "say which nodes to migrate: --nodes NODE,... or --all (or --resume / \
                 --rollback for a recorded migration)"
            ),
        };
        Ok(Options {
            namespace: self.namespace.clone(),
            kube_proxy_namespace: self.kube_proxy_namespace.clone(),
            kube_proxy_name: self.kube_proxy_name.clone(),
            max_unavailable: usize::from(self.max_unavailable),
            timeout: self.timeout,
            delete_kube_proxy_config: self.delete_kube_proxy_config,
            ..Options::new(action, nodes)
        })
    }
}

pub fn run(cmd: MigrateCmd) -> Result<i32> {
    match cmd {
        MigrateCmd::KubeProxy(a) => {
            let opts = a.options()?;
            super::runtime()?.block_on(kube_proxy(&a, opts))
        }
    }
}

async fn kube_proxy(a: &KubeProxyArgs, opts: Options) -> Result<i32> {
    let (client, url) = cluster::connect(&a.kube.options()).await?;
    let m = Migrator::new(client, opts);
    let plan = match m.prepare().await {
        Ok(Prepared::Nothing(why)) => {
            println!("{why}");
            return Ok(0);
        }
        Ok(Prepared::Plan(p)) => p,
        Err(e) => bail!("{e} (API server {url})"),
    };
    print!("{plan}");
    if a.dry_run {
        println!("Dry run: nothing was changed");
        return Ok(0);
    }
    if !a.yes {
        confirm()?;
    }
    let report: Box<dyn Report> = if std::io::stderr().is_terminal() {
        Box::new(Bars::default())
    } else {
        Box::new(Lines)
    };
    let outcome = tokio::select! {
        r = m.run(&plan, report.as_ref()) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "Interrupted. Progress is recorded on the cluster: `cilium migrate kube-proxy \
                 --resume` continues, `--rollback` restores kube-proxy on the migrated nodes"
            );
            return Ok(130);
        }
    };
    let summary = outcome?;
    print_summary(&plan.action, &summary);
    Ok(0)
}

fn confirm() -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no terminal to confirm on: pass --yes to migrate without confirmation (or --dry-run)"
        );
    }
    print!("Proceed? [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

fn print_summary(action: &Action, s: &Summary) {
    for (node, took) in &s.nodes {
        println!("  {node}: {:.2}s", took.as_secs_f64());
    }
    match action {
        Action::Rollback => println!(
            "Rolled back: kube-proxy runs on {} nodes again, the migration's objects are removed",
            s.nodes.len()
        ),
        _ if s.finished => {
            println!("Migrated: Cilium replaces kube-proxy on every node; kube-proxy is removed")
        }
        _ => println!(
            "Migrated {} nodes; kube-proxy stays for {} others ({}): `cilium migrate kube-proxy \
             --all` or --nodes migrates them",
            s.nodes.len(),
            s.remaining.len(),
            s.remaining.join(", ")
        ),
    }
}

/// Progress bars, one per node, on a terminal.
#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Bars {
    fn bar(&self, node: &str) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(node.to_string())
            .or_insert_with(|| {
                let b = self
                    .multi
                    .add(ProgressBar::new(NodeState::STEPS.len() as u64));
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:<24} {bar:12} {pos}/{len} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_prefix(node.to_string());
                b.enable_steady_tick(Duration::from_millis(200));
                b
            })
            .clone()
    }
}

impl Report for Bars {
    fn line(&self, msg: &str) {
        let _ = self.multi.println(msg);
    }
    fn node_step(&self, node: &str, step: usize, msg: &str) {
        let b = self.bar(node);
        b.set_position(step as u64);
        b.set_message(msg.to_string());
    }
    fn node_end(&self, node: &str, ok: bool, msg: &str) {
        let b = self.bar(node);
        if ok {
            b.finish_with_message(msg.to_string());
        } else {
            b.abandon_with_message(format!("FAILED: {msg}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: MigrateCmd,
    }

    fn parse(args: &[&str]) -> Result<Options> {
        let t = T::try_parse_from(["t", "kube-proxy"].iter().chain(args))?;
        let MigrateCmd::KubeProxy(a) = t.cmd;
        a.options()
    }

    #[test]
    fn flags_select_the_action_and_nodes() {
        let o = parse(&["--nodes", "b,a,b", "--max-unavailable", "2"]).unwrap();
        assert_eq!(o.action, Action::Migrate);
        assert_eq!(o.nodes, Selection::Names(vec!["b".into(), "a".into()]));
        assert_eq!(o.max_unavailable, 2);
        assert_eq!(parse(&["--all"]).unwrap().nodes, Selection::All);
        assert_eq!(parse(&["--resume"]).unwrap().action, Action::Resume);
        assert_eq!(parse(&["--rollback"]).unwrap().action, Action::Rollback);
        let e = parse(&[]).unwrap_err().to_string();
        assert!(e.contains("--nodes NODE,... or --all"), "{e}");
        assert!(parse(&["--nodes", "a,,b"])
            .unwrap_err()
            .to_string()
            .contains("empty name"));
        assert!(parse(&["--all", "--nodes", "a"]).is_err());
        assert!(parse(&["--resume", "--all"]).is_err());
        assert!(parse(&["--resume", "--rollback"]).is_err());
        assert!(parse(&["--all", "--max-unavailable", "0"]).is_err());
        assert!(parse(&["--all", "--timeout", "soon"]).is_err());
    }
}
