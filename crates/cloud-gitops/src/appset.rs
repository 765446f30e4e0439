//! Evaluates the ApplicationSets in `argocd/` against this checkout the way the ApplicationSet
//! controller would (goTemplate with `missingkey=error`): git files and directories generators,
//! list and matrix generators, per-string template rendering, then `templatePatch`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::{Error, Result, io};
use crate::template;

/// The repository the manifests deploy from (Cargo.toml `repository`, with `.git`).
pub const REPO_URL: &str = "https://github.com/cloud-platform/cloud-platform.git";
pub const ARGOCD_DIR: &str = "argocd";
/// Pinned CRDs used for validation; not deployed by the bootstrap application.
pub const SCHEMAS_DIR: &str = "argocd/schemas";

/// One YAML document from a file under `argocd/`.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: PathBuf,
    pub doc: Value,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// An Application an ApplicationSet generates.
#[derive(Debug, Clone)]
pub struct GeneratedApp {
    pub appset_file: PathBuf,
    pub appset: String,
    pub app: Value,
}

impl GeneratedApp {
    pub fn name(&self) -> &str {
        self.app
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Every YAML document under `<root>/argocd`, except the pinned schemas.
pub fn load_manifests(root: &Path) -> Result<Vec<Manifest>> {
    let mut files = Vec::new();
    walk(&root.join(ARGOCD_DIR), &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if rel.starts_with(SCHEMAS_DIR) {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = doc_to_json(doc, &rel, i)?;
            if value.is_null() {
                continue;
            }
            out.push(Manifest {
                file: rel.clone(),
                doc: value,
            });
        }
    }
    Ok(out)
}

fn doc_to_json(doc: serde_yaml::Deserializer<'_>, file: &Path, index: usize) -> Result<Value> {
    use serde::Deserialize;
    let err = |reason: String| Error::Matrix {
        file: file.to_path_buf(),
        key: format!("(document {})", index + 1),
        reason,
    };
    let yaml =
        serde_yaml::Value::deserialize(doc).map_err(|e| err(format!("not valid YAML: {e}")))?;
    serde_json::to_value(yaml).map_err(|e| err(format!("not representable as JSON: {e}")))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Evaluates every ApplicationSet in `manifests` against the checkout at `root`.
pub fn generate_all(root: &Path, manifests: &[Manifest]) -> Result<Vec<GeneratedApp>> {
    let mut apps = Vec::new();
    for m in manifests.iter().filter(|m| m.kind() == "ApplicationSet") {
        apps.extend(generate(root, m)?);
    }
    Ok(apps)
}

pub fn generate(root: &Path, appset: &Manifest) -> Result<Vec<GeneratedApp>> {
    let terr = |reason: String| Error::Template {
        file: appset.file.clone(),
        reason: format!("ApplicationSet `{}`: {reason}", appset.name()),
    };
    let spec = appset
        .doc
        .get("spec")
        .ok_or_else(|| terr("no spec".into()))?;
    if spec.get("goTemplate") != Some(&Value::Bool(true)) {
        return Err(terr(
            "spec.goTemplate must be true (fasttemplate is not supported by these checks)".into(),
        ));
    }
    let options: Vec<&str> = spec
        .get("goTemplateOptions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !options.contains(&"missingkey=error") {
        return Err(terr("spec.goTemplateOptions must contain missingkey=error, so a typo fails instead of rendering empty".into()));
    }
    let generators = spec
        .get("generators")
        .and_then(Value::as_array)
        .ok_or_else(|| terr("spec.generators is missing".into()))?;
    let mut params = Vec::new();
    for g in generators {
        params.extend(run_generator(root, g).map_err(terr)?);
    }
    let tmpl = spec
        .get("template")
        .ok_or_else(|| terr("spec.template is missing".into()))?;
    let patch = spec.get("templatePatch").and_then(Value::as_str);
    let mut apps = Vec::new();
    for p in &params {
        let mut app = render_value(tmpl, p).map_err(terr)?;
        if let Some(patch) = patch {
            let rendered =
                template::render(patch, p).map_err(|e| terr(format!("templatePatch: {e}")))?;
            let patch_yaml: serde_yaml::Value = serde_yaml::from_str(&rendered).map_err(|e| {
                terr(format!(
                    "templatePatch renders invalid YAML: {e}\n{rendered}"
                ))
            })?;
            let patch_json = serde_json::to_value(patch_yaml).map_err(|e| terr(e.to_string()))?;
            if !patch_json.is_null() {
                merge(&mut app, patch_json);
            }
        }
        let mut full = Map::new();
        full.insert("apiVersion".into(), json!("argoproj.io/v1alpha1"));
        full.insert("kind".into(), json!("Application"));
        if let Value::Object(o) = app {
            full.extend(o);
        }
        apps.push(GeneratedApp {
            appset_file: appset.file.clone(),
            appset: appset.name().to_string(),
            app: Value::Object(full),
        });
    }
    Ok(apps)
}

/// Renders every string in `v` as a template (how the controller treats `spec.template`).
fn render_value(v: &Value, params: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(template::render(s, params)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_value(x, params))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, x) in o {
                out.insert(template::render(k, params)?, render_value(x, params)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Merges `patch` into `base`: maps recursively, everything else replaced.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

fn run_generator(root: &Path, g: &Value) -> Result<Vec<Value>, String> {
    let obj = g.as_object().ok_or("a generator must be a mapping")?;
    let kinds: Vec<&String> = obj.keys().filter(|k| k.as_str() != "selector").collect();
    let [kind] = kinds.as_slice() else {
        return Err(format!(
            "a generator must have exactly one kind, found {kinds:?}"
        ));
    };
    let body = &obj[kind.as_str()];
    match kind.as_str() {
        "list" => {
            let elements = body
                .get("elements")
                .and_then(Value::as_array)
                .ok_or("list generator without elements")?;
            Ok(elements.clone())
        }
        "git" => git_generator(root, body),
        "matrix" => {
            let gens = body
                .get("generators")
                .and_then(Value::as_array)
                .ok_or("matrix generator without generators")?;
            let [a, b] = gens.as_slice() else {
                return Err("a matrix generator combines exactly two generators".into());
            };
            let left = run_generator(root, a)?;
            let right = run_generator(root, b)?;
            let mut out = Vec::new();
            for l in &left {
                for r in &right {
                    let mut combined = l.clone();
                    let (Value::Object(c), Value::Object(ro)) = (&mut combined, r) else {
                        return Err("generator parameters must be mappings".into());
                    };
                    for (k, v) in ro {
                        if c.contains_key(k) {
                            return Err(format!(
                                "matrix generator: both generators set parameter `{k}`; use pathParamPrefix"
                            ));
                        }
                        c.insert(k.clone(), v.clone());
                    }
                    out.push(combined);
                }
            }
            Ok(out)
        }
        other => Err(format!(
            "generator `{other}` is not supported by these checks"
        )),
    }
}

fn git_generator(root: &Path, body: &Value) -> Result<Vec<Value>, String> {
    let repo = body
        .get("repoURL")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if repo != REPO_URL {
        return Err(format!(
            "git generator repoURL `{repo}` is not this repository ({REPO_URL})"
        ));
    }
    let prefix = body.get("pathParamPrefix").and_then(Value::as_str);
    let mut out = Vec::new();
    if let Some(files) = body.get("files").and_then(Value::as_array) {
        let (inc, exc) = split_patterns(files)?;
        for rel in glob(root, &inc, &exc, false)? {
            let text =
                std::fs::read_to_string(root.join(&rel)).map_err(|e| format!("{rel}: {e}"))?;
            let yaml: serde_yaml::Value =
                serde_yaml::from_str(&text).map_err(|e| format!("{rel}: not valid YAML: {e}"))?;
            let value = serde_json::to_value(yaml).map_err(|e| format!("{rel}: {e}"))?;
            let items = match value {
                Value::Array(a) => a,
                v => vec![v],
            };
            let dir = rel
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_else(|| ".".into());
            let filename = rel.rsplit('/').next().unwrap_or_default().to_string();
            for item in items {
                let Value::Object(mut p) = item else {
                    return Err(format!("{rel}: must contain a mapping"));
                };
                let path = json!({
                    "path": dir, "basename": basename(&dir), "filename": filename,
                    "basenameNormalized": sanitize(basename(&dir)), "filenameNormalized": sanitize(&filename),
                    "segments": dir.split('/').collect::<Vec<_>>(),
                });
                insert_path(&mut p, prefix, path);
                out.push(Value::Object(p));
            }
        }
    } else if let Some(dirs) = body.get("directories").and_then(Value::as_array) {
        let (inc, exc) = split_patterns(dirs)?;
        for rel in glob(root, &inc, &exc, true)? {
            let mut p = Map::new();
            let path = json!({
                "path": rel, "basename": basename(&rel), "basenameNormalized": sanitize(basename(&rel)),
                "segments": rel.split('/').collect::<Vec<_>>(),
            });
            insert_path(&mut p, prefix, path);
            out.push(Value::Object(p));
        }
    } else {
        return Err("git generator needs files or directories".into());
    }
    if let Some(values) = body.get("values").and_then(Value::as_object) {
        for p in &mut out {
            let mut rendered = Map::new();
            for (k, v) in values {
                let s = v.as_str().ok_or("git generator values must be strings")?;
                rendered.insert(k.clone(), Value::String(template::render(s, p)?));
            }
            if let Value::Object(o) = p {
                o.insert("values".into(), Value::Object(rendered));
            }
        }
    }
    Ok(out)
}

fn insert_path(p: &mut Map<String, Value>, prefix: Option<&str>, path: Value) {
    match prefix {
        Some(prefix) => {
            p.insert(prefix.to_string(), json!({ "path": path }));
        }
        None => {
            p.insert("path".into(), path);
        }
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Argo CD's `SanitizeName`: lower case, anything but `[a-z0-9-.]` becomes `-`.
fn sanitize(s: &str) -> String {
    let lowered: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    lowered.trim_matches(|c| c == '-' || c == '.').to_string()
}

fn split_patterns(items: &[Value]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut inc = Vec::new();
    let mut exc = Vec::new();
    for it in items {
        let path = it
            .get("path")
            .and_then(Value::as_str)
            .ok_or("git generator entry without path")?
            .to_string();
        if path.contains("**") {
            return Err(format!(
                "`{path}`: `**` patterns are not supported by these checks"
            ));
        }
        if it.get("exclude") == Some(&Value::Bool(true)) {
            exc.push(path)
        } else {
            inc.push(path)
        }
    }
    Ok((inc, exc))
}

/// Repository paths (files or directories) matching any include and no exclude.
fn glob(
    root: &Path,
    include: &[String],
    exclude: &[String],
    dirs: bool,
) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for pattern in include {
        let segs: Vec<&str> = pattern.split('/').collect();
        expand(root, "", &segs, dirs, &mut found);
    }
    found.retain(|p| !exclude.iter().any(|e| path_matches(e, p)));
    found.sort();
    found.dedup();
    Ok(found)
}

fn expand(root: &Path, prefix: &str, segs: &[&str], dirs: bool, out: &mut Vec<String>) {
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    let dir = if prefix.is_empty() {
        root.to_path_buf()
    } else {
        root.join(prefix)
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !wildcard(first, &name) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let is_dir = entry.path().is_dir();
        if rest.is_empty() {
            if is_dir == dirs {
                out.push(rel);
            }
        } else if is_dir {
            expand(root, &rel, rest, dirs, out);
        }
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    p.len() == s.len() && p.iter().zip(&s).all(|(a, b)| wildcard(a, b))
}

/// `*` and `?` within one path segment.
fn wildcard(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(&p, &n)
}

/// The git sources of an Application (`spec.source` or `spec.sources`).
pub fn sources(app: &Value) -> Vec<&Value> {
    let spec = app.get("spec");
    let mut out: Vec<&Value> = spec.and_then(|s| s.get("source")).into_iter().collect();
    if let Some(list) = spec
        .and_then(|s| s.get("sources"))
        .and_then(Value::as_array)
    {
        out.extend(list.iter());
    }
    out
}

/// Every repository file an Application reads from this repo: `(source path, value files)`,
/// each resolved relative to the repository root. Errors describe unresolvable references.
pub fn referenced_files(app: &Value) -> Result<Vec<PathBuf>, String> {
    let srcs = sources(app);
    let mut out = Vec::new();
    for src in &srcs {
        let repo = src
            .get("repoURL")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let is_chart_repo = src.get("chart").is_some();
        if !is_chart_repo && repo != REPO_URL {
            return Err(format!(
                "source repoURL `{repo}` is neither a Helm chart repository nor this repository ({REPO_URL})"
            ));
        }
        let path = src.get("path").and_then(Value::as_str);
        if !is_chart_repo && let Some(path) = path {
            out.push(PathBuf::from(path));
        }
        let helm = src.get("helm");
        if helm.and_then(|h| h.get("ignoreMissingValueFiles")) == Some(&Value::Bool(true)) {
            return Err(
                "helm.ignoreMissingValueFiles hides missing files; it is not allowed".into(),
            );
        }
        for vf in helm
            .and_then(|h| h.get("valueFiles"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let vf = vf
                .as_str()
                .ok_or("helm.valueFiles entries must be strings")?;
            if let Some(rest) = vf.strip_prefix('$') {
                let (r, file) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("value file `{vf}`: expected $ref/path"))?;
                let target = srcs
                    .iter()
                    .find(|s| s.get("ref").and_then(Value::as_str) == Some(r))
                    .ok_or_else(|| format!("value file `{vf}`: no source has `ref: {r}`"))?;
                if target.get("repoURL").and_then(Value::as_str) != Some(REPO_URL) {
                    return Err(format!(
                        "value file `{vf}`: ref `{r}` is not this repository"
                    ));
                }
                out.push(PathBuf::from(file));
            } else if is_chart_repo {
                return Err(format!(
                    "value file `{vf}` of an upstream chart must come from this repository via `$ref/`"
                ));
            } else if let Some(path) = path {
                out.push(Path::new(path).join(vf));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("*.yaml", "dev.yaml"));
        assert!(!wildcard("*.yaml", "schema.json"));
        assert!(wildcard("cloud-*", "cloud-identity-access"));
        assert!(path_matches("helm/cloud-service", "helm/cloud-service"));
        assert!(!path_matches("helm/*", "helm/a/b"));
    }

    #[test]
    fn merge_patches_maps_and_replaces_the_rest() {
        let mut base = json!({"spec": {"syncPolicy": {"syncOptions": ["A"]}, "project": "p"}});
        merge(
            &mut base,
            json!({"spec": {"syncPolicy": {"automated": {"prune": true}}}}),
        );
        assert_eq!(
            base,
            json!({"spec": {"syncPolicy": {"syncOptions": ["A"], "automated": {"prune": true}}, "project": "p"}})
        );
    }
}
