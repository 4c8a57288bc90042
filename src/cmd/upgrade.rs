//! `cilium upgrade`: re-render the install with new values (over the recorded ones, or
//! the defaults with --reset-values), show what changes per object, apply it by
//! server-side apply, delete what is no longer rendered, and wait while the agents roll
//! node by node and the operator rolls.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Pod, Secret},
};
use kube::{
    api::{Api, ListParams},
    Client,
};
use serde_yaml::{Mapping, Value};

use super::install::{humanize, unreachable, why_not_ready, KubeArgs};
use crate::{
    install::{
        self,
        release::{Release, SECRET_NAME},
        render::render_documents,
        values::{merge, user_values},
        ValueSources, Values,
    },
    k8s::{
        apply::{self, ApplyError, Deleted, Object, AGENT_DAEMONSET, OPERATOR_DEPLOYMENT},
        cluster::{self, describe, status_code},
        status::AGENT_SELECTOR,
        upgrade::{self, Change, Plan, Rollout},
    },
};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Namespace Cilium was installed in
    #[arg(short = 'n', long, default_value = "kube-system")]
    namespace: String,
    /// Set values (Helm syntax: a.b=c, list[0]=x, list={a,b}; several comma-separated)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Set values, always as strings
    #[arg(long = "set-string", value_name = "KEY=VALUE")]
    set_string: Vec<String>,
    /// Values files (YAML; repeatable, later ones win; - for stdin)
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    values: Vec<PathBuf>,
    /// Merge the new values over the ones the install (or the last upgrade) recorded
    /// (the default)
    #[arg(long, conflicts_with = "reset_values")]
    reuse_values: bool,
    /// Start from the default values: the recorded ones are dropped, the new ones apply
    #[arg(long)]
    reset_values: bool,
    /// Image tag for the agent and the operator (the manifests are this binary's own)
    #[arg(long)]
    version: Option<String>,
    /// Image for the agent and the operator: repository[:tag] or repository@sha256:...
    #[arg(long, conflicts_with = "version")]
    image: Option<String>,
    /// Print the re-rendered manifests (and, on stderr, what would change), apply nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the merged values, apply nothing
    #[arg(long)]
    dry_run_helm_values: bool,
    #[command(flatten)]
    kube: KubeArgs,
    /// Wait until the agents and the operator have rolled (--wait=false: return once
    /// applied)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    wait: bool,
    /// How long --wait waits
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    wait_duration: Duration,
}

pub fn run_upgrade(a: UpgradeArgs) -> Result<i32> {
    // Files and --set syntax are checked before anything is asked of the cluster.
    let new = user_values(&ValueSources {
        files: a.values.clone(),
        version: a.version.clone(),
        image: a.image.clone(),
        set: a.set.clone(),
        set_string: a.set_string.clone(),
    })?;
    super::runtime()?.block_on(upgrade(&a, new))
}

/// The install record of `namespace`, if there is one.
pub(super) async fn read_release(client: &Client, ns: &str) -> Result<Option<Release>, ApplyError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = secrets
        .get_opt(SECRET_NAME)
        .await
        .map_err(|e| ApplyError::Api {
            op: "reading",
            object: format!("Secret {ns}/{SECRET_NAME}"),
            status: status_code(&e),
            reason: describe(&e),
        })?;
    match s {
        None => Ok(None),
        Some(s) => {
            let json = serde_json::to_value(&s).unwrap_or_default();
            Release::from_secret(&json, ns)
                .map(Some)
                .map_err(|e| ApplyError::Api {
                    op: "reading",
                    object: format!("Secret {ns}/{SECRET_NAME}"),
                    status: Some(200),
                    reason: e.to_string(),
                })
        }
    }
}

