//! `cargo xtask drills [-- <args>]`: builds what the reliability drills run and runs them
//! (`crates/cloud-drills`, docs/reliability.md).
//!
//! Debug builds: the dev profile is what `cargo xtask test` already builds, so the drills reuse
//! its compiled dependencies instead of a release build with thin LTO (minutes on a small
//! machine), and 200 req/s is far below what a debug build serves. Only the workspace's own
//! crates are compiled again: `cargo xtask test` compiles them with clippy's lints (see
//! `Ctx::cargo_with_lints`), and cargo keeps those artifacts apart. The drills spawn the service
//! binaries from the same target directory, so they are built first.
//!
//! On a fresh machine the run is bound by CPU, so nothing waits that need not: the fuzz targets'
//! build starts first, in the background (see fuzz_build.rs); while this thread builds the
//! previous release and this checkout, a second one installs the drills' tools (unleash-server,
//! schemathesis and nginx are downloaded).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::fuzz_build;
use crate::{previous_release, steps, tools};

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ci = steps::running_in_ci();
    // Kept alive (and so not cancelled) until the drills are done.
    let fuzz_build = if tools::drill_wanted(args, "fuzz") {
        Some(fuzz_build::start(root, &cargo)?)
    } else {
        None
    };
    let background = {
        let args = args.to_vec();
        std::thread::spawn(move || prepare(&args, ci))
    };
    let built = build(root, &cargo, args, ci);
    // Joined before `built` is looked at, so that a failed build does not leave the installs
    // running; the fuzz build is cancelled when `fuzz_build` is dropped on any early return.
    let prepared = background
        .join()
        .map_err(|_| anyhow::anyhow!("installing the drills' tools panicked"))?;
    let (previous, drills_binary) = built?;
    let prepared = prepared?;
    let mut drills = Command::new(drills_binary);
    drills.envs(prepared.iter().map(|(var, path)| (*var, path)));
    if let Some(dir) = previous {
        drills.env("CLOUD_DRILLS_PREVIOUS_BIN_DIR", dir);
    }
    if let Some(build) = &fuzz_build {
        drills.env("CLOUD_FUZZ_BUILD_STATUS", build.status_file());
    }
    let status = drills.current_dir(root).args(args).status()?;
    drop(fuzz_build);
    anyhow::ensure!(
        status.success(),
        "the drills failed or found defects ({status})"
    );
    Ok(())
}

/// The previous release's binaries (the rolling drill's OLD, when that drill is selected), then
/// this checkout's. Returns the directory holding OLD, and the drills' runner, which finds the
/// services' binaries beside itself. (The runner is run directly, not with `cargo run -p
/// cloud-drills`: cargo would resolve the dependencies' features for that one package and
/// compile again the ones whose features differ from this three-package build's.)
fn build(
    root: &Path,
    cargo: &str,
    args: &[String],
    ci: bool,
) -> Result<(Option<PathBuf>, PathBuf)> {
    // Before this checkout's build: the old build writes the same file names into the shared
    // target directory.
    let previous = if tools::drill_wanted(args, "rolling") {
        match previous_release::binaries(root, cargo) {
            Ok(dir) => Some(dir),
            Err(err) if ci => {
                return Err(err.context("CI=true: the rolling drill needs the previous release"));
            }
            Err(err) => {
                eprintln!("xtask: the previous release is not available: {err:#}");
                None
            }
        }
    } else {
        None
    };
    let mut build = Command::new(cargo);
    build
        .current_dir(root)
        .args(["build", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit());
    for p in previous_release::DRILL_PACKAGES {
        build.args(["-p", p]);
    }
    let messages = steps::capture(&mut build).context("cargo build of the drills failed")?;
    let runner = steps::binaries_from_cargo_messages(&messages, &["cloud-drills"])?
        .pop()
        .context("no cloud-drills binary")?;
    Ok((previous, runner))
}

type Install = fn(&tools::Tools) -> Result<PathBuf>;

/// Each drill's tool from the tools cache, as the environment variable the drill reads. Only
/// the selected drills' tools are installed.
const DRILL_TOOLS: [(&str, &str, Install); 3] = [
    (
        "schemathesis",
        "CLOUD_SCHEMATHESIS_PYTHON",
        tools::Tools::schemathesis,
    ),
    (
        "unleash",
        "CLOUD_UNLEASH_SERVER",
        tools::Tools::unleash_server,
    ),
    ("rolling", "CLOUD_NGINX", tools::Tools::nginx),
];

/// Installs the selected drills' tools; returns the drills' environment. Outside CI a missing
/// tool only fails its own drill (with a message naming the variable); under CI it is an error
/// here.
fn prepare(args: &[String], ci: bool) -> Result<Vec<(&'static str, PathBuf)>> {
    let tools = tools::Tools::new()?;
    let mut env = Vec::new();
    for (drill, var, install) in DRILL_TOOLS {
        if !tools::drill_wanted(args, drill) {
            continue;
        }
        match install(&tools) {
            Ok(path) => env.push((var, path)),
            Err(err) if ci => {
                return Err(err.context(format!("CI=true: the {drill} drill needs its tool")));
            }
            Err(err) => eprintln!("xtask: the {drill} drill's tool is not available: {err:#}"),
        }
    }
    Ok(env)
}
