//! The instrumented build of the cargo-fuzz targets in `fuzz/`, for the `fuzz` drill.
//!
//! `cargo xtask drills` starts it first, in the background at the lowest priority (`nice -n
//! 19`): on a fresh machine it is minutes of compiling, and started first it takes the CPU the
//! other builds leave idle (their serial phases: build scripts, linking, the tail of the crate
//! graph) and then the CPU the outage drills leave idle (they wait on outages at a modest request
//! rate), without disturbing what either measures. The drill waits for the status file this
//! writes (`CLOUD_FUZZ_BUILD_STATUS`) and reads the build's log beside it when the build failed.
//!
//! It is the build `cargo fuzz build --dev --sanitizer none` runs, done with plain cargo: the
//! same command line and the same instrumentation flags ([`CARGO_FUZZ_RUSTFLAGS`]). cargo-fuzz
//! itself would first have to be compiled from crates.io (minutes of one core on a fresh
//! machine, before this build could start), and the drill runs the built binaries directly, so
//! nothing else of cargo-fuzz is needed. A developer's `cargo fuzz run <target>` builds the same.
//!
//! - `--sanitizer none`: every workspace crate has `unsafe_code = "forbid"`, so AddressSanitizer
//!   could only find memory errors in dependencies' unsafe code; what the drill looks for
//!   (panics, overflow, runaway recursion, hangs, memory blow-ups) libFuzzer catches without it.
//!   It also keeps the build on stable Rust and runs about twice as many executions per second.
//! - `--dev` with the fuzz crate's own dev profile (`fuzz/Cargo.toml`): cargo-fuzz's release
//!   mode forces one codegen unit on every crate, which takes far longer to build on a 2-core
//!   machine than the fuzzing time itself.
//! - `--target <host>`, as cargo-fuzz passes it: with an explicit target, cargo applies the
//!   flags to the fuzzed code only, not to build scripts and proc macros.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The running build. Dropping it kills a build that has not finished (the drills stopped
/// early), so that no orphaned compiler outlives `cargo xtask drills`.
pub struct FuzzBuild {
    status_file: PathBuf,
    cancel: Arc<AtomicBool>,
    waiter: Option<std::thread::JoinHandle<()>>,
}

impl FuzzBuild {
    /// Where the build writes `exit_code <n>` and `seconds <s>` when it ends.
    pub fn status_file(&self) -> &Path {
        &self.status_file
    }
}

impl Drop for FuzzBuild {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
    }
}

/// What cargo-fuzz 0.13 sets as `RUSTFLAGS` for `cargo fuzz build --dev --sanitizer none` on
/// Linux (its `src/project.rs`, `Project::cargo`): libFuzzer's coverage instrumentation, the
/// `fuzzing` cfg, and debug assertions. `RUSTFLAGS` from the environment is appended, as
/// cargo-fuzz does. No `-Clink-dead-code`: cargo-fuzz strips dead code by default since 0.13
/// (rust-fuzz/cargo-fuzz#394), and keeping it made the binaries 150 MB and each execution
/// about twice as slow (libFuzzer scans a coverage counter for every linked edge).
const CARGO_FUZZ_RUSTFLAGS: [&str; 9] = [
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg=fuzzing",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cdebug-assertions",
];

