//! Repository automation. `cargo xtask test` is the one command that runs every check;
//! CI (`.ci/run` and the GitHub workflows) calls the same steps, so CI is never a black box.

mod ci;
mod drills;
mod fuzz_build;
mod gitops;
mod helm;
mod previous_release;
mod servers;
mod steps;
mod tools;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::steps::{Ctx, Step};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Repository automation for the cloud platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every check: fmt, clippy, the test suite and the infrastructure checks.
    Test {
        /// Run only the steps whose name contains this text (repeatable).
        #[arg(long = "only")]
        only: Vec<String>,
        /// Skip the steps whose name contains this text (repeatable). Refused under CI=true.
        #[arg(long = "skip")]
        skip: Vec<String>,
    },
    /// Run the steps the CI workflow runs (.github/workflows/ci.yml), in its order, with a summary.
    Ci {
        /// Run only this step (exact name, repeatable); ci.yml's jobs use this.
        #[arg(long = "step")]
        step: Vec<String>,
        /// Run every step except this one (exact name, repeatable).
        #[arg(long = "except")]
        except: Vec<String>,
    },
    /// Install every tool the checks need into the tools cache and print where it lives.
    Tools {
        /// Also install the benchmarks' tools (nginx, wrk, oha) and print `export NAME=path`
        /// lines for the scripts under bench/ to `eval`.
        #[arg(long)]
        bench: bool,
    },
    /// Run the reliability drills (crates/cloud-drills) against real processes; prints the table
    /// for docs/reliability.md. Arguments after `--` go to the drills, e.g. `-- --only redis`.
    Drills {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    if let Some(code) = refuse_if_built_from_another_checkout() {
        return code;
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = repo_root()?;
    match cli.command {
        Command::Test { only, skip } => {
            let ci = steps::running_in_ci();
            if ci && !skip.is_empty() {
                anyhow::bail!("--skip is refused under CI=true: CI runs every step");
            }
            let mut ctx = Ctx::new(root, ci)?;
            let selected: Vec<Step> = test_steps()
                .into_iter()
                .filter(|s| only.is_empty() || only.iter().any(|o| s.name.contains(o.as_str())))
                .filter(|s| !skip.iter().any(|k| s.name.contains(k.as_str())))
                .collect();
            steps::run_all(&mut ctx, &selected)
        }
        Command::Ci { step, except } => ci::run(root, &step, &except),
        Command::Tools { bench } => {
            let tools = tools::Tools::new()?;
            if bench {
                #[allow(clippy::print_stdout)] // the command's output: shell exports for bench/
                for (name, path) in tools.bench_tools()? {
                    println!("export {name}={}", path.display());
                }
                return Ok(());
            }
            tools.install_all()?;
            #[allow(clippy::print_stdout)] // the command's output: where the tools live
            {
                println!("{}", tools.root().display());
            }
            Ok(())
        }
        Command::Drills { args } => drills::run(&root, &args),
    }
}

/// The ordered list of steps behind `cargo xtask test`. Later checks plug in here.
fn test_steps() -> Vec<Step> {
    vec![
        Step::new("fmt", steps::cargo_fmt),
        Step::new("clippy", steps::cargo_clippy),
        Step::new("tests", steps::cargo_tests),
        Step::new("helm-lint", helm::lint),
        Step::new("helm-schemas", helm::schemas),
        Step::new("helm-policy", helm::policy),
        Step::new("helm-trivy", helm::trivy),
        Step::new("helm-contract", helm::contract),
        Step::new("helm-binary", helm::binary),
        Step::new("workflows", ci::workflows),
        Step::new("dockerfiles", ci::dockerfiles),
        Step::new("image-runtime", ci::image_runtime).with_head_start(ci::image_runtime_head_start),
        Step::new("deny", ci::deny),
        Step::new("openapi", ci::openapi),
        Step::new("gitops-validate", gitops::env_validate),
        Step::new("gitops-diff", gitops::env_diff),
        Step::new("gitops-doc", gitops::environments_doc),
    ]
}

/// Steps that `cargo xtask ci` offers but `cargo xtask test` does not run yet, because they do
/// not pass yet (see docs/ci-cd.md, "Not yet in cargo xtask test"). None at the moment: a step
/// that cannot pass yet goes here, with the reason, until it does.
pub fn pending_steps() -> Vec<Step> {
    Vec::new()
}

/// Every step `cargo xtask ci` knows: the test steps, then the pending ones.
pub fn all_steps() -> Vec<Step> {
    test_steps().into_iter().chain(pending_steps()).collect()
}

/// `cargo run` sets CARGO_MANIFEST_DIR at run time as at build time. They differ when two
/// checkouts share one CARGO_TARGET_DIR: cargo names a workspace crate's build by its path inside
/// the workspace, so both checkouts use the same artifacts, and it calls them up to date when the
/// running checkout's files are older than the other checkout's last build. Then this binary, and
/// every crate a step builds, is the other checkout's code. Refuse rather than check the wrong
/// tree. (A fresh clone, as CI makes, is newer than any build and is rebuilt: no error.)
fn refuse_if_built_from_another_checkout() -> Option<std::process::ExitCode> {
    let built_for = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let running_for = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    if running_for == built_for {
        return None;
    }
    eprintln!(
        "xtask: error: this xtask binary was built from {} but `cargo xtask` runs in {}: the two \
         checkouts share one CARGO_TARGET_DIR and cargo took the other checkout's builds as this \
         one's (its files are older). Give each checkout its own CARGO_TARGET_DIR, or make this \
         checkout's sources newer (`git ls-files -z '*.rs' | xargs -0 touch`) and run again",
        built_for.display(),
        running_for.display()
    );
    Some(std::process::ExitCode::FAILURE)
}

fn repo_root() -> Result<PathBuf> {
    // xtask lives at <root>/xtask, and cargo sets CARGO_MANIFEST_DIR at build time.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));

    manifest
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("xtask manifest dir {} has no parent", manifest.display()))
}
