//! `cloudctl flags`: read and check the feature-flag audit trail that `cloud-flags` writes.
//!
//! - `cloudctl flags audit [--log PATH] [--flag F] [--at TIME] [--output table|json]`: the
//!   changes (verified first), or with `--at` the definition of each flag live at that time.
//! - `cloudctl flags verify [--log PATH]`: checks the hash chain; exits non-zero naming the
//!   first bad line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cloud_flags::AuditRecord;
use cloud_flags::audit;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::output::{OutputFormat, print_rows};

/// Where `cloudctl up` keeps the audit log unless told otherwise.
pub const DEFAULT_AUDIT_LOG: &str = ".data/cloudctl-up/flags/audit.log";

#[derive(Debug, clap::Args)]
pub struct FlagsArgs {
    #[command(subcommand)]
    pub command: FlagsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum FlagsCommand {
    /// Show flag changes from the hash-chained audit log (verified first).
    Audit(AuditArgs),
    /// Verify the audit log's hash chain.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The audit log (a service's `flags.audit_log_path`).
    #[arg(long, env = "CLOUD_FLAGS_AUDIT_LOG", default_value = DEFAULT_AUDIT_LOG, value_name = "PATH")]
    pub log: PathBuf,
    /// Only this flag.
    #[arg(long, value_name = "FLAG")]
    pub flag: Option<String>,
    /// Show what was live at this RFC 3339 time (e.g. 2026-11-26T14:03:00Z) instead of every change.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<OffsetDateTime>,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[arg(long, env = "CLOUD_FLAGS_AUDIT_LOG", default_value = DEFAULT_AUDIT_LOG, value_name = "PATH")]
    pub log: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-26T14:03:00Z: {e}"))
}

fn short(hash: Option<&str>) -> String {
    hash.map(|h| h.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn summary(r: &AuditRecord) -> String {
    let Some(def) = &r.definition else {
        return "(removed)".into();
    };
    let feature = &def["feature"];
    let enabled = feature["enabled"].as_bool().unwrap_or(false);
    let strategies: Vec<String> = feature["strategies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or("?");
            match s["parameters"]["rollout"].as_str() {
                Some(pct) => format!("{name}({pct}%)"),
                None => name.to_string(),
            }
        })
        .collect();
    format!(
        "{} {}",
        if enabled { "on" } else { "off" },
        strategies.join(",")
    )
}

pub fn run(args: FlagsArgs) -> Result<()> {
    match args.command {
        FlagsCommand::Audit(a) => audit_cmd(a),
        FlagsCommand::Verify(v) => verify_cmd(v),
    }
}

fn audit_cmd(args: AuditArgs) -> Result<()> {
    audit::verify(&args.log)
        .with_context(|| "refusing to show an audit log that fails verification")?;
    let records = audit::read_records(&args.log)?;
    let rows: Vec<AuditRecord> = match args.at {
        Some(at) => audit::all_live_at(&records, at)
            .into_values()
            .filter(|r| args.flag.as_deref().is_none_or(|f| f == r.flag))
            .cloned()
            .collect(),
        None => records
            .into_iter()
            .filter(|r| args.flag.as_deref().is_none_or(|f| f == r.flag))
            .collect(),
    };
    if args.at.is_some() {
        print_rows(
            args.output,
            &["FLAG", "SINCE", "SEQ", "HASH", "KILLED", "DEFINITION"],
            &rows,
            |r| {
                vec![
                    r.flag.clone(),
                    fmt_time(r.time),
                    r.seq.to_string(),
                    short(r.new_hash.as_deref()),
                    r.killed.to_string(),
                    summary(r),
                ]
            },
        )
    } else {
        print_rows(
            args.output,
            &[
                "SEQ", "TIME", "FLAG", "CHANGES", "SOURCE", "ETAG", "OLD", "NEW", "KILLED",
            ],
            &rows,
            |r| {
                vec![
                    r.seq.to_string(),
                    fmt_time(r.time),
                    r.flag.clone(),
                    r.changes
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    r.source.as_str().to_string(),
                    r.etag.clone().unwrap_or_else(|| "-".into()),
                    short(r.old_hash.as_deref()),
                    short(r.new_hash.as_deref()),
                    r.killed.to_string(),
                ]
            },
        )
    }
}

fn verify_cmd(args: VerifyArgs) -> Result<()> {
    let report = audit::verify(&args.log)?;
    print_rows(
        args.output,
        &["LOG", "RECORDS", "HEAD HASH"],
        &[report],
        |r| {
            vec![
                args.log.display().to_string(),
                r.records.to_string(),
                r.head_hash.clone(),
            ]
        },
    )
}
