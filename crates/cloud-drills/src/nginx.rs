//! The load balancer of the rolling-update drill: Debian's nginx (from xtask's tools cache, as
//! `CLOUD_NGINX`), its configuration, and the process.
//!
//! Open-source nginx has no active health checks: it never reads `/readyz`. What takes a replica
//! out of rotation is what nginx itself sees on the wire (passive checks): a refused connection
//! once the replica's listener has closed, or a timeout. Every setting below is chosen for that;
//! the reasons are next to each one, and docs/reliability.md repeats them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::infra::wait_for_port;

/// One load-balanced service: nginx listens on `listen` and spreads requests over `servers`
/// (the replicas' fixed API ports: a replacement replica binds the port its predecessor had).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: &'static str,
    pub listen: u16,
    pub servers: Vec<u16>,
}

/// How long nginx keeps a replica out of rotation after one failed connection, and the window in
/// which `max_fails` failures are counted. It must stay below the services' drain period (5 s,
/// the charts' `drain_period`): the next replica's listener closes at least one drain period
/// after the previous replacement became ready, and by then nginx must have retried the new
/// replica, or both servers would be marked failed at once and nginx would answer 502
/// ("no live upstreams"). Short, because on loopback retrying a slot costs one refused connect.
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an idle keep-alive connection to a replica stays in nginx's cache: below the drain
/// period, so that a connection left idle through a whole drain is closed by nginx itself before
/// the replica closes it (see [`config`]).
pub const UPSTREAM_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);

/// The whole `nginx.conf`. `dir` holds the pid file, logs and temp paths.
pub fn config(dir: &Path, upstreams: &[Upstream]) -> String {
    let d = dir.display();
    let mut out = format!(
        "\
# One worker: one keep-alive cache and one view of which replica failed, so the drill's figures
# come from one process (its peer state is per worker without a shared zone). 200 req/s is far
# below what one worker proxies.
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 1024; }}
http {{
  # Every request, with the replica(s) it went to: a retry shows as two addresses.
  log_format drill '$msec $status \"$upstream_addr\" \"$upstream_status\" $request_time $request_method $uri';
  access_log {d}/access.log drill;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
"
    );
    for u in upstreams {
        out.push_str(&format!("  upstream {} {{\n", u.name));
        for port in &u.servers {
            // max_fails=1: on loopback one refused connection is conclusive (the replica is
            // not listening: its drain ended, or its replacement has not bound the port yet).
            out.push_str(&format!(
                "    server 127.0.0.1:{port} max_fails=1 fail_timeout={}s;\n",
                FAIL_TIMEOUT.as_secs()
            ));
        }
        out.push_str(&format!(
            "    # Keep-alive to the replicas, as an ingress controller does: it is what makes a \
             replica's shutdown race with requests on reused connections visible.\n    \
             keepalive 16;\n    keepalive_timeout {}s;\n  }}\n",
            UPSTREAM_KEEPALIVE_TIMEOUT.as_secs()
        ));
    }
    for u in upstreams {
        out.push_str(&format!(
            "\
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      proxy_pass http://{name};
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host $http_host;
      # Retry on the other replica only when the request cannot have been processed, or for an
      # idempotent request: `error` and `timeout` (connect refused or reset, no response header).
      # nginx never repeats a POST it has already sent (no `non_idempotent`): a token request or
      # a tenant creation may have been processed before the connection broke. Not `http_503`:
      # a 503 is the service's own answer (e.g. its database is down) and is passed through.
      proxy_next_upstream error timeout;
      # One try per replica; a third would go back to the first.
      proxy_next_upstream_tries 2;
      proxy_next_upstream_timeout 10s;
      # Loopback connects are instant or refused; a replica that does not accept within 1 s is
      # treated as failed.
      proxy_connect_timeout 1s;
      # Below the drill client's 10 s, so that a hanging replica shows as nginx's 504, not as a
      # lost request.
      proxy_read_timeout 9s;
      proxy_send_timeout 9s;
    }}
  }}
",
            listen = u.listen,
            name = u.name
        ));
    }
    out.push_str("}\n");
    out
}

/// The nginx binary: `CLOUD_NGINX` (which `cargo xtask drills` sets from its tools cache), else
/// `nginx` on PATH.
fn nginx_bin() -> PathBuf {
    std::env::var_os("CLOUD_NGINX").map_or_else(|| PathBuf::from("nginx"), PathBuf::from)
}

