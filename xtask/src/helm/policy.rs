//! The platform's Kubernetes policy rules, as code. Each rule looks at the objects one chart
//! renders for one environment and returns the violations it finds; `cargo xtask test --only
//! helm-policy` fails on any. Every rule has a unit test below that breaks a compliant manifest
//! and shows the rule fails on it.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// A rule broken by one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub object: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.rule, self.object, self.message)
    }
}

pub const RESTRICTED: &str = "restricted-security-context";
pub const RESOURCES: &str = "requests-and-limits";
pub const PROBES: &str = "probes";
pub const PDB: &str = "pdb-when-replicated";
pub const PROD_HPA: &str = "prod-hpa-min-2";
pub const IMAGE_TAG: &str = "image-tag";
pub const NO_SECRET_DATA: &str = "no-secret-data";
pub const NETWORK_POLICY: &str = "network-policy-per-workload";

/// Every rule, in the order they run.
pub const RULES: [&str; 8] = [
    RESTRICTED,
    RESOURCES,
    PROBES,
    PDB,
    PROD_HPA,
    IMAGE_TAG,
    NO_SECRET_DATA,
    NETWORK_POLICY,
];

/// Runs every rule over the objects rendered for `env` ("dev", "staging" or "prod").
pub fn check(objects: &[Value], env: &str) -> Vec<Violation> {
    let workloads = workloads(objects);
    let mut out = Vec::new();
    for w in &workloads {
        restricted_security_context(w, &mut out);
        requests_and_limits(w, &mut out);
        if w.long_running {
            probes(w, &mut out);
        }
        image_tag(w, env, &mut out);
    }
    pdb_when_replicated(objects, &workloads, &mut out);
    if env == "prod" {
        prod_hpa_min(objects, &workloads, &mut out);
    }
    no_secret_data(objects, &mut out);
    network_policy_per_workload(objects, &workloads, &mut out);
    out
}

/// An object that runs pods, with its pod template.
#[derive(Debug)]
struct Workload<'a> {
    kind: &'a str,
    api_version: &'a str,
    name: &'a str,
    /// Deployment, Rollout, StatefulSet, DaemonSet: needs probes, a PDB when replicated.
    long_running: bool,
    replicas: Option<i64>,
    labels: BTreeMap<String, String>,
    pod_spec: &'a Value,
}

