//! The step runner behind `cargo xtask test`: runs named steps in order, keeps going after a
//! failure so one run shows every problem, and prints a summary table with each step's time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::servers::Servers;
use crate::tools::Tools;

pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Everything a step may need. Servers and tools are started or installed lazily, on first use,
/// so `--only fmt` stays instant.
#[derive(Debug)]
pub struct Ctx {
    pub root: PathBuf,
    pub ci: bool,
    pub tools: Tools,
    pub servers: Servers,
    /// The image binaries' release build, when a step started it ahead of time.
    pub image_build: Option<crate::ci::ImageBuild>,
    clippy_driver: std::cell::OnceCell<PathBuf>,
}

impl Ctx {
    pub fn new(root: PathBuf, ci: bool) -> Result<Self> {
        Ok(Self {
            tools: Tools::new()?,
            servers: Servers::default(),
            image_build: None,
            clippy_driver: std::cell::OnceCell::new(),
            root,
            ci,
        })
    }

    /// A `cargo` command run from the repository root.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&self.root);
        cmd
    }

    /// A `cargo` command for the one dev-profile build that the `clippy` and `tests` steps, and
    /// every step that runs a workspace binary, share: the workspace's own crates are compiled by
    /// `clippy-driver` (a rustc that also runs clippy's lints) with warnings denied, as `cargo
    /// clippy -- -D warnings` would check them. A separate `cargo clippy` would compile every
    /// dependency a second time, in check mode, which was five of the twenty minutes of a cold
    /// `.ci/run` on 2 cores. Cargo keeps these artifacts apart from a plain build's (the wrapper
    /// is part of their hash), so every command of that build must come from here.
    pub fn cargo_with_lints(&self) -> Result<Command> {
        let driver = match self.clippy_driver.get() {
            Some(driver) => driver,
            None => {
                let found = clippy_driver()?;
                self.clippy_driver.get_or_init(|| found)
            }
        };
        let mut cmd = self.cargo();
        with_lints(&mut cmd, driver);
        Ok(cmd)
    }
}

/// `RUSTC_WORKSPACE_WRAPPER` and `CLIPPY_ARGS` as `cargo clippy -- -D warnings` sets them for
/// `cargo check` (clippy's driver reads its arguments from `CLIPPY_ARGS`, each one followed by
/// `__CLIPPY_HACKERY__`), but for any cargo command.
fn with_lints(cmd: &mut Command, clippy_driver: &Path) {
    cmd.env("RUSTC_WORKSPACE_WRAPPER", clippy_driver).env(
        "CLIPPY_ARGS",
        ["-D", "warnings"]
            .iter()
            .map(|arg| format!("{arg}__CLIPPY_HACKERY__"))
            .collect::<String>(),
    );
}

/// The toolchain's `clippy-driver`, beside the `rustc` that cargo uses.
fn clippy_driver() -> Result<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = capture(Command::new(&rustc).args(["--print", "sysroot"]))?;
    let driver = Path::new(sysroot.trim()).join("bin").join("clippy-driver");
    if !driver.is_file() {
        bail!(
            "{} does not exist: the lints need clippy (`rustup component add clippy`)",
            driver.display()
        );
    }
    Ok(driver)
}

pub type StepFn = fn(&mut Ctx) -> Result<()>;

#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub run: StepFn,
    /// Started before the first step, in the background, when this step is selected: work the
    /// step will need that can overlap the steps before it.
    pub head_start: Option<StepFn>,
}

impl Step {
    pub fn new(name: &'static str, run: StepFn) -> Self {
        Self {
            name,
            run,
            head_start: None,
        }
    }

    pub fn with_head_start(mut self, head_start: StepFn) -> Self {
        self.head_start = Some(head_start);
        self
    }
}

struct Outcome {
    name: &'static str,
    took: Duration,
    error: Option<String>,
}

