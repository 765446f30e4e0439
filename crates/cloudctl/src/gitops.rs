//! `cloudctl env`, `promote`, `rollback`, `status` and `checks`: the GitOps commands, on top of
//! the `cloud-gitops` library. All of them work on a git checkout of this repository
//! (`--repo`, default: the repository containing the current directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use cloud_gitops::matrix::Matrix;
use cloud_gitops::promote::{Gitops, Outcome, PromoteOptions};
use cloud_gitops::{Error, SystemClock};
use serde::Serialize;

use crate::output::{OutputFormat, print_rows};

#[derive(Debug, Clone, Args)]
pub struct RepoArg {
    /// The git checkout to work on (default: the repository containing the current directory).
    #[arg(long, global = true)]
    repo: Option<PathBuf>,
}

fn repo_root(arg: &RepoArg) -> Result<PathBuf> {
    if let Some(r) = &arg.repo {
        return Ok(r.clone());
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!("not inside a git repository; pass --repo DIR");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    command: EnvCommand,
    #[command(flatten)]
    repo: RepoArg,
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// List the environments of the matrix (environments/*.yaml), in promotion order.
    List {
        /// table, json, or markdown (the table in docs/environments.md).
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Show one environment file, as validated.
    Show {
        /// The environment name, e.g. prod.
        env: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show what differs between two environments as rendered by `helm template` (every service,
    /// rendered exactly as its generated Argo CD Application renders it).
    Diff {
        env1: String,
        env2: String,
        /// The helm binary.
        #[arg(long, env = "HELM", default_value = "helm")]
        helm: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Check the matrix, the Argo CD manifests and what they generate, the values files, parity
    /// between environments and the prod invariants. Exits non-zero on any finding.
    Validate {
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ListFormat {
    Table,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The service to promote (a chart under helm/), or use --all.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    service: Option<String>,
    /// The target environment; the version comes from the environment the matrix names in
    /// its promotion.from.
    #[arg(long)]
    to: String,
    /// Promote every service.
    #[arg(long)]
    all: bool,
    /// Check the rules and show the diff; commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// For the first stage (dev), the version to deploy; elsewhere it must equal the source's.
    #[arg(long)]
    version: Option<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(flatten)]
    repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The service to roll back.
    service: String,
    /// The environment to roll back.
    #[arg(long)]
    env: String,
    /// The version to restore (default: the one deployed before the current one).
    #[arg(long)]
    to: Option<String>,
    /// Show the diff; commit nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(flatten)]
    repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(flatten)]
    repo: RepoArg,
}

#[derive(Debug, Args)]
pub struct ChecksArgs {
    #[command(subcommand)]
    command: ChecksCommand,
    #[command(flatten)]
    repo: RepoArg,
}

#[derive(Debug, Subcommand)]
enum ChecksCommand {
    /// Record a check result for a service version (environments/checks/SERVICE/VERSION.yaml) and commit it.
    Record {
        service: String,
        version: String,
        /// The check name, e.g. ci or e2e-staging (the matrix lists the required ones).
        check: String,
        #[arg(long, default_value = "passed", value_parser = ["passed", "failed"])]
        status: String,
    },
}

fn gitops(root: &Path) -> Gitops {
    Gitops::new(root, Arc::new(SystemClock))
}

pub fn env(args: EnvArgs) -> Result<()> {
    let root = repo_root(&args.repo)?;
    match args.command {
        EnvCommand::List { output } => {
            let matrix = Matrix::load(&root)?;
            let rows: Vec<EnvRow> = matrix.envs.iter().map(|e| EnvRow::of(&e.env)).collect();
            match output {
                ListFormat::Markdown => crate::out!("{}", markdown(&rows))?,
                ListFormat::Json => print_rows(OutputFormat::Json, &[], &rows, |_| Vec::new())?,
                ListFormat::Table => {
                    print_rows(OutputFormat::Table, ENV_HEADERS, &rows, EnvRow::cells)?
                }
            }
            Ok(())
        }
        EnvCommand::Show { env, output } => {
            let matrix = Matrix::load(&root)?;
            let e = matrix.get(&env)?;
            match output {
                OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(&e.raw)?)?,
                OutputFormat::Table => crate::out!("{}", serde_yaml::to_string(&e.env)?)?,
            }
            Ok(())
        }
        EnvCommand::Diff {
            env1,
            env2,
            helm,
            output,
        } => {
            let entries = cloud_gitops::diff::diff(&helm, &root, &env1, &env2)?;
            let headers = [
                "SERVICE",
                "OBJECT",
                "KEY",
                &env1.to_uppercase(),
                &env2.to_uppercase(),
            ];
            print_rows(output, &headers, &entries, |d| {
                vec![
                    d.service.clone(),
                    d.object.clone(),
                    d.key.clone(),
                    d.left.clone().unwrap_or_else(|| "(absent)".into()),
                    d.right.clone().unwrap_or_else(|| "(absent)".into()),
                ]
            })?;
            if output == OutputFormat::Table {
                eprintln!(
                    "{} rendered difference(s) between {env1} and {env2}",
                    entries.len()
                );
            }
            Ok(())
        }
        EnvCommand::Validate { output } => {
            let report = cloud_gitops::validate::validate(&root)?;
            let print = || -> Result<()> {
                match output {
                    OutputFormat::Json => {
                        crate::outln!("{}", serde_json::to_string_pretty(&report)?)?
                    }
                    OutputFormat::Table => {
                        for line in &report.checked {
                            crate::outln!("checked {line}")?;
                        }
                        for f in &report.findings {
                            crate::outln!("FAIL {f}")?;
                        }
                    }
                }
                Ok(())
            };
            crate::output::unless_closed(print())?;
            if report.ok() {
                eprintln!(
                    "environment matrix valid: {} checks, no findings",
                    report.checked.len()
                );
                Ok(())
            } else {
                bail!("{} finding(s); see FAIL lines above", report.findings.len())
            }
        }
    }
}

const ENV_HEADERS: &[&str] = &[
    "ENV",
    "TIER",
    "CLUSTER",
    "NAMESPACE",
    "DOMAIN",
    "SYNC",
    "REPLICAS",
    "HPA",
    "RESOURCES",
    "CANARY",
    "DATA",
    "BACKUP",
    "FROM",
    "SOAK",
    "CHECKS",
    "APPROVALS",
    "IMAGE UPDATES",
    "VIEW",
    "SYNC GROUPS",
    "PROMOTE GROUPS",
];

#[derive(Debug, Serialize)]
struct EnvRow {
    env: String,
    tier: String,
    cluster: String,
    namespace: String,
    domain: String,
    sync: String,
    replicas: String,
    hpa: String,
    resources: String,
    canary: bool,
    data: String,
    backup: String,
    from: String,
    soak: String,
    checks: String,
    approvals: u32,
    image_updates: String,
    view: String,
    sync_groups: String,
    promote_groups: String,
}

impl EnvRow {
    fn of(e: &cloud_gitops::Environment) -> Self {
        let sync = if e.sync.automated {
            format!(
                "automated (prune={}, selfHeal={})",
                e.sync.prune, e.sync.self_heal
            )
        } else {
            format!("manual, {} sync window(s)", e.sync.windows.len())
        };
        Self {
            env: e.name.clone(),
            tier: serde_json::to_value(e.tier)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            cluster: format!("{} ({})", e.cluster.name, e.cluster.server),
            namespace: e.cluster.namespace.clone(),
            domain: e.base_domain.clone(),
            sync,
            replicas: format!("{}-{}", e.replicas.min, e.replicas.max),
            hpa: if e.hpa.enabled {
                format!(
                    "cpu {}%, memory {}%",
                    e.hpa.target_cpu_utilization_percentage,
                    e.hpa.target_memory_utilization_percentage
                )
            } else {
                "off".into()
            },
            resources: format!(
                "{}: requests {}/{}, limits {}/{}",
                e.resources.profile,
                e.resources.requests.cpu,
                e.resources.requests.memory,
                e.resources.limits.cpu,
                e.resources.limits.memory
            ),
            canary: e.canary.enabled,
            data: format!("{}, retention {}d", e.data.policy, e.data.retention_days),
            backup: if e.data.backup.enabled {
                format!(
                    "`{}`, keep {}d, to {} ({})",
                    e.data.backup.schedule,
                    e.data.backup.retention_days,
                    e.data
                        .backup
                        .destination
                        .as_deref()
                        .unwrap_or("(no destination)"),
                    e.data.backup.region.as_deref().unwrap_or("no region")
                )
            } else {
                "none".into()
            },
            from: e
                .promotion
                .from
                .clone()
                .unwrap_or_else(|| "(image updates / --version)".into()),
            soak: e.promotion.min_soak.clone(),
            checks: if e.promotion.required_checks.is_empty() {
                "-".into()
            } else {
                e.promotion.required_checks.join(", ")
            },
            approvals: e.promotion.approvals,
            image_updates: if !e.image_updates.enabled {
                "off".into()
            } else if e.image_updates.paused.is_empty() {
                "on".into()
            } else {
                format!("on (paused: {})", e.image_updates.paused.join(", "))
            },
            view: e.access.view.join(", "),
            sync_groups: e.access.sync.join(", "),
            promote_groups: e.access.promote.join(", "),
        }
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.env.clone(),
            self.tier.clone(),
            self.cluster.clone(),
            self.namespace.clone(),
            self.domain.clone(),
            self.sync.clone(),
            self.replicas.clone(),
            self.hpa.clone(),
            self.resources.clone(),
            self.canary.to_string(),
            self.data.clone(),
            self.backup.clone(),
            self.from.clone(),
            self.soak.clone(),
            self.checks.clone(),
            self.approvals.to_string(),
            self.image_updates.clone(),
            self.view.clone(),
            self.sync_groups.clone(),
            self.promote_groups.clone(),
        ]
    }
}

/// The matrix transposed (one column per environment), as a Markdown table.
fn markdown(rows: &[EnvRow]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "| |{}|\n",
        rows.iter()
            .map(|r| format!(" {} ", r.env))
            .collect::<Vec<_>>()
            .join("|")
    ));
    out.push_str(&format!(
        "|---|{}|\n",
        rows.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    ));
    let cells: Vec<Vec<String>> = rows.iter().map(EnvRow::cells).collect();
    for (i, header) in ENV_HEADERS.iter().enumerate().skip(1) {
        let values: Vec<String> = cells
            .iter()
            .map(|c| c.get(i).cloned().unwrap_or_default().replace('|', "\\|"))
            .collect();
        out.push_str(&format!(
            "| {} | {} |\n",
            header.to_lowercase(),
            values.join(" | ")
        ));
    }
    out
}

#[derive(Debug, Serialize)]
struct Refusal<'a> {
    service: &'a str,
    environment: &'a str,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'static str>,
    reason: String,
}