impl Workload<'_> {
    fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    fn containers(&self) -> impl Iterator<Item = &Value> {
        ["initContainers", "containers"].into_iter().flat_map(|k| {
            self.pod_spec
                .get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn object_id(o: &Value) -> String {
    format!(
        "{}/{}",
        str_at(o, &["kind"]).unwrap_or("?"),
        str_at(o, &["metadata", "name"]).unwrap_or("?")
    )
}

fn labels_of(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn workloads(objects: &[Value]) -> Vec<Workload<'_>> {
    let mut out = Vec::new();
    for o in objects {
        let kind = str_at(o, &["kind"]).unwrap_or_default();
        let template = match kind {
            "Deployment" | "Rollout" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                at(o, &["spec", "template"])
            }
            "CronJob" => at(o, &["spec", "jobTemplate", "spec", "template"]),
            "Pod" => Some(o),
            _ => None,
        };
        let Some(template) = template else { continue };
        let Some(pod_spec) = template.get("spec") else {
            continue;
        };
        out.push(Workload {
            kind,
            api_version: str_at(o, &["apiVersion"]).unwrap_or_default(),
            name: str_at(o, &["metadata", "name"]).unwrap_or("?"),
            long_running: matches!(
                kind,
                "Deployment" | "Rollout" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
            ),
            replicas: at(o, &["spec", "replicas"]).and_then(Value::as_i64),
            labels: labels_of(at(template, &["metadata", "labels"])),
            pod_spec,
        });
    }
    out
}

fn push(out: &mut Vec<Violation>, rule: &'static str, object: String, message: impl Into<String>) {
    out.push(Violation {
        rule,
        object,
        message: message.into(),
    });
}

/// Restricted Pod Security: non-root, no privilege escalation, ALL capabilities dropped,
/// read-only root filesystem, seccomp RuntimeDefault, no host namespaces or hostPath, and no
/// service-account token mounted.
fn restricted_security_context(w: &Workload<'_>, out: &mut Vec<Violation>) {
    let pod = w.pod_spec;
    let psc = pod.get("securityContext");
    let pod_non_root = psc
        .and_then(|s| s.get("runAsNonRoot"))
        .and_then(Value::as_bool)
        == Some(true);
    let pod_seccomp =
        psc.and_then(|s| str_at(s, &["seccompProfile", "type"])) == Some("RuntimeDefault");
    if psc.and_then(|s| s.get("runAsUser")).and_then(Value::as_i64) == Some(0) {
        push(
            out,
            RESTRICTED,
            w.id(),
            "pod securityContext.runAsUser is 0 (root)",
        );
    }
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod.get(key).and_then(Value::as_bool) == Some(true) {
            push(out, RESTRICTED, w.id(), format!("{key} is true"));
        }
    }
    if pod
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        != Some(false)
    {
        push(
            out,
            RESTRICTED,
            w.id(),
            "automountServiceAccountToken is not false",
        );
    }
    for v in pod
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if v.get("hostPath").is_some() {
            push(
                out,
                RESTRICTED,
                w.id(),
                format!(
                    "volume {} is a hostPath",
                    str_at(v, &["name"]).unwrap_or("?")
                ),
            );
        }
    }
    for c in w.containers() {
        let name = str_at(c, &["name"]).unwrap_or("?");
        let sc = c.get("securityContext");
        let flag = |k: &str| sc.and_then(|s| s.get(k)).and_then(Value::as_bool);
        let mut problems = Vec::new();
        if flag("allowPrivilegeEscalation") != Some(false) {
            problems.push("allowPrivilegeEscalation is not false");
        }
        if flag("privileged") == Some(true) {
            problems.push("privileged is true");
        }
        if flag("readOnlyRootFilesystem") != Some(true) {
            problems.push("readOnlyRootFilesystem is not true");
        }
        let non_root = match flag("runAsNonRoot") {
            Some(v) => v,
            None => pod_non_root,
        };
        if !non_root {
            problems.push("runAsNonRoot is not true (container or pod)");
        }
        if sc.and_then(|s| s.get("runAsUser")).and_then(Value::as_i64) == Some(0) {
            problems.push("runAsUser is 0 (root)");
        }
        let seccomp = match sc.and_then(|s| str_at(s, &["seccompProfile", "type"])) {
            Some(t) => t == "RuntimeDefault" || t == "Localhost",
            None => pod_seccomp,
        };
        if !seccomp {
            problems.push("seccompProfile is not RuntimeDefault (container or pod)");
        }
        let caps = sc.and_then(|s| s.get("capabilities"));
        let drops_all = caps
            .and_then(|c| c.get("drop"))
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")));
        if !drops_all {
            problems.push("capabilities.drop does not contain ALL");
        }
        if caps
            .and_then(|c| c.get("add"))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            problems.push("capabilities.add is not empty");
        }
        for p in problems {
            push(out, RESTRICTED, w.id(), format!("container {name}: {p}"));
        }
    }
}

/// Every container sets CPU and memory requests and limits.
fn requests_and_limits(w: &Workload<'_>, out: &mut Vec<Violation>) {
    for c in w.containers() {
        let name = str_at(c, &["name"]).unwrap_or("?");
        for section in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                let set = at(c, &["resources", section, res])
                    .is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
                if !set {
                    push(
                        out,
                        RESOURCES,
                        w.id(),
                        format!("container {name}: resources.{section}.{res} is not set"),
                    );
                }
            }
        }
    }
}

/// Long-running containers have startup, liveness and readiness probes.
fn probes(w: &Workload<'_>, out: &mut Vec<Violation>) {
    for c in w
        .pod_spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(c, &["name"]).unwrap_or("?");
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            if c.get(probe).is_none_or(Value::is_null) {
                push(out, PROBES, w.id(), format!("container {name}: no {probe}"));
            }
        }
    }
}

/// A label selector (matchLabels and matchExpressions) matches `labels`. An empty selector
/// matches everything, as in Kubernetes.
pub fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = labels_of(selector.get("matchLabels"));
    if !match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = str_at(e, &["key"]).unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match str_at(e, &["operator"]) {
                Some("In") => labels
                    .get(key)
                    .is_some_and(|v| values.contains(&v.as_str())),
                Some("NotIn") => labels
                    .get(key)
                    .is_none_or(|v| !values.contains(&v.as_str())),
                Some("Exists") => labels.contains_key(key),
                Some("DoesNotExist") => !labels.contains_key(key),
                _ => false,
            }
        })
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    objects
        .iter()
        .filter(move |o| str_at(o, &["kind"]) == Some(kind))
}

/// The HPA scaling `w`, if any.
fn hpa_for<'a>(objects: &'a [Value], w: &Workload<'_>) -> Option<&'a Value> {
    of_kind(objects, "HorizontalPodAutoscaler").find(|h| {
        str_at(h, &["spec", "scaleTargetRef", "kind"]) == Some(w.kind)
            && str_at(h, &["spec", "scaleTargetRef", "name"]) == Some(w.name)
            && str_at(h, &["spec", "scaleTargetRef", "apiVersion"]) == Some(w.api_version)
    })
}

