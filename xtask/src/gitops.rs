//! The GitOps checks (issue 7): the real `cloudctl` binary validates this repository's
//! environment matrix and Argo CD manifests (against the pinned Argo CD CRD schemas), renders
//! the environments with the real helm, and `docs/environments.md` must match the matrix.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::steps::{Ctx, capture, run_cmd, workspace_binaries};

const DOC: &str = "docs/environments.md";
const BEGIN: &str = "<!-- BEGIN GENERATED: cloudctl env list --output markdown -->";
const END: &str = "<!-- END GENERATED -->";

/// The `cloudctl` binary of the test build (see [`workspace_binaries`]), run in the checkout.
fn cloudctl(ctx: &Ctx) -> Result<Command> {
    let binary = workspace_binaries(ctx, &["cloudctl"])?
        .pop()
        .context("no cloudctl binary")?;
    let mut cmd = Command::new(binary);
    cmd.current_dir(&ctx.root);
    Ok(cmd)
}

/// `cloudctl env validate` on this checkout: schema, Argo CD CRD schemas, generated
/// Applications, referenced files, parity and prod invariants.
pub fn env_validate(ctx: &mut Ctx) -> Result<()> {
    let root = ctx.root.clone();
    run_cmd(
        cloudctl(ctx)?
            .args(["env", "validate", "--repo"])
            .arg(&root),
    )
}

/// `cloudctl env diff dev prod` with the real helm: every service renders in both environments.
pub fn env_diff(ctx: &mut Ctx) -> Result<()> {
    let helm = ctx.tools.helm()?;
    let root = ctx.root.clone();
    let out = capture(
        cloudctl(ctx)?
            .args(["env", "diff", "dev", "prod", "--output", "json", "--repo"])
            .arg(&root)
            .env("HELM", &helm),
    )?;
    let entries: serde_json::Value =
        serde_json::from_str(&out).context("cloudctl env diff printed invalid JSON")?;
    let n = entries.as_array().map(Vec::len).unwrap_or(0);
    eprintln!("xtask: dev and prod differ in {n} rendered field(s)");
    Ok(())
}

/// `docs/environments.md` holds the output of `cloudctl env list --output markdown`.
pub fn environments_doc(ctx: &mut Ctx) -> Result<()> {
    let root = ctx.root.clone();
    let table = capture(
        cloudctl(ctx)?
            .args(["env", "list", "--output", "markdown", "--repo"])
            .arg(&root),
    )?;
    let path = root.join(DOC);
    let doc = std::fs::read_to_string(&path).with_context(|| format!("cannot read {DOC}"))?;
    let (Some(start), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{DOC} lacks the {BEGIN} ... {END} markers");
    };
    let current = doc.get(start + BEGIN.len()..end).unwrap_or_default().trim();
    if current != table.trim() {
        bail!(
            "{DOC} is stale: the matrix changed. Regenerate the table between the markers with\n  cargo run -p cloudctl -- env list --output markdown\n--- expected ---\n{table}"
        );
    }
    Ok(())
}
