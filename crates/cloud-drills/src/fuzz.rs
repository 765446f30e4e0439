//! The `fuzz` drill (issue 9, drill 7): runs each cargo-fuzz target in `fuzz/` for a bounded
//! time from its committed seed corpus, counting executions and crashes.
//!
//! - The targets are built by `cargo xtask drills` (xtask/src/fuzz_build.rs: the build `cargo
//!   fuzz build --dev --sanitizer none` runs, why there), in the background from its start; this
//!   drill waits for the status file that build writes, named by `CLOUD_FUZZ_BUILD_STATUS`.
//! - Each target runs its binary directly with `-max_total_time`; new inputs go to a temporary
//!   corpus (the committed seeds under `fuzz/corpus/<target>/` are only read), crashing inputs to
//!   `fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::drills::{Row, Settings, Verdict};

/// The targets, in `fuzz/Cargo.toml`'s order, with what each one covers.
const TARGETS: [(&str, &str); 4] = [
    (
        "gateway_token",
        "gateway bearer token parsing and validation",
    ),
    (
        "gateway_config",
        "gateway config deserialization and validate()",
    ),
    ("flags_bootstrap", "cloud-flags bootstrap file parser"),
    ("environment_file", "environments/*.yaml parser (cloudctl)"),
];

const DEFAULT_SECS: u64 = 30;

/// What one target's run measured.
#[derive(Debug, Clone)]
pub struct TargetRun {
    pub target: &'static str,
    pub executions: u64,
    pub execs_per_sec: u64,
    pub new_units: u64,
    pub peak_rss_mb: u64,
    pub seconds: f64,
    /// Inputs libFuzzer wrote as crash, out-of-memory or timeout artifacts.
    pub crashes: Vec<PathBuf>,
    /// The lines of libFuzzer's report that say what went wrong.
    pub report: Vec<String>,
}

pub async fn fuzz(_settings: &Settings) -> Result<Row> {
    tokio::task::spawn_blocking(run)
        .await
        .context("the fuzz drill's thread failed")?
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seconds_per_target() -> Result<u64> {
    match std::env::var("CLOUD_DRILLS_FUZZ_SECS") {
        Ok(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .with_context(|| format!("CLOUD_DRILLS_FUZZ_SECS={v:?} is not a positive number")),
        Err(_) => Ok(DEFAULT_SECS),
    }
}

/// How long the drill waits for the build before it gives up: far longer than a fresh machine
/// needs, short of hanging a CI run.
const BUILD_WAIT_LIMIT: Duration = Duration::from_secs(60 * 60);

/// The background build's outcome, from the status file `cargo xtask drills` has it write
/// (`exit_code <n>` and `seconds <s>` lines).
#[derive(Debug, PartialEq)]
struct BuildStatus {
    exit_code: i32,
    seconds: f64,
}

fn parse_build_status(text: &str) -> Option<BuildStatus> {
    let mut exit_code = None;
    let mut seconds = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("exit_code", v)) => exit_code = v.trim().parse().ok(),
            Some(("seconds", v)) => seconds = v.trim().parse().ok(),
            _ => {}
        }
    }
    Some(BuildStatus {
        exit_code: exit_code?,
        seconds: seconds?,
    })
}

/// Waits for the fuzz build; returns how long it took and how long this drill waited for it.
fn wait_for_build(status_file: &Path) -> Result<(Duration, Duration)> {
    let waited = Instant::now();
    let text = loop {
        match std::fs::read_to_string(status_file) {
            Ok(text) => break text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if waited.elapsed() > BUILD_WAIT_LIMIT {
                    bail!(
                        "the fuzz build wrote no {} in {} minutes",
                        status_file.display(),
                        BUILD_WAIT_LIMIT.as_secs() / 60
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", status_file.display()));
            }
        }
    };
    let status = parse_build_status(&text).with_context(|| {
        format!(
            "{} is not `exit_code <n>` and `seconds <s>`: {text:?}",
            status_file.display()
        )
    })?;
    if status.exit_code != 0 {
        let log_path = status_file.with_file_name("build.log");
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!(
            "the fuzz targets' build failed (exit code {}; {}):\n{}",
            status.exit_code,
            log_path.display(),
            tail(&log, 40)
        );
    }
    Ok((Duration::from_secs_f64(status.seconds), waited.elapsed()))
}

fn run() -> Result<Row> {
    let secs = seconds_per_target()?;
    let fuzz_dir = repo_root().join("fuzz");
    let status_file = std::env::var_os("CLOUD_FUZZ_BUILD_STATUS")
        .map(PathBuf::from)
        .context(
            "CLOUD_FUZZ_BUILD_STATUS is not set: the fuzz targets are built by `cargo xtask drills`, which sets it",
        )?;
    let (build_time, waited) = wait_for_build(&status_file)?;
    // The build's target dir (`<main target dir>/fuzz`) holds the status file.
    let target_dir = status_file
        .parent()
        .context("CLOUD_FUZZ_BUILD_STATUS names no directory")?;
    let mut runs = Vec::new();
    for (target, _) in TARGETS {
        let bin = find_binary(target_dir, target)?;
        eprintln!("cloud-drills: fuzzing {target} for {secs} s");
        runs.push(run_target(&bin, &fuzz_dir, target, secs)?);
    }
    Ok(row(&runs, secs, build_time, waited))
}

/// `<target dir>/<host triple>/debug/<name>`: the build names the target explicitly, as
/// cargo-fuzz does.
fn find_binary(target_dir: &Path, name: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir(target_dir)
        .with_context(|| format!("cannot read {}", target_dir.display()))?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("debug").join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "the fuzz target {name} was not built under {}",
                target_dir.display()
            )
        })
}