/// The smallest number of pods `w` runs: the HPA's minReplicas, else spec.replicas (default 1).
fn min_pods(objects: &[Value], w: &Workload<'_>) -> i64 {
    match hpa_for(objects, w) {
        Some(h) => at(h, &["spec", "minReplicas"])
            .and_then(Value::as_i64)
            .unwrap_or(1),
        None => w.replicas.unwrap_or(1),
    }
}

/// A workload that runs 2 or more pods has a PodDisruptionBudget selecting its pods.
fn pdb_when_replicated(objects: &[Value], workloads: &[Workload<'_>], out: &mut Vec<Violation>) {
    for w in workloads.iter().filter(|w| w.long_running) {
        let min = min_pods(objects, w);
        if min < 2 {
            continue;
        }
        let covered = of_kind(objects, "PodDisruptionBudget")
            .any(|p| at(p, &["spec", "selector"]).is_some_and(|s| selector_matches(s, &w.labels)));
        if !covered {
            push(
                out,
                PDB,
                w.id(),
                format!("runs at least {min} pods but no PodDisruptionBudget selects its pods"),
            );
        }
    }
}

/// In prod, every long-running workload is autoscaled with minReplicas >= 2.
fn prod_hpa_min(objects: &[Value], workloads: &[Workload<'_>], out: &mut Vec<Violation>) {
    for w in workloads.iter().filter(|w| w.long_running) {
        match hpa_for(objects, w) {
            None => push(
                out,
                PROD_HPA,
                w.id(),
                "prod workload has no HorizontalPodAutoscaler",
            ),
            Some(h) => {
                let min = at(h, &["spec", "minReplicas"])
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if min < 2 {
                    push(
                        out,
                        PROD_HPA,
                        w.id(),
                        format!("prod HPA minReplicas is {min}, must be at least 2"),
                    );
                }
            }
        }
    }
}

/// Splits an image reference into (repository, tag, digest).
pub fn parse_image(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    // A ':' after the last '/' separates the tag (a ':' before it is a registry port).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (
            &name[..last_slash + i],
            Some(&name[last_slash + i + 1..]),
            digest,
        ),
        None => (name, None, digest),
    }
}

/// A released semantic version: MAJOR.MINOR.PATCH, optionally with a leading "v", no pre-release.
pub fn is_released_semver(tag: &str) -> bool {
    let tag = tag.strip_prefix('v').unwrap_or(tag);
    let parts: Vec<&str> = tag.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

/// No image runs as "latest" or without a tag; prod runs released semver tags only.
fn image_tag(w: &Workload<'_>, env: &str, out: &mut Vec<Violation>) {
    for c in w.containers() {
        let name = str_at(c, &["name"]).unwrap_or("?");
        let Some(image) = str_at(c, &["image"]) else {
            push(
                out,
                IMAGE_TAG,
                w.id(),
                format!("container {name} has no image"),
            );
            continue;
        };
        let (_, tag, _) = parse_image(image);
        match tag {
            None => push(
                out,
                IMAGE_TAG,
                w.id(),
                format!("container {name}: image {image} has no tag"),
            ),
            Some("latest") => push(
                out,
                IMAGE_TAG,
                w.id(),
                format!("container {name}: image {image} uses the latest tag"),
            ),
            Some(t) if env == "prod" && !is_released_semver(t) => push(
                out,
                IMAGE_TAG,
                w.id(),
                format!(
                    "container {name}: prod image {image} is not on a released semver tag (got {t:?})"
                ),
            ),
            Some(_) => {}
        }
    }
}

/// No Secret with data is ever rendered: secrets come from ExternalSecrets.
fn no_secret_data(objects: &[Value], out: &mut Vec<Violation>) {
    for s in of_kind(objects, "Secret") {
        for key in ["data", "stringData"] {
            if s.get(key)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                push(
                    out,
                    NO_SECRET_DATA,
                    object_id(s),
                    format!("a Secret with {key} is rendered; use an ExternalSecret"),
                );
            }
        }
    }
}

