//! Private PostgreSQL and Redis instances for the test run: started from the installed server
//! binaries on free loopback ports in a temp dir, never the machine's shared instances, and
//! stopped when the run ends.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::steps::{capture, path_str, run_cmd};

#[derive(Debug, Default)]
pub struct Servers {
    postgres: Option<Postgres>,
    redis: Option<Redis>,
}

impl Servers {
    /// URL of a private PostgreSQL server (superuser `postgres`, trust auth on loopback).
    pub fn postgres(&mut self) -> Result<&str> {
        if self.postgres.is_none() {
            self.postgres = Some(Postgres::start()?);
        }
        Ok(self
            .postgres
            .as_ref()
            .map(|p| p.url.as_str())
            .unwrap_or_default())
    }

    pub fn redis(&mut self) -> Result<&str> {
        if self.redis.is_none() {
            self.redis = Some(Redis::start()?);
        }
        Ok(self
            .redis
            .as_ref()
            .map(|r| r.url.as_str())
            .unwrap_or_default())
    }

    pub fn stop_all(&mut self) {
        self.postgres = None;
        self.redis = None;
    }
}

/// Creates (or re-creates, empty) database `name` on the server at `server_url`
/// (`postgres://postgres@127.0.0.1:PORT/...`) and returns its URL.
pub fn create_database(server_url: &str, name: &str) -> Result<String> {
    let port = server_url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .filter(|p| p.parse::<u16>().is_ok())
        .with_context(|| format!("no port in the PostgreSQL URL {server_url}"))?;
    let bin = postgres_bin_dir()?;
    let connection = ["-h", "127.0.0.1", "-p", port, "-U", "postgres"];
    run_cmd(
        Command::new(bin.join("dropdb"))
            .args(connection)
            .args(["--if-exists", name]),
    )?;
    run_cmd(
        Command::new(bin.join("createdb"))
            .args(connection)
            .arg(name),
    )?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/{name}"))
}

pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// The directory holding `initdb` and `pg_ctl`: `CLOUD_POSTGRES_BIN`, else the newest
/// Debian PostgreSQL under /usr/lib/postgresql.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("CLOUD_POSTGRES_BIN") {
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
        .context("no PostgreSQL with initdb under /usr/lib/postgresql (apt-get install postgresql)")
}

pub fn redis_server_bin() -> Result<PathBuf> {
    let out = capture(Command::new("sh").args(["-c", "command -v redis-server"]))
        .context("redis-server not found on PATH (apt-get install redis-server)")?;
    Ok(PathBuf::from(out.trim()))
}

fn is_root() -> bool {
    capture(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not accept connections on port {port} within {timeout:?}")
}

#[derive(Debug)]
struct Postgres {
    url: String,
    bin: PathBuf,
    data: tempfile::TempDir,
    as_nobody: bool,
}

impl Postgres {
    fn start() -> Result<Self> {
        let bin = postgres_bin_dir()?;
        let data = tempfile::Builder::new()
            .prefix("cloud-test-pg-")
            .tempdir()?;
        let as_nobody = is_root();
        if as_nobody {
            // initdb refuses to run as root.
            run_cmd(Command::new("chown").args(["-R", "nobody", path_str(data.path())?]))?;
        }
        let port = free_port()?;
        let pgdata = data.path().join("pgdata");
        let initdb = bin.join("initdb");
        let mut init = user_command(as_nobody, &initdb);
        init.args([
            "-D",
            path_str(&pgdata)?,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ])
        .stdout(Stdio::null());
        run_cmd(&mut init).context("initdb failed")?;
        let mut start = user_command(as_nobody, &bin.join("pg_ctl"));
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            path_str(data.path())?
        );
        start
            .args([
                "-D",
                path_str(&pgdata)?,
                "-o",
                &opts,
                "-l",
                path_str(&data.path().join("log"))?,
                "-w",
                "start",
            ])
            .stdout(Stdio::null());
        run_cmd(&mut start).context("pg_ctl start failed")?;
        wait_for_port(port, "PostgreSQL", Duration::from_secs(20))?;
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        eprintln!("xtask: private PostgreSQL at {url}");
        Ok(Self {
            url,
            bin,
            data,
            as_nobody,
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pgdata = self.data.path().join("pgdata");
        let mut stop = user_command(self.as_nobody, &self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(pgdata)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null());
        if let Err(err) = run_cmd(&mut stop) {
            eprintln!("xtask: warning: stopping the private PostgreSQL failed: {err:#}");
        }
    }
}

fn user_command(as_nobody: bool, program: &Path) -> Command {
    if as_nobody {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "nobody", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

#[derive(Debug)]
struct Redis {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Result<Self> {
        let bin = redis_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("cloud-test-redis-")
            .tempdir()?;
        let port = free_port()?;
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?;
        wait_for_port(port, "Redis", Duration::from_secs(10))?;
        let url = format!("redis://127.0.0.1:{port}");
        eprintln!("xtask: private Redis at {url}");
        Ok(Self {
            url,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
