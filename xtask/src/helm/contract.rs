//! The contract between a service chart and the binary it deploys, read from the rendered
//! manifests: the container's args, environment, ports, probes and config files, and the
//! metrics the canary AnalysisTemplates query.
//!
//! [`check`] verifies what can be verified without the binary: the args name a file a mounted
//! ConfigMap provides, the env sets the listen address and ports the container declares, every
//! probe targets the admin port, the config file holds only the keys cloud-kit's ServerConfig and
//! TelemetryConfig define, and the analysis queries use only cloud-kit's RED metrics.
//!
//! [`launch_plan`] turns a contract into what a test needs to start the real binary with exactly
//! that configuration (files written under a temp dir, secrets substituted, listening on
//! loopback); starting the binaries and probing them is wired by the lead once both services land.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    Value(String),
    /// `secretKeyRef`: filled by an ExternalSecret in the cluster, by a test value in tests.
    Secret {
        name: String,
        key: String,
    },
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub kind: String,
    pub path: String,
    pub port: u16,
}

/// A metric an AnalysisTemplate queries, with the labels the query selects or groups on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricUse {
    pub name: String,
    pub labels: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct Contract {
    pub workload: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<(String, EnvSource)>,
    pub ports: BTreeMap<String, u16>,
    pub probes: Vec<Probe>,
    /// Files mounted from ConfigMaps: absolute path in the container -> content.
    pub files: BTreeMap<String, String>,
    pub analysis_metrics: Vec<MetricUse>,
}

/// Labels Prometheus adds to every series from the scrape target (not the binary's).
pub const TARGET_LABELS: [&str; 5] = [
    "namespace",
    "service",
    "pod",
    "job",
    "rollouts_pod_template_hash",
];
/// cloud-kit's RED metrics (crates/cloud-kit), with the labels the binary itself puts on them.
pub const BINARY_METRICS: [(&str, &[&str]); 2] = [
    ("http_requests_total", &["method", "route", "status"]),
    (
        "http_request_duration_seconds_bucket",
        &["method", "route", "status", "le"],
    ),
];
/// The config keys the chart may set: cloud_kit::ServerConfig (less host and ports, which come
/// from the environment) and cloud_kit::TelemetryConfig. Service-specific keys join as they land.
pub const CONFIG_KEYS: [&str; 5] = [
    "server.drain_period",
    "server.shutdown_timeout",
    "server.max_body_bytes",
    "telemetry.log_format",
    "telemetry.log_level",
];

fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Reads the contract of the one Deployment or Rollout in a service chart's render.
pub fn extract(objects: &[Value]) -> Result<Contract> {
    let workloads: Vec<&Value> = objects
        .iter()
        .filter(|o| matches!(s(o, "/kind"), Some("Deployment" | "Rollout")))
        .collect();
    let [workload] = workloads.as_slice() else {
        bail!(
            "expected exactly one Deployment or Rollout, found {}",
            workloads.len()
        );
    };
    let name = format!(
        "{}/{}",
        s(workload, "/kind").unwrap_or("?"),
        s(workload, "/metadata/name").unwrap_or("?")
    );
    let pod = workload
        .pointer("/spec/template/spec")
        .with_context(|| format!("{name} has no pod spec"))?;
    let container = pod
        .pointer("/containers/0")
        .with_context(|| format!("{name} has no container"))?;
    let strings = |p: &str| -> Vec<String> {
        container
            .pointer(p)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let mut ports = BTreeMap::new();
    for p in container
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let port = p
            .get("containerPort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok());
        if let (Some(n), Some(port)) = (s(p, "/name"), port) {
            ports.insert(n.to_string(), port);
        }
    }
    let mut probes = Vec::new();
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let Some(probe) = container.get(kind) else {
            continue;
        };
        let path = s(probe, "/httpGet/path")
            .with_context(|| format!("{name}: {kind} is not an httpGet probe"))?;
        let port = match probe.pointer("/httpGet/port") {
            Some(Value::String(named)) => *ports.get(named).with_context(|| {
                format!("{name}: {kind} uses port {named:?}, which the container does not declare")
            })?,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .context("probe port out of range")?,
            _ => bail!("{name}: {kind} has no port"),
        };
        probes.push(Probe {
            kind: kind.into(),
            path: path.into(),
            port,
        });
    }
    let mut env = Vec::new();
    for e in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let var = s(e, "/name").context("env var without a name")?.to_string();
        let source = match (e.get("value"), e.pointer("/valueFrom/secretKeyRef")) {
            (Some(v), _) => EnvSource::Value(v.as_str().unwrap_or_default().to_string()),
            (None, Some(r)) => EnvSource::Secret {
                name: s(r, "/name").unwrap_or_default().to_string(),
                key: s(r, "/key").unwrap_or_default().to_string(),
            },
            (None, None) => bail!("{name}: env var {var} is neither a value nor a secretKeyRef"),
        };
        env.push((var, source));
    }
    let mut files = BTreeMap::new();
    for mount in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(vol), Some(path)) = (s(mount, "/name"), s(mount, "/mountPath")) else {
            continue;
        };
        let volume = pod
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|v| s(v, "/name") == Some(vol));
        let Some(cm_name) = volume.and_then(|v| s(v, "/configMap/name")) else {
            continue;
        };
        let cm = objects
            .iter()
            .find(|o| s(o, "/kind") == Some("ConfigMap") && s(o, "/metadata/name") == Some(cm_name))
            .with_context(|| {
                format!("{name} mounts ConfigMap {cm_name}, which the chart does not render")
            })?;
        for (key, content) in cm
            .get("data")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            files.insert(
                format!("{}/{key}", path.trim_end_matches('/')),
                content.as_str().unwrap_or_default().to_string(),
            );
        }
    }
    let mut analysis_metrics: Vec<MetricUse> = Vec::new();
    for t in objects
        .iter()
        .filter(|o| s(o, "/kind") == Some("AnalysisTemplate"))
    {
        for m in t
            .pointer("/spec/metrics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(q) = s(m, "/provider/prometheus/query") {
                analysis_metrics.extend(promql_metrics(q));
            }
        }
    }
    // One entry per metric, with every label any query uses on it.
    let mut merged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in analysis_metrics {
        merged.entry(m.name).or_default().extend(m.labels);
    }
    let analysis_metrics = merged
        .into_iter()
        .map(|(name, labels)| MetricUse { name, labels })
        .collect();
    Ok(Contract {
        workload: name,
        image: s(container, "/image").unwrap_or_default().to_string(),
        args: strings("/args"),
        env,
        ports,
        probes,
        files,
        analysis_metrics,
    })
}

/// The metric selectors of a PromQL query: `name{label op "v", ...}`, plus `by (...)` labels
/// attributed to the metric they group.
pub fn promql_metrics(query: &str) -> Vec<MetricUse> {
    let bytes = query.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(open) = query[i..].find('{').map(|o| o + i) {
        let start = query[..open]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |p| p + 1);
        let Some(close) = selector_end(query, open) else {
            break;
        };
        let name = &query[start..open];
        if !name.is_empty() && !bytes[start].is_ascii_digit() {
            let labels = query[open + 1..close]
                .split(',')
                .filter_map(|m| m.split(['=', '!']).next())
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            out.push(MetricUse {
                name: name.to_string(),
                labels,
            });
        }
        i = close + 1;
    }
    // `sum by (le) (rate(metric{...}))`: the grouping labels belong to the metric inside.
    let mut rest = query;
    while let Some(pos) = rest.find("by (") {
        let after = &rest[pos + 4..];
        let Some(end) = after.find(')') else { break };
        let labels: Vec<String> = after[..end]
            .split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(inner) = promql_metrics(&after[end..]).into_iter().next()
            && let Some(m) = out.iter_mut().find(|m| m.name == inner.name)
        {
            m.labels.extend(labels);
        }
        rest = &after[end..];
    }
    out
}

/// The index of the `}` closing the selector opened at `open`, skipping quoted label values
/// (which may hold braces, e.g. Argo Rollouts' `{{args.namespace}}`).
fn selector_end(query: &str, open: usize) -> Option<usize> {
    let mut quote = None;
    let mut escaped = false;
    for (i, ch) in query[open + 1..].char_indices() {
        match (quote, ch) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(ch),
            (None, '}') => return Some(open + 1 + i),
            (None, _) => {}
        }
    }
    None
}

