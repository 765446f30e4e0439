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
//! loopback); the `helm-binary` step ([`super::binary`]) starts the binaries with it.
//!
//! [`scrape_problems`] checks that the series the analysis queries select are scraped: the
//! Service they name exists, selects the pods, and a ServiceMonitor scrapes it, copying the pod
//! label the canary is selected by.

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
    /// Every volumeMount path of the container (ConfigMaps and emptyDirs).
    pub mounts: Vec<String>,
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
/// Config keys the chart must never put in its ConfigMap, with the reason: the listen address
/// and ports come from the environment (the single source is `ports:` in values), and secrets
/// come from ExternalSecrets. Whether every other key exists is proven by the `helm-binary`
/// step: the real binary, whose Config structs deny unknown fields, starts with the file.
pub const FORBIDDEN_CONFIG_KEYS: [(&str, &str); 8] = [
    (
        "server.host",
        "the listen address comes from <PREFIX>_SERVER__HOST",
    ),
    (
        "server.port",
        "the ports come from <PREFIX>_SERVER__PORT (values `ports.http`)",
    ),
    (
        "server.admin_port",
        "the ports come from <PREFIX>_SERVER__ADMIN_PORT (values `ports.admin`)",
    ),
    (
        "database.url",
        "a secret: it comes from an ExternalSecret (values `secrets.items`)",
    ),
    (
        "redis.url",
        "a secret: it comes from an ExternalSecret (values `secrets.items`)",
    ),
    (
        "flags.unleash.token",
        "a secret: it comes from an ExternalSecret (values `secrets.items`)",
    ),
    (
        "bootstrap.admin_client_secret",
        "a secret: it comes from an ExternalSecret (values `secrets.items`)",
    ),
    (
        "keys.encryption_key",
        "a secret: it comes from an ExternalSecret (values `secrets.items`)",
    ),
];

fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Reads the contract of the one Deployment or Rollout in a service chart's render.
pub fn extract(objects: &[Value]) -> Result<Contract> {
    extract_kind(objects, &["Deployment", "Rollout"])
}

/// The contract of the chart's one Job (identity's PreSync migration), if it renders one.
pub fn extract_job(objects: &[Value]) -> Result<Option<Contract>> {
    if objects.iter().any(|o| s(o, "/kind") == Some("Job")) {
        extract_kind(objects, &["Job"]).map(Some)
    } else {
        Ok(None)
    }
}

