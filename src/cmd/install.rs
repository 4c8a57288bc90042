//! `cilium install` (render the manifests, or apply them to a cluster and wait),
//! `cilium uninstall`, `cilium status` on a cluster, and `cilium image build` (an OCI
//! archive of this binary).
use std::{path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kube::Client;

use crate::{
    install::{
        self, image,
        release::{self, Release},
        render::render_documents,
        values::user_values,
        ValueSources, Values,
    },
    k8s::{
        apply::{self, ApplyError, Deleted, Object},
        cluster::{self, ClusterOptions},
        status::{self, ClusterStatus},
    },
};

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Namespace of the agent, the operator and their configuration
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
    /// Image tag to deploy for the agent and operator (default: this binary's version);
    /// the manifests are always this binary's own
    #[arg(long)]
    version: Option<String>,
    /// Print the manifests that would be applied, and apply nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the merged values (defaults and overrides), and apply nothing
    #[arg(long)]
    dry_run_helm_values: bool,
    #[command(flatten)]
    kube: KubeArgs,
    /// Wait until the agent and the operator are ready (--wait=false: return once applied)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    wait: bool,
    /// How long --wait waits
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    wait_duration: Duration,
}

/// Which cluster: cilium-cli's and kubectl's flags.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster service account)
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes configuration context (default: the kubeconfig's current context)
    #[arg(long)]
    pub context: Option<String>,
}

impl KubeArgs {
    pub fn options(&self) -> ClusterOptions {
        ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }

    /// Whether a flag asked for a cluster.
    pub fn given(&self) -> bool {
        self.kubeconfig.is_some() || self.context.is_some()
    }
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Namespace Cilium was installed in
    #[arg(short = 'n', long, default_value = "kube-system")]
    namespace: String,
    #[command(flatten)]
    kube: KubeArgs,
    /// Also delete Cilium's CustomResourceDefinitions, and with them every
    /// CiliumNetworkPolicy, CiliumNode, CiliumIdentity, ... of the cluster (cilium-cli
    /// keeps them)
    #[arg(long)]
    delete_crds: bool,
    /// Wait until the agent pods are gone
    #[arg(long)]
    wait: bool,
    /// How long --wait waits
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    wait_duration: Duration,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Write an OCI image archive holding only this binary (load it with `podman load -i`,
    /// `docker load -i`, `ctr images import` or `kind load image-archive`)
    Build {
        /// Archive to write
        #[arg(short, long)]
        output: PathBuf,
        /// Image reference (the default is the image `cilium install` deploys)
        #[arg(long, default_value_t = image::default_reference())]
        tag: String,
    },
}

pub fn run_install(a: InstallArgs) -> Result<i32> {
    let user = user_values(&ValueSources {
        files: a.values.clone(),
        version: a.version.clone(),
        image: None,
        set: a.set.clone(),
        set_string: a.set_string.clone(),
    })?;
    let values = Values::from_user(&user)?;
    if a.dry_run_helm_values {
        print!("{}", values.to_yaml());
        return Ok(0);
    }
    if a.dry_run {
        print!("{}", install::render(&values, &a.namespace)?);
        return Ok(0);
    }
    let docs = render_documents(&values, &a.namespace)?;
    let objects = apply::objects(&docs, &a.namespace)?;
    let record = Release::new(user, install::render(&values, &a.namespace)?);
    let record = apply::objects(&[record.document(&a.namespace)?], &a.namespace)?;
    super::runtime()?.block_on(install_on_cluster(&a, objects, record))
}

async fn install_on_cluster(
    a: &InstallArgs,
    objects: Vec<Object>,
    record: Vec<Object>,
) -> Result<i32> {
    let (client, url) = cluster::connect(&a.kube.options()).await?;
    let ns = a.namespace.as_str();
    println!("Installing Cilium in namespace {ns} of the cluster at {url}");
    // Read-only checks first: nothing is written when Cilium is already there.
    apply::ensure_not_installed(&client, ns)
        .await
        .map_err(|e| unreachable(e, &url))?;
    let mut plan = Vec::new();
    if !apply::namespace_exists(&client, ns)
        .await
        .map_err(|e| unreachable(e, &url))?
    {
        plan.push(apply::namespace_object(ns));
    }
    plan.extend(objects);

    let mut applied: Vec<String> = Vec::new();
    let crds: Vec<String> = plan
        .iter()
        .filter(|o| o.r.kind == "CustomResourceDefinition")
        .map(|o| o.r.name.clone())
        .collect();
    let (crd_objs, rest): (Vec<Object>, Vec<Object>) = plan
        .into_iter()
        .partition(|o| o.r.kind == "CustomResourceDefinition" || o.r.kind == "Namespace");
    let stop = |e: ApplyError, applied: &[String]| -> anyhow::Error {
        let before = if applied.is_empty() {
            "nothing was applied".to_string()
        } else {
            format!(
                "applied before it: {}; `cilium uninstall{}` removes them",
                applied.join(", "),
                if ns == "kube-system" {
                    String::new()
                } else {
                    format!(" -n {ns}")
                }
            )
        };
        anyhow!("{e}\nnothing after it was applied; {before}")
    };
    let report = |o: &Object, applied: &mut Vec<String>| {
        println!("  applied {}", o.r);
        applied.push(o.r.to_string());
    };
    if let Err(e) = apply::apply_all(&client, &crd_objs, |o| report(o, &mut applied)).await {
        return Err(stop(e, &applied));
    }
    if !crds.is_empty() {
        let limit = a.wait_duration.min(Duration::from_secs(60));
        if let Err(e) = apply::wait_crds_established(&client, &crds, limit).await {
            return Err(stop(e, &applied));
        }
        println!("  {} CustomResourceDefinitions established", crds.len());
    }
    if let Err(e) = apply::apply_all(&client, &rest, |o| report(o, &mut applied)).await {
        return Err(stop(e, &applied));
    }
    // What `cilium upgrade` reuses and `cilium uninstall` deletes.
    if let Err(e) = apply::apply_all(&client, &record, |o| {
        println!("  recorded the install's values and manifest in {}", o.r)
    })
    .await
    {
        return Err(stop(e, &applied));
    }
    let operator = rest
        .iter()
        .any(|o| o.r.kind == "Deployment" && o.r.name == apply::OPERATOR_DEPLOYMENT);
    println!("Applied {} objects", applied.len());
    if !a.wait {
        println!("Not waiting (--wait=false); `cilium status --wait` waits for Cilium to be ready");
        return Ok(0);
    }
    wait_ready(&client, ns, operator, a.wait_duration).await?;
    println!("Cilium was successfully installed");
    Ok(0)
}

/// An error without an HTTP status (connection refused, TLS, DNS) names the server.
pub(super) fn unreachable(e: ApplyError, url: &str) -> anyhow::Error {
    match e {
        ApplyError::Api { status: None, .. } => anyhow!("{e} (API server {url})"),
        e => e.into(),
    }
}

/// Polls the status until it is OK, with a progress bar per component; on timeout, an
/// error naming the pods that are not ready and why.
async fn wait_ready(client: &Client, ns: &str, operator: bool, limit: Duration) -> Result<()> {
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{spinner} {prefix:<30} {bar:20} {pos}/{len} ready {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = |name: &str| {
        let b = multi.add(ProgressBar::new(0));
        b.set_style(style.clone());
        b.set_prefix(name.to_string());
        b
    };
    let agent_bar = bar("DaemonSet cilium");
    let operator_bar = operator.then(|| bar("Deployment cilium-operator"));
    let deadline = tokio::time::Instant::now() + limit;
    let mut last: Option<ClusterStatus> = None;
    loop {
        match status::collect(client, ns).await {
            Ok(st) => {
                if let Some(w) = &st.daemon_set {
                    agent_bar.set_length(w.desired.max(0) as u64);
                    agent_bar.set_position(w.ready.max(0) as u64);
                }
                if let (Some(b), Some(w)) = (&operator_bar, &st.deployment) {
                    b.set_length(w.desired.max(0) as u64);
                    b.set_position(w.ready.max(0) as u64);
                }
                let done = st.ok();
                last = Some(st);
                if done {
                    agent_bar.finish_with_message("OK");
                    if let Some(b) = &operator_bar {
                        b.finish_with_message("OK");
                    }
                    return Ok(());
                }
            }
            Err(e) => agent_bar.set_message(e.to_string()),
        }
        if tokio::time::Instant::now() >= deadline {
            agent_bar.abandon();
            if let Some(b) = &operator_bar {
                b.abandon();
            }
            return Err(anyhow!(
                "timed out after {} waiting for Cilium to be ready:\n{}",
                humanize(limit),
                why_not_ready(client, ns, last.as_ref()).await
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The last status's errors and warnings, then each pod that is not ready with its
/// containers' waiting reasons and its last event.
pub(super) async fn why_not_ready(
    client: &Client,
    ns: &str,
    last: Option<&ClusterStatus>,
) -> String {
    let mut lines = Vec::new();
    if let Some(st) = last {
        for p in st.errors.iter().chain(&st.warnings) {
            if p.pod == p.component {
                lines.push(format!("  {}", p.message));
            }
        }
    }
    match status::not_ready_pods(client, ns).await {
        Ok(pods) => {
            for (pod, problems, event) in pods {
                let mut l = format!("  pod {ns}/{pod} is not ready");
                if !problems.is_empty() {
                    l.push_str(": ");
                    l.push_str(&problems.join("; "));
                }
                if let Some(ev) = event {
                    l.push_str(&format!("; last event: {ev}"));
                }
                lines.push(l);
            }
        }
        Err(e) => lines.push(format!("  (listing the pods failed: {e})")),
    }
    if lines.is_empty() {
        lines.push("  (no pod of Cilium found)".into());
    }
    lines.join("\n")
}

pub(super) fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

pub fn run_uninstall(a: UninstallArgs) -> Result<i32> {
    let values = Values::load(&ValueSources::default())?;
    let docs = render_documents(&values, &a.namespace)?;
    let objects = apply::objects(&docs, &a.namespace)?;
    super::runtime()?.block_on(uninstall(&a, objects))
}

async fn uninstall(a: &UninstallArgs, defaults: Vec<Object>) -> Result<i32> {
    let (client, url) = cluster::connect(&a.kube.options()).await?;
    let ns = a.namespace.as_str();
    println!("Uninstalling Cilium from namespace {ns} of the cluster at {url}");
    // The install's record names what it applied; without one (or unreadable), the
    // default render.
    let objects = match super::upgrade::read_release(&client, ns).await {
        Ok(Some(r)) => {
            match apply::objects(&r.documents(), ns) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("  warning: the install record's manifest: {e}; deleting the default objects");
                    defaults
                }
            }
        }
        Ok(None) => defaults,
        Err(e @ ApplyError::Api { status: None, .. }) => return Err(unreachable(e, &url)),
        Err(e) => {
            eprintln!("  warning: {e}; deleting the default objects");
            defaults
        }
    };
    cni_cleanup(&client, ns).await;
    let mut failed = Vec::new();
    let mut kept = 0;
    for o in objects.iter().rev() {
        if o.r.kind == "CustomResourceDefinition" && !a.delete_crds {
            kept += 1;
            continue;
        }
        match apply::delete(&client, o).await {
            Ok(Deleted::Deleted) => println!("  deleted {}", o.r),
            Ok(Deleted::NotFound) => println!("  {} was already gone", o.r),
            // The server is not reachable: no point trying the others.
            Err(e @ ApplyError::Api { status: None, .. }) => return Err(unreachable(e, &url)),
            Err(e) => {
                eprintln!("  {e}");
                failed.push(e.to_string());
            }
        }
    }
    // The record goes last: a failed uninstall can be run again with it.
    let record = release::Release::new(Default::default(), String::new())
        .document(ns)
        .map_err(anyhow::Error::from)
        .and_then(|d| Ok(apply::objects(&[d], ns)?))?;
    for o in &record {
        match apply::delete(&client, o).await {
            Ok(Deleted::Deleted) => println!("  deleted {} (the install record)", o.r),
            Ok(Deleted::NotFound) => {}
            Err(e) => {
                eprintln!("  {e}");
                failed.push(e.to_string());
            }
        }
    }
    if kept > 0 {
        println!(
            "Kept {kept} CustomResourceDefinitions and the Cilium objects of the cluster              (--delete-crds deletes them)"
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} objects could not be deleted:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    if a.wait {
        wait_pods_gone(&client, ns, a.wait_duration).await?;
    }
    println!("Cilium was uninstalled");
    Ok(0)
}

/// How long `cilium uninstall` gives the kubelets to refresh the agents' mounted
/// cilium-config after it set cni-uninstall (the pod annotation prompts the refresh).
const CNI_SETTLE: Duration = Duration::from_secs(2);

/// Sets `cni-uninstall: "true"` in cilium-config, so the agents' preStop hook removes
/// the CNI plugin and configuration from each node as the agent pods stop, and touches
/// each agent pod (an annotation) so its kubelet refreshes the mounted ConfigMap now
/// rather than at its next periodic sync. Failures are warnings: the uninstall goes on.
async fn cni_cleanup(client: &Client, ns: &str) {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{Api, ListParams, Patch, PatchParams};
    let warn = |what: &str, e: &kube::Error| {
        eprintln!(
            "  warning: {what}: {}; the CNI configuration may stay on the nodes (remove it \
             there with `cilium agent uninstall-cni`)",
            cluster::describe(e)
        )
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"data": {"cni-uninstall": "true"}});
    match cms
        .patch(
            "cilium-config",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => println!(
            "  set cni-uninstall=true in ConfigMap {ns}/cilium-config: each agent removes \
             cilium-cni and 05-cilium.conflist from its node as it stops"
        ),
        Err(e) if cluster::status_code(&e) == Some(404) => {
            println!("  ConfigMap {ns}/cilium-config is gone: the agents leave the CNI configuration on the nodes");
            return;
        }
        Err(e) => {
            return warn(
                &format!("setting cni-uninstall in ConfigMap {ns}/cilium-config"),
                &e,
            )
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = match pods
        .list(&ListParams::default().labels(status::AGENT_SELECTOR))
        .await
    {
        Ok(l) => l,
        Err(e) => return warn("listing the agent pods", &e),
    };
    let touch =
        serde_json::json!({"metadata": {"annotations": {"cilium.io/cni-uninstall": "true"}}});
    let mut touched = 0;
    for p in &list.items {
        let Some(name) = p.metadata.name.as_deref() else {
            continue;
        };
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&touch))
            .await
        {
            Ok(_) => touched += 1,
            Err(e) => warn(&format!("annotating pod {ns}/{name}"), &e),
        }
    }
    if touched > 0 {
        tokio::time::sleep(CNI_SETTLE).await;
    }
}

async fn wait_pods_gone(client: &Client, ns: &str, limit: Duration) -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("waiting for the agent pods to terminate");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = pods
            .list(&ListParams::default().labels(status::AGENT_SELECTOR))
            .await
            .map_err(|e| anyhow!("listing the agent pods: {}", cluster::describe(&e)))?;
        if left.items.is_empty() {
            spinner.finish_with_message("agent pods gone");
            return Ok(());
        }
        let names: Vec<String> = left
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        spinner.set_message(format!("waiting for {} to terminate", names.join(", ")));
        if tokio::time::Instant::now() >= deadline {
            spinner.abandon();
            bail!(
                "timed out after {} waiting for the agent pods to terminate: {} still exist",
                humanize(limit),
                names.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `cilium status` against a cluster: collect (and with `wait`, poll until OK or
/// `limit`, an error after it), then print as text or JSON.
pub async fn k8s_status(
    opts: &ClusterOptions,
    ns: &str,
    wait: bool,
    limit: Duration,
    json: bool,
) -> Result<i32> {
    let (client, url) = cluster::connect(opts).await?;
    let deadline = tokio::time::Instant::now() + limit;
    let spinner = if wait {
        let s = ProgressBar::new_spinner();
        s.set_message("waiting for Cilium to be ready");
        Some(s)
    } else {
        None
    };
    let (st, timed_out) = loop {
        let st = status::collect(&client, ns)
            .await
            .map_err(|e| anyhow!("{e} (API server {url})"))?;
        if !wait || st.ok() {
            break (st, false);
        }
        if let Some(s) = &spinner {
            s.set_message(format!(
                "waiting for Cilium to be ready: {} errors, {} warnings",
                st.errors.len(),
                st.warnings.len()
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            break (st, true);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", st.to_text());
    }
    if timed_out {
        bail!(
            "timed out after {} waiting for Cilium to be ready",
            humanize(limit)
        );
    }
    // As cilium-cli: a degraded status is shown, not an exit code (--wait fails instead).
    Ok(0)
}

pub fn run_image(cmd: ImageCmd) -> Result<i32> {
    match cmd {
        ImageCmd::Build { output, tag } => {
            let reference = image::Reference::parse(&tag)?;
            let exe = std::env::current_exe().context("finding this binary")?;
            let head = std::fs::read(&exe)
                .with_context(|| format!("reading this binary {}", exe.display()))?;
            if image::needs_dynamic_loader(&head) {
                eprintln!(
                    "warning: {} is dynamically linked; the image holds nothing but this binary, \
                     so containers of it will not start. Build a static binary first: \
                     RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
                     --target x86_64-unknown-linux-gnu",
                    exe.display()
                );
            }
            drop(head);
            let built = image::build(&exe, &reference, &output)?;
            println!(
                "Wrote {}: {} ({:.1} MB), config {}",
                output.display(),
                built.reference,
                built.archive_bytes as f64 / 1e6,
                built.config_digest
            );
            println!(
                "Load it with: podman load -i {0} | kind load image-archive {0} | ctr images import {0}",
                output.display()
            );
            Ok(0)
        }
    }
}
