//! The audit trail of flag changes: one structured event per changed flag on the
//! [`AUDIT_TARGET`] tracing target, and the same record appended to a hash-chained JSON-lines
//! file that [`verify`] checks and [`live_at`] queries ("which definition of flag X was live at
//! 14:03?").
//!
//! Each line carries `prev_hash` (the previous line's `hash`, 64 zeros for the first) and
//! `hash = sha256(the line serialized with hash = "")`. Editing a line breaks its own hash;
//! deleting or reordering lines breaks the chain and the `seq` sequence. Deleting the *last*
//! lines leaves a shorter valid chain: compare the head hash [`verify`] returns with the `hash`
//! of the latest event in the service's logs to catch that.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::definition::{ChangeKind, FlagDefinition, sha256_hex};
use crate::error::FlagError;

/// The tracing target of audit events.
pub const AUDIT_TARGET: &str = "cloud_flags::audit";

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where a flag state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateSource {
    /// Fetched from the Unleash server.
    Server,
    /// The bootstrap file (no server, e.g. `cloudctl up` and tests).
    Bootstrap,
    /// The last-known-good backup, loaded because the server was unreachable.
    Backup,
    /// Only the local kill switch changed.
    KillSwitch,
}

impl StateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Bootstrap => "bootstrap",
            Self::Backup => "backup",
            Self::KillSwitch => "kill_switch",
        }
    }
}

/// One line of the audit log: one change of one flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    /// When the change became live in this process.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub flag: String,
    pub changes: Vec<ChangeKind>,
    pub old_hash: Option<String>,
    pub new_hash: Option<String>,
    pub source: StateSource,
    /// The server's ETag of the state that carried the change.
    pub etag: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub fetched_at: OffsetDateTime,
    /// Whether the local kill switch forces the flag off from now on.
    pub killed: bool,
    /// The full new definition (`None` once removed).
    pub definition: Option<Value>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        sha256_hex(
            serde_json::to_string(&unhashed)
                .unwrap_or_default()
                .as_bytes(),
        )
    }

    /// Emits the record as one structured event on [`AUDIT_TARGET`].
    pub(crate) fn emit(&self) {
        let changes: Vec<&str> = self.changes.iter().map(|c| c.as_str()).collect();
        tracing::info!(
            target: AUDIT_TARGET,
            flag = %self.flag,
            changes = %changes.join(","),
            old_hash = self.old_hash.as_deref().unwrap_or(""),
            new_hash = self.new_hash.as_deref().unwrap_or(""),
            etag = self.etag.as_deref().unwrap_or(""),
            fetched_at = %self.fetched_at,
            source = self.source.as_str(),
            killed = self.killed,
            seq = self.seq,
            hash = %self.hash,
            "feature flag changed"
        );
    }
}

/// A change not yet chained into the log.
#[derive(Debug, Clone)]
pub(crate) struct PendingRecord {
    pub time: OffsetDateTime,
    pub flag: String,
    pub changes: Vec<ChangeKind>,
    pub old_hash: Option<String>,
    pub new_hash: Option<String>,
    pub source: StateSource,
    pub etag: Option<String>,
    pub fetched_at: OffsetDateTime,
    pub killed: bool,
    pub definition: Option<Value>,
}

/// What the log says is live now, per flag: the definition hash and the kill-switch state.
pub(crate) type LiveIndex = BTreeMap<String, (Option<FlagDefinition>, bool)>;

#[derive(Debug)]
struct Head {
    seq: u64,
    hash: String,
}

/// The append side of the audit log, one per client.
#[derive(Debug)]
pub(crate) struct AuditLog {
    path: Option<PathBuf>,
    head: Mutex<Head>,
}

impl AuditLog {
    /// A log that only emits tracing events (no file).
    pub fn events_only() -> Self {
        Self {
            path: None,
            head: Mutex::new(Head {
                seq: 0,
                hash: GENESIS.into(),
            }),
        }
    }

