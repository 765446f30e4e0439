//! `cloudctl env diff A B`: what really differs between two environments, as rendered. Each
//! service is rendered with `helm template` exactly as its generated Argo CD Application would
//! render it (chart path, value files, release name, namespace), then compared object by object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result, io};
use crate::matrix::Matrix;
use crate::validate::{self, Grid};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiffEntry {
    pub service: String,
    /// `Kind/name` of the rendered object.
    pub object: String,
    /// The field, e.g. `spec.replicas`, or `(object)` when it exists on one side only.
    pub key: String,
    pub left: Option<String>,
    pub right: Option<String>,
}

/// Renders one generated Application with helm; returns `Kind/name` -> object.
pub fn render_app(
    helm: &Path,
    root: &Path,
    chart_root: &Path,
    app: &Value,
) -> Result<BTreeMap<String, Value>> {
    let src = app
        .pointer("/spec/source")
        .ok_or_else(|| Error::Usage("generated Application has no spec.source".into()))?;
    let path = src
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Usage("spec.source.path missing".into()))?;
    let name = app
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("release");
    let release = src
        .pointer("/helm/releaseName")
        .and_then(Value::as_str)
        .unwrap_or(name);
    let ns = app
        .pointer("/spec/destination/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let chart = chart_root.join(path.strip_prefix("helm/").unwrap_or(path));
    let mut args: Vec<String> = vec![
        "template".into(),
        release.into(),
        chart.to_string_lossy().into_owned(),
        "--namespace".into(),
        ns.into(),
    ];
    for vf in src
        .pointer("/helm/valueFiles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        args.push("--values".into());
        args.push(root.join(path).join(vf).to_string_lossy().into_owned());
    }
    for p in src
        .pointer("/helm/parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(k), Some(v)) = (
            p.get("name").and_then(Value::as_str),
            p.get("value").and_then(Value::as_str),
        ) else {
            continue;
        };
        args.push("--set".into());
        args.push(format!("{k}={v}"));
    }
    let out = run_helm(helm, &args)?;
    let mut objects = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&out) {
        use serde::Deserialize;
        let v = serde_yaml::Value::deserialize(doc).map_err(|e| Error::Helm {
            args: args.join(" "),
            stderr: format!("rendered invalid YAML: {e}"),
        })?;
        let v: Value = serde_json::to_value(v).map_err(|e| Error::Helm {
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
        if v.is_null() {
            continue;
        }
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("?");
        let oname = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        objects.insert(format!("{kind}/{oname}"), v);
    }
    Ok(objects)
}

fn run_helm(helm: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(helm)
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("cloud-gitops-helm-cache"),
        )
        .output()
        .map_err(|e| Error::Spawn {
            program: helm.display().to_string(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Helm {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private copy of `helm/` with local (`file://`) dependencies built, so rendering never
/// writes into the checkout.
pub fn prepare_charts(helm: &Path, root: &Path) -> Result<tempfile::TempDir> {
    let tmp = tempfile::tempdir().map_err(io(std::env::temp_dir()))?;
    copy_dir(&root.join("helm"), tmp.path())?;
    let entries = std::fs::read_dir(tmp.path()).map_err(io(tmp.path()))?;
    for entry in entries.flatten() {
        let chart = entry.path();
        let meta = chart.join("Chart.yaml");
        let Ok(text) = std::fs::read_to_string(&meta) else {
            continue;
        };
        if text.contains("dependencies:") && !chart.join("charts").is_dir() {
            run_helm(
                helm,
                &[
                    "dependency".into(),
                    "build".into(),
                    chart.to_string_lossy().into_owned(),
                    "--skip-refresh".into(),
                ],
            )?;
        }
    }
    Ok(tmp)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let dest: PathBuf = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest).map_err(io(entry.path()))?;
        }
    }
    Ok(())
}

fn flatten(v: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                flatten(
                    x,
                    &if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    },
                    out,
                );
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                flatten(x, &format!("{prefix}[{i}]"), out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Compares two rendered sets of objects.
pub fn compare(
    service: &str,
    left: &BTreeMap<String, Value>,
    right: &BTreeMap<String, Value>,
) -> Vec<DiffEntry> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    for k in keys {
        match (left.get(k), right.get(k)) {
            (Some(a), Some(b)) => {
                let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
                flatten(a, "", &mut fa);
                flatten(b, "", &mut fb);
                let fields: std::collections::BTreeSet<&String> =
                    fa.keys().chain(fb.keys()).collect();
                for f in fields {
                    let (x, y) = (fa.get(f), fb.get(f));
                    if x != y {
                        out.push(DiffEntry {
                            service: service.into(),
                            object: k.clone(),
                            key: f.clone(),
                            left: x.cloned(),
                            right: y.cloned(),
                        });
                    }
                }
            }
            (a, b) => out.push(DiffEntry {
                service: service.into(),
                object: k.clone(),
                key: "(object)".into(),
                left: a.map(|_| "present".into()),
                right: b.map(|_| "present".into()),
            }),
        }
    }
    out
}

/// Every rendered difference between environments `a` and `b`, for every service.
pub fn diff(helm: &Path, root: &Path, a: &str, b: &str) -> Result<Vec<DiffEntry>> {
    let matrix = Matrix::load(root)?;
    matrix.get(a)?;
    matrix.get(b)?;
    let grid: Grid = validate::grid(root)?;
    let charts = prepare_charts(helm, root)?;
    let mut out = Vec::new();
    for svc in &grid.services {
        let (Some(left), Some(right)) = (grid.app(svc, a), grid.app(svc, b)) else {
            return Err(Error::Usage(format!(
                "the ApplicationSets do not generate {svc} for both {a} and {b}"
            )));
        };
        let l = render_app(helm, root, charts.path(), &left.app)?;
        let r = render_app(helm, root, charts.path(), &right.app)?;
        out.extend(compare(svc, &l, &r));
    }
    Ok(out)
}
