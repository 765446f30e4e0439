//! The `git` CLI, driven with `std::process::Command`. Commits are built with plumbing on a
//! private index and published with `git update-ref <ref> <new> <old>`: a compare-and-swap, so
//! of two racing writers exactly one wins and the other changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use time::OffsetDateTime;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Git {
    root: PathBuf,
}

/// One commit from `git log`.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub sha: String,
    pub time: OffsetDateTime,
    pub author: String,
    pub subject: String,
    pub trailers: BTreeMap<String, String>,
}

impl Git {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.root)
            .args(args)
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0");
        cmd
    }

    fn output(
        cmd: &mut Command,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<std::process::Output> {
        use std::io::Write;
        let mut child = cmd
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Spawn {
                program: "git".into(),
                reason: e.to_string(),
            })?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data).map_err(|e| Error::Git {
                args: args.join(" "),
                stderr: e.to_string(),
            })?;
        }
        child.wait_with_output().map_err(|e| Error::Git {
            args: args.join(" "),
            stderr: e.to_string(),
        })
    }

    /// Runs git and returns stdout; a non-zero exit is an error carrying stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_with(args, &[], None)
    }

    pub fn run_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Result<String> {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = Self::output(&mut cmd, args, stdin)?;
        if !out.status.success() {
            return Err(Error::Git {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether git succeeds (for probes such as "does this path exist at that commit").
    fn probe(&self, args: &[&str]) -> Result<Option<String>> {
        let mut cmd = self.command(args);
        let out = Self::output(&mut cmd, args, None)?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    pub fn head(&self) -> Result<String> {
        Ok(self
            .run(&["rev-parse", "--verify", "HEAD"])?
            .trim()
            .to_string())
    }

    /// The ref HEAD points to (`refs/heads/main`), or `HEAD` when detached.
    pub fn head_ref(&self) -> Result<String> {
        Ok(self
            .probe(&["symbolic-ref", "-q", "HEAD"])?
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "HEAD".into()))
    }

    /// `git status --porcelain` lines; empty means clean.
    pub fn dirty_files(&self) -> Result<Vec<String>> {
        Ok(self
            .run(&["status", "--porcelain", "--untracked-files=normal"])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// The content of `path` at `rev`, or `None` when it does not exist there.
    pub fn show(&self, rev: &str, path: &Path) -> Result<Option<String>> {
        let spec = format!("{rev}:{}", path_str(path));
        self.probe(&["show", &spec])
    }

    /// Commits that touched `path`, newest first (follows the whole history reachable from HEAD).
    pub fn log_path(&self, path: &Path) -> Result<Vec<CommitInfo>> {
        self.log(&["--", &path_str(path)])
    }

    /// Commits reachable from HEAD whose message has `trailer` (e.g. `Promote-Service: x`).
    pub fn log(&self, extra: &[&str]) -> Result<Vec<CommitInfo>> {
        let format = "--format=%H%x1f%ct%x1f%an <%ae>%x1f%s%x1f%(trailers:only,unfold)%x1e";
        let mut args = vec!["log", format];
        args.extend_from_slice(extra);
        let out = match self.run(&args) {
            Ok(out) => out,
            // A repository without commits has no history: not an error for readers.
            Err(Error::Git { stderr, .. }) if stderr.contains("does not have any commits") => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let mut commits = Vec::new();
        for record in out.split('\x1e') {
            let record = record.trim_start_matches('\n');
            if record.trim().is_empty() {
                continue;
            }
            let mut parts = record.splitn(5, '\x1f');
            let sha = parts.next().unwrap_or_default().to_string();
            let ts: i64 = parts.next().unwrap_or_default().parse().unwrap_or(0);
            let author = parts.next().unwrap_or_default().to_string();
            let subject = parts.next().unwrap_or_default().to_string();
            let mut trailers = BTreeMap::new();
            for line in parts.next().unwrap_or_default().lines() {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            let time =
                OffsetDateTime::from_unix_timestamp(ts).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            commits.push(CommitInfo {
                sha,
                time,
                author,
                subject,
                trailers,
            });
        }
        Ok(commits)
    }

    /// Makes a commit on top of `base` that sets `files` (path -> content), without touching the
    /// index or the work tree. Returns the new commit's sha (not yet on any branch).
    pub fn commit_on(
        &self,
        base: &str,
        files: &[(PathBuf, String)],
        message: &str,
        when: OffsetDateTime,
    ) -> Result<String> {
        let index = tempfile::NamedTempFile::new().map_err(|e| Error::Git {
            args: "(temp index)".into(),
            stderr: e.to_string(),
        })?;
        let index_path = index.path().to_string_lossy().into_owned();
        let env = [("GIT_INDEX_FILE", index_path.as_str())];
        self.run_with(&["read-tree", base], &env, None)?;
        for (path, content) in files {
            let blob = self.run_with(
                &["hash-object", "-w", "--stdin"],
                &[],
                Some(content.as_bytes()),
            )?;
            let info = format!("100644,{},{}", blob.trim(), path_str(path));
            self.run_with(&["update-index", "--add", "--cacheinfo", &info], &env, None)?;
        }
        let tree = self.run_with(&["write-tree"], &env, None)?;
        let date = format!("{} +0000", when.unix_timestamp());
        let env = [
            ("GIT_AUTHOR_DATE", date.as_str()),
            ("GIT_COMMITTER_DATE", date.as_str()),
        ];
        let sha = self.run_with(
            &["commit-tree", tree.trim(), "-p", base, "-F", "-"],
            &env,
            Some(message.as_bytes()),
        )?;
        Ok(sha.trim().to_string())
    }

    /// Moves HEAD's branch from `expected` to `new` only if it still points at `expected`, then
    /// brings the index and work tree along. Returns [`Error::Race`] when another writer won.
    pub fn publish(&self, expected: &str, new: &str, reflog: &str) -> Result<()> {
        let head_ref = self.head_ref()?;
        let mut attempt = 0;
        loop {
            match self.run(&["update-ref", "-m", reflog, &head_ref, new, expected]) {
                Ok(_) => break,
                Err(err) => {
                    let actual = self
                        .run(&["rev-parse", "--verify", &head_ref])
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default();
                    if actual != expected {
                        return Err(Error::Race {
                            ref_name: head_ref,
                            expected: expected.into(),
                            actual,
                        });
                    }
                    // The ref still has our base: the failure was lock contention with another
                    // writer still in flight. Retry until the compare-and-swap decides.
                    attempt += 1;
                    if attempt > 100 {
                        return Err(err);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
        // The branch moved from `expected` to `new`; move the index and work tree the same way.
        self.run(&["read-tree", "-m", "-u", expected, new])?;
        Ok(())
    }

    /// The diff between two commits, for `--dry-run`.
    pub fn diff(&self, from: &str, to: &str) -> Result<String> {
        self.run(&["diff", "--no-color", from, to])
    }
}

pub fn path_str(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}