/// Every workload's pods are selected by a NetworkPolicy of the same render.
fn network_policy_per_workload(
    objects: &[Value],
    workloads: &[Workload<'_>],
    out: &mut Vec<Violation>,
) {
    for w in workloads {
        let covered = of_kind(objects, "NetworkPolicy").any(|p| {
            at(p, &["spec", "podSelector"]).is_some_and(|s| selector_matches(s, &w.labels))
        });
        if !covered {
            push(
                out,
                NETWORK_POLICY,
                w.id(),
                "no NetworkPolicy selects its pods",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compliant prod render: Deployment + HPA (min 2) + PDB + NetworkPolicy.
    const GOOD: &str = include_str!("../../fixtures/helm/policy/good.yaml");

    fn good() -> Vec<Value> {
        serde_yaml::Deserializer::from_str(GOOD)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect()
    }

    fn rules_broken(objects: &[Value], env: &str) -> Vec<&'static str> {
        let mut rules: Vec<_> = check(objects, env).into_iter().map(|v| v.rule).collect();
        rules.sort();
        rules.dedup();
        rules
    }

    fn deployment(objects: &mut [Value]) -> &mut Value {
        objects
            .iter_mut()
            .find(|o| o["kind"] == "Deployment")
            .unwrap()
    }

    fn container(objects: &mut [Value]) -> &mut Value {
        &mut deployment(objects)["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn the_good_fixture_passes_every_rule_in_every_environment() {
        for env in ["dev", "staging", "prod"] {
            assert_eq!(check(&good(), env), vec![], "{env}");
        }
    }

    #[test]
    fn restricted_fails_on_privilege_escalation_root_and_missing_drop_all() {
        type Break = Box<dyn Fn(&mut Vec<Value>)>;
        let cases: Vec<(&str, Break)> = vec![
            (
                "allowPrivilegeEscalation",
                Box::new(|o| {
                    container(o)["securityContext"]["allowPrivilegeEscalation"] = true.into()
                }),
            ),
            (
                "privileged",
                Box::new(|o| container(o)["securityContext"]["privileged"] = true.into()),
            ),
            (
                "readOnlyRootFilesystem",
                Box::new(|o| {
                    container(o)["securityContext"]["readOnlyRootFilesystem"] = false.into()
                }),
            ),
            (
                "runAsNonRoot",
                Box::new(|o| container(o)["securityContext"]["runAsNonRoot"] = false.into()),
            ),
            (
                "capabilities.drop",
                Box::new(|o| {
                    container(o)["securityContext"]["capabilities"]["drop"] =
                        serde_json::json!(["NET_RAW"])
                }),
            ),
            (
                "capabilities.add",
                Box::new(|o| {
                    container(o)["securityContext"]["capabilities"]["add"] =
                        serde_json::json!(["NET_ADMIN"])
                }),
            ),
            (
                "seccompProfile",
                Box::new(|o| {
                    container(o)["securityContext"]["seccompProfile"]["type"] = "Unconfined".into();
                }),
            ),
            (
                "hostNetwork",
                Box::new(|o| {
                    deployment(o)["spec"]["template"]["spec"]["hostNetwork"] = true.into()
                }),
            ),
            (
                "automountServiceAccountToken",
                Box::new(|o| {
                    deployment(o)["spec"]["template"]["spec"]["automountServiceAccountToken"] =
                        true.into();
                }),
            ),
        ];
        for (what, break_it) in cases {
            let mut objects = good();
            break_it(&mut objects);
            let violations = check(&objects, "prod");
            assert_eq!(
                rules_broken(&objects, "prod"),
                vec![RESTRICTED],
                "{what}: {violations:?}"
            );
            assert!(
                violations.iter().any(|v| v.message.contains(what)),
                "{what}: {violations:?}"
            );
        }
    }

    #[test]
    fn resources_fail_without_a_memory_limit() {
        let mut objects = good();
        container(&mut objects)["resources"]["limits"]
            .as_object_mut()
            .unwrap()
            .remove("memory");
        let violations = check(&objects, "dev");
        assert_eq!(rules_broken(&objects, "dev"), vec![RESOURCES]);
        assert!(
            violations[0].message.contains("resources.limits.memory"),
            "{violations:?}"
        );
    }

    #[test]
    fn probes_fail_without_a_readiness_probe() {
        let mut objects = good();
        container(&mut objects)
            .as_object_mut()
            .unwrap()
            .remove("readinessProbe");
        assert_eq!(rules_broken(&objects, "dev"), vec![PROBES]);
        assert!(check(&objects, "dev")[0].message.contains("readinessProbe"));
    }

    #[test]
    fn pdb_is_required_when_the_hpa_runs_two_pods() {
        let mut objects = good();
        objects.retain(|o| o["kind"] != "PodDisruptionBudget");
        assert_eq!(rules_broken(&objects, "staging"), vec![PDB]);
        // With a single pod there is nothing to protect.
        let hpa = objects
            .iter_mut()
            .find(|o| o["kind"] == "HorizontalPodAutoscaler")
            .unwrap();
        hpa["spec"]["minReplicas"] = 1.into();
        assert_eq!(rules_broken(&objects, "staging"), Vec::<&str>::new());
    }

    #[test]
    fn pdb_must_select_the_workloads_pods() {
        let mut objects = good();
        let pdb = objects
            .iter_mut()
            .find(|o| o["kind"] == "PodDisruptionBudget")
            .unwrap();
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "someone-else".into();
        assert_eq!(rules_broken(&objects, "dev"), vec![PDB]);
    }

    #[test]
    fn prod_hpa_min_fails_below_two_and_without_hpa() {
        let mut objects = good();
        let hpa = objects
            .iter_mut()
            .find(|o| o["kind"] == "HorizontalPodAutoscaler")
            .unwrap();
        hpa["spec"]["minReplicas"] = 1.into();
        assert_eq!(rules_broken(&objects, "prod"), vec![PROD_HPA]);
        assert_eq!(
            rules_broken(&objects, "dev"),
            Vec::<&str>::new(),
            "dev may run one pod"
        );
        objects.retain(|o| o["kind"] != "HorizontalPodAutoscaler");
        deployment(&mut objects)["spec"]["replicas"] = 3.into();
        assert_eq!(rules_broken(&objects, "prod"), vec![PROD_HPA]);
    }

    #[test]
    fn image_tag_fails_on_latest_everywhere_and_on_non_semver_in_prod() {
        let mut objects = good();
        container(&mut objects)["image"] = "ghcr.io/x/svc:latest".into();
        assert_eq!(rules_broken(&objects, "dev"), vec![IMAGE_TAG]);
        container(&mut objects)["image"] = "ghcr.io/x/svc".into();
        assert_eq!(rules_broken(&objects, "dev"), vec![IMAGE_TAG]);
        container(&mut objects)["image"] = "ghcr.io/x/svc:main".into();
        assert_eq!(
            rules_broken(&objects, "dev"),
            Vec::<&str>::new(),
            "dev may run a branch build"
        );
        assert_eq!(rules_broken(&objects, "prod"), vec![IMAGE_TAG]);
        container(&mut objects)["image"] = "ghcr.io/x/svc:1.2.3-rc.1".into();
        assert_eq!(
            rules_broken(&objects, "prod"),
            vec![IMAGE_TAG],
            "a pre-release is not released"
        );
        container(&mut objects)["image"] =
            format!("registry:5000/x/svc:1.2.3@sha256:{}", "a".repeat(64)).into();
        assert_eq!(rules_broken(&objects, "prod"), Vec::<&str>::new());
    }

    #[test]
    fn secrets_with_data_fail() {
        let mut objects = good();
        objects.push(serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"url": "x"}}));
        assert_eq!(rules_broken(&objects, "dev"), vec![NO_SECRET_DATA]);
    }

    #[test]
    fn network_policy_must_select_every_workload() {
        let mut objects = good();
        let np = objects
            .iter_mut()
            .find(|o| o["kind"] == "NetworkPolicy")
            .unwrap();
        np["spec"]["podSelector"] = serde_json::json!({"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["svc"]}]});
        assert_eq!(rules_broken(&objects, "dev"), vec![NETWORK_POLICY]);
        objects.retain(|o| o["kind"] != "NetworkPolicy");
        assert_eq!(rules_broken(&objects, "dev"), vec![NETWORK_POLICY]);
    }

    #[test]
    fn image_references_split_into_repository_tag_and_digest() {
        assert_eq!(
            parse_image("r:5000/a/b:1.0.0@sha256:ab"),
            ("r:5000/a/b", Some("1.0.0"), Some("sha256:ab"))
        );
        assert_eq!(parse_image("r:5000/a/b"), ("r:5000/a/b", None, None));
        assert_eq!(parse_image("b@sha256:ab"), ("b", None, Some("sha256:ab")));
        assert!(is_released_semver("v1.2.3") && is_released_semver("0.1.0"));
        assert!(
            !is_released_semver("1.2")
                && !is_released_semver("01.2.3")
                && !is_released_semver("1.2.3-rc1")
        );
    }

    #[test]
    fn the_broken_fixture_breaks_every_rule() {
        let text = include_str!("../../fixtures/helm/broken-manifests/policy-violations.yaml");
        let objects: Vec<Value> = serde_yaml::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect();
        let broken = rules_broken(&objects, "prod");
        for rule in RULES {
            assert!(
                broken.contains(&rule),
                "{rule} not broken by the fixture: {broken:?}"
            );
        }
    }
}