async fn upgrade(a: &UpgradeArgs, new: Value) -> Result<i32> {
    let (client, url) = cluster::connect(&a.kube.options())
        .await
        .map_err(|e| match e {
            cluster::ClusterError::NoCluster => anyhow!(
                "no cluster found: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running \
                 in a pod; pass --kubeconfig FILE (upgrade reads the installed Cilium from the \
                 cluster, with --dry-run too)"
            ),
            e => e.into(),
        })?;
    let ns = a.namespace.as_str();
    let in_ns = if ns == "kube-system" {
        String::new()
    } else {
        format!(" -n {ns}")
    };
    // Read-only until the plan is known.
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let installed = dss
        .get_opt(AGENT_DAEMONSET)
        .await
        .map_err(|e| {
            unreachable(
                ApplyError::Api {
                    op: "checking for",
                    object: format!("DaemonSet {ns}/{AGENT_DAEMONSET}"),
                    status: status_code(&e),
                    reason: describe(&e),
                },
                &url,
            )
        })?
        .is_some();
    if !installed {
        bail!(
            "Cilium is not installed in namespace {ns} of the cluster at {url} (no DaemonSet \
             {ns}/{AGENT_DAEMONSET}); install it with `cilium install{in_ns}`, or pass -n \
             with the namespace it is in"
        );
    }
    let record = match read_release(&client, ns).await {
        Ok(r) => r,
        Err(e) if a.reset_values => {
            eprintln!("warning: {e}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let user = if a.reset_values {
        eprintln!("Values: the defaults and the values given now (--reset-values)");
        new
    } else {
        let mut base = match &record {
            Some(r) => {
                eprintln!(
                    "Values: the recorded ones (Secret {ns}/{SECRET_NAME}, written by cilium {}) \
                     with the values given now over them",
                    r.version
                );
                r.values.clone()
            }
            None => {
                eprintln!(
                    "warning: no install record (Secret {ns}/{SECRET_NAME}; installed by an \
                     older cilium?): starting from the defaults and the values given now"
                );
                Value::Mapping(Mapping::new())
            }
        };
        merge(&mut base, &new);
        base
    };
    let values = Values::from_user(&user).map_err(|e| {
        let hint = if a.reset_values || record.is_none() {
            ""
        } else {
            " (the recorded values are included; --reset-values starts from the defaults)"
        };
        anyhow!("{e}{hint}; nothing was changed")
    })?;
    if a.dry_run_helm_values {
        print!("{}", values.to_yaml());
        return Ok(0);
    }
    let docs = render_documents(&values, ns)?;
    let objects = apply::objects(&docs, ns)?;
    let recorded = match &record {
        Some(r) => Some(
            apply::objects(&r.documents(), ns)
                .map_err(|e| anyhow!("the install record's manifest: {e}; pass --reset-values"))?,
        ),
        None => None,
    };
    let mut live = BTreeMap::new();
    for o in &objects {
        if let Some(v) = apply::get(&client, o)
            .await
            .map_err(|e| unreachable(e, &url))?
        {
            live.insert(o.r.to_string(), v);
        }
    }
    let plan = Plan::new(objects, recorded.as_deref(), &live);
    let [unchanged, changed, added, removed] = plan.counts();
    let summary =
        format!("{changed} changed, {added} added, {removed} removed, {unchanged} unchanged");
    if a.dry_run {
        print!("{}", install::render(&values, ns)?);
        eprintln!("Would upgrade Cilium in namespace {ns} ({summary}):");
        for l in plan.lines() {
            eprintln!("  {l}");
        }
        return Ok(0);
    }
    println!("Upgrading Cilium in namespace {ns} of the cluster at {url} ({summary})");
    for l in plan.lines() {
        println!("  {l}");
    }
    let new_record = Release::new(user, install::render(&values, ns)?);
    if plan.is_noop()
        && record
            .as_ref()
            .is_some_and(|r| r.values == new_record.values)
    {
        println!("Cilium is up to date: nothing applied");
        return Ok(0);
    }

    let applied_before = |done: &[String]| {
        if done.is_empty() {
            "nothing was changed".to_string()
        } else {
            format!(
                "applied before it: {}; run `cilium upgrade{in_ns}` again to finish",
                done.join(", ")
            )
        }
    };
    let mut done: Vec<String> = Vec::new();
    let to_apply: Vec<&Object> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.change, Change::Changed(_) | Change::Added))
        .map(|s| &s.object)
        .collect();
    let crds: Vec<String> = to_apply
        .iter()
        .filter(|o| o.r.kind == "CustomResourceDefinition")
        .map(|o| o.r.name.clone())
        .collect();
    let (crd_objs, rest): (Vec<&Object>, Vec<&Object>) = to_apply
        .into_iter()
        .partition(|o| o.r.kind == "CustomResourceDefinition");
    for o in crd_objs {
        apply::apply(&client, o)
            .await
            .map_err(|e| anyhow!("{e}\n{}", applied_before(&done)))?;
        println!("  applied {}", o.r);
        done.push(o.r.to_string());
    }
    if !crds.is_empty() {
        let limit = a.wait_duration.min(Duration::from_secs(60));
        apply::wait_crds_established(&client, &crds, limit)
            .await
            .map_err(|e| anyhow!("{e}\n{}", applied_before(&done)))?;
    }
    for o in rest {
        apply::apply(&client, o)
            .await
            .map_err(|e| anyhow!("{e}\n{}", applied_before(&done)))?;
        println!("  applied {}", o.r);
        done.push(o.r.to_string());
    }
    for s in plan.steps.iter().filter(|s| s.change == Change::Removed) {
        match apply::delete(&client, &s.object).await {
            Ok(Deleted::Deleted) => println!("  deleted {}", s.object.r),
            Ok(Deleted::NotFound) => println!("  {} was already gone", s.object.r),
            Err(e) => bail!("{e}\n{}", applied_before(&done)),
        }
        done.push(format!("deleted {}", s.object.r));
    }
    let record_obj = apply::objects(&[new_record.document(ns)?], ns)?;
    for o in &record_obj {
        apply::apply(&client, o)
            .await
            .map_err(|e| anyhow!("{e}\n{}", applied_before(&done)))?;
        println!("  recorded the new values and manifest in {}", o.r);
    }
    let agents = plan.applies("DaemonSet", AGENT_DAEMONSET);
    let operator = plan.applies("Deployment", OPERATOR_DEPLOYMENT);
    if !a.wait {
        println!("Not waiting (--wait=false); `cilium status --wait` waits for Cilium to be ready");
        return Ok(0);
    }
    if agents || operator {
        wait_rollout(&client, ns, agents, operator, a.wait_duration).await?;
    }
    println!("Cilium was upgraded");
    Ok(0)
}