fn run_target(bin: &Path, fuzz_dir: &Path, target: &'static str, secs: u64) -> Result<TargetRun> {
    let seeds = fuzz_dir.join("corpus").join(target);
    if !seeds.is_dir() {
        bail!(
            "{} is missing: every target has a seed corpus",
            seeds.display()
        );
    }
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("cannot create {}", artifacts.display()))?;
    let before = list(&artifacts)?;
    let work = tempfile::Builder::new()
        .prefix("cloud-drills-fuzz-")
        .tempdir()?;
    let log = work.path().join("libfuzzer.log");
    let corpus = work.path().join("corpus");
    std::fs::create_dir(&corpus)?;
    let mut prefix = artifacts.into_os_string();
    prefix.push("/");
    let mut artifact_arg = std::ffi::OsString::from("-artifact_prefix=");
    artifact_arg.push(&prefix);
    let started = Instant::now();
    let status = Command::new(bin)
        .arg(format!("-max_total_time={secs}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .arg(artifact_arg)
        // New inputs go to the first directory; the committed seeds are only read.
        .arg(&corpus)
        .arg(&seeds)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let crashes: Vec<PathBuf> = list(&PathBuf::from(&prefix))?
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                ["crash-", "oom-", "timeout-", "leak-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect();
    let stats = parse_stats(&text);
    if !status.success() && crashes.is_empty() {
        bail!(
            "{target} exited with {status} without writing an artifact:\n{}",
            tail(&text, 30)
        );
    }
    if stats.executions == 0 {
        bail!(
            "{target} ran no input (or its final stats were not printed):\n{}",
            tail(&text, 30)
        );
    }
    Ok(TargetRun {
        target,
        executions: stats.executions,
        execs_per_sec: stats.execs_per_sec,
        new_units: stats.new_units,
        peak_rss_mb: stats.peak_rss_mb,
        seconds,
        crashes,
        report: if status.success() {
            Vec::new()
        } else {
            report_lines(&text)
        },
    })
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect())
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    executions: u64,
    execs_per_sec: u64,
    new_units: u64,
    peak_rss_mb: u64,
}

/// libFuzzer's `-print_final_stats=1` lines, e.g. `stat::number_of_executed_units: 81234`.
fn parse_stats(text: &str) -> Stats {
    let mut stats = Stats::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().rsplit_once(':') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        match key {
            "stat::number_of_executed_units" => stats.executions = value,
            "stat::average_exec_per_sec" => stats.execs_per_sec = value,
            "stat::new_units_added" => stats.new_units = value,
            "stat::peak_rss_mb" => stats.peak_rss_mb = value,
            _ => {}
        }
    }
    stats
}