/// The dotted keys of the mounted config file (the file named by `--config`).
pub fn config_keys(c: &Contract) -> Result<Vec<String>> {
    let path = config_path(c).context("the args name no --config file")?;
    let text = c
        .files
        .get(path)
        .with_context(|| format!("--config {path} is not a file any mounted ConfigMap provides"))?;
    let value: Value = serde_yaml::from_str(text).with_context(|| format!("{path} is not YAML"))?;
    let mut keys = Vec::new();
    flatten_keys("", &value, &mut keys);
    Ok(keys)
}

fn flatten_keys(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v.as_object() {
        Some(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_keys(&key, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

fn config_path(c: &Contract) -> Option<&str> {
    c.args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| c.args.get(i + 1))
        .map(String::as_str)
}

fn env_value<'a>(c: &'a Contract, name: &str) -> Option<&'a EnvSource> {
    c.env.iter().find(|(n, _)| n == name).map(|(_, s)| s)
}

/// Everything that can be checked without the binary. Returns the problems found.
pub fn check(c: &Contract, prefix: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if c.args.len() != 2 || config_path(c) != Some("/etc/cloud/config.yaml") {
        problems.push(format!(
            "args are {:?}, expected [\"--config\", \"/etc/cloud/config.yaml\"]",
            c.args
        ));
    }
    match config_keys(c) {
        Ok(keys) => {
            for k in keys.iter().filter(|k| !CONFIG_KEYS.contains(&k.as_str())) {
                problems.push(format!("config file key {k} is not a key the binary is known to accept ({CONFIG_KEYS:?})"));
            }
        }
        Err(err) => problems.push(format!("{err:#}")),
    }
    let expect_env = |name: &str, want: Option<String>, problems: &mut Vec<String>| match (
        env_value(c, name),
        want,
    ) {
        (Some(EnvSource::Value(v)), Some(w)) if *v == w => {}
        (got, want) => problems.push(format!("env {name} is {got:?}, expected {want:?}")),
    };
    expect_env(
        &format!("{prefix}_SERVER__HOST"),
        Some("0.0.0.0".into()),
        &mut problems,
    );
    expect_env(
        &format!("{prefix}_SERVER__PORT"),
        c.ports.get("http").map(u16::to_string),
        &mut problems,
    );
    expect_env(
        &format!("{prefix}_SERVER__ADMIN_PORT"),
        c.ports.get("admin").map(u16::to_string),
        &mut problems,
    );
    for (name, _) in &c.env {
        if !name.starts_with(&format!("{prefix}_")) || !name.contains("__") {
            problems.push(format!(
                "env {name} is not a {prefix}_SECTION__KEY variable the binary reads"
            ));
        }
    }
    let admin = c.ports.get("admin").copied();
    for (kind, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        match c.probes.iter().find(|p| p.kind == kind) {
            None => problems.push(format!("no {kind}")),
            Some(p) if Some(p.port) != admin || p.path != path => problems.push(format!(
                "{kind} probes {}:{}, but the binary serves {path} on the admin port {admin:?}",
                p.port, p.path
            )),
            Some(_) => {}
        }
    }
    for m in &c.analysis_metrics {
        match BINARY_METRICS.iter().find(|(name, _)| *name == m.name) {
            None => problems.push(format!(
                "analysis queries metric {}, which cloud-kit does not expose",
                m.name
            )),
            Some((_, labels)) => {
                for l in m.labels.iter().filter(|l| {
                    !labels.contains(&l.as_str()) && !TARGET_LABELS.contains(&l.as_str())
                }) {
                    problems.push(format!("analysis queries {}{{{l}}}, a label neither the binary nor the scrape sets", m.name));
                }
            }
        }
    }
    problems
}

/// How to start the real binary with a rendered contract, for a test on one machine.
// Not used by a step yet: starting the service binaries is wired once both services land.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Files to write before the start: path on this machine -> content.
    pub files: BTreeMap<PathBuf, String>,
    pub http_port: u16,
    pub admin_port: u16,
    pub probes: Vec<(String, u16)>,
}