/// Prints a line above the bars, or plainly when the bars are hidden (not a terminal).
fn note(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// Polls the DaemonSet and the Deployment until both rolled out (see
/// [`Rollout::done`]), with a bar each; a line per change of their counts; on timeout,
/// an error naming what is not rolled out, each pod that is not ready with its reasons
/// and last event, and the Deployment's failing conditions.
async fn wait_rollout(
    client: &Client,
    ns: &str,
    agents: bool,
    operator: bool,
    limit: Duration,
) -> Result<()> {
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{spinner} {prefix:<28} {bar:20} {pos}/{len} updated {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = |name: &str| {
        let b = multi.add(ProgressBar::new(0));
        b.set_style(style.clone());
        b.set_prefix(name.to_string());
        b
    };
    let agent_bar = agents.then(|| bar("DaemonSet cilium"));
    let operator_bar = operator.then(|| bar("Deployment cilium-operator"));
    let deadline = tokio::time::Instant::now() + limit;
    let mut last: BTreeMap<&str, Rollout> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    loop {
        let mut all_done = true;
        problems.clear();
        if let Some(b) = &agent_bar {
            let r = match dss.get_opt(AGENT_DAEMONSET).await {
                Ok(Some(ds)) => upgrade::daemon_set(&ds),
                Ok(None) => {
                    bail!("DaemonSet {ns}/{AGENT_DAEMONSET} disappeared during the upgrade")
                }
                Err(e) => bail!("reading DaemonSet {ns}/{AGENT_DAEMONSET}: {}", describe(&e)),
            };
            step(b, "agents", &r, last.insert("ds", r.clone()).as_ref());
            if !r.done() {
                all_done = false;
                problems.push(r.summary());
            }
        }
        if let Some(b) = &operator_bar {
            let (r, conds) = match deps.get_opt(OPERATOR_DEPLOYMENT).await {
                Ok(Some(d)) => (upgrade::deployment(&d), upgrade::deployment_problems(&d)),
                Ok(None) => {
                    bail!("Deployment {ns}/{OPERATOR_DEPLOYMENT} disappeared during the upgrade")
                }
                Err(e) => bail!(
                    "reading Deployment {ns}/{OPERATOR_DEPLOYMENT}: {}",
                    describe(&e)
                ),
            };
            step(
                b,
                "operator replicas",
                &r,
                last.insert("dep", r.clone()).as_ref(),
            );
            if !r.done() {
                all_done = false;
                problems.push(r.summary());
                problems.extend(
                    conds
                        .into_iter()
                        .map(|c| format!("Deployment {OPERATOR_DEPLOYMENT}: {c}")),
                );
            }
        }
        if all_done {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            for b in agent_bar.iter().chain(operator_bar.iter()) {
                b.abandon();
            }
            let mut lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            lines.extend(old_agent_pods(client, ns).await);
            lines.push(why_not_ready(client, ns, None).await);
            bail!(
                "timed out after {} waiting for the upgrade to roll out:\n{}",
                humanize(limit),
                lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Moves a bar to `r` and notes the change of counts.
fn step(bar: &ProgressBar, what: &str, r: &Rollout, before: Option<&Rollout>) {
    bar.set_length(r.desired.max(0) as u64);
    bar.set_position(r.updated.max(0) as u64);
    bar.set_message(format!("{}/{} available", r.available, r.desired));
    if before != Some(r) {
        note(
            bar,
            format!(
                "  {} {}: {}/{} {what} updated, {}/{} available{}",
                r.kind,
                r.name,
                r.updated,
                r.desired,
                r.available,
                r.desired,
                if r.observed {
                    ""
                } else {
                    " (rollout not started yet)"
                }
            ),
        );
    }
    if r.done() {
        bar.finish_with_message("rolled out");
    }
}

/// Agent pods that still run another image than the DaemonSet's template.
async fn old_agent_pods(client: &Client, ns: &str) -> Vec<String> {
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let Ok(Some(ds)) = dss.get_opt(AGENT_DAEMONSET).await else {
        return vec![];
    };
    let want = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image)
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(list) = pods
        .list(&ListParams::default().labels(AGENT_SELECTOR))
        .await
    else {
        return vec![];
    };
    list.items
        .iter()
        .filter_map(|p| {
            let image = p.spec.as_ref()?.containers.first()?.image.clone()?;
            (image != want).then(|| {
                format!(
                    "  pod {ns}/{} still runs {image} (the DaemonSet wants {want})",
                    p.metadata.name.clone().unwrap_or_default()
                )
            })
        })
        .collect()
}
