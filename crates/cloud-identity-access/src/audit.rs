//! The hash chain of the audit trail: each event's hash covers its fields and the previous
//! event's hash, so editing, deleting or reordering any row breaks the chain from there on.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::AuditEvent;

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Serialize)]
struct Hashed<'a> {
    seq: i64,
    id: &'a str,
    at: i64,
    actor: &'a str,
    tenant_id: Option<&'a str>,
    action: &'a str,
    target: &'a str,
    before: Option<&'a str>,
    after: Option<&'a str>,
    prev_hash: &'a str,
}

/// SHA-256 (hex) over the canonical JSON of the event's fields, `prev_hash` included.
pub fn event_hash(event: &AuditEvent) -> String {
    let hashed = Hashed {
        seq: event.seq,
        id: &event.id,
        at: event.at,
        actor: &event.actor,
        tenant_id: event.tenant_id.as_deref(),
        action: &event.action,
        target: &event.target,
        before: event.before.as_deref(),
        after: event.after.as_deref(),
        prev_hash: &event.prev_hash,
    };
    // Serializing this struct of strings and integers cannot fail.
    let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub events: usize,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the chain: sequence numbers without gaps from 1, each `prev_hash` equal to the hash
/// before it, each `hash` recomputed, and the head (last seq and hash, kept in its own row)
/// matching the last event, which detects a deleted tail.
pub fn verify_chain(events: &[AuditEvent], head_seq: i64, head_hash: &str) -> VerifyReport {
    let mut problems = Vec::new();
    let mut expected_prev = GENESIS_HASH.to_string();
    let mut expected_seq = 1;
    for event in events {
        if event.seq != expected_seq {
            problems.push(format!(
                "event seq {}: expected seq {expected_seq} (a row was deleted or inserted)",
                event.seq
            ));
        }
        if event.prev_hash != expected_prev {
            problems.push(format!(
                "event seq {}: prev_hash does not match the hash of the event before it",
                event.seq
            ));
        }
        let recomputed = event_hash(event);
        if recomputed != event.hash {
            problems.push(format!(
                "event seq {}: content does not match its hash (the row was modified)",
                event.seq
            ));
        }
        expected_prev = event.hash.clone();
        expected_seq = event.seq + 1;
    }
    let last_seq = events.last().map_or(0, |e| e.seq);
    if last_seq != head_seq {
        problems.push(format!("the chain head records {head_seq} events but the last event has seq {last_seq} (events were deleted)"));
    }
    if expected_prev != head_hash {
        problems.push("the chain head hash does not match the last event's hash".to_string());
    }
    VerifyReport {
        events: events.len(),
        problems,
    }
}
