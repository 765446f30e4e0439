//! An environment file (`environments/<name>.yaml`): `cloud_gitops::matrix::parse_env`, the
//! parser `cloudctl` runs on each file through `Matrix::load`, against the repository's own
//! `environments/schema.json`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(include_str!("../../environments/schema.json"))
            .expect("environments/schema.json is JSON")
    })
}

/// The file is named after the environment's `name:` (as in the repository), so that inputs get
/// past the name check to the checks behind it; a name that is not a plain file stem keeps
/// `dev`.
fn file_for(text: &str) -> PathBuf {
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("name:"))
        .map(|n| n.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 63
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .unwrap_or("dev");
    PathBuf::from(format!("environments/{name}.yaml"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = cloud_gitops::matrix::parse_env(&file_for(text), text, schema()) {
        let _ = file.env.promotion.min_soak();
    }
});
