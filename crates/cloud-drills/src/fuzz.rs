//! The `fuzz` drill (issue 9, drill 7): builds the cargo-fuzz targets in `fuzz/` and runs each
//! one for a bounded time from its committed seed corpus, counting executions and crashes.
//!
//! - cargo-fuzz comes from the tools cache: `cargo xtask drills` hands its path over as
//!   `CLOUD_CARGO_FUZZ`.
//! - `--sanitizer none`: every workspace crate has `unsafe_code = "forbid"`, so AddressSanitizer
//!   could only find memory errors in dependencies' unsafe code; what the drill looks for
//!   (panics, overflow, runaway recursion, hangs, memory blow-ups) libFuzzer catches without it.
//!   It also keeps the build on stable Rust without `RUSTC_BOOTSTRAP=1` and runs about twice as
//!   many executions per second.
//! - `--dev` with the fuzz crate's `opt-level = 1`: cargo-fuzz's release mode forces one codegen
//!   unit on every crate, which takes far longer to build on a 2-core machine than the fuzzing
//!   time itself.
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

pub async fn fuzz(settings: &Settings) -> Result<Row> {
    let head_start = settings
        .fuzz_build
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    tokio::task::spawn_blocking(move || run(head_start))
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

/// Its own directory: the instrumented build must not share artifacts with the main one.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from)
        .join("fuzz")
}

/// The instrumented build of the fuzz targets, started when the drills start: on a fresh
/// machine it is minutes of compiling, and the drills before this one leave most of the CPU
/// idle (they wait on outages at a modest request rate). It runs at the lowest priority
/// (`nice -n 19`) so that it does not disturb what those drills measure.
#[derive(Debug)]
pub struct Build {
    handle: std::thread::JoinHandle<Result<()>>,
    started: Instant,
}

/// Starts [`Build`] in the background (the `fuzz` drill joins it).
pub fn start_build() -> Build {
    let started = Instant::now();
    let handle = std::thread::spawn(|| build(true));
    Build { handle, started }
}

fn build(in_background: bool) -> Result<()> {
    let cargo_fuzz = std::env::var_os("CLOUD_CARGO_FUZZ").map(PathBuf::from).context(
        "CLOUD_CARGO_FUZZ is not set (the cargo-fuzz binary; `cargo xtask drills` installs it into the tools cache and sets it)",
    )?;
    let root = repo_root();
    let fuzz_dir = root.join("fuzz");
    let target_dir = target_dir();
    // The fuzz crate is a workspace of its own: its lock file starts as a copy of the main one
    // on every run, so the product crates are fuzzed with the dependency versions they ship with
    // (cargo then only adds libfuzzer-sys).
    let lock = fuzz_dir.join("Cargo.lock");
    std::fs::copy(root.join("Cargo.lock"), &lock)
        .with_context(|| format!("cannot copy Cargo.lock to {}", lock.display()))?;
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("cannot create {}", target_dir.display()))?;
    let mut cmd = if in_background {
        let mut nice = Command::new("nice");
        nice.args(["-n", "19"]).arg(&cargo_fuzz);
        nice
    } else {
        Command::new(&cargo_fuzz)
    };
    let log_path = target_dir.join("build.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let status = cmd
        .current_dir(&root)
        .args([
            "fuzz",
            "build",
            "--dev",
            "--sanitizer",
            "none",
            "--fuzz-dir",
        ])
        .arg(&fuzz_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("cannot run {}", cargo_fuzz.display()))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("cargo fuzz build failed ({status}):\n{}", tail(&text, 40));
    }
    Ok(())
}

fn run(head_start: Option<Build>) -> Result<Row> {
    let secs = seconds_per_target()?;
    let fuzz_dir = repo_root().join("fuzz");
    let waited = Instant::now();
    let build_time = match head_start {
        Some(b) => {
            b.handle
                .join()
                .map_err(|_| anyhow::anyhow!("the background fuzz build panicked"))??;
            b.started.elapsed()
        }
        None => {
            build(false)?;
            waited.elapsed()
        }
    };
    let waited = waited.elapsed();
    let target_dir = target_dir();
    let mut runs = Vec::new();
    for (target, _) in TARGETS {
        let bin = find_binary(&target_dir, target)?;
        eprintln!("cloud-drills: fuzzing {target} for {secs} s");
        runs.push(run_target(&bin, &fuzz_dir, target, secs)?);
    }
    Ok(row(&runs, secs, build_time, waited))
}

/// `<target dir>/<host triple>/debug/<name>`: cargo-fuzz always builds for an explicit target.
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
        "cargo fuzz build (--dev, --sanitizer none): done {:.0} s after it started, {:.0} s of it waited for by this drill; then each target for {secs} s",
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
