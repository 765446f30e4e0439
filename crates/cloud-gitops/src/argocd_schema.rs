//! Validates Argo CD objects against the real CRD schemas of the pinned Argo CD release
//! (`argocd/schemas/argo-cd/*.yaml`, copied verbatim from the release tag). The CRD schemas
//! allow unknown fields; here every object with `properties` is closed with
//! `additionalProperties: false` unless it says `x-kubernetes-preserve-unknown-fields`, so a
//! misspelt field fails as the API server's strict field validation would.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result, io};
use crate::matrix::schema_errors;

pub const CRD_DIR: &str = "argocd/schemas/argo-cd";

/// `kind` -> strict JSON schema, for every CRD in [`CRD_DIR`].
#[derive(Debug)]
pub struct CrdSchemas {
    by_kind: BTreeMap<String, Value>,
}

impl CrdSchemas {
    pub fn load(root: &Path) -> Result<Self> {
        let dir = root.join(CRD_DIR);
        let mut by_kind = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let err = |reason: String| Error::Matrix {
                file: path.clone(),
                key: "spec.versions".into(),
                reason,
            };
            let crd: serde_yaml::Value =
                serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
            let crd: Value = serde_json::to_value(crd).map_err(|e| err(e.to_string()))?;
            if crd.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                continue;
            }
            let kind = crd
                .pointer("/spec/names/kind")
                .and_then(Value::as_str)
                .ok_or_else(|| err("no spec.names.kind".into()))?
                .to_string();
            let versions = crd
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .ok_or_else(|| err("no versions".into()))?;
            let version = versions
                .iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some("v1alpha1"))
                .ok_or_else(|| err("no v1alpha1 version".into()))?;
            let mut schema = version
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .ok_or_else(|| err("no openAPIV3Schema".into()))?;
            close(&mut schema);
            by_kind.insert(kind, schema);
        }
        if by_kind.is_empty() {
            return Err(Error::Matrix {
                file: dir,
                key: "(directory)".into(),
                reason: "no CustomResourceDefinitions found".into(),
            });
        }
        Ok(Self { by_kind })
    }

    pub fn kinds(&self) -> Vec<&str> {
        self.by_kind.keys().map(String::as_str).collect()
    }

    /// Problems with one Argo CD object, as `key: reason`; empty when it is valid.
    pub fn check(&self, doc: &Value) -> Vec<String> {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        let Some(schema) = self.by_kind.get(kind) else {
            return vec![format!(
                "kind `{kind}` is not an Argo CD kind ({})",
                self.kinds().join(", ")
            )];
        };
        let mut problems = Vec::new();
        if doc.get("apiVersion").and_then(Value::as_str) != Some("argoproj.io/v1alpha1") {
            problems.push("apiVersion: must be argoproj.io/v1alpha1".to_string());
        }
        if doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push("metadata.name: required".to_string());
        }
        match schema_errors(schema, doc) {
            Ok(errors) => problems.extend(errors.into_iter().map(|(k, r)| format!("{k}: {r}"))),
            Err(e) => problems.push(e),
        }
        problems
    }
}

/// Adds `additionalProperties: false` to every object schema that lists `properties`.
fn close(schema: &mut Value) {
    match schema {
        Value::Object(o) => {
            let preserve =
                o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if o.contains_key("properties") && !o.contains_key("additionalProperties") && !preserve
            {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            for v in o.values_mut() {
                close(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close),
        _ => {}
    }
}
