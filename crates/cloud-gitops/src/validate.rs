//! `cloudctl env validate`: the matrix, the Argo CD manifests generated from it, the values files
//! they reference, parity between environments, and the prod invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::appset::{self, GeneratedApp};
use crate::argocd_schema::CrdSchemas;
use crate::error::{Error, Result, io};
use crate::matrix::{Matrix, Tier};
use crate::values::{self, released_semver};

pub const LABEL_SERVICE: &str = "cloud-platform.io/service";
pub const LABEL_ENV: &str = "cloud-platform.io/environment";
pub const IMAGE_LIST_ANNOTATION: &str = "argocd-image-updater.argoproj.io/image-list";
pub const WRITE_BACK_TARGET_ANNOTATION: &str = "argocd-image-updater.argoproj.io/write-back-target";

/// One problem, with the check that found it and where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub file: String,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {}: {}: {}",
            self.check, self.file, self.key, self.message
        )
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// What was checked, one line per check, for the summary.
    pub checked: Vec<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(
        &mut self,
        check: &'static str,
        file: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            check,
            file: file.into(),
            key: key.into(),
            message: message.into(),
        });
    }
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// The service x environment grid, as the ApplicationSets generate it.
#[derive(Debug, Clone)]
pub struct Grid {
    pub services: Vec<String>,
    pub apps: Vec<GeneratedApp>,
}

impl Grid {
    pub fn app(&self, service: &str, env: &str) -> Option<&GeneratedApp> {
        self.apps.iter().find(|a| {
            label(&a.app, LABEL_SERVICE) == Some(service) && label(&a.app, LABEL_ENV) == Some(env)
        })
    }
}

pub fn label<'a>(app: &'a Value, name: &str) -> Option<&'a str> {
    app.pointer("/metadata/labels")
        .and_then(|l| l.get(name))
        .and_then(Value::as_str)
}

pub fn annotation<'a>(app: &'a Value, name: &str) -> Option<&'a str> {
    app.pointer("/metadata/annotations")
        .and_then(|l| l.get(name))
        .and_then(Value::as_str)
}

/// Evaluates the ApplicationSets and returns the service apps (those labelled with a service).
pub fn grid(root: &Path) -> Result<Grid> {
    let manifests = appset::load_manifests(root)?;
    let apps = appset::generate_all(root, &manifests)?;
    let services: BTreeSet<String> = apps
        .iter()
        .filter_map(|a| label(&a.app, LABEL_SERVICE).map(str::to_string))
        .collect();
    Ok(Grid {
        services: services.into_iter().collect(),
        apps,
    })
}

