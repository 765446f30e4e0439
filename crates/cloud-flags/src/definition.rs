//! Canonical flag definitions, their hashes, and the diff between two of them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use unleash_types::client_features::ClientFeatures;

/// What changed about one flag between two states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    EnabledToggled,
    Strategies,
    Constraints,
    Variants,
    Segments,
    /// Anything else in the definition (description, type, impression data, dependencies...).
    Other,
    /// The local kill switch now forces the flag off.
    KillSwitchOn,
    /// The local kill switch no longer forces the flag off.
    KillSwitchOff,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Removed => "removed",
            Self::EnabledToggled => "enabled_toggled",
            Self::Strategies => "strategies",
            Self::Constraints => "constraints",
            Self::Variants => "variants",
            Self::Segments => "segments",
            Self::Other => "other",
            Self::KillSwitchOn => "kill_switch_on",
            Self::KillSwitchOff => "kill_switch_off",
        }
    }
}

/// One flag's effective definition: the feature plus the segments its strategies use, so that a
/// change to a shared segment shows up as a change of every flag that uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagDefinition {
    pub value: Value,
    pub hash: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every flag's canonical definition, keyed by name.
pub fn definitions(features: &ClientFeatures) -> BTreeMap<String, FlagDefinition> {
    let segments: BTreeMap<i32, Value> = features
        .segments
        .iter()
        .flatten()
        .map(|s| (s.id, serde_json::to_value(s).unwrap_or(Value::Null)))
        .collect();
    features
        .features
        .iter()
        .map(|feature| {
            let mut value = serde_json::to_value(feature).unwrap_or(Value::Null);
            if let Some(obj) = value.as_object_mut() {
                // Changes on every use of the flag; not part of its definition.
                obj.remove("lastSeenAt");
            }
            let used: BTreeSet<i32> = feature
                .strategies
                .iter()
                .flatten()
                .flat_map(|s| s.segments.iter().flatten().copied())
                .collect();
            let used_segments: Vec<Value> = used
                .iter()
                .map(|id| {
                    segments
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| json!({ "id": id, "missing": true }))
                })
                .collect();
            let value = canonical(json!({ "feature": value, "segments": used_segments }));
            let hash = sha256_hex(value.to_string().as_bytes());
            (feature.name.clone(), FlagDefinition { value, hash })
        })
        .collect()
}

/// The value with every object's keys in sorted order. Strategy parameters are hash maps, and
/// with serde_json's `preserve_order` (enabled by other crates in the workspace) their iteration
/// order would leak into the definition hash and report changes that never happened.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn strategies(def: &Value) -> Vec<Value> {
    def.pointer("/feature/strategies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn strategy_field(def: &Value, field: &str) -> Vec<Value> {
    strategies(def)
        .iter()
        .map(|s| s.get(field).cloned().unwrap_or(Value::Null))
        .collect()
}

/// The kinds of change from `old` to `new` (empty when they are the same definition).
pub fn diff(old: Option<&FlagDefinition>, new: Option<&FlagDefinition>) -> Vec<ChangeKind> {
    let (old, new) = match (old, new) {
        (None, None) => return vec![],
        (None, Some(_)) => return vec![ChangeKind::Added],
        (Some(_), None) => return vec![ChangeKind::Removed],
        (Some(o), Some(n)) if o.hash == n.hash => return vec![],
        (Some(o), Some(n)) => (&o.value, &n.value),
    };
    let mut changes = vec![];
    if old.pointer("/feature/enabled") != new.pointer("/feature/enabled") {
        changes.push(ChangeKind::EnabledToggled);
    }
    let bare = |def: &Value| -> Vec<Value> {
        strategies(def)
            .into_iter()
            .map(|mut s| {
                if let Some(obj) = s.as_object_mut() {
                    for field in ["constraints", "variants", "segments"] {
                        obj.remove(field);
                    }
                }
                s
            })
            .collect()
    };
    if bare(old) != bare(new) {
        changes.push(ChangeKind::Strategies);
    }
    if strategy_field(old, "constraints") != strategy_field(new, "constraints") {
        changes.push(ChangeKind::Constraints);
    }
    if old.pointer("/feature/variants") != new.pointer("/feature/variants")
        || strategy_field(old, "variants") != strategy_field(new, "variants")
    {
        changes.push(ChangeKind::Variants);
    }
    if strategy_field(old, "segments") != strategy_field(new, "segments")
        || old.get("segments") != new.get("segments")
    {
        changes.push(ChangeKind::Segments);
    }
    if changes.is_empty() {
        changes.push(ChangeKind::Other);
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(json: Value) -> ClientFeatures {
        serde_json::from_value(json).unwrap()
    }

    fn one(json: Value) -> FlagDefinition {
        definitions(&features(json)).remove("f").unwrap()
    }

    fn base() -> Value {
        json!({"version": 2, "features": [{"name": "f", "enabled": true, "strategies": [
            {"name": "flexibleRollout", "parameters": {"rollout": "10", "stickiness": "tenantId", "groupId": "f"},
             "constraints": [{"contextName": "environment", "operator": "IN", "values": ["prod"]}], "segments": [1]}]}],
            "segments": [{"id": 1, "constraints": [{"contextName": "tenantId", "operator": "IN", "values": ["a"]}]}]})
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let old = one(base());
        assert!(diff(Some(&old), Some(&one(base()))).is_empty());

        let mut v = base();
        v["features"][0]["enabled"] = json!(false);
        assert_eq!(
            diff(Some(&old), Some(&one(v))),
            vec![ChangeKind::EnabledToggled]
        );

        let mut v = base();
        v["features"][0]["strategies"][0]["parameters"]["rollout"] = json!("20");
        assert_eq!(
            diff(Some(&old), Some(&one(v))),
            vec![ChangeKind::Strategies]
        );

        let mut v = base();
        v["features"][0]["strategies"][0]["constraints"][0]["values"] = json!(["dev"]);
        assert_eq!(
            diff(Some(&old), Some(&one(v))),
            vec![ChangeKind::Constraints]
        );

        let mut v = base();
        v["features"][0]["variants"] = json!([{"name": "a", "weight": 1000}]);
        assert_eq!(diff(Some(&old), Some(&one(v))), vec![ChangeKind::Variants]);

        // A shared segment changing changes every flag that uses it.
        let mut v = base();
        v["segments"][0]["constraints"][0]["values"] = json!(["a", "b"]);
        assert_eq!(diff(Some(&old), Some(&one(v))), vec![ChangeKind::Segments]);

        let mut v = base();
        v["features"][0]["description"] = json!("now documented");
        assert_eq!(diff(Some(&old), Some(&one(v))), vec![ChangeKind::Other]);

        assert_eq!(diff(None, Some(&old)), vec![ChangeKind::Added]);
        assert_eq!(diff(Some(&old), None), vec![ChangeKind::Removed]);
    }

    #[test]
    fn last_seen_at_is_not_a_change() {
        let old = one(base());
        let mut v = base();
        v["features"][0]["lastSeenAt"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(one(v).hash, old.hash);
    }
}
