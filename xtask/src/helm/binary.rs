//! Chart <-> binary: start the real service binary with the configuration a chart renders for an
//! environment, and show that it serves what the chart and its canary analysis expect.
//!
//! For each service x environment: the rendered container spec ([`super::contract`]) is mapped
//! onto this machine ([`super::contract::launch_plan`]): the ConfigMap files are written under a
//! temp dir and `--config` points there, every ExternalSecret target gets a test value (a
//! private PostgreSQL or Redis where the secret is a URL), the listen host is 127.0.0.1 and the
//! two ports are moved to free ports (the static `helm-contract` step has already shown that the
//! probe ports are the ports the env tells the binary). Then:
//!   * every probe path answers 200 on its port;
//!   * after traffic, every metric the AnalysisTemplates query is in `/metrics`, with every
//!     label the query uses that the binary (not the scrape) sets.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::contract::{self, BINARY_METRICS, Contract, MetricUse};

/// A running service binary, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from 127.0.0.1:{port}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The label names of every sample of `metric` in a Prometheus/OpenMetrics text exposition.
pub fn metric_label_sets(exposition: &str, metric: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if let Some(labels) = rest.strip_prefix('{') {
            let end = labels.find('}').unwrap_or(labels.len());
            let names = labels[..end]
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
                .collect();
            out.push(names);
        } else if rest.starts_with(' ') {
            out.push(Vec::new());
        }
    }
    out
}

/// The problems with `/metrics` for the metrics the analysis queries.
pub fn missing_metrics(exposition: &str, uses: &[MetricUse]) -> Vec<String> {
    let mut problems = Vec::new();
    for m in uses {
        let sets = metric_label_sets(exposition, &m.name);
        if sets.is_empty() {
            problems.push(format!("/metrics has no {} series after traffic", m.name));
            continue;
        }
        let own: Vec<&str> = BINARY_METRICS
            .iter()
            .find(|(n, _)| *n == m.name)
            .map(|(_, l)| l.to_vec())
            .unwrap_or_default();
        let wanted: Vec<&String> = m
            .labels
            .iter()
            .filter(|l| own.contains(&l.as_str()))
            .collect();
        if !sets
            .iter()
            .any(|set| wanted.iter().all(|w| set.contains(w)))
        {
            problems.push(format!(
                "no {} series carries the labels {wanted:?} the analysis query uses",
                m.name
            ));
        }
    }
    problems
}

