//! `cloud-drills`: reliability drills from issue 9, run against real processes on loopback.
//! Each drill starts its own private servers and service binaries, breaks one dependency under
//! steady load, measures, and prints one row of the table in docs/reliability.md.
//!
//! Run it with `cargo xtask drills` (which builds the service binaries first).

mod drills;
mod fuzz;
mod hostile;
mod infra;
mod load;
mod nginx;
mod procstat;
mod refresh_chains;
mod rolling;
mod schemathesis;
mod unleash;
mod upstream_faults;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

use drills::{Row, Settings, Verdict};

#[derive(Debug, Parser)]
#[command(about = "Reliability drills against real processes on loopback (issue 9)")]
struct Cli {
    /// Run only the drills whose name contains this text (repeatable): redis, identity, database, unleash, upstream, hostile, rolling, schemathesis, fuzz.
    #[arg(long = "only")]
    only: Vec<String>,
    /// Requests per second of the steady load.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long each broken dependency stays down, in seconds.
    #[arg(long, default_value_t = 10)]
    outage_secs: u64,
}

type DrillFn = for<'a> fn(
    &'a Settings,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Row>> + Send + 'a>,
>;

fn drill_list() -> Vec<(&'static str, DrillFn)> {
    vec![
        ("redis", |s| Box::pin(drills::redis_outage(s))),
        ("identity", |s| Box::pin(drills::identity_outage(s))),
        ("database", |s| Box::pin(drills::database_outage(s))),
        ("unleash", |s| Box::pin(unleash::unleash_outage(s))),
        ("upstream", |s| {
            Box::pin(upstream_faults::upstream_faults(s))
        }),
        ("hostile", |s| Box::pin(hostile::hostile_input(s))),
        ("rolling", |s| Box::pin(rolling::rolling_update(s))),
        ("schemathesis", |s| Box::pin(schemathesis::schemathesis(s))),
        // Last: it waits for the fuzz targets' background build, which the drills before it
        // leave CPU for.
        ("fuzz", |s| Box::pin(fuzz::fuzz(s))),
    ]
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(err) => {
            eprintln!("cloud-drills: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the selected drills in order; `Ok(false)` when one errored or found a defect.
#[allow(clippy::print_stdout)] // the table is this program's output
async fn run(cli: Cli) -> Result<bool> {
    let selected =
        |name: &str| cli.only.is_empty() || cli.only.iter().any(|o| name.contains(o.as_str()));
    let settings = Settings {
        binaries: infra::Binaries::find()?,
        rate: cli.rate,
        outage: Duration::from_secs(cli.outage_secs),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut all_good = true;
    for (name, drill) in drill_list() {
        if !selected(name) {
            continue;
        }
        eprintln!("cloud-drills: running the {name} drill");
        let t = Instant::now();
        match drill(&settings).await {
            Ok(row) => {
                eprintln!(
                    "cloud-drills: {name} drill done in {:.0} s: {}",
                    t.elapsed().as_secs_f64(),
                    row.verdict
                );
                all_good &= row.verdict == Verdict::Pass;
                rows.push(row);
            }
            Err(err) => {
                eprintln!("cloud-drills: the {name} drill could not run: {err:#}");
                all_good = false;
            }
        }
    }
    println!("{}", table(&rows));
    for row in &rows {
        println!("\n{} ({}):", row.drill, row.verdict);
        for d in &row.details {
            println!("  - {d}");
        }
        for f in &row.findings {
            println!("  - FINDING: {f}");
        }
    }
    println!(
        "\n{} drill(s) in {:.0} s, load {} req/s, outages {} s",
        rows.len(),
        started.elapsed().as_secs_f64(),
        cli.rate,
        cli.outage_secs
    );
    Ok(all_good)
}

/// The table as Markdown, so it can be pasted into docs/reliability.md as printed.
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| drill | requests sent | failed | lost | recovery time | verdict |\n|---|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.drill, r.sent, r.failed, r.lost, r.recovery, r.verdict
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_table_has_one_row_per_drill() {
        let row = Row {
            drill: "Redis outage",
            sent: 10,
            failed: 1,
            lost: 2,
            recovery: "1.00 s".into(),
            verdict: Verdict::Finding,
            details: vec![],
            findings: vec![],
        };
        let t = table(&[row]);
        assert_eq!(t.lines().count(), 3);
        assert!(
            t.ends_with("| Redis outage | 10 | 1 | 2 | 1.00 s | FINDING |\n"),
            "{t}"
        );
    }
}
