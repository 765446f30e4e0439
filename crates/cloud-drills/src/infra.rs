//! The real things a drill starts and breaks: private Redis and PostgreSQL servers from the
//! installed binaries on free loopback ports (never the machine's shared instances), the service
//! binaries as child processes, and a tiny upstream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloud_test_support::process::ServiceProcess;

pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_for_port(port: u16, what: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what} did not accept connections on port {port} within {timeout:?}")
}

/// The service binaries, next to this binary (`cargo xtask drills` builds them with the same
/// profile), or in `DRILLS_BIN_DIR`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub identity: PathBuf,
    pub gateway: PathBuf,
}

impl Binaries {
    pub fn find() -> Result<Self> {
        let dir = match std::env::var_os("DRILLS_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::current_exe()
                .context("cannot find this binary's path")?
                .parent()
                .map(Path::to_path_buf)
                .context("this binary has no parent directory")?,
        };
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{} not found: build it first (`cargo build -p {name}` with the same profile, \
                     which `cargo xtask drills` does) or set DRILLS_BIN_DIR",
                    path.display()
                )
            }
        };
        Ok(Self {
            identity: find("cloud-identity-access")?,
            gateway: find("cloud-api-gateway-bff")?,
        })
    }
}

/// Starts a service binary (ports picked by the OS, JSON logs on stderr captured) and waits for
/// its "listening" line. The helper panics on failure (it is a test helper); that panic is caught
/// here and becomes an error.
pub async fn start_service(
    binary: &Path,
    env_prefix: &'static str,
    env: Vec<(String, String)>,
) -> Result<ServiceProcess> {
    let binary = binary.to_path_buf();
    let shown = binary.display().to_string();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ServiceProcess::start(&binary, env_prefix, &env, &[])
    })
    .await
    .map_err(|e| anyhow::anyhow!("{shown} did not start: {e}"))
}

/// Polls `url` until it answers `want`, and returns how long that took.
pub async fn wait_for_status(
    client: &reqwest::Client,
    url: &str,
    want: u16,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status().as_u16() == want
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("{url} did not answer {want} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves 200 with a small JSON body on every path, until the runtime ends.
pub async fn spawn_upstream() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the upstream")?;
    let addr = listener.local_addr()?;
    let app =
        axum::Router::new().fallback(|| async { axum::Json(serde_json::json!({"ok": true})) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn redis_server_bin() -> PathBuf {
    std::env::var_os("CLOUD_REDIS_SERVER")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// A private Redis that can be killed and started again on the same port.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cloud-drills-redis-")
            .tempdir()?;
        let mut redis = Self {
            port: free_port()?,
            child: None,
            dir,
        };
        redis.restart().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port; returns when it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        let child = Command::new(redis_server_bin())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (apt-get install redis-server, or set CLOUD_REDIS_SERVER)")?;
        self.child = Some(child);
        wait_for_port(self.port, "Redis", Duration::from_secs(10)).await
    }

    /// SIGKILL: an outage, not a clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs one command with `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("cannot run redis-cli")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The directory holding `initdb` and `pg_ctl`: `CLOUD_POSTGRES_BIN`, else the newest Debian
/// PostgreSQL under /usr/lib/postgresql (the same rule as xtask's servers).
fn postgres_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CLOUD_POSTGRES_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found in /usr/lib/postgresql (apt-get install postgresql)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL with initdb under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A private PostgreSQL cluster that can be stopped (immediate mode: like a crash) and started
/// again on the same port with the same data.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    data: tempfile::TempDir,
    as_nobody: bool,
    running: bool,
}

impl PrivatePostgres {
    pub async fn start() -> Result<Self> {
        let bin = postgres_bin_dir()?;
        let data = tempfile::Builder::new()
            .prefix("cloud-drills-pg-")
            .tempdir()?;
        // initdb refuses to run as root; the cluster then belongs to `nobody`.
        let as_nobody = is_root();
        if as_nobody {
            run(Command::new("chown")
                .arg("-R")
                .arg("nobody")
                .arg(data.path()))?;
        }
        let mut pg = Self {
            port: free_port()?,
            bin,
            data,
            as_nobody,
            running: false,
        };
        let pgdata = pg.pgdata();
        let mut init = pg.command("initdb");
        init.arg("-D")
            .arg(&pgdata)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null());
        run(&mut init).context("initdb failed")?;
        pg.restart().await?;
        Ok(pg)
    }

    fn pgdata(&self) -> PathBuf {
        self.data.path().join("pgdata")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_nobody {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "nobody", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server on its port; returns when it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.data.path().display()
        );
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(self.pgdata())
            .args(["-o", &opts, "-l"])
            .arg(self.data.path().join("log"))
            .args(["-w", "start"])
            .stdout(Stdio::null());
        let mut start = tokio::process::Command::from(start);
        let status = start.status().await.context("cannot run pg_ctl start")?;
        if !status.success() {
            bail!("pg_ctl start failed: {status}");
        }
        self.running = true;
        wait_for_port(self.port, "PostgreSQL", Duration::from_secs(20)).await
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once, no checkpoint, clients see
    /// their connections drop, as in a crash.
    pub async fn stop(&mut self) -> Result<()> {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.pgdata())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null());
        let status = tokio::process::Command::from(stop)
            .status()
            .await
            .context("cannot run pg_ctl stop")?;
        self.running = false;
        if !status.success() {
            bail!("pg_ctl stop failed: {status}");
        }
        Ok(())
    }

    /// Runs one SQL statement with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-F",
                "|",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(),
                "-c",
                sql,
            ])
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!(
                "psql failed on {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let mut stop = self.command("pg_ctl");
            stop.arg("-D")
                .arg(self.pgdata())
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = stop.status();
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed: {status}", cmd.get_program());
    }
    Ok(())
}
