//! Temporary git repositories shaped like this one: the real environment matrix and Argo CD
//! manifests, plus small service charts written by the tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cloud_gitops::promote::Gitops;
use cloud_gitops::{Clock, ManualClock};
use time::macros::datetime;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
}

pub const SERVICES: [&str; 2] = ["cloud-demo", "cloud-other"];

pub fn values(tag: &str, digest: &str, replicas: u32, canary: bool) -> String {
    format!(
        "# Environment overrides.\nimage:\n  repository: ghcr.io/cloud-platform/svc\n  tag: \"{tag}\"\n  digest: \"{digest}\"\nreplicaCount: {replicas}\nrollout:\n  enabled: {canary}\n"
    )
}

impl Fixture {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A repository with the real `environments/` (files and schema), and for each service a
    /// chart whose dev/staging/prod values run `1.0.0` (digest `sha256:0100`).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("environments")).unwrap();
        for f in ["dev.yaml", "staging.yaml", "prod.yaml", "schema.json"] {
            std::fs::copy(
                repo_root().join("environments").join(f),
                root.join("environments").join(f),
            )
            .unwrap();
        }
        for svc in SERVICES {
            let chart = root.join("helm").join(svc);
            std::fs::create_dir_all(&chart).unwrap();
            std::fs::write(
                chart.join("values-dev.yaml"),
                values("1.0.0", "sha256:0100", 1, false),
            )
            .unwrap();
            std::fs::write(
                chart.join("values-staging.yaml"),
                values("1.0.0", "sha256:0100", 2, true),
            )
            .unwrap();
            std::fs::write(
                chart.join("values-prod.yaml"),
                values("1.0.0", "sha256:0100", 2, true),
            )
            .unwrap();
        }
        let clock = ManualClock::new(datetime!(2026-01-05 09:00 UTC));
        let f = Self { dir, clock };
        f.git(&["init", "-q", "-b", "main"]);
        f.git(&["config", "user.name", "Test Promoter"]);
        f.git(&["config", "user.email", "promoter@example.com"]);
        f.git(&["config", "commit.gpgsign", "false"]);
        f.commit_all("initial");
        f
    }

    pub fn gitops(&self) -> Gitops {
        Gitops::new(self.root(), Arc::new(self.clock.clone()))
    }

    pub fn git(&self, args: &[&str]) -> String {
        let now = self.clock.now().unix_timestamp().to_string() + " +0000";
        let out = Command::new("git")
            .arg("-C")
            .arg(self.root())
            .args(args)
            .env("GIT_AUTHOR_DATE", &now)
            .env("GIT_COMMITTER_DATE", &now)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Commits every change (as a person editing by hand would), at the clock's time.
    pub fn commit_all(&self, msg: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    pub fn commit_count(&self) -> usize {
        self.git(&["rev-list", "--count", "HEAD"])
            .trim()
            .parse()
            .unwrap()
    }

    pub fn trailers(&self, rev: &str) -> String {
        self.git(&["log", "-1", "--format=%(trailers:only,unfold)", rev])
    }

    pub fn assert_clean(&self) {
        assert_eq!(
            self.git(&["status", "--porcelain"]),
            "",
            "work tree must be clean"
        );
    }

    pub fn advance_hours(&self, h: u64) {
        self.clock.advance(std::time::Duration::from_secs(h * 3600));
    }

    pub fn advance_minutes(&self, m: u64) {
        self.clock.advance(std::time::Duration::from_secs(m * 60));
    }

    pub fn tag(&self, svc: &str, env: &str) -> String {
        let text = self.read(&format!("helm/{svc}/values-{env}.yaml"));
        cloud_gitops::values::read_image(Path::new("x"), &text)
            .unwrap()
            .tag
    }
}
