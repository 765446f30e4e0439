//! `cargo xtask drills [-- <args>]`: builds what the reliability drills run and runs them
//! (`crates/cloud-drills`, docs/reliability.md).
//!
//! Debug builds: the dev profile is what `cargo xtask test` already builds, so the drills reuse
//! it instead of a release build with thin LTO (minutes on a small machine), and 200 req/s is far
//! below what a debug build serves. The drills spawn the service binaries from the same target
//! directory, so they are built first.
//!
//! On a fresh machine the run is bound by CPU, so nothing waits that need not: while this thread
//! builds the previous release and this checkout, a second one installs the drills' tools
//! (cargo-fuzz is compiled from crates.io; unleash-server and schemathesis are downloaded) and
//! starts the fuzz targets' build as soon as cargo-fuzz is there (see fuzz_build.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::fuzz_build::{self, FuzzBuild};
use crate::{previous_release, steps, tools};

/// What the background thread prepared: the drills' environment and the running fuzz build.
struct Prepared {
    env: Vec<(&'static str, PathBuf)>,
    /// Kept alive (and so not cancelled) until the drills are done.
    fuzz_build: Option<FuzzBuild>,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ci = steps::running_in_ci();
    let background = {
        let (root, args) = (root.to_path_buf(), args.to_vec());
        std::thread::spawn(move || prepare(&root, &args, ci))
    };
    let built = build(root, &cargo, args, ci);
    // Joined before `built` is looked at: on an error the fuzz build is cancelled, not orphaned.
    let prepared = background
        .join()
        .map_err(|_| anyhow::anyhow!("installing the drills' tools panicked"))?;
    let (previous, drills_binary) = built?;
    let prepared = prepared?;
    let mut drills = Command::new(drills_binary);
    drills.envs(prepared.env.iter().map(|(var, path)| (*var, path)));
    if let Some(dir) = previous {
        drills.env("CLOUD_DRILLS_PREVIOUS_BIN_DIR", dir);
    }
    if let Some(build) = &prepared.fuzz_build {
        drills.env("CLOUD_FUZZ_BUILD_STATUS", build.status_file());
    }
    let status = drills.current_dir(root).args(args).status()?;
    drop(prepared);
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
/// the selected drills' tools are installed. cargo-fuzz comes first: the fuzz build starts as
/// soon as it is there.
const DRILL_TOOLS: [(&str, &str, Install); 4] = [
    ("fuzz", "CLOUD_CARGO_FUZZ", tools::Tools::cargo_fuzz),
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

/// Installs the selected drills' tools and starts the fuzz build. Outside CI a missing tool only
/// fails its own drill (with a message naming the variable); under CI it is an error here.
fn prepare(root: &Path, args: &[String], ci: bool) -> Result<Prepared> {
    let tools = tools::Tools::new()?;
    let mut prepared = Prepared {
        env: Vec::new(),
        fuzz_build: None,
    };
    for (drill, var, install) in DRILL_TOOLS {
        if !tools::drill_wanted(args, drill) {
            continue;
        }
        match install(&tools) {
            Ok(path) if var == "CLOUD_CARGO_FUZZ" => {
                prepared.fuzz_build = Some(fuzz_build::start(root, &path)?);
            }
            Ok(path) => prepared.env.push((var, path)),
            Err(err) if ci => {
                return Err(err.context(format!("CI=true: the {drill} drill needs its tool")));
            }
            Err(err) => eprintln!("xtask: the {drill} drill's tool is not available: {err:#}"),
        }
    }
    Ok(prepared)
}