pub fn run_all(ctx: &mut Ctx, steps: &[Step]) -> Result<()> {
    if steps.is_empty() {
        bail!("no step matched the selection");
    }
    let mut outcomes = Vec::new();
    for step in steps {
        if let Some(head_start) = step.head_start
            && let Err(err) = head_start(ctx)
        {
            // The step itself does the work then, and reports the problem if it persists.
            eprintln!("xtask: no head start for {}: {err:#}", step.name);
        }
    }
    for step in steps {
        eprintln!("\n==> xtask step: {}", step.name);
        let started = Instant::now();
        let result = (step.run)(ctx);
        let took = started.elapsed();
        if let Err(err) = &result {
            eprintln!(
                "==> step {} FAILED after {:.1}s: {err:#}",
                step.name,
                took.as_secs_f64()
            );
        }
        outcomes.push(Outcome {
            name: step.name,
            took,
            error: result.err().map(|e| format!("{e:#}")),
        });
    }
    ctx.servers.stop_all();
    print_summary(&outcomes);
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| o.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} step(s) failed: {}", failed.len(), failed.join(", "))
    }
}

fn print_summary(outcomes: &[Outcome]) {
    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    eprintln!("\n{:<width$}  {:>8}  result", "step", "time");
    eprintln!("{:-<width$}  {:->8}  ------", "", "");
    let mut total = Duration::ZERO;
    for o in outcomes {
        total += o.took;
        let result = match &o.error {
            None => "ok".to_string(),
            Some(e) => format!("FAILED: {}", e.lines().next().unwrap_or_default()),
        };
        eprintln!(
            "{:<width$}  {:>7.1}s  {result}",
            o.name,
            o.took.as_secs_f64()
        );
    }
    eprintln!("{:<width$}  {:>7.1}s", "total", total.as_secs_f64());
    let passed = outcomes.iter().filter(|o| o.error.is_none()).count();
    // The plain closing line CI reads: "N passed, N failed".
    eprintln!(
        "xtask: {} passed, {} failed",
        passed,
        outcomes.len() - passed
    );
}

/// Runs a command, streaming its output, and fails with the command line when it exits non-zero.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} exited with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing with its stderr when it exits non-zero.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} exited with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown} printed non-UTF-8 output"))
}

/// The workspace's binaries `names`, built the way the `tests` step builds them: `cargo test
/// --workspace --no-run` with the lints (a no-op after that step) builds each package's binaries
/// for its integration tests. Steps that run a binary use this instead of `cargo build -p` or
/// `cargo run -p`, which resolve the dependencies' features without the dev-dependencies' and so
/// compile again every dependency whose features differ: minutes per step on a cold 2-core machine (a
/// cold `.ci/run` spent 5 min 19 s on helm-binary's build and 7 min 25 s on the two OpenAPI
/// drift tests' before they did this). Returns the paths in the order of `names`.
pub fn workspace_binaries(ctx: &Ctx, names: &[&str]) -> Result<Vec<PathBuf>> {
    let out = capture(
        ctx.cargo_with_lints()?
            .args(["test", "--workspace", "--locked", "--no-run"])
            .arg("--message-format=json-render-diagnostics")
            // Compiler progress and errors as usual; only the JSON messages are captured.
            .stderr(std::process::Stdio::inherit()),
    )?;
    binaries_from_cargo_messages(&out, names)
}

/// The `executable` of each non-test `bin` artifact named in `names`, from cargo's JSON messages.
pub fn binaries_from_cargo_messages(messages: &str, names: &[&str]) -> Result<Vec<PathBuf>> {
    let mut found: Vec<Option<PathBuf>> = vec![None; names.len()];
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_bin = message["reason"] == "compiler-artifact"
            && message["profile"]["test"] == false
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        if !is_bin {
            continue;
        }
        let (Some(name), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i] = Some(PathBuf::from(executable));
        }
    }
    names
        .iter()
        .zip(found)
        .map(|(name, path)| {
            path.with_context(|| {
                format!("`cargo test --workspace --no-run` built no binary named {name}")
            })
        })
        .collect()
}

pub fn cargo_fmt(ctx: &mut Ctx) -> Result<()> {
    run_cmd(ctx.cargo().args(["fmt", "--all", "--check"]))
}

/// Clippy's lints, as errors, on every target of every workspace crate, in the build of the
/// test binaries (see [`Ctx::cargo_with_lints`]): the `tests` step then only runs them.
pub fn cargo_clippy(ctx: &mut Ctx) -> Result<()> {
    run_cmd(ctx.cargo_with_lints()?.args([
        "test",
        "--workspace",
        "--all-targets",
        "--locked",
        "--no-run",
    ]))
}

