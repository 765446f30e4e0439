//! A service binary run as a real child process, the way an orchestrator runs it: configured by
//! environment, found by the ports it logs, stopped with SIGTERM.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running service binary. Killed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl ServiceProcess {
    /// Starts `binary` with ports 0 (picked by the OS) for `<env_prefix>_SERVER__PORT` and
    /// `..._ADMIN_PORT`, JSON logs, and `env` on top; waits for its "listening" log line.
    pub fn start(binary: &Path, env_prefix: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env(format!("{env_prefix}_SERVER__PORT"), "0")
            .env(format!("{env_prefix}_SERVER__ADMIN_PORT"), "0")
            .env(format!("{env_prefix}_TELEMETRY__LOG_FORMAT"), "json")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (ports_tx, ports_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(ports) = listening_ports(&line) {
                    let _ = ports_tx.send(ports);
                }
                let mut sink = sink.lock().unwrap();
                sink.push_back(line);
                if sink.len() > 2000 {
                    sink.pop_front();
                }
            }
        });
        match ports_rx.recv_timeout(Duration::from_secs(30)) {
            Ok((port, admin_port)) => Self {
                child,
                port,
                admin_port,
                stderr: lines,
            },
            Err(_) => {
                let _ = child.kill();
                let log = lines
                    .lock()
                    .unwrap()
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!(
                    "{} logged no \"listening\" line within 30 s; stderr:\n{log}",
                    binary.display()
                );
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("send signal");
    }

    /// Waits for the process to exit, or panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote to stderr so far (the last 2,000 lines).
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses cloud-kit's JSON "listening" log line into (port, admin_port).
fn listening_ports(line: &str) -> Option<(u16, u16)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    let port = u16::try_from(fields.get("port")?.as_u64()?).ok()?;
    let admin = u16::try_from(fields.get("admin_port")?.as_u64()?).ok()?;
    Some((port, admin))
}

/// Runs `binary` to completion with `env` and returns (exit status, stderr).
pub fn run_to_exit(binary: &Path, env: &[(&str, &str)], args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
