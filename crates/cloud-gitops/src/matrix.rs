//! The environment matrix: one YAML file per environment in `environments/`, checked against
//! `environments/schema.json`, ordered along the promotion chain (`promotion.from`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result, io};

pub const ENV_DIR: &str = "environments";
pub const SCHEMA_FILE: &str = "environments/schema.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Development,
    Staging,
    Production,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Environment {
    pub name: String,
    pub tier: Tier,
    pub cluster: Cluster,
    pub base_domain: String,
    pub sync: SyncPolicy,
    pub replicas: Bounds,
    pub hpa: Hpa,
    pub resources: Resources,
    pub canary: Canary,
    pub data: DataPolicy,
    pub access: Access,
    pub promotion: Promotion,
    pub image_updates: ImageUpdates,
    pub parity: Parity,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    pub server: String,
    pub namespace: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncPolicy {
    pub automated: bool,
    pub prune: bool,
    pub self_heal: bool,
    pub windows: Vec<SyncWindow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncWindow {
    pub kind: String,
    pub schedule: String,
    pub duration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    pub manual_sync: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hpa {
    pub enabled: bool,
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: u32,
    pub target_memory_utilization_percentage: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub profile: String,
    pub requests: ResourceList,
    pub limits: ResourceList,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    pub cpu: String,
    pub memory: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataPolicy {
    pub policy: String,
    pub retention_days: u32,
    pub backup: Backup,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backup {
    pub enabled: bool,
    pub schedule: String,
    pub retention_days: u32,
    /// barman `destinationPath` (`s3://<bucket>/<env>/identity-postgres`); the schema requires
    /// it, and `region`, when `enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    pub view: Vec<String>,
    pub sync: Vec<String>,
    pub promote: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Promotion {
    pub from: Option<String>,
    pub min_soak: String,
    pub required_checks: Vec<String>,
    pub approvals: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageUpdates {
    pub enabled: bool,
    pub paused: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Parity {
    pub may_differ: Vec<String>,
}

impl Promotion {
    /// `minSoak` as a duration (`30m`, `24h`, `2d`; the schema guarantees the shape).
    pub fn min_soak(&self) -> Result<Duration, String> {
        parse_duration(&self.min_soak)
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(unit_at);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30m, 24h or 2d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}` is not a duration like 30m, 24h or 2d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// One loaded environment file.
#[derive(Debug, Clone)]
pub struct EnvFile {
    /// Relative to the repository root, e.g. `environments/dev.yaml`.
    pub file: PathBuf,
    pub env: Environment,
    /// The file as JSON: exactly what the ApplicationSet git generator hands to templates.
    pub raw: Value,
}

/// All environments, ordered along the promotion chain (the first has no `promotion.from`).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub envs: Vec<EnvFile>,
}

impl Matrix {
    /// Loads `<root>/environments/*.yaml`, validating each against `<root>/environments/schema.json`.
    pub fn load(root: &Path) -> Result<Self> {
        let schema = load_schema(root)?;
        let dir = root.join(ENV_DIR);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml") && p.is_file())
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(Error::Matrix {
                file: dir,
                key: "(directory)".into(),
                reason: "no environment files (*.yaml)".into(),
            });
        }
        let mut envs = Vec::new();
        for path in names {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            envs.push(parse_env(&rel, &text, &schema)?);
        }
        order(envs)
    }

    pub fn get(&self, name: &str) -> Result<&EnvFile> {
        self.envs
            .iter()
            .find(|e| e.env.name == name)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "unknown environment `{name}`; the matrix has: {}",
                    self.names().join(", ")
                ))
            })
    }

    pub fn names(&self) -> Vec<String> {
        self.envs.iter().map(|e| e.env.name.clone()).collect()
    }
}

pub fn load_schema(root: &Path) -> Result<Value> {
    let path = root.join(SCHEMA_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Matrix {
        file: PathBuf::from(SCHEMA_FILE),
        key: "(document)".into(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// `/a/b/0` -> `a.b[0]`, the way people write keys.
pub fn pointer_to_key(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() { "(root)".into() } else { out }
}

/// Schema errors as `(key, reason)`, most specific first.
pub fn schema_errors(schema: &Value, instance: &Value) -> Result<Vec<(String, String)>, String> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("the schema itself is invalid: {e}"))?;
    let mut errors: Vec<(String, String)> = validator
        .iter_errors(instance)
        .map(|e| (pointer_to_key(e.instance_path().as_str()), e.to_string()))
        .collect();
    // Errors on deeper keys say more than the `oneOf` summary on their parent.
    errors.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    Ok(errors)
}

pub fn parse_env(rel: &Path, text: &str, schema: &Value) -> Result<EnvFile> {
    let err = |key: &str, reason: String| Error::Matrix {
        file: rel.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        err("(syntax)", format!("not valid YAML{at}: {e}"))
    })?;
    let raw: Value = serde_json::to_value(&yaml)
        .map_err(|e| err("(document)", format!("not representable as JSON: {e}")))?;
    let errors = schema_errors(schema, &raw).map_err(|reason| err("(schema)", reason))?;
    if let Some((key, _)) = errors.first() {
        // Every problem at the most specific key, then how many more there are elsewhere.
        let here: Vec<&str> = errors
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, r)| r.as_str())
            .collect();
        let others = errors.len() - here.len();
        let more = if others > 0 {
            format!(" (and {others} more problem(s) at other keys)")
        } else {
            String::new()
        };
        return Err(err(key, format!("{}{more}", here.join("; "))));
    }
    let env: Environment =
        serde_json::from_value(raw.clone()).map_err(|e| err("(document)", e.to_string()))?;
    let stem = rel.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if env.name != stem {
        return Err(err(
            "name",
            format!(
                "is `{}` but the file is named `{stem}.yaml`; they must match",
                env.name
            ),
        ));
    }
    if env.replicas.min > env.replicas.max {
        return Err(err(
            "replicas.min",
            format!(
                "{} is greater than replicas.max {}",
                env.replicas.min, env.replicas.max
            ),
        ));
    }
    env.promotion
        .min_soak()
        .map_err(|reason| err("promotion.minSoak", reason))?;
    if env.promotion.from.as_deref() == Some(env.name.as_str()) {
        return Err(err(
            "promotion.from",
            "an environment cannot promote from itself".into(),
        ));
    }
    Ok(EnvFile {
        file: rel.to_path_buf(),
        env,
        raw,
    })
}

/// Orders environments along `promotion.from`; exactly one has none, and every chain ends there.
fn order(mut envs: Vec<EnvFile>) -> Result<Matrix> {
    let names: Vec<String> = envs.iter().map(|e| e.env.name.clone()).collect();
    for e in &envs {
        if let Some(from) = &e.env.promotion.from
            && !names.contains(from)
        {
            return Err(Error::Matrix {
                file: e.file.clone(),
                key: "promotion.from".into(),
                reason: format!(
                    "environment `{from}` does not exist (have: {})",
                    names.join(", ")
                ),
            });
        }
    }
    let roots: Vec<&EnvFile> = envs
        .iter()
        .filter(|e| e.env.promotion.from.is_none())
        .collect();
    if roots.len() != 1 {
        let file = envs.first().map(|e| e.file.clone()).unwrap_or_default();
        return Err(Error::Matrix {
            file,
            key: "promotion.from".into(),
            reason: format!(
                "exactly one environment must have `from: null` (the first stage); found {}: {}",
                roots.len(),
                roots
                    .iter()
                    .map(|e| e.env.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let mut ordered: Vec<EnvFile> = Vec::new();
    let mut current: Option<String> = None;
    while !envs.is_empty() {
        let next = envs.iter().position(|e| e.env.promotion.from == current);
        match next {
            Some(i) => {
                let e = envs.remove(i);
                current = Some(e.env.name.clone());
                ordered.push(e);
            }
            None => {
                let e = &envs[0];
                return Err(Error::Matrix {
                    file: e.file.clone(),
                    key: "promotion.from".into(),
                    reason: format!(
                        "`{}` is not on the single promotion chain {} (two environments promote from the same source, or there is a cycle)",
                        e.env.name,
                        ordered
                            .iter()
                            .map(|e| e.env.name.as_str())
                            .collect::<Vec<_>>()
                            .join(" -> ")
                    ),
                });
            }
        }
    }
    Ok(Matrix { envs: ordered })
}