/// The Rust test suite, with the private servers and tools the tests need passed in the
/// environment (see `cloud-test-support`).
pub fn cargo_tests(ctx: &mut Ctx) -> Result<()> {
    let env = test_environment(ctx)?;
    let nextest = Command::new("cargo-nextest")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = ctx.cargo_with_lints()?;
    // CI splits the suite across jobs: CLOUD_TEST_PARTITION=hash:1/2 (nextest's --partition).
    let partition = std::env::var("CLOUD_TEST_PARTITION")
        .ok()
        .filter(|p| !p.is_empty());
    if nextest {
        cmd.args([
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ]);
        if let Some(partition) = &partition {
            cmd.args(["--partition", partition]);
        }
    } else {
        cmd.args(["test", "--workspace", "--locked", "--no-fail-fast"]);
    }
    cmd.envs(env);
    run_cmd(&mut cmd)?;
    // nextest does not run doctests; with partitions, the first one runs them.
    let first_partition = partition.as_deref().is_none_or(|p| p.contains(":1/"));
    if nextest && first_partition {
        run_cmd(
            ctx.cargo_with_lints()?
                .args(["test", "--workspace", "--locked", "--doc"]),
        )?;
    }
    Ok(())
}

/// Environment variables the Rust tests read to find private servers and installed tools.
pub fn test_environment(ctx: &mut Ctx) -> Result<Vec<(String, String)>> {
    let mut env = vec![(
        "CLOUD_TEST_REQUIRE_ALL".to_string(),
        if ctx.ci { "1" } else { "0" }.to_string(),
    )];
    env.push((
        "CLOUD_TEST_POSTGRES_URL".into(),
        ctx.servers.postgres()?.to_string(),
    ));
    env.push((
        "CLOUD_TEST_REDIS_URL".into(),
        ctx.servers.redis()?.to_string(),
    ));
    env.push((
        "CLOUD_TEST_POSTGRES_BIN".into(),
        crate::servers::postgres_bin_dir()?.display().to_string(),
    ));
    env.push((
        "CLOUD_TEST_REDIS_SERVER".into(),
        crate::servers::redis_server_bin()?.display().to_string(),
    ));
    for (name, path) in ctx.tools.test_tools()? {
        env.push((name, path.display().to_string()));
    }
    Ok(env)
}

pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn binaries_are_the_non_test_bin_artifacts_of_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"cloudctl"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"cloudctl"},"profile":{"test":true},"executable":"/t/debug/deps/cloudctl-0123"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"cloudctl"},"profile":{"test":false},"executable":"/t/debug/cloudctl"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"runbook"},"profile":{"test":true},"executable":"/t/debug/deps/runbook-4567"}"#,
            "not json: cargo prints only JSON here, but a stray line is skipped",
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            binaries_from_cargo_messages(&messages, &["cloudctl"]).unwrap(),
            vec![PathBuf::from("/t/debug/cloudctl")]
        );
        let err = binaries_from_cargo_messages(&messages, &["cloudctl", "runbook"]).unwrap_err();
        assert!(err.to_string().contains("no binary named runbook"), "{err}");
    }

    /// The shared build really lints: a fixture that plain cargo builds fails the linted build,
    /// with clippy's finding in the library and the compiler's warning in a test target.
    #[test]
    fn the_linted_build_denies_clippy_findings_and_warnings_in_every_target() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lints");
        let target = tempfile::tempdir().unwrap();
        let build = |lints: bool| {
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.current_dir(&fixture)
                .args(["test", "--all-targets", "--no-run", "--offline", "--locked"])
                .env("CARGO_TARGET_DIR", target.path())
                // This test runs inside the linted build's environment in `cargo xtask test`.
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("CLIPPY_ARGS");
            if lints {
                with_lints(&mut cmd, &clippy_driver().unwrap());
            }
            cmd.output().unwrap()
        };
        let plain = build(false);
        assert!(
            plain.status.success(),
            "{}",
            String::from_utf8_lossy(&plain.stderr)
        );
        let linted = build(true);
        let stderr = String::from_utf8_lossy(&linted.stderr);
        assert!(!linted.status.success(), "{stderr}");
        assert!(stderr.contains("clippy::unwrap-used"), "{stderr}");
        assert!(stderr.contains("unused variable"), "{stderr}");
    }
}
