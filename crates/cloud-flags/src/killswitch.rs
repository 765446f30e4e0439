//! The local kill switch: flags forced off by an environment variable or a file, overriding the
//! server, for incidents. Every change of the set is audited.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The default environment variable: flag names separated by commas or whitespace.
pub const DEFAULT_KILL_SWITCH_ENV: &str = "CLOUD_FLAGS_KILL_SWITCH";

/// Where the kill switch is read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillSwitchSource {
    /// Environment variable with flag names separated by commas or whitespace.
    pub env_var: Option<String>,
    /// File with one flag name per line; `#` starts a comment. A missing file is an empty set.
    pub file: Option<PathBuf>,
}

/// Parses a kill-switch list (file content or env value).
pub fn parse(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split([',', ' ', '\t']))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

impl KillSwitchSource {
    /// The current set; an unreadable file (other than missing) is an error naming it.
    pub fn read(&self) -> Result<BTreeSet<String>, String> {
        let mut killed = BTreeSet::new();
        if let Some(var) = &self.env_var
            && let Ok(value) = std::env::var(var)
        {
            killed.extend(parse(&value));
        }
        if let Some(file) = &self.file {
            killed.extend(read_file(file)?);
        }
        Ok(killed)
    }
}

fn read_file(path: &Path) -> Result<BTreeSet<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(format!(
            "cannot read kill-switch file {}: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_comments() {
        let set = parse(
            "gateway.canary-upstream # incident 42\n\n  identity.new-claims,frontend.x\n# all off\n",
        );
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            [
                "frontend.x",
                "gateway.canary-upstream",
                "identity.new-claims"
            ]
        );
    }
}