fn wait_for(port: u16, path: &str, running: &mut Running, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = running.exited() {
            bail!(
                "the binary exited with {status} before {path} answered:\n{}",
                running.log_tail()
            );
        }
        if let Ok((200, _)) = http_get(port, path) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{path} on port {port} did not answer 200 within {timeout:?}:\n{}",
                running.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A service binary started from its chart's contract, with its probes answering.
#[derive(Debug)]
pub struct Started {
    running: Running,
    pub http: u16,
    pub admin: u16,
    probes: Vec<String>,
    _dir: tempfile::TempDir,
}

/// Writes the plan's files and mount directories, and replaces in-cluster authorities
/// (`cloud-identity-access:8080`) by where those services run on this machine.
fn prepare(
    contract: &Contract,
    prefix: &str,
    dir: &Path,
    secrets: &BTreeMap<String, String>,
    authorities: &BTreeMap<String, String>,
) -> Result<contract::LaunchPlan> {
    let mut plan = contract::launch_plan(contract, prefix, dir, secrets)?;
    for directory in &plan.directories {
        std::fs::create_dir_all(directory)?;
    }
    for (path, content) in &mut plan.files {
        for (cluster, local) in authorities {
            *content = content.replace(&format!("//{cluster}"), &format!("//{local}"));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, &*content)?;
    }
    Ok(plan)
}

fn spawn(binary: &Path, plan: &contract::LaunchPlan, dir: &Path, log: &Path) -> Result<Child> {
    let log_file = std::fs::File::create(log)?;
    Command::new(binary)
        .args(&plan.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(plan.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

/// Runs a Job's container (identity's `migrate`) to completion; it must exit 0.
pub fn run_job(
    binary: &Path,
    job: &Contract,
    prefix: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let plan = prepare(job, prefix, dir.path(), secrets, &BTreeMap::new())?;
    let log = dir.path().join("job.log");
    let mut running = Running {
        child: spawn(binary, &plan, dir.path(), &log)?,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = running.exited() {
            if !status.success() {
                bail!(
                    "{} {:?} exited with {status}:\n{}",
                    job.workload,
                    plan.args,
                    running.log_tail()
                );
            }
            return Ok(format!("{} {:?} exited 0", job.workload, plan.args));
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not finish within 120 s:\n{}",
                job.workload,
                running.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `binary` with the rendered `contract` (`secrets` maps each secretKeyRef name to its
/// test value) and waits until every probe path answers 200 on its port.
pub fn start(
    binary: &Path,
    contract: &Contract,
    prefix: &str,
    secrets: &BTreeMap<String, String>,
    authorities: &BTreeMap<String, String>,
) -> Result<Started> {
    let dir = tempfile::tempdir()?;
    let mut plan = prepare(contract, prefix, dir.path(), secrets, authorities)?;
    let (Some(http_port), Some(admin_port)) = (plan.http_port, plan.admin_port) else {
        bail!(
            "{} declares no `http` and `admin` container ports",
            contract.workload
        );
    };
    // Free ports instead of 8080/9090, which other processes on a shared machine may hold.
    let http = crate::servers::free_port()?;
    let admin = crate::servers::free_port()?;
    let moved = BTreeMap::from([(http_port, http), (admin_port, admin)]);
    for (name, value) in &mut plan.env {
        if *name == format!("{prefix}_SERVER__PORT") {
            *value = http.to_string();
        } else if *name == format!("{prefix}_SERVER__ADMIN_PORT") {
            *value = admin.to_string();
        }
    }
    let log = dir.path().join("binary.log");
    let mut running = Running {
        child: spawn(binary, &plan, dir.path(), &log)?,
        log,
    };
    let mut probes = Vec::new();
    for (path, port) in &plan.probes {
        let port = moved.get(port).copied().with_context(|| {
            format!("probe {path} is on port {port}, which the binary is not told to serve")
        })?;
        wait_for(port, path, &mut running, Duration::from_secs(60))?;
        probes.push(format!("{path} 200"));
    }
    Ok(Started {
        running,
        http,
        admin,
        probes,
        _dir: dir,
    })
}

/// After traffic, every metric the AnalysisTemplates query is in `/metrics` with the labels the
/// query uses.
pub fn check_metrics(started: &mut Started, contract: &Contract) -> Result<String> {
    // Traffic on the API port: successes and a 404, so the RED metrics have series.
    for i in 0..20 {
        let path = if i % 5 == 0 {
            "/no-such-route"
        } else {
            "/version"
        };
        http_get(started.http, path).with_context(|| format!("GET {path} on the API port"))?;
    }
    let (status, exposition) = http_get(started.admin, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let problems = missing_metrics(&exposition, &contract.analysis_metrics);
    if !problems.is_empty() {
        bail!("{}\n{}", problems.join("\n"), started.running.log_tail());
    }
    let metrics: Vec<&str> = contract
        .analysis_metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    Ok(format!(
        "{}; metrics present: {metrics:?}",
        started.probes.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "# TYPE http_requests counter\n\
        http_requests_total{method=\"GET\",route=\"/version\",status=\"200\"} 4\n\
        http_request_duration_seconds_bucket{method=\"GET\",route=\"/version\",status=\"200\",le=\"0.005\"} 4\n";

    fn uses(name: &str, labels: &[&str]) -> Vec<MetricUse> {
        vec![MetricUse {
            name: name.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
        }]
    }

    #[test]
    fn metrics_with_the_queried_labels_pass() {
        assert_eq!(
            missing_metrics(
                EXPOSITION,
                &uses("http_requests_total", &["namespace", "status"])
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            missing_metrics(
                EXPOSITION,
                &uses("http_request_duration_seconds_bucket", &["le", "service"])
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_missing_metric_or_label_fails() {
        let missing = missing_metrics(EXPOSITION, &uses("http_requests_count", &["status"]));
        assert!(
            missing[0].contains("no http_requests_count series"),
            "{missing:?}"
        );
        let no_status = EXPOSITION.replace(",status=\"200\"", "");
        let missing = missing_metrics(&no_status, &uses("http_requests_total", &["status"]));
        assert!(missing[0].contains("[\"status\"]"), "{missing:?}");
    }
}