/// Runs every check. `Err` only when the checks themselves cannot run (e.g. unreadable schema).
pub fn validate(root: &Path) -> Result<Report> {
    let mut r = Report::default();
    let matrix = match Matrix::load(root) {
        Ok(m) => m,
        Err(Error::Matrix { file, key, reason }) => {
            r.add("schema", file.display().to_string(), key, reason);
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    r.checked.push(format!(
        "schema: {} environment files ({})",
        matrix.envs.len(),
        matrix.names().join(" -> ")
    ));
    check_matrix_parity(&matrix, &mut r);

    let manifests = appset::load_manifests(root)?;
    let schemas = CrdSchemas::load(root)?;
    let mut argo_objects = 0;
    for m in &manifests {
        argo_objects += 1;
        for problem in schemas.check(&m.doc) {
            r.add(
                "argocd-schema",
                m.file.display().to_string(),
                format!("{} {}", m.kind(), m.name()),
                problem,
            );
        }
    }
    let apps = match appset::generate_all(root, &manifests) {
        Ok(apps) => apps,
        Err(e) => {
            r.add("applicationset", "argocd", "(generate)", e.to_string());
            return Ok(r);
        }
    };
    for app in &apps {
        for problem in schemas.check(&app.app) {
            r.add(
                "argocd-schema",
                app.appset_file.display().to_string(),
                format!("generated Application {}", app.name()),
                problem,
            );
        }
    }
    r.checked.push(format!("argocd-schema: {argo_objects} objects + {} generated Applications against the Argo CD CRDs ({})", apps.len(), schemas.kinds().join(", ")));
    check_projects(&matrix, &manifests, &mut r);

    let services: BTreeSet<String> = apps
        .iter()
        .filter_map(|a| label(&a.app, LABEL_SERVICE).map(str::to_string))
        .collect();
    let grid = Grid {
        services: services.into_iter().collect(),
        apps,
    };
    check_files(root, &matrix, &grid, &mut r);
    check_parity(root, &matrix, &grid, &mut r)?;
    check_invariants(root, &matrix, &grid, &mut r)?;
    Ok(r)
}

fn check_matrix_parity(matrix: &Matrix, r: &mut Report) {
    let Some(first) = matrix.envs.first() else {
        return;
    };
    for e in &matrix.envs[1..] {
        if e.env.parity.may_differ != first.env.parity.may_differ {
            r.add(
                "parity",
                e.file.display().to_string(),
                "parity.mayDiffer",
                format!("{:?} differs from {} ({:?}); every environment must allow the same keys to differ", e.env.parity.may_differ, first.file.display(), first.env.parity.may_differ),
            );
        }
    }
}

/// One AppProject per environment, bound to the matrix's groups and destination.
fn check_projects(matrix: &Matrix, manifests: &[appset::Manifest], r: &mut Report) {
    for e in &matrix.envs {
        let env = &e.env;
        let Some(p) = manifests
            .iter()
            .find(|m| m.kind() == "AppProject" && m.name() == env.name)
        else {
            r.add(
                "argocd-project",
                "argocd/projects",
                format!("AppProject {}", env.name),
                "missing: every environment has an AppProject named after it",
            );
            continue;
        };
        let file = p.file.display().to_string();
        let dests = p
            .doc
            .pointer("/spec/destinations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for d in &dests {
            if d.get("server").and_then(Value::as_str) != Some(env.cluster.server.as_str()) {
                r.add(
                    "argocd-project",
                    &file,
                    "spec.destinations",
                    format!("{d} is not the matrix cluster {}", env.cluster.server),
                );
            }
        }
        if !dests.iter().any(|d| {
            d.get("namespace").and_then(Value::as_str) == Some(env.cluster.namespace.as_str())
        }) {
            r.add(
                "argocd-project",
                &file,
                "spec.destinations",
                format!(
                    "does not allow the matrix namespace {}",
                    env.cluster.namespace
                ),
            );
        }
        let roles = p
            .doc
            .pointer("/spec/roles")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (role, groups) in [
            ("view", &env.access.view),
            ("sync", &env.access.sync),
            ("promote", &env.access.promote),
        ] {
            let found = roles
                .iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some(role));
            let bound: BTreeSet<&str> = found
                .and_then(|x| x.get("groups"))
                .and_then(Value::as_array)
                .map(|g| g.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let want: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
            if bound != want {
                r.add(
                    "argocd-project",
                    &file,
                    format!("spec.roles[{role}].groups"),
                    format!("{bound:?} but the matrix says {want:?}"),
                );
            }
        }
        if env.tier == Tier::Production {
            let windows = p
                .doc
                .pointer("/spec/syncWindows")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if windows.is_empty()
                || !windows
                    .iter()
                    .all(|w| w.get("manualSync") == Some(&Value::Bool(true)))
            {
                r.add(
                    "argocd-project",
                    &file,
                    "spec.syncWindows",
                    "prod needs sync windows, each allowing manual sync (manualSync: true)",
                );
            }
            if windows.len() != env.sync.windows.len() {
                r.add(
                    "argocd-project",
                    &file,
                    "spec.syncWindows",
                    format!(
                        "{} windows but the matrix lists {}",
                        windows.len(),
                        env.sync.windows.len()
                    ),
                );
            }
        }
    }
    r.checked.push(format!(
        "argocd-project: one AppProject per environment ({})",
        matrix.names().join(", ")
    ));
}

fn check_files(root: &Path, matrix: &Matrix, grid: &Grid, r: &mut Report) {
    if grid.services.is_empty() {
        r.add(
            "files",
            "argocd/applicationsets",
            LABEL_SERVICE,
            "no ApplicationSet generates service Applications",
        );
    }
    for svc in &grid.services {
        for e in &matrix.envs {
            let f = values::values_file(svc, &e.env.name);
            if !root.join(&f).is_file() {
                r.add(
                    "files",
                    f.display().to_string(),
                    "(file)",
                    format!(
                        "service {svc} has no values file for environment {}",
                        e.env.name
                    ),
                );
            }
            match grid
                .apps
                .iter()
                .filter(|a| {
                    label(&a.app, LABEL_SERVICE) == Some(svc)
                        && label(&a.app, LABEL_ENV) == Some(&e.env.name)
                })
                .count()
            {
                1 => {}
                n => r.add(
                    "files",
                    "argocd/applicationsets",
                    format!("{svc} x {}", e.env.name),
                    format!("{n} generated Applications, expected exactly 1"),
                ),
            }
        }
    }
    for app in &grid.apps {
        match appset::referenced_files(&app.app) {
            Ok(files) => {
                for f in files {
                    if !root.join(&f).exists() {
                        r.add(
                            "files",
                            app.appset_file.display().to_string(),
                            format!("Application {}", app.name()),
                            format!("references {} which does not exist", f.display()),
                        );
                    }
                }
            }
            Err(e) => r.add(
                "files",
                app.appset_file.display().to_string(),
                format!("Application {}", app.name()),
                e,
            ),
        }
    }
    r.checked.push(format!("files: {} services x {} environments have values files; {} generated Applications reference only existing files", grid.services.len(), matrix.envs.len(), grid.apps.len()));
}

/// values.yaml deep-merged with values-<env>.yaml, as helm merges them.
pub fn merged_values(root: &Path, service: &str, env: &str) -> Result<Value> {
    let dir = root.join(values::chart_dir(service));
    let mut merged = Value::Object(Default::default());
    for name in ["values.yaml".to_string(), format!("values-{env}.yaml")] {
        let path = dir.join(&name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| Error::Values {
            file: path.clone(),
            reason: format!("not valid YAML: {e}"),
        })?;
        let json = serde_json::to_value(yaml).map_err(|e| Error::Values {
            file: path.clone(),
            reason: e.to_string(),
        })?;
        if !json.is_null() {
            helm_merge(&mut merged, json);
        }
    }
    Ok(merged)
}

fn helm_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(existing) =
                    b.get_mut(&k).filter(|e| e.is_object() && v.is_object())
                {
                    helm_merge(existing, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Leaf key paths (`a.b.c`) of a values tree; lists are leaves.
pub fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(x, &key, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn allowed(key: &str, may_differ: &[String]) -> bool {
    may_differ
        .iter()
        .any(|p| key == p || key.starts_with(&format!("{p}.")))
}

fn check_parity(root: &Path, matrix: &Matrix, grid: &Grid, r: &mut Report) -> Result<()> {
    let may_differ = matrix
        .envs
        .first()
        .map(|e| e.env.parity.may_differ.clone())
        .unwrap_or_default();
    for svc in &grid.services {
        let mut per_env: Vec<(String, BTreeMap<String, Value>)> = Vec::new();
        for e in &matrix.envs {
            if !root.join(values::values_file(svc, &e.env.name)).is_file() {
                continue;
            }
            let merged = match merged_values(root, svc, &e.env.name) {
                Ok(v) => v,
                Err(err) => {
                    r.add(
                        "parity",
                        values::values_file(svc, &e.env.name).display().to_string(),
                        "(document)",
                        err.to_string(),
                    );
                    continue;
                }
            };
            let mut l = BTreeMap::new();
            leaves(&merged, "", &mut l);
            per_env.push((e.env.name.clone(), l));
        }
        let all_keys: BTreeSet<&String> = per_env.iter().flat_map(|(_, l)| l.keys()).collect();
        for key in all_keys {
            if allowed(key, &may_differ) {
                continue;
            }
            let seen: Vec<(&str, Option<&Value>)> = per_env
                .iter()
                .map(|(env, l)| (env.as_str(), l.get(key)))
                .collect();
            let first = seen.first().and_then(|(_, v)| *v);
            if seen.iter().any(|(_, v)| *v != first) {
                let shown: Vec<String> = seen
                    .iter()
                    .map(|(env, v)| {
                        format!(
                            "{env}={}",
                            v.map(|v| v.to_string())
                                .unwrap_or_else(|| "(absent)".into())
                        )
                    })
                    .collect();
                r.add(
                    "parity",
                    format!("helm/{svc}/values-*.yaml"),
                    key.clone(),
                    format!(
                        "differs between environments ({}) but is not in parity.mayDiffer",
                        shown.join(", ")
                    ),
                );
            }
        }
    }
    r.checked.push(format!(
        "parity: only parity.mayDiffer keys ({}) differ between environments",
        may_differ.join(", ")
    ));
    Ok(())
}

fn number_at(v: &Value, key: &str) -> Option<i64> {
    v.pointer(&format!("/{}", key.replace('.', "/")))
        .and_then(Value::as_i64)
}

fn check_invariants(root: &Path, matrix: &Matrix, grid: &Grid, r: &mut Report) -> Result<()> {
    for e in &matrix.envs {
        let env = &e.env;
        let file = e.file.display().to_string();
        let prod = env.tier == Tier::Production;
        // The schema requires a destination when backups are on; each environment writes
        // under its own prefix, so staging can never overwrite (or restore from) prod's.
        if env.data.backup.enabled
            && let Some(dest) = &env.data.backup.destination
            && !dest.contains(&format!("/{}/", env.name))
        {
            r.add(
                "backup",
                &file,
                "data.backup.destination",
                format!("`{dest}` is not under a `/{}/` prefix", env.name),
            );
        }
        if prod {
            if env.sync.automated || env.sync.self_heal || env.sync.prune {
                r.add(
                    "prod",
                    &file,
                    "sync",
                    "prod syncs are manual: automated, prune and selfHeal must be false",
                );
            }
            if env.replicas.min < 2 {
                r.add(
                    "prod",
                    &file,
                    "replicas.min",
                    format!("{} < 2", env.replicas.min),
                );
            }
            if !env.canary.enabled {
                r.add(
                    "prod",
                    &file,
                    "canary.enabled",
                    "prod deploys through a canary",
                );
            }
            if env.image_updates.enabled {
                r.add(
                    "prod",
                    &file,
                    "imageUpdates.enabled",
                    "automated image updates are for dev only",
                );
            }
        }
        for svc in &grid.services {
            let vf = values::values_file(svc, &env.name);
            let vfs = vf.display().to_string();
            if let Some(app) = grid.app(svc, &env.name) {
                let automated = app.app.pointer("/spec/syncPolicy/automated").is_some();
                if automated != env.sync.automated {
                    r.add(
                        if prod { "prod" } else { "sync" },
                        app.appset_file.display().to_string(),
                        format!("Application {}: spec.syncPolicy.automated", app.name()),
                        format!(
                            "is {} but the matrix says sync.automated: {}",
                            if automated { "set" } else { "absent" },
                            env.sync.automated
                        ),
                    );
                }
                let updates = annotation(&app.app, IMAGE_LIST_ANNOTATION).is_some();
                let want_updates =
                    env.image_updates.enabled && !env.image_updates.paused.contains(svc);
                if updates != want_updates {
                    r.add(
                        "image-updates",
                        app.appset_file.display().to_string(),
                        format!("Application {}", app.name()),
                        format!(
                            "image updates are {} but the matrix wants them {}",
                            if updates { "on" } else { "off" },
                            if want_updates {
                                "on"
                            } else {
                                "off (disabled or paused)"
                            }
                        ),
                    );
                }
                if let Some(target) = annotation(&app.app, WRITE_BACK_TARGET_ANNOTATION) {
                    let want = format!("helmvalues:/{}", vf.display());
                    if target != want {
                        r.add(
                            "image-updates",
                            app.appset_file.display().to_string(),
                            format!("Application {}", app.name()),
                            format!("write-back-target is `{target}`, expected `{want}`"),
                        );
                    }
                }
            }
            if !root.join(&vf).is_file() {
                continue;
            }
            let text = std::fs::read_to_string(root.join(&vf)).map_err(io(root.join(&vf)))?;
            let image = match values::read_image(&vf, &text) {
                Ok(i) => i,
                Err(err) => {
                    r.add("values", &vfs, "image", err.to_string());
                    continue;
                }
            };
            if image.tag == "latest" {
                r.add("values", &vfs, "image.tag", "`latest` is never deployed");
            }
            let merged = merged_values(root, svc, &env.name)?;
            let canary = merged.pointer("/rollout/enabled").and_then(Value::as_bool);
            if prod {
                if let Err(reason) = released_semver(&image.tag) {
                    r.add("prod", &vfs, "image.tag", reason);
                }
                if canary != Some(true) {
                    r.add(
                        "prod",
                        &vfs,
                        "rollout.enabled",
                        format!("must be true in prod (canary on), found {canary:?}"),
                    );
                }
                for key in ["replicaCount", "autoscaling.minReplicas"] {
                    if let Some(n) = number_at(&merged, key)
                        && n < 2
                    {
                        r.add("prod", &vfs, key, format!("{n} < 2"));
                    }
                }
            }
            if let Some(c) = canary
                && c != env.canary.enabled
            {
                r.add(
                    "matrix-values",
                    &vfs,
                    "rollout.enabled",
                    format!(
                        "{c} but {} says canary.enabled: {}",
                        e.file.display(),
                        env.canary.enabled
                    ),
                );
            }
            if let Some(min) = number_at(&merged, "autoscaling.minReplicas")
                && min < i64::from(env.replicas.min)
            {
                r.add(
                    "matrix-values",
                    &vfs,
                    "autoscaling.minReplicas",
                    format!(
                        "{min} is below the matrix replicas.min {}",
                        env.replicas.min
                    ),
                );
            }
            if merged.pointer("/ingress/enabled").and_then(Value::as_bool) == Some(true)
                && let Some(host) = merged.pointer("/ingress/host").and_then(Value::as_str)
                && !(host == env.base_domain || host.ends_with(&format!(".{}", env.base_domain)))
            {
                r.add(
                    "matrix-values",
                    &vfs,
                    "ingress.host",
                    format!(
                        "`{host}` is not under the matrix baseDomain {}",
                        env.base_domain
                    ),
                );
            }
            if let Some(max) = number_at(&merged, "autoscaling.maxReplicas")
                && max > i64::from(env.replicas.max)
            {
                r.add(
                    "matrix-values",
                    &vfs,
                    "autoscaling.maxReplicas",
                    format!(
                        "{max} is above the matrix replicas.max {}",
                        env.replicas.max
                    ),
                );
            }
        }
    }
    r.checked.push("prod: manual sync, replicas >= 2, canary on, released semver tags; matrix and values agree; backups under the environment's own prefix".into());
    Ok(())
}
