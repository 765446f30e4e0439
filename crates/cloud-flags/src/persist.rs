//! The bootstrap file and the last-known-good backup.
//!
//! The bootstrap file is plain Unleash client-features JSON (what `GET /api/client/features`
//! returns), written by hand and kept in git. The backup is written by the client after every
//! good fetch: a one-line JSON header with the SHA-256 and length of the body, then the body
//! exactly as the server sent it. It is written to a temporary file in the same directory,
//! fsynced, and renamed over the old one, so a crash leaves either the old or the new file. A
//! file whose checksum, length or content does not check out is reported and ignored.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use unleash_types::client_features::{ClientFeatures, ClientFeaturesDelta};

use crate::definition::sha256_hex;
use crate::error::FlagError;

const BACKUP_FORMAT: &str = "cloud-flags-backup/v1";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupHeader {
    format: String,
    sha256: String,
    length: usize,
    etag: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    fetched_at: OffsetDateTime,
}

/// A loaded backup.
#[derive(Debug, Clone)]
pub struct Backup {
    pub features: ClientFeatures,
    pub body: Vec<u8>,
    pub etag: Option<String>,
    pub fetched_at: OffsetDateTime,
}

/// Parses a client-features document (the full `GET /api/client/features` format, or the delta
/// format `{"events": [...]}` of `/api/client/delta`, applied to an empty state); the error
/// names the file and the position.
pub fn parse_features(bytes: &[u8], path: &Path) -> Result<ClientFeatures, FlagError> {
    let invalid = |e: serde_json::Error| FlagError::InvalidFeatures {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
    if value.get("events").is_some() && value.get("features").is_none() {
        let delta: ClientFeaturesDelta = serde_json::from_value(value).map_err(invalid)?;
        return Ok(ClientFeatures::create_from_delta(&delta));
    }
    serde_json::from_value(value).map_err(invalid)
}

/// Reads a bootstrap file (Unleash client-features format).
pub fn read_bootstrap(path: &Path) -> Result<(ClientFeatures, Vec<u8>), FlagError> {
    let bytes = std::fs::read(path).map_err(|e| FlagError::io("read bootstrap file", path, e))?;
    Ok((parse_features(&bytes, path)?, bytes))
}

/// Writes the backup atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_backup(
    path: &Path,
    body: &[u8],
    etag: Option<&str>,
    fetched_at: OffsetDateTime,
) -> Result<(), FlagError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| FlagError::io("create backup directory", dir, e))?;
    let header = BackupHeader {
        format: BACKUP_FORMAT.into(),
        sha256: sha256_hex(body),
        length: body.len(),
        etag: etag.map(str::to_string),
        fetched_at,
    };
    let mut bytes = serde_json::to_vec(&header).map_err(|e| FlagError::Encode(e.to_string()))?;
    bytes.push(b'\n');
    bytes.extend_from_slice(body);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| FlagError::io("create temporary backup in", dir, e))?;
    tmp.write_all(&bytes)
        .map_err(|e| FlagError::io("write temporary backup for", path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| FlagError::io("sync temporary backup for", path, e))?;
    tmp.persist(path)
        .map_err(|e| FlagError::io("rename backup into", path, e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads and checks the backup. Any problem is a [`FlagError::CorruptBackup`] naming it.
pub fn read_backup(path: &Path) -> Result<Backup, FlagError> {
    let bytes =
        std::fs::read(path).map_err(|e| FlagError::io("read last-known-good file", path, e))?;
    let corrupt = |reason: String| FlagError::CorruptBackup {
        path: path.to_path_buf(),
        reason,
    };
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let header: BackupHeader = serde_json::from_slice(&bytes[..split])
        .map_err(|e| corrupt(format!("header is not valid: {e}")))?;
    if header.format != BACKUP_FORMAT {
        return Err(corrupt(format!(
            "format is {:?}, expected {BACKUP_FORMAT:?}",
            header.format
        )));
    }
    let body = &bytes[split + 1..];
    if body.len() != header.length {
        return Err(corrupt(format!(
            "body is {} bytes, header says {} (truncated?)",
            body.len(),
            header.length
        )));
    }
    let actual = sha256_hex(body);
    if actual != header.sha256 {
        return Err(corrupt(format!(
            "checksum mismatch: header {} but body hashes to {actual}",
            header.sha256
        )));
    }
    let features = parse_features(body, path).map_err(|e| corrupt(e.to_string()))?;
    Ok(Backup {
        features,
        body: body.to_vec(),
        etag: header.etag,
        fetched_at: header.fetched_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"version":2,"features":[{"name":"a","enabled":true,"strategies":[{"name":"default"}]}]}"#;

    #[test]
    fn backup_round_trips_and_detects_every_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lkg.json");
        let at = time::macros::datetime!(2026-11-26 14:03 UTC);
        write_backup(&path, BODY, Some("\"etag-1\""), at).unwrap();
        let back = read_backup(&path).unwrap();
        assert_eq!(back.body, BODY);
        assert_eq!(back.etag.as_deref(), Some("\"etag-1\""));
        assert_eq!(back.fetched_at, at);
        assert_eq!(back.features.features.len(), 1);

        let good = std::fs::read(&path).unwrap();
        // One flipped byte in the body.
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        assert!(
            matches!(read_backup(&path), Err(FlagError::CorruptBackup { reason, .. }) if reason.contains("checksum"))
        );
        // Truncated.
        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        assert!(
            matches!(read_backup(&path), Err(FlagError::CorruptBackup { reason, .. }) if reason.contains("truncated"))
        );
        // Garbage.
        std::fs::write(&path, b"not a backup").unwrap();
        assert!(matches!(
            read_backup(&path),
            Err(FlagError::CorruptBackup { .. })
        ));
    }
}