/// The panic message and libFuzzer's verdict, without the stack trace.
fn report_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.contains("panicked at")
                || l.contains("ERROR: libFuzzer")
                || l.starts_with("SUMMARY:")
                || l.contains("Test unit written to")
        })
        .map(str::to_string)
        .chain(
            // The panic message is the line after "panicked at".
            text.lines()
                .skip_while(|l| !l.contains("panicked at"))
                .nth(1)
                .map(str::to_string),
        )
        .collect()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn row(runs: &[TargetRun], secs: u64, build: Duration, waited: Duration) -> Row {
    let executions = runs.iter().map(|r| r.executions).sum();
    let crashes: usize = runs.iter().map(|r| r.crashes.len()).sum();
    let mut details = vec![format!(
        "fuzz build (cargo-fuzz's --dev --sanitizer none flags): done {:.0} s after it started, {:.0} s of it waited for by this drill; then each target for {secs} s, one after the other",
        build.as_secs_f64(),
        waited.as_secs_f64()
    )];
    let mut findings = Vec::new();
    for r in runs {
        let what = TARGETS
            .iter()
            .find(|(name, _)| *name == r.target)
            .map_or("", |(_, what)| what);
        details.push(format!(
            "{} ({what}): {} executions in {:.0} s ({}/s), {} new corpus inputs, peak RSS {} MiB, {} crash(es)",
            r.target,
            r.executions,
            r.seconds,
            r.execs_per_sec,
            r.new_units,
            r.peak_rss_mb,
            r.crashes.len()
        ));
        for c in &r.crashes {
            findings.push(format!(
                "{} crashed on {}: {}",
                r.target,
                c.display(),
                r.report.join(" | ")
            ));
        }
    }
    Row {
        drill: "Fuzzing",
        sent: executions,
        failed: u64::try_from(crashes).unwrap_or(u64::MAX),
        lost: 0,
        recovery: format!("n/a ({} targets x {secs} s)", runs.len()),
        verdict: if crashes == 0 {
            Verdict::Pass
        } else {
            Verdict::Finding
        },
        details,
        findings,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const FINAL_STATS: &str = "#81234\tDONE   cov: 1234 ft: 5678 corp: 120/30Kb lim: 4096 exec/s: 2707 rss: 88Mb\n\
        Done 81234 runs in 31 second(s)\n\
        stat::number_of_executed_units: 81234\n\
        stat::average_exec_per_sec:     2707\n\
        stat::new_units_added:          113\n\
        stat::slowest_unit_time_sec:    0\n\
        stat::peak_rss_mb:              88\n";

    #[test]
    fn the_build_status_file_is_read_and_a_partial_one_is_not() {
        assert_eq!(
            parse_build_status("exit_code 0\nseconds 612.4\n"),
            Some(BuildStatus {
                exit_code: 0,
                seconds: 612.4
            })
        );
        assert_eq!(
            parse_build_status("exit_code 101\nseconds 3.0\n").map(|s| s.exit_code),
            Some(101)
        );
        assert_eq!(parse_build_status("exit_code 0\n"), None);
        assert_eq!(parse_build_status("exit_code zero\nseconds 1\n"), None);
    }

    #[test]
    fn final_stats_are_read() {
        assert_eq!(
            parse_stats(FINAL_STATS),
            Stats {
                executions: 81234,
                execs_per_sec: 2707,
                new_units: 113,
                peak_rss_mb: 88
            }
        );
        assert_eq!(parse_stats("no stats here"), Stats::default());
    }

    #[test]
    fn a_crash_makes_the_row_a_finding_with_its_input() {
        let run = |crashes: Vec<PathBuf>| TargetRun {
            target: "gateway_token",
            executions: 10,
            execs_per_sec: 1,
            new_units: 0,
            peak_rss_mb: 1,
            seconds: 1.0,
            crashes,
            report: vec!["thread '<unnamed>' panicked at src/auth.rs:1:1:".into()],
        };
        let clean = row(
            &[run(vec![]), run(vec![])],
            1,
            Duration::from_secs(2),
            Duration::ZERO,
        );
        assert_eq!(
            (clean.sent, clean.failed, clean.verdict),
            (20, 0, Verdict::Pass)
        );
        assert!(clean.findings.is_empty());
        let crashed = row(
            &[
                run(vec![]),
                run(vec![PathBuf::from("fuzz/artifacts/x/crash-1")]),
            ],
            1,
            Duration::from_secs(2),
            Duration::ZERO,
        );
        assert_eq!((crashed.failed, crashed.verdict), (1, Verdict::Finding));
        assert!(
            crashed.findings[0].contains("crash-1"),
            "{:?}",
            crashed.findings
        );
    }

    #[test]
    fn the_panic_message_is_reported() {
        let text = "INFO: seed\nthread '<unnamed>' panicked at crates/x/src/lib.rs:3:5:\nindex out of bounds\nnote: run with RUST_BACKTRACE\n==1== ERROR: libFuzzer: deadly signal\n";
        let lines = report_lines(text);
        assert!(
            lines.iter().any(|l| l == "index out of bounds"),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("deadly signal")),
            "{lines:?}"
        );
    }
}
