//! `cilium install` (render the manifests; applying comes with the Kubernetes client)
//! and `cilium image build` (an OCI archive of this binary).
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::install::{self, image, ValueSources, Values};

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
    let values = Values::load(&ValueSources {
        files: a.values,
        version: a.version,
        set: a.set,
        set_string: a.set_string,
    })?;
    if a.dry_run_helm_values {
        print!("{}", values.to_yaml());
        return Ok(0);
    }
    let manifests = install::render(&values, &a.namespace)?;
    if a.dry_run {
        print!("{manifests}");
        return Ok(0);
    }
    bail!(
        "applying to a cluster needs the Kubernetes client, which this build does not have yet; \
         use --dry-run to print the manifests (e.g. `cilium install --dry-run | kubectl apply \
         --server-side -f -`)"
    )
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