/// A running nginx with a drill's configuration.
#[derive(Debug)]
pub struct Nginx {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Writes the configuration, checks it with `nginx -t`, starts nginx and waits until every
    /// upstream's listen port accepts connections.
    pub async fn start(upstreams: &[Upstream]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cloud-drills-nginx-")
            .tempdir()?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), upstreams)).context("cannot write nginx.conf")?;
        let bin = nginx_bin();
        // `-e`: the error log before the configuration is read (the default is under /var/log,
        // which a tools-cache nginx may not have).
        let base_args = |cmd: &mut tokio::process::Command| {
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.path().join("error.log"));
        };
        let mut test = tokio::process::Command::new(&bin);
        base_args(&mut test);
        let out = test.arg("-t").output().await.with_context(|| {
            format!(
                "cannot run {} (`cargo xtask drills` installs it from the tools cache and sets \
                 CLOUD_NGINX; `cargo xtask tools --bench` prints where it is)",
                bin.display()
            )
        })?;
        if !out.status.success() {
            bail!(
                "nginx -t rejected the drill's configuration: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut start = tokio::process::Command::new(&bin);
        base_args(&mut start);
        let child = start
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let nginx = Self { child, dir };
        for u in upstreams {
            wait_for_port(u.listen, "nginx", Duration::from_secs(10)).await?;
        }
        Ok(nginx)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// SIGQUIT (graceful: workers finish their requests), then waits at most 5 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id()
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One line of the access log (the `drill` format).
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Unix time in seconds (millisecond resolution) when nginx logged the request.
    pub at: f64,
    pub status: u16,
    /// The replicas tried, in order (`host:port`); more than one means nginx retried.
    pub upstreams: Vec<String>,
    pub upstream_statuses: Vec<String>,
    pub method: String,
    pub uri: String,
}

/// Parses the `drill` access-log format; lines that do not match are skipped.
pub fn parse_access_log(text: &str) -> Vec<LogLine> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<LogLine> {
    // $msec $status "$upstream_addr" "$upstream_status" $request_time $request_method $uri
    let (at, rest) = line.split_once(' ')?;
    let (status, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('"')?;
    let (addrs, rest) = rest.split_once("\" \"")?;
    let (statuses, rest) = rest.split_once("\" ")?;
    let mut tail = rest.split(' ');
    let _request_time = tail.next()?;
    let method = tail.next()?.to_string();
    let uri = tail.next()?.to_string();
    let list = |s: &str| -> Vec<String> {
        s.split([',', ':'])
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "-")
            .map(str::to_string)
            .collect()
    };
    // Addresses contain a colon themselves; split them on ", " only.
    let upstreams = addrs
        .split(", ")
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "-")
        .map(str::to_string)
        .collect();
    Some(LogLine {
        at: at.parse().ok()?,
        status: status.parse().ok()?,
        upstreams,
        upstream_statuses: list(statuses),
        method,
        uri,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn upstreams() -> Vec<Upstream> {
        vec![
            Upstream {
                name: "identity",
                listen: 7000,
                servers: vec![7001, 7002],
            },
            Upstream {
                name: "gateway",
                listen: 8000,
                servers: vec![8001, 8002],
            },
        ]
    }

    #[test]
    fn config_lists_every_replica_with_passive_checks() {
        let c = config(Path::new("/tmp/x"), &upstreams());
        for port in [7001, 7002, 8001, 8002] {
            assert!(
                c.contains(&format!(
                    "server 127.0.0.1:{port} max_fails=1 fail_timeout=1s;"
                )),
                "{c}"
            );
        }
        assert!(c.contains("listen 127.0.0.1:7000;"));
        assert!(c.contains("listen 127.0.0.1:8000;"));
        assert!(c.contains("proxy_pass http://identity;"));
        assert!(c.contains("proxy_pass http://gateway;"));
        assert_eq!(c.matches("proxy_next_upstream error timeout;").count(), 2);
        // A sent POST is never repeated on the other replica.
        assert!(!c.lines().any(|l| {
            l.trim_start().starts_with("proxy_next_upstream ") && l.contains("non_idempotent")
        }));
        assert!(c.contains("pid /tmp/x/nginx.pid;"));
        // Balanced braces: nginx would reject the file otherwise.
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn timeouts_stay_below_the_drain_period() {
        let drain = Duration::from_secs(5);
        assert!(FAIL_TIMEOUT < drain);
        assert!(UPSTREAM_KEEPALIVE_TIMEOUT < drain);
    }

    #[test]
    fn access_log_lines_parse_with_retries() {
        let log = "1764140000.123 200 \"127.0.0.1:7001\" \"200\" 0.002 POST /oauth2/token\n\
                   1764140000.456 200 \"127.0.0.1:7001, 127.0.0.1:7002\" \"502, 200\" 0.010 GET /api/drill\n\
                   garbage\n";
        let lines = parse_access_log(log);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].upstreams, vec!["127.0.0.1:7001"]);
        assert_eq!(lines[0].method, "POST");
        assert!((lines[0].at - 1_764_140_000.123).abs() < 1e-6);
        assert_eq!(lines[1].upstreams, vec!["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(lines[1].upstream_statuses, vec!["502", "200"]);
        assert_eq!(lines[1].uri, "/api/drill");
    }
}
