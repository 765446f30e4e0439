use std::path::PathBuf;

/// Everything that can go wrong; every message names what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment file (or another matrix input) is malformed.
    #[error("{}: key `{key}`: {reason}", file.display())]
    Matrix {
        file: PathBuf,
        key: String,
        reason: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`git {args}` failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    /// A promotion or rollback refused by one of the rules; `rule` is its name.
    #[error("refused by rule `{rule}`: {reason}")]
    Refused { rule: &'static str, reason: String },
    #[error(
        "the work tree has uncommitted changes; commit or discard them first (nothing was written):\n  {}",
        files.join("\n  ")
    )]
    DirtyTree { files: Vec<String> },
    /// Another promotion moved the branch first. Nothing of ours was written.
    #[error(
        "{ref_name} moved from {expected} to {actual} while this change was being prepared; nothing was written, re-run to apply it on top"
    )]
    Race {
        ref_name: String,
        expected: String,
        actual: String,
    },
    #[error("{}: {reason}", file.display())]
    Values { file: PathBuf, reason: String },
    #[error("{}: template: {reason}", file.display())]
    Template { file: PathBuf, reason: String },
    #[error("`helm {args}` failed: {stderr}")]
    Helm { args: String, stderr: String },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