fn print_outcomes(
    output: OutputFormat,
    outcomes: &[Outcome],
    refusals: &[Refusal<'_>],
) -> Result<()> {
    match output {
        OutputFormat::Json => {
            let doc = serde_json::json!({ "outcomes": outcomes, "refusals": refusals });
            crate::outln!("{}", serde_json::to_string_pretty(&doc)?)?;
        }
        OutputFormat::Table => {
            for o in outcomes {
                let from = o
                    .from
                    .as_deref()
                    .map(|f| format!(" from {f}"))
                    .unwrap_or_default();
                crate::outln!(
                    "{} {} {}: {} -> {}{from}",
                    o.result,
                    o.service,
                    o.environment,
                    o.previous,
                    o.version
                )?;
                for r in &o.rules {
                    crate::outln!("  rule {r}")?;
                }
                if let Some(c) = &o.commit {
                    crate::outln!("  commit {c}")?;
                }
                if let Some(u) = o.image_updates {
                    crate::outln!("  image updates {u} for {} in {}", o.service, o.environment)?;
                }
                if o.approvals_required > 0 && o.result != "up-to-date" {
                    crate::outln!(
                        "  the pull request needs {} approval(s) ({} promotion.approvals)",
                        o.approvals_required,
                        o.environment
                    )?;
                }
                if !o.diff.is_empty() && o.result == "dry-run" {
                    crate::out!("{}", o.diff)?;
                }
            }
            for r in refusals {
                crate::outln!("{} {} {}: {}", r.result, r.service, r.environment, r.reason)?;
            }
        }
    }
    Ok(())
}

fn refusal<'a>(
    service: &'a str,
    environment: &'a str,
    err: Error,
) -> std::result::Result<Refusal<'a>, Error> {
    match err {
        Error::Refused { rule, reason } => Ok(Refusal {
            service,
            environment,
            result: "refused",
            rule: Some(rule),
            reason: format!("refused by rule `{rule}`: {reason}"),
        }),
        other => Err(other),
    }
}

