use std::path::{Path, PathBuf};

/// Errors of the flag client. None of them carries the API token.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid Unleash client-features document: {reason}")]
    InvalidFeatures { path: PathBuf, reason: String },
    #[error("last-known-good file {path} is corrupt and was ignored: {reason}")]
    CorruptBackup { path: PathBuf, reason: String },
    #[error("audit log {path} does not exist")]
    AuditLogMissing { path: PathBuf },
    #[error("audit log {path} failed verification at line {line}: {reason}")]
    AuditTampered {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("invalid flag configuration: {0}")]
    Config(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("request to the Unleash server failed: {0}")]
    Http(String),
    #[error("the Unleash server answered {status} to {what}")]
    Status { what: &'static str, status: u16 },
}

impl FlagError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