fn extract_kind(objects: &[Value], kinds: &[&str]) -> Result<Contract> {
    let workloads: Vec<&Value> = objects
        .iter()
        .filter(|o| s(o, "/kind").is_some_and(|k| kinds.contains(&k)))
        .collect();
    let [workload] = workloads.as_slice() else {
        bail!(
            "expected exactly one {}, found {}",
            kinds.join(" or "),
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
    let mut mounts = Vec::new();
    for mount in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(vol), Some(path)) = (s(mount, "/name"), s(mount, "/mountPath")) else {
            continue;
        };
        mounts.push(path.trim_end_matches('/').to_string());
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
        mounts,
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
            for k in &keys {
                if let Some((_, why)) = FORBIDDEN_CONFIG_KEYS
                    .iter()
                    .find(|(key, _)| k == key || k.starts_with(&format!("{key}.")))
                {
                    problems.push(format!(
                        "config file key {k} must not be in the ConfigMap: {why}"
                    ));
                }
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

/// The label values an analysis query selects with `label="value"` (exact matches only).
fn selected_values(query: &str, label: &str) -> BTreeSet<String> {
    let needle = format!("{label}=\"");
    let mut out = BTreeSet::new();
    let mut rest = query;
    while let Some(pos) = rest.find(&needle) {
        let preceded_by_name = rest[..pos]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let after = &rest[pos + needle.len()..];
        let Some(end) = after.find('"') else { break };
        if !preceded_by_name {
            out.insert(after[..end].to_string());
        }
        rest = &after[end..];
    }
    out
}

/// What the analysis queries need from the scrape, checked on the render: every Service a query
/// selects (`service="..."`) exists, selects the workload's pods, and is scraped by a
/// ServiceMonitor on one of its ports; a query on `rollouts_pod_template_hash` needs that
/// ServiceMonitor to copy the pod label `rollouts-pod-template-hash`. Without these the
/// queries match no series and every canary measurement is inconclusive.
pub fn scrape_problems(objects: &[Value]) -> Vec<String> {
    use super::policy::selector_matches;
    let labels_of = |v: Option<&Value>| -> BTreeMap<String, String> {
        v.and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let of_kind = |kind: &'static str| objects.iter().filter(move |o| s(o, "/kind") == Some(kind));
    let pod_labels: Vec<BTreeMap<String, String>> = objects
        .iter()
        .filter(|o| matches!(s(o, "/kind"), Some("Deployment" | "Rollout")))
        .map(|o| labels_of(o.pointer("/spec/template/metadata/labels")))
        .collect();
    let mut problems = Vec::new();
    for t in of_kind("AnalysisTemplate") {
        let template = s(t, "/metadata/name").unwrap_or("?");
        let queries = t
            .pointer("/spec/metrics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| s(m, "/provider/prometheus/query"));
        for query in queries {
            for service in selected_values(query, "service") {
                let Some(svc) =
                    of_kind("Service").find(|o| s(o, "/metadata/name") == Some(&service))
                else {
                    problems.push(format!(
                        "AnalysisTemplate {template} selects service=\"{service}\", but no Service {service} is rendered"
                    ));
                    continue;
                };
                if !svc.pointer("/spec/selector").is_some_and(|sel| {
                    let sel = serde_json::json!({ "matchLabels": sel });
                    pod_labels.iter().any(|l| selector_matches(&sel, l))
                }) {
                    problems.push(format!(
                        "Service {service} (selected by AnalysisTemplate {template}) does not select the workload's pods"
                    ));
                }
                let svc_labels = labels_of(svc.pointer("/metadata/labels"));
                let svc_ports: BTreeSet<&str> = svc
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| s(p, "/name"))
                    .collect();
                let monitor = of_kind("ServiceMonitor").find(|m| {
                    m.pointer("/spec/selector")
                        .is_some_and(|sel| selector_matches(sel, &svc_labels))
                        && m.pointer("/spec/endpoints")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .any(|e| s(e, "/port").is_some_and(|p| svc_ports.contains(p)))
                });
                let Some(monitor) = monitor else {
                    problems.push(format!(
                        "AnalysisTemplate {template} queries series of Service {service}, but no ServiceMonitor scrapes it"
                    ));
                    continue;
                };
                let copies_hash = monitor
                    .pointer("/spec/podTargetLabels")
                    .and_then(Value::as_array)
                    .is_some_and(|l| {
                        l.iter()
                            .any(|x| x.as_str() == Some("rollouts-pod-template-hash"))
                    });
                if query.contains("rollouts_pod_template_hash") && !copies_hash {
                    problems.push(format!(
                        "AnalysisTemplate {template} selects rollouts_pod_template_hash, but ServiceMonitor {} does not copy the pod label rollouts-pod-template-hash (podTargetLabels)",
                        s(monitor, "/metadata/name").unwrap_or("?")
                    ));
                }
            }
        }
    }
    problems
}

/// platform-base's VerticalPodAutoscalers against the service charts rendered for the same
/// environment: each VPA's targetRef names a workload one of them renders, with its kind and
/// apiVersion (a VPA pointing at a Deployment where the chart renders a Rollout recommends
/// nothing), and every service workload has a VPA.
pub fn vpa_problems(base: &[Value], services: &[Value]) -> Vec<String> {
    let workloads: Vec<(&str, &str, &str)> = services
        .iter()
        .filter(|o| matches!(s(o, "/kind"), Some("Deployment" | "Rollout")))
        .map(|o| {
            (
                s(o, "/apiVersion").unwrap_or("?"),
                s(o, "/kind").unwrap_or("?"),
                s(o, "/metadata/name").unwrap_or("?"),
            )
        })
        .collect();
    let targets: Vec<(&str, &str, &str)> = base
        .iter()
        .filter(|o| s(o, "/kind") == Some("VerticalPodAutoscaler"))
        .map(|o| {
            (
                s(o, "/spec/targetRef/apiVersion").unwrap_or("?"),
                s(o, "/spec/targetRef/kind").unwrap_or("?"),
                s(o, "/spec/targetRef/name").unwrap_or("?"),
            )
        })
        .collect();
    let mut problems = Vec::new();
    for t in &targets {
        if !workloads.contains(t) {
            let rendered: Vec<String> = workloads
                .iter()
                .filter(|w| w.2 == t.2)
                .map(|w| format!("{} {}", w.0, w.1))
                .collect();
            problems.push(format!(
                "VerticalPodAutoscaler targets {} {} {}, but the service charts render {}",
                t.0,
                t.1,
                t.2,
                if rendered.is_empty() {
                    "no workload of that name".to_string()
                } else {
                    rendered.join(", ")
                }
            ));
        }
    }
    for w in &workloads {
        if !targets.iter().any(|t| t.2 == w.2) {
            problems.push(format!(
                "{} {} has no VerticalPodAutoscaler in platform-base",
                w.1, w.2
            ));
        }
    }
    problems
}

/// How to start the real binary with a rendered contract, for a test on one machine.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Files to write before the start: path on this machine -> content.
    pub files: BTreeMap<PathBuf, String>,
    /// The mounts on this machine (emptyDirs start empty and writable, as in a pod).
    pub directories: Vec<PathBuf>,
    /// The declared `http` and `admin` container ports (a Job declares none).
    pub http_port: Option<u16>,
    pub admin_port: Option<u16>,
    pub probes: Vec<(String, u16)>,
}

/// Maps the rendered container spec onto this machine: every mounted file goes under `dir`
/// (args rewritten to match), every secretKeyRef gets `secrets[<secret name>]`, and the listen
/// host becomes 127.0.0.1 (tests never listen on other addresses). Ports stay as rendered.
pub fn launch_plan(
    c: &Contract,
    prefix: &str,
    dir: &Path,
    secrets: &BTreeMap<String, String>,
) -> Result<LaunchPlan> {
    // Paths under a mount (`/etc/cloud/...`, `/var/lib/cloud/...`) in the config files and env
    // values point at the same mount under `dir`, so nothing touches this machine's own /etc or
    // /var. Longest mount first, so a nested mount wins over its parent.
    let mut by_length: Vec<&String> = c.mounts.iter().collect();
    by_length.sort_by_key(|m| std::cmp::Reverse(m.len()));
    // One pass, so a relocated path (itself under /tmp) is never relocated again, and only at
    // the start of a path (not `/etc/cloud/` inside `https://host/etc/cloud/`).
    let relocate = |text: &str| -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(ch) = rest.chars().next() {
            let at_path_start = out
                .chars()
                .next_back()
                .is_none_or(|p| !(p.is_alphanumeric() || "._-/:".contains(p)));
            let hit = by_length
                .iter()
                .find(|m| at_path_start && rest.starts_with(&format!("{m}/")));
            if let Some(m) = hit {
                out.push_str(&format!(
                    "{}/",
                    dir.join(m.trim_start_matches('/')).display()
                ));
                rest = &rest[m.len() + 1..];
            } else {
                out.push(ch);
                rest = &rest[ch.len_utf8()..];
            }
        }
        out
    };
    let files: BTreeMap<PathBuf, String> = c
        .files
        .iter()
        .map(|(path, content)| (dir.join(path.trim_start_matches('/')), relocate(content)))
        .collect();
    let directories = c
        .mounts
        .iter()
        .map(|m| dir.join(m.trim_start_matches('/')))
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
            EnvSource::Value(v) => relocate(v),
            EnvSource::Secret { name: secret, .. } => secrets
                .get(secret)
                .cloned()
                .with_context(|| format!("no test value for secret {secret} (env {name})"))?,
        };
        env.push((name.clone(), value));
    }
    let port = |n: &str| c.ports.get(n).copied();
    Ok(LaunchPlan {
        args,
        env,
        files,
        directories,
        http_port: port("http"),
        admin_port: port("admin"),
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
        assert!(
            all.contains("config file key database.url must not be in the ConfigMap: a secret"),
            "{all}"
        );
        assert!(all.contains("http_requests_count"), "{all}");
        assert!(all.contains("GATEWAY_REDIS__URL"), "{all}");
    }

    /// A canary render reduced to what the scrape check reads.
    const SCRAPED: &str = r#"
kind: Rollout
metadata: {name: svc}
spec:
  template:
    metadata:
      labels: {app.kubernetes.io/name: svc, app.kubernetes.io/instance: svc}
---
kind: Service
metadata:
  name: svc-metrics
  labels: {app.kubernetes.io/name: svc, cloud-platform.io/service-role: metrics}
spec:
  selector: {app.kubernetes.io/name: svc, app.kubernetes.io/instance: svc}
  ports: [{name: admin, port: 9090}]
---
kind: ServiceMonitor
metadata: {name: svc}
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: svc, cloud-platform.io/service-role: metrics}
  podTargetLabels: [rollouts-pod-template-hash]
  endpoints: [{port: admin, path: /metrics}]
---
kind: AnalysisTemplate
metadata: {name: svc-success-rate}
spec:
  metrics:
    - name: success-rate
      provider:
        prometheus:
          query: sum(rate(http_requests_total{namespace="{{args.namespace}}",service="svc-metrics",rollouts_pod_template_hash="{{args.canary-hash}}"}[2m]))
"#;

    #[test]
    fn the_analysis_queries_must_match_what_the_service_monitor_scrapes() {
        assert_eq!(scrape_problems(&objects(SCRAPED)), Vec::<String>::new());
        let broken = |from: &str, to: &str| {
            scrape_problems(&objects(&SCRAPED.replacen(from, to, 1))).join("\n")
        };
        let p = broken("service=\"svc-metrics\"", "service=\"svc-metric\"");
        assert!(p.contains("no Service svc-metric is rendered"), "{p}");
        let p = broken(
            "podTargetLabels: [rollouts-pod-template-hash]",
            "podTargetLabels: []",
        );
        assert!(
            p.contains("does not copy the pod label rollouts-pod-template-hash"),
            "{p}"
        );
        let p = broken("endpoints: [{port: admin", "endpoints: [{port: http");
        assert!(p.contains("no ServiceMonitor scrapes it"), "{p}");
        let p = broken(
            "selector: {app.kubernetes.io/name: svc, app.kubernetes.io/instance: svc}",
            "selector: {app.kubernetes.io/name: other}",
        );
        assert!(p.contains("does not select the workload's pods"), "{p}");
        assert!(
            selected_values(r#"x{myservice="a",service="b"}"#, "service")
                == ["b".to_string()].into()
        );
    }

    #[test]
    fn every_vpa_targets_a_rendered_workload_of_the_same_kind() {
        let base = |kind: &str, api: &str| {
            objects(&format!(
                "kind: VerticalPodAutoscaler\nspec:\n  targetRef: {{apiVersion: {api}, kind: {kind}, name: svc}}\n"
            ))
        };
        let services =
            objects("apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: svc}\n");
        assert!(vpa_problems(&base("Rollout", "argoproj.io/v1alpha1"), &services).is_empty());
        let p = vpa_problems(&base("Deployment", "apps/v1"), &services).join("\n");
        assert!(
            p.contains("targets apps/v1 Deployment svc, but the service charts render argoproj.io/v1alpha1 Rollout"),
            "{p}"
        );
        let p = vpa_problems(&[], &services).join("\n");
        assert!(
            p.contains("Rollout svc has no VerticalPodAutoscaler"),
            "{p}"
        );
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

    #[test]
    fn paths_under_mounts_are_relocated_once_and_only_at_a_path_start() {
        let c = Contract {
            workload: "Deployment/svc".into(),
            image: "svc:1".into(),
            args: vec!["--config".into(), "/etc/cloud/config.yaml".into()],
            env: vec![(
                "SVC_FLAGS__BACKUP".into(),
                EnvSource::Value("/var/lib/cloud/flags/lkg.json".into()),
            )],
            ports: BTreeMap::new(),
            probes: Vec::new(),
            files: BTreeMap::from([(
                "/etc/cloud/config.yaml".into(),
                "a: /etc/cloud/boot.json\nb: /var/lib/cloud/audit.log\nc: https://h/etc/cloud/x\nd: /tmpfile\n".into(),
            )]),
            mounts: vec!["/etc/cloud".into(), "/tmp".into(), "/var/lib/cloud".into()],
            analysis_metrics: Vec::new(),
        };
        let plan = launch_plan(&c, "SVC", Path::new("/tmp/run"), &BTreeMap::new()).unwrap();
        assert_eq!(
            plan.files[Path::new("/tmp/run/etc/cloud/config.yaml")],
            "a: /tmp/run/etc/cloud/boot.json\nb: /tmp/run/var/lib/cloud/audit.log\nc: https://h/etc/cloud/x\nd: /tmpfile\n"
        );
        assert!(plan.env.contains(&(
            "SVC_FLAGS__BACKUP".into(),
            "/tmp/run/var/lib/cloud/flags/lkg.json".into()
        )));
        assert!(
            plan.directories
                .contains(&PathBuf::from("/tmp/run/var/lib/cloud"))
        );
    }
}