pub fn promote(args: PromoteArgs) -> Result<()> {
    let root = repo_root(&args.repo)?;
    let g = gitops(&root);
    let services = match &args.service {
        Some(s) => vec![s.clone()],
        None => g.services(&Matrix::load(&root)?)?,
    };
    let opts = PromoteOptions {
        dry_run: args.dry_run,
        version: args.version.clone(),
    };
    let mut outcomes = Vec::new();
    let mut refusals = Vec::new();
    for svc in &services {
        match g.promote(svc, &args.to, &opts) {
            Ok(o) => outcomes.push(o),
            Err(e) => refusals.push(refusal(svc, &args.to, e)?),
        }
    }
    crate::output::unless_closed(print_outcomes(args.output, &outcomes, &refusals))?;
    if let Some(r) = refusals.first() {
        bail!(
            "{} promotion(s) refused; first: {} {}",
            refusals.len(),
            r.service,
            r.reason
        );
    }
    Ok(())
}

pub fn rollback(args: RollbackArgs) -> Result<()> {
    let root = repo_root(&args.repo)?;
    let g = gitops(&root);
    match g.rollback(&args.service, &args.env, args.to.as_deref(), args.dry_run) {
        Ok(o) => print_outcomes(args.output, &[o], &[]),
        Err(e) => {
            let r = refusal(&args.service, &args.env, e)?;
            crate::output::unless_closed(print_outcomes(
                args.output,
                &[],
                std::slice::from_ref(&r),
            ))?;
            bail!("rollback {}", r.reason)
        }
    }
}

pub fn status(args: StatusArgs) -> Result<()> {
    let root = repo_root(&args.repo)?;
    let rows = gitops(&root).status()?;
    print_rows(
        args.output,
        &[
            "SERVICE",
            "ENV",
            "VERSION",
            "SINCE",
            "BY",
            "COMMIT",
            "DRIFT",
            "IMAGE UPDATES",
        ],
        &rows,
        |r| {
            vec![
                r.service.clone(),
                r.environment.clone(),
                r.version.clone(),
                r.since.clone(),
                r.by.clone(),
                r.commit.clone(),
                r.drift.clone(),
                r.image_updates.clone(),
            ]
        },
    )
}

pub fn checks(args: ChecksArgs) -> Result<()> {
    let root = repo_root(&args.repo)?;
    match args.command {
        ChecksCommand::Record {
            service,
            version,
            check,
            status,
        } => {
            let commit = gitops(&root).record_check(&service, &version, &check, &status)?;
            crate::outln!("recorded {check}={status} for {service} {version} in commit {commit}")?;
            Ok(())
        }
    }
}
