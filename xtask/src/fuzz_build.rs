//! The instrumented build of the cargo-fuzz targets in `fuzz/`, for the `fuzz` drill.
//!
//! `cargo xtask drills` starts it as soon as cargo-fuzz is installed, in the background at the
//! lowest priority (`nice -n 19`): on a fresh machine it is minutes of compiling, and started
//! first it takes the CPU the other builds leave idle (their serial phases: build scripts,
//! linking, the tail of the crate graph) and then the CPU the outage drills leave idle (they wait
//! on outages at a modest request rate), without disturbing what either measures. The drill
//! waits for the status file this writes (`CLOUD_FUZZ_BUILD_STATUS`) and reads the build's log
//! beside it when the build failed.
//!
//! - `--sanitizer none`: every workspace crate has `unsafe_code = "forbid"`, so AddressSanitizer
//!   could only find memory errors in dependencies' unsafe code; what the drill looks for
//!   (panics, overflow, runaway recursion, hangs, memory blow-ups) libFuzzer catches without it.
//!   It also keeps the build on stable Rust and runs about twice as many executions per second.
//! - `--dev` with the fuzz crate's own dev profile (`fuzz/Cargo.toml`): cargo-fuzz's release
//!   mode forces one codegen unit on every crate, which takes far longer to build on a 2-core
//!   machine than the fuzzing time itself.

use std::os::unix::process::CommandExt;
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

/// Starts `cargo fuzz build` for `fuzz/` into `<target dir>/fuzz`.
pub fn start(root: &Path, cargo_fuzz: &Path) -> Result<FuzzBuild> {
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
    let started = Instant::now();
    let child = Command::new("nice")
        .args(["-n", "19"])
        .arg(cargo_fuzz)
        .current_dir(root)
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
        // Its own process group, so that a cancel stops cargo and its compilers too.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {}", cargo_fuzz.display()))?;
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
                let _ = Command::new("kill")
                    .args(["-TERM", "--", &format!("-{}", child.id())])
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