    /// Opens (or starts) the log at `path` and returns what it says is live, so a restart with
    /// an unchanged state appends nothing. A log that fails verification is moved aside to
    /// `<path>.broken-<unix time>`, reported, and a new chain starts.
    pub fn open(path: &Path, now: OffsetDateTime) -> Result<(Self, LiveIndex), FlagError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| FlagError::io("create audit log directory", dir, e))?;
        }
        let (head, live) = match verify(path) {
            Ok(report) => {
                let records = read_records(path)?;
                let mut live = LiveIndex::new();
                for r in &records {
                    let def = match (&r.definition, &r.new_hash) {
                        (Some(value), Some(hash)) => Some(FlagDefinition {
                            value: value.clone(),
                            hash: hash.clone(),
                        }),
                        _ => None,
                    };
                    if def.is_none() && !r.killed {
                        live.remove(&r.flag);
                    } else {
                        live.insert(r.flag.clone(), (def, r.killed));
                    }
                }
                (
                    Head {
                        seq: report.records,
                        hash: report.head_hash,
                    },
                    live,
                )
            }
            Err(FlagError::AuditLogMissing { .. }) => (
                Head {
                    seq: 0,
                    hash: GENESIS.into(),
                },
                LiveIndex::new(),
            ),
            Err(err) => {
                let aside = PathBuf::from(format!(
                    "{}.broken-{}",
                    path.display(),
                    now.unix_timestamp()
                ));
                tracing::error!(target: AUDIT_TARGET, error = %err, moved_to = %aside.display(),
                    "audit log failed verification; moved aside, starting a new chain");
                std::fs::rename(path, &aside)
                    .map_err(|e| FlagError::io("move broken audit log aside", path, e))?;
                (
                    Head {
                        seq: 0,
                        hash: GENESIS.into(),
                    },
                    LiveIndex::new(),
                )
            }
        };
        Ok((
            Self {
                path: Some(path.to_path_buf()),
                head: Mutex::new(head),
            },
            live,
        ))
    }

    /// Chains, appends (fsynced) and emits the records; returns them as written.
    pub fn append(&self, pending: Vec<PendingRecord>) -> Result<Vec<AuditRecord>, FlagError> {
        if pending.is_empty() {
            return Ok(vec![]);
        }
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let mut seq = head.seq;
        let mut prev = head.hash.clone();
        let mut records = Vec::with_capacity(pending.len());
        let mut text = String::new();
        for p in pending {
            seq += 1;
            let mut record = AuditRecord {
                seq,
                time: p.time,
                flag: p.flag,
                changes: p.changes,
                old_hash: p.old_hash,
                new_hash: p.new_hash,
                source: p.source,
                etag: p.etag,
                fetched_at: p.fetched_at,
                killed: p.killed,
                definition: p.definition,
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            record.hash = record.compute_hash();
            prev = record.hash.clone();
            text.push_str(
                &serde_json::to_string(&record).map_err(|e| FlagError::Encode(e.to_string()))?,
            );
            text.push('\n');
            records.push(record);
        }
        if let Some(path) = &self.path {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| FlagError::io("open audit log", path, e))?;
            file.write_all(text.as_bytes())
                .map_err(|e| FlagError::io("append to audit log", path, e))?;
            file.sync_data()
                .map_err(|e| FlagError::io("sync audit log", path, e))?;
        }
        head.seq = seq;
        head.hash = prev;
        for record in &records {
            record.emit();
        }
        Ok(records)
    }
}

/// Parses every line of the log (without checking the chain; see [`verify`]).
pub fn read_records(path: &Path) -> Result<Vec<AuditRecord>, FlagError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FlagError::AuditLogMissing {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(FlagError::io("open audit log", path, e)),
    };
    let mut records = vec![];
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| FlagError::io("read audit log", path, e))?;
        let record: AuditRecord =
            serde_json::from_str(&line).map_err(|e| FlagError::AuditTampered {
                path: path.to_path_buf(),
                line: i + 1,
                reason: format!("not an audit record: {e}"),
            })?;
        records.push(record);
    }
    Ok(records)
}

/// The result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    /// The hash of the last line: compare it with the latest `hash` in the service's audit
    /// events to detect lines deleted from the end.
    pub head_hash: String,
}

/// Checks every line's hash, the chain of `prev_hash` and the `seq` sequence. The error names
/// the first bad line.
pub fn verify(path: &Path) -> Result<VerifyReport, FlagError> {
    let records = read_records(path)?;
    let mut prev = GENESIS.to_string();
    for (i, record) in records.iter().enumerate() {
        let line = i + 1;
        let bad = |reason: String| FlagError::AuditTampered {
            path: path.to_path_buf(),
            line,
            reason,
        };
        if record.seq != line as u64 {
            return Err(bad(format!(
                "seq is {} but this is record {line}: a record was deleted, inserted or reordered",
                record.seq
            )));
        }
        if record.prev_hash != prev {
            return Err(bad("prev_hash does not match the previous record: a record before it was changed or deleted".into()));
        }
        if record.compute_hash() != record.hash {
            return Err(bad(
                "hash does not match the record's content: the record was edited".into(),
            ));
        }
        prev = record.hash.clone();
    }
    Ok(VerifyReport {
        records: records.len() as u64,
        head_hash: prev,
    })
}

/// The record that describes `flag` as it was live at `at`: the last change of the flag at or
/// before `at`. `None` when the flag had no definition yet. A returned record with
/// `definition: None` means the flag had been removed; `killed: true` means it was forced off.
pub fn live_at<'a>(
    records: &'a [AuditRecord],
    flag: &str,
    at: OffsetDateTime,
) -> Option<&'a AuditRecord> {
    records
        .iter()
        .filter(|r| r.flag == flag && r.time <= at)
        .max_by_key(|r| r.seq)
}

/// Every flag's live record at `at` (including removed flags, whose `definition` is `None`).
pub fn all_live_at(records: &[AuditRecord], at: OffsetDateTime) -> BTreeMap<&str, &AuditRecord> {
    let mut live = BTreeMap::new();
    for r in records.iter().filter(|r| r.time <= at) {
        live.insert(r.flag.as_str(), r);
    }
    live
}