/// Maps the rendered container spec onto this machine: every mounted file goes under `dir`
/// (args rewritten to match), every secretKeyRef gets `secrets[<secret name>]`, and the listen
/// host becomes 127.0.0.1 (tests never listen on other addresses). Ports stay as rendered.
#[allow(dead_code)]
pub fn launch_plan(
    c: &Contract,
    prefix: &str,
    dir: &Path,
    secrets: &BTreeMap<String, String>,
) -> Result<LaunchPlan> {
    let files: BTreeMap<PathBuf, String> = c
        .files
        .iter()
        .map(|(path, content)| (dir.join(path.trim_start_matches('/')), content.clone()))
        .collect();
    let args = c
        .args
        .iter()
        .map(|a| {
            if c.files.contains_key(a) {
                dir.join(a.trim_start_matches('/')).display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let mut env = Vec::new();
    for (name, source) in &c.env {
        let value = match source {
            EnvSource::Value(_) if *name == format!("{prefix}_SERVER__HOST") => {
                "127.0.0.1".to_string()
            }
            EnvSource::Value(v) => v.clone(),
            EnvSource::Secret { name: secret, .. } => secrets
                .get(secret)
                .cloned()
                .with_context(|| format!("no test value for secret {secret} (env {name})"))?,
        };
        env.push((name.clone(), value));
    }
    let port = |n: &str| {
        c.ports
            .get(n)
            .copied()
            .with_context(|| format!("the container declares no {n} port"))
    };
    Ok(LaunchPlan {
        args,
        env,
        files,
        http_port: port("http")?,
        admin_port: port("admin")?,
        probes: c.probes.iter().map(|p| (p.path.clone(), p.port)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(text: &str) -> Vec<Value> {
        crate::helm::parse_objects(text).unwrap()
    }

    #[test]
    fn promql_selectors_and_grouping_labels_are_found() {
        let q = r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{namespace="{{args.namespace}}",service="b"}[2m])))
            and on() (sum(rate(http_requests_total{namespace="a",status!~"5.."}[2m])) >= 0.2)"#;
        let m = promql_metrics(q);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].name, "http_request_duration_seconds_bucket");
        assert_eq!(
            m[0].labels,
            ["le", "namespace", "service"].map(String::from).into()
        );
        assert_eq!(m[1].name, "http_requests_total");
        assert_eq!(
            m[1].labels,
            ["namespace", "status"].map(String::from).into()
        );
    }

    #[test]
    fn the_broken_fixture_fails_the_contract_check() {
        let c = extract(&objects(include_str!(
            "../../fixtures/helm/broken-manifests/contract-mismatch.yaml"
        )))
        .unwrap();
        let problems = check(&c, "IDENTITY");
        let all = problems.join("\n");
        assert!(all.contains("readinessProbe probes 8080:/readyz"), "{all}");
        assert!(all.contains("IDENTITY_SERVER__ADMIN_PORT"), "{all}");
        assert!(all.contains("config file key server.port"), "{all}");
        assert!(all.contains("http_requests_count"), "{all}");
        assert!(all.contains("GATEWAY_REDIS__URL"), "{all}");
    }

    #[test]
    fn a_launch_plan_maps_files_secrets_and_host_onto_this_machine() {
        let c = extract(&objects(include_str!(
            "../../fixtures/helm/broken-manifests/contract-mismatch.yaml"
        )))
        .unwrap();
        let dir = Path::new("/tmp/x");
        let secrets = BTreeMap::from([(
            "svc-database-url".to_string(),
            "postgres://127.0.0.1/db".to_string(),
        )]);
        let plan = launch_plan(&c, "IDENTITY", dir, &secrets).unwrap();
        assert_eq!(
            plan.args,
            vec![
                "--config".to_string(),
                "/tmp/x/etc/cloud/config.yaml".to_string()
            ]
        );
        assert!(
            plan.files
                .contains_key(Path::new("/tmp/x/etc/cloud/config.yaml"))
        );
        assert!(
            plan.env
                .contains(&("IDENTITY_SERVER__HOST".into(), "127.0.0.1".into()))
        );
        assert!(plan.env.contains(&(
            "IDENTITY_DATABASE__URL".into(),
            "postgres://127.0.0.1/db".into()
        )));
        assert!(
            launch_plan(&c, "IDENTITY", dir, &BTreeMap::new()).is_err(),
            "a missing secret value is an error"
        );
    }
}
