//! The previous release's service binaries for the rolling-update drill: the commit named in
//! crates/cloud-drills/previous-release.txt, built once with `git worktree add` + `cargo build`
//! and cached by its SHA under `<cache>/cloud-platform/previous-release/<sha>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::steps::{path_str, run_cmd};

const BINARIES: [&str; 2] = ["cloud-identity-access", "cloud-api-gateway-bff"];

/// What `cargo xtask drills` builds: the services and the drills' runner.
pub const DRILL_PACKAGES: [&str; 3] = [
    "cloud-identity-access",
    "cloud-api-gateway-bff",
    "cloud-drills",
];

/// The SHA in previous-release.txt: its first line that is neither empty nor a `#` comment.
pub fn sha(root: &Path) -> Result<String> {
    let file = root.join("crates/cloud-drills/previous-release.txt");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let sha = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{} names no commit", file.display()))?;
    if sha.len() != 40 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{}: {sha:?} is not a full 40-digit SHA", file.display());
    }
    Ok(sha.to_string())
}

fn cache_dir() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(cache.join("cloud-platform").join("previous-release"))
}

/// The Cargo target directory the main workspace builds into, so that the old build shares its
/// compiled dependencies.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// The directory holding the previous release's two binaries, building them first when the
/// cache has none for its SHA. Call it before building this checkout's binaries: the old build
/// writes the same file names into the shared target directory (see below).
pub fn binaries(root: &Path, cargo: &str) -> Result<PathBuf> {
    let sha = sha(root)?;
    let dir = cache_dir()?.join(&sha);
    if BINARIES.iter().all(|b| dir.join(b).is_file()) {
        return Ok(dir);
    }
    let present = Command::new("git")
        .current_dir(root)
        .args(["cat-file", "-e", &format!("{sha}^{{commit}}")])
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        bail!(
            "the previous release {sha} (crates/cloud-drills/previous-release.txt) is not in this \
             clone; fetch the full history (`git fetch --unshallow`)"
        );
    }
    let parent = cache_dir()?;
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix("cloud-previous-release-")
        .tempdir()?;
    let tree = work.path().join("src");
    eprintln!(
        "xtask: building the previous release {sha} (the rolling drill's OLD binaries) in {}",
        tree.display()
    );
    let started = Instant::now();
    // A worktree left by an interrupted run would make `worktree add` refuse its path.
    let _ = Command::new("git")
        .current_dir(root)
        .args(["worktree", "prune"])
        .status();
    run_cmd(Command::new("git").current_dir(root).args([
        "worktree",
        "add",
        "--detach",
        "--quiet",
        path_str(&tree)?,
        &sha,
    ]))?;
    let built = build(root, cargo, &tree);
    let _ = Command::new("git")
        .current_dir(root)
        .args(["worktree", "remove", "--force", path_str(&tree)?])
        .status();
    let staged = built?;
    // Staged next to the destination, then renamed: a half-copied cache entry is never used.
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&parent)?;
    for b in BINARIES {
        std::fs::copy(staged.join(b), staging.path().join(b))
            .with_context(|| format!("cannot copy {b} into the cache"))?;
    }
    std::fs::write(
        staging.path().join("built.txt"),
        format!("{sha}\nbuilt in {:.0} s\n", started.elapsed().as_secs_f64()),
    )?;
    let staging = staging.keep();
    if let Err(err) = std::fs::rename(&staging, &dir) {
        let _ = std::fs::remove_dir_all(&staging);
        if !BINARIES.iter().all(|b| dir.join(b).is_file()) {
            return Err(err)
                .with_context(|| format!("cannot move the build into {}", dir.display()));
        }
    }
    eprintln!(
        "xtask: previous release {sha} built in {:.0} s, cached in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

/// `cargo build` of the two binaries in the worktree, into the main workspace's target
/// directory; returns the directory the binaries are in.
///
/// The worktree gets this checkout's Cargo.lock: the same dependency versions, so only the
/// workspace's own crates are compiled anew (the old commit's lock predates entries the lead
/// committed later). Path crates are hashed by their path relative to the workspace root, so the
/// old crates' artifacts take the same file names as the new ones': the next build of this
/// checkout recompiles its own crates once, and the binaries are copied out before that.
///
/// The worktree also gets this checkout's `[profile.*]` tables (cargo reads profiles from the
/// workspace's root manifest only): a dependency compiled with other settings, such as another
/// opt-level, is another artifact, and every dependency would be compiled twice. The profiles
/// are build settings; the old code is the old code.
///
/// `/version` reports the SHA: cloud-kit's build script asks git, which answers from the
/// worktree. (Not `CLOUD_GIT_SHA`: changing it would also re-run the build script of this
/// checkout's next build, which shares the script's output directory.)
fn build(root: &Path, cargo: &str, tree: &Path) -> Result<PathBuf> {
    std::fs::copy(root.join("Cargo.lock"), tree.join("Cargo.lock"))
        .context("cannot copy Cargo.lock into the worktree")?;
    let read = |dir: &Path| {
        let path = dir.join("Cargo.toml");
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let manifest = with_profiles_of(&read(root)?, &read(tree)?)?;
    std::fs::write(tree.join("Cargo.toml"), manifest)
        .context("cannot write the worktree's Cargo.toml")?;
    let target = target_dir(root);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(tree)
        .arg("build")
        .args(["--target-dir", path_str(&target)?]);
    // The same packages as this checkout's build for the drills, so that cargo unifies the
    // dependencies' features the same way and that build reuses every dependency compiled here
    // (with only the two binaries', it compiled again the ones whose features differ).
    for p in DRILL_PACKAGES {
        if tree.join("crates").join(p).join("Cargo.toml").is_file() {
            cmd.args(["-p", p]);
        }
    }
    run_cmd(&mut cmd)?;
    Ok(target.join("debug"))
}

/// `old` with its `[profile.*]` tables replaced by those of `current`. Both manifests must keep
/// their profiles last (every table from the first `[profile.` header on is a profile), so that
/// nothing else is dropped or taken over.
fn with_profiles_of(current: &str, old: &str) -> Result<String> {
    fn split(manifest: &str, which: &str) -> Result<(String, String)> {
        let (mut head, mut profiles) = (String::new(), String::new());
        for line in manifest.lines() {
            let trimmed = line.trim_start();
            let profile = trimmed.starts_with("[profile.");
            if profile || !profiles.is_empty() {
                if trimmed.starts_with('[') && !profile {
                    bail!(
                        "{which} Cargo.toml has a table after its profiles ({}): keep the `[profile.*]` tables last",
                        line.trim()
                    );
                }
                profiles.push_str(line);
                profiles.push('\n');
            } else {
                head.push_str(line);
                head.push('\n');
            }
        }
        Ok((head, profiles))
    }
    let (_, profiles) = split(current, "this checkout's")?;
    let (head, _) = split(old, "the previous release's")?;
    Ok(head + &profiles)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_committed_file_names_a_commit() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert_eq!(sha(root).unwrap().len(), 40);
    }

    #[test]
    fn the_old_manifest_gets_this_checkouts_profiles_and_keeps_the_rest() {
        let current = "[workspace]\nmembers = [\"new\"]\n\n[profile.release]\nlto = \"thin\"\n\n# why\n[profile.dev.package.\"*\"]\ndebug = false\n";
        let old = "[workspace]\nmembers = [\"old\"]\n[workspace.lints.rust]\nunsafe_code = \"forbid\"\n\n[profile.dev.package.\"*\"]\nopt-level = 1\n";
        assert_eq!(
            with_profiles_of(current, old).unwrap(),
            "[workspace]\nmembers = [\"old\"]\n[workspace.lints.rust]\nunsafe_code = \"forbid\"\n\n[profile.release]\nlto = \"thin\"\n\n# why\n[profile.dev.package.\"*\"]\ndebug = false\n"
        );
        let err =
            with_profiles_of("[profile.dev]\ndebug = 0\n[patch.crates-io]\n", old).unwrap_err();
        assert!(err.to_string().contains("[patch.crates-io]"), "{err}");
    }

    /// The committed manifest keeps its profiles last, as `with_profiles_of` needs.
    #[test]
    fn the_workspace_manifest_keeps_its_profiles_last() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let merged = with_profiles_of(&manifest, &manifest).unwrap();
        assert_eq!(merged, manifest);
        assert!(manifest.contains("[profile.dev.package.argon2]"));
    }
}
