//! Embeds the git commit the binaries are built from, for `GET /version`.
//! CI and image builds pass `CLOUD_GIT_SHA`; a local build asks git; otherwise "unknown".
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CLOUD_GIT_SHA");
    let sha = std::env::var("CLOUD_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        });
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        && out.status.success()
    {
        let git_dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/refs/heads");
    }
    println!(
        "cargo:rustc-env=CLOUD_GIT_SHA={}",
        sha.unwrap_or_else(|| "unknown".into())
    );
}
