//! The gateway binary as a real child process: a 1 GiB body streams through with bounded memory,
//! and SIGHUP swaps the route table without dropping a connection that is in use.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Process {
    child: Child,
    port: u16,
    admin_port: u16,
    /// Every line the gateway logged so far.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn start(config: &std::path::Path) -> Self {
        Self::start_with_env(config, &[])
    }

    fn start_with_env(config: &std::path::Path, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloud-api-gateway-bff"))
            .arg("--config")
            .arg(config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                let mut sent = false;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if !sent && line.contains("listening") {
                        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                        let port = v["fields"]["port"].as_u64().unwrap() as u16;
                        let admin = v["fields"]["admin_port"].as_u64().unwrap() as u16;
                        let _ = tx.send((port, admin));
                        sent = true;
                    }
                    lines.lock().unwrap().push(line);
                }
            }
        });
        let (port, admin_port) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the gateway did not log `listening`");
        Self {
            child,
            port,
            admin_port,
            stderr: lines,
        }
    }

    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

fn write_config(dir: &std::path::Path, identity: &Identity, routes: &str) -> std::path::PathBuf {
    let main = dir.join("gateway.yaml");
    let routes_file = dir.join("routes.yaml");
    std::fs::write(
        &main,
        format!(
            "server: {{port: 0, admin_port: 0, drain_period: 0s}}\ntelemetry: {{log_format: json}}\nidentity: {{issuer_url: \"{}\"}}\nroutes_file: {}\n",
            identity.issuer,
            routes_file.display()
        ),
    )
    .unwrap();
    std::fs::write(&routes_file, routes).unwrap();
    main
}

#[tokio::test]
async fn a_1_gib_body_streams_through_with_bounded_memory() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &identity,
        &format!(
            "routes:\n  up: {{path_prefix: /up/, strip_prefix: true, upstreams: [\"http://{upstream}\"], max_body_bytes: 2147483648, timeouts: {{request: 120s}}}}\n"
        ),
    );
    let gw = Process::start(&config);
    let token = key.sign(&claims(&identity.issuer, "t", "u", &[]));
    let before = gw.peak_rss_kib();
    const GIB: u64 = 1 << 30;
    let response = client()
        .post(format!("http://127.0.0.1:{}/up/count", gw.port))
        .bearer_auth(&token)
        .body(body_of(GIB, 256 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), GIB.to_string());
    let peak = gw.peak_rss_kib();
    assert!(
        peak < 128 * 1024,
        "the gateway's peak RSS was {peak} KiB (before: {before} KiB) for a 1 GiB body"
    );
}

#[tokio::test]
async fn sighup_reloads_routes_without_dropping_connections_and_keeps_the_old_table_on_errors() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &identity,
        &format!(
            "routes:\n  one: {{path_prefix: /one/, auth: public, strip_prefix: true, upstreams: [\"http://{upstream}\"]}}\n"
        ),
    );
    let mut gw = Process::start(&config);
    let base = format!("http://127.0.0.1:{}", gw.port);
    let client = client();
    assert_eq!(
        client
            .get(format!("{base}/one/echo"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A slow request in flight across the reload.
    let slow = tokio::spawn({
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .get(format!("{base}/one/slow/800"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!("routes:\n  two: {{path_prefix: /two/, auth: public, strip_prefix: true, upstreams: [\"http://{upstream}\"]}}\n"),
    )
    .unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while client
        .get(format!("{base}/two/echo"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new table was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        slow.await.unwrap(),
        200,
        "the in-flight request survived the reload"
    );
    assert_eq!(
        client
            .get(format!("{base}/one/echo"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // An invalid file keeps the current table.
    std::fs::write(
        dir.path().join("routes.yaml"),
        "routes:\n  bad: {path_prefix: /bad/, upstreams: [\"ftp://x\"]}\n",
    )
    .unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client
            .get(format!("{base}/two/echo"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the gateway"
    );
}

/// The `flags` section from the config file and `GATEWAY_FLAGS__*` variables (the token from
/// `GATEWAY_FLAGS__UNLEASH__TOKEN`, as the Helm chart hands it): with an Unleash server that
/// cannot be reached and no bootstrap file the gateway is not ready (and its gated route is
/// hidden); with `GATEWAY_FLAGS__BOOTSTRAP_PATH` it falls back to the file. The token is never
/// logged.
#[tokio::test]
async fn flags_come_from_gateway_flags_env_vars_and_gate_readiness() {
    let key = Key::ed25519("k1");
    let identity = Identity::start(&[&key]).await;
    let (upstream, _) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &identity,
        &format!(
            "routes:\n  beta: {{path_prefix: /beta/, auth: public, strip_prefix: true, upstreams: [\"http://{upstream}\"], flag: beta.open}}\n"
        ),
    );
    let dead = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    // As the Helm chart does it: the server in the config file, the token from the environment.
    let mut main = std::fs::read_to_string(&config).unwrap();
    main.push_str(&format!(
        "flags: {{unleash: {{url: \"http://{}/api/\", app_name: gateway-test, refresh_interval: 1h}}}}\n",
        dead()
    ));
    std::fs::write(&config, main).unwrap();
    let token = "default:development.do-not-log-this-token";
    let server = [("GATEWAY_FLAGS__UNLEASH__TOKEN", token.to_string())];
    let client = client();
    let readyz = |gw: &Process| {
        let url = format!("http://127.0.0.1:{}/readyz", gw.admin_port);
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let beta = |gw: &Process| {
        let url = format!("http://127.0.0.1:{}/beta/echo", gw.port);
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };

    let no_state = Process::start_with_env(&config, &server);
    let (status, report) = readyz(&no_state).await;
    assert_eq!(status, 503, "{report}");
    assert!(
        report["checks"]["feature_flags"]
            .as_str()
            .unwrap()
            .starts_with("failing"),
        "{report}"
    );
    assert_eq!(beta(&no_state).await, 404, "no state: every flag off");
    drop(no_state);

    let flags = dir.path().join("flags.json");
    std::fs::write(
        &flags,
        r#"{"version": 2, "features": [{"name": "beta.open", "enabled": true, "strategies": [{"name": "default"}]}]}"#,
    )
    .unwrap();
    let mut env = server.to_vec();
    env.push((
        "GATEWAY_FLAGS__UNLEASH__URL",
        format!("http://{}/api", dead()),
    ));
    env.push(("GATEWAY_FLAGS__BOOTSTRAP_PATH", flags.display().to_string()));
    let gw = Process::start_with_env(&config, &env);
    cloud_test_support::wait_until_ok(
        &format!("http://127.0.0.1:{}/readyz", gw.admin_port),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(readyz(&gw).await.1["checks"]["feature_flags"], "ok");
    assert_eq!(
        beta(&gw).await,
        200,
        "the bootstrap file turned the gate on"
    );
    let logged = gw.stderr.lock().unwrap().join("\n");
    assert!(
        logged.contains("Unleash server not reachable"),
        "the fallback is logged:\n{logged}"
    );
    assert!(!logged.contains("do-not-log-this-token"), "{logged}");
}