/// The flags as `CARGO_ENCODED_RUSTFLAGS` (separated by 0x1f, so that no flag is split on
/// spaces), with the environment's `RUSTFLAGS` after them.
fn encoded_rustflags(extra: Option<&str>) -> String {
    let mut flags: Vec<&str> = CARGO_FUZZ_RUSTFLAGS.to_vec();
    flags.extend(extra.into_iter().flat_map(str::split_whitespace));
    flags.join("\x1f")
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("cannot run {rustc} -vV"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
        .with_context(|| format!("`{rustc} -vV` printed no `host:` line"))
}

/// Starts the build of `fuzz/`'s targets into `<target dir>/fuzz`.
pub fn start(root: &Path, cargo: &str) -> Result<FuzzBuild> {
    let fuzz_dir = root.join("fuzz");
    // Its own directory: the instrumented build must not share artifacts with the main one.
    let target_dir = crate::previous_release::target_dir(root).join("fuzz");
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("cannot create {}", target_dir.display()))?;
    let status_file = target_dir.join("build.status");
    match std::fs::remove_file(&status_file) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("cannot remove {}", status_file.display()));
        }
    }
    // The fuzz crate is a workspace of its own: its lock file starts as a copy of the main one
    // on every run, so the product crates are fuzzed with the dependency versions they ship with
    // (cargo then only adds libfuzzer-sys).
    let lock = fuzz_dir.join("Cargo.lock");
    std::fs::copy(root.join("Cargo.lock"), &lock)
        .with_context(|| format!("cannot copy Cargo.lock to {}", lock.display()))?;
    let log_path = target_dir.join("build.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let rustflags = encoded_rustflags(std::env::var("RUSTFLAGS").ok().as_deref());
    let started = Instant::now();
    let child = Command::new("nice")
        .args(["-n", "19"])
        .arg(cargo)
        .current_dir(root)
        .args(["build", "--manifest-path"])
        .arg(fuzz_dir.join("Cargo.toml"))
        .args(["--target", &host_triple()?, "--bins"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTFLAGS")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {cargo}"))?;
    eprintln!(
        "xtask: building the fuzz targets in the background (nice 19), log in {}",
        log_path.display()
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let waiter = std::thread::spawn({
        let cancel = cancel.clone();
        let status_file = status_file.clone();
        move || wait(child, &cancel, started, &status_file)
    });
    Ok(FuzzBuild {
        status_file,
        cancel,
        waiter: Some(waiter),
    })
}

fn wait(mut child: Child, cancel: &AtomicBool, started: Instant, status_file: &Path) {
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code().unwrap_or(-1),
            Ok(None) if cancel.load(Ordering::Relaxed) => {
                // cargo and every compiler under it: cargo does not stop its running rustc
                // processes when it is killed. (Not a process group of their own, so that a
                // Ctrl-C in the terminal still reaches them.)
                let mut pids = descendants(child.id());
                pids.push(child.id());
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg("--")
                    .args(pids.iter().map(u32::to_string))
                    .status();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(err) => {
                eprintln!("xtask: cannot wait for the fuzz build: {err}");
                break -1;
            }
        }
    };
    // Written beside and renamed into place: the drill never reads half a file.
    let text = format!(
        "exit_code {code}\nseconds {:.1}\n",
        started.elapsed().as_secs_f64()
    );
    let staged = status_file.with_extension("status.tmp");
    if let Err(err) =
        std::fs::write(&staged, text).and_then(|()| std::fs::rename(&staged, status_file))
    {
        eprintln!(
            "xtask: cannot write {}: {err}; the fuzz drill will wait for it in vain",
            status_file.display()
        );
    }
}

/// Every process below `pid`, from the `children` lists of each of its threads in /proc (cargo
/// starts compilers from several threads).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.filter_map(|t| t.ok()) {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                found.push(child);
                queue.push(child);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rustflags_are_cargo_fuzz_flags_then_the_environment() {
        let flags = encoded_rustflags(Some(" -Ctarget-cpu=native  -Copt-level=2"));
        let parts: Vec<&str> = flags.split('\x1f').collect();
        assert_eq!(parts.len(), CARGO_FUZZ_RUSTFLAGS.len() + 2);
        assert_eq!(parts[0], "-Cpasses=sancov-module");
        assert_eq!(
            parts[CARGO_FUZZ_RUSTFLAGS.len()..],
            ["-Ctarget-cpu=native", "-Copt-level=2"]
        );
        assert_eq!(
            encoded_rustflags(None).split('\x1f').count(),
            CARGO_FUZZ_RUSTFLAGS.len()
        );
    }

    /// A build that is cancelled leaves no process behind: `sh` and the `sleep` it started.
    #[test]
    fn descendants_finds_grandchildren() {
        fn commands(pids: &[u32]) -> Vec<String> {
            pids.iter()
                .map(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                })
                .collect()
        }
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .spawn()
            .unwrap();
        // A forked child shows up as `sh` until its exec of `sleep` completes, so wait for both
        // the process and its exec rather than only the process.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = descendants(child.id());
        while (found.len() < 2 || commands(&found).iter().any(|c| c != "sleep"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
            found = descendants(child.id());
        }
        let names = commands(&found);
        let _ = Command::new("kill")
            .args(found.iter().map(u32::to_string))
            .status();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(names, ["sleep", "sleep"], "{found:?}");
    }
}
