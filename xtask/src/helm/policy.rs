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
pub const NETWORK_ALLOWS: &str = "network-policy-allows-only";

/// Every rule, in the order they run.
pub const RULES: [&str; 9] = [
    RESTRICTED,
    RESOURCES,
    PROBES,
    PDB,
    PROD_HPA,
    IMAGE_TAG,
    NO_SECRET_DATA,
    NETWORK_POLICY,
    NETWORK_ALLOWS,
];

/// Runs every rule over the objects rendered for `env` ("dev", "staging" or "prod"), with the
/// default network topology and no other chart's objects.
pub fn check(objects: &[Value], env: &str) -> Vec<Violation> {
    check_with(objects, &[], &Topology::default(), env)
}

/// Runs every rule over `objects`; `context` holds objects of the same environment rendered
/// by other charts (platform-base's namespace default-deny), `topology` who the peers are.
pub fn check_with(
    objects: &[Value],
    context: &[Value],
    topology: &Topology,
    env: &str,
) -> Vec<Violation> {
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
    network_policy_allows_only(objects, context, &workloads, topology, env, &mut out);
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
        // A namespace-wide policy (podSelector {}: the default deny) is not the workload's own.
        let covered = of_kind(objects, "NetworkPolicy").any(|p| {
            at(p, &["spec", "podSelector"])
                .is_some_and(|s| !selects_everything(s) && selector_matches(s, &w.labels))
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

/// The network peers the platform's services talk to. The policy step reads them from the
/// gateway chart's values.yaml (`networkPolicy.apiFrom`, `metricsFrom`, `dns` and the `unleash`
/// egress rule); [`Topology::default`] is the same, for the unit tests and the broken example.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The ingress controller's pods (namespaceSelector + podSelector).
    pub ingress_controller: Value,
    /// Prometheus, which scrapes the admin port.
    pub prometheus: Value,
    /// The cluster DNS.
    pub dns: Value,
    /// The environment's Unleash.
    pub unleash: Value,
}

fn ns_pods(namespace: &str, label: &str, name: &str) -> Value {
    serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": {label: name}},
    })
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            ingress_controller: ns_pods("ingress-nginx", NAME_LABEL, "ingress-nginx"),
            prometheus: ns_pods("monitoring", NAME_LABEL, "prometheus"),
            dns: ns_pods("kube-system", "k8s-app", "kube-dns"),
            unleash: ns_pods("unleash", NAME_LABEL, "unleash"),
        }
    }
}

impl Topology {
    /// Each peer names one namespace (`kubernetes.io/metadata.name`) and some pods in it: a
    /// topology that would let a whole namespace, or every namespace, through is refused.
    pub fn narrowness_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (what, peer) in [
            ("ingress controller", &self.ingress_controller),
            ("prometheus", &self.prometheus),
            ("dns", &self.dns),
            ("unleash", &self.unleash),
        ] {
            let ns = str_at(
                peer,
                &[
                    "namespaceSelector",
                    "matchLabels",
                    "kubernetes.io/metadata.name",
                ],
            );
            let pods = at(peer, &["podSelector", "matchLabels"])
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty());
            let only = peer.as_object().is_some_and(|m| {
                m.keys()
                    .all(|k| k == "namespaceSelector" || k == "podSelector")
            });
            if ns.is_none() || !pods || !only {
                errors.push(format!(
                    "{what} peer {peer} must be one namespace (kubernetes.io/metadata.name) and pods by matchLabels"
                ));
            }
        }
        errors
    }
}

const NAME_LABEL: &str = "app.kubernetes.io/name";
const GATEWAY: &str = "cloud-api-gateway-bff";
const IDENTITY: &str = "cloud-identity-access";

/// Where a workload may send traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Dns,
    Database,
    Redis,
    Unleash,
    Identity,
}

impl Destination {
    fn ports(self) -> &'static [(i64, &'static str)] {
        match self {
            Self::Dns => &[(53, "UDP"), (53, "TCP")],
            Self::Database => &[(5432, "TCP")],
            Self::Redis => &[(6379, "TCP")],
            Self::Unleash => &[(4242, "TCP")],
            Self::Identity => &[(8080, "TCP")],
        }
    }

    /// The peer is this destination: DNS, Unleash and identity by their selectors, the
    /// database and Redis (outside the cluster) by a private-range ipBlock.
    fn is(self, peer: &Value, t: &Topology) -> bool {
        match self {
            Self::Dns => *peer == t.dns,
            Self::Unleash => *peer == t.unleash,
            Self::Identity => {
                *peer == serde_json::json!({"podSelector": {"matchLabels": {NAME_LABEL: IDENTITY}}})
            }
            Self::Database | Self::Redis => private_ip_block(peer),
        }
    }
}

/// `{ipBlock: {cidr}}` inside 10/8, 172.16/12 or 192.168/16 (so never 0.0.0.0/0).
fn private_ip_block(peer: &Value) -> bool {
    let Some(map) = peer.as_object() else {
        return false;
    };
    if map.len() != 1 {
        return false;
    }
    let Some(cidr) = str_at(peer, &["ipBlock", "cidr"]) else {
        return false;
    };
    let Some((addr, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(len)) = (addr.parse::<std::net::Ipv4Addr>(), len.parse::<u8>()) else {
        return false;
    };
    let [a, b, ..] = addr.octets();
    (a == 10 && len >= 8)
        || (a == 172 && (16..32).contains(&b) && len >= 12)
        || (a == 192 && b == 168 && len >= 16)
}

/// Who may reach a workload, on which of its container ports (by name), and where it may go.
struct Allowed {
    ingress: Vec<(Value, &'static str)>,
    egress: &'static [Destination],
}

fn allowed_for(w: &Workload<'_>, objects: &[Value], t: &Topology) -> Allowed {
    let metrics = (t.prometheus.clone(), "admin");
    match w.labels.get(NAME_LABEL).map(String::as_str) {
        Some(GATEWAY) => Allowed {
            ingress: vec![(t.ingress_controller.clone(), "http"), metrics],
            egress: &[
                Destination::Dns,
                Destination::Redis,
                Destination::Unleash,
                Destination::Identity,
            ],
        },
        Some(IDENTITY) => {
            let gateway =
                serde_json::json!({"podSelector": {"matchLabels": {NAME_LABEL: GATEWAY}}});
            let mut ingress = vec![(gateway, "http"), metrics];
            // Identity's own Ingress (off by default) brings the ingress controller in.
            if of_kind(objects, "Ingress").next().is_some() {
                ingress.push((t.ingress_controller.clone(), "http"));
            }
            Allowed {
                ingress,
                egress: &[
                    Destination::Dns,
                    Destination::Database,
                    Destination::Unleash,
                ],
            }
        }
        // Anything else (the migration Job): scraped at most, talks to DNS and the database.
        _ => Allowed {
            ingress: vec![metrics],
            egress: &[Destination::Dns, Destination::Database],
        },
    }
}

/// The container port a NetworkPolicy port refers to, by name.
fn port_name(w: &Workload<'_>, port: &Value) -> Option<String> {
    if let Some(name) = port.as_str() {
        return Some(name.to_string());
    }
    let number = port.as_i64()?;
    w.containers()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|p| p.get("containerPort").and_then(Value::as_i64) == Some(number))
        .and_then(|p| str_at(p, &["name"]))
        .map(str::to_string)
}

/// An empty label selector (no matchLabels, no matchExpressions): every pod.
fn selects_everything(selector: &Value) -> bool {
    selector.as_object().is_some_and(|s| {
        s.values().all(|v| {
            v.is_null()
                || v.as_object().is_some_and(|m| m.is_empty())
                || v.as_array().is_some_and(|a| a.is_empty())
        })
    })
}

/// A NetworkPolicy that selects every pod and allows nothing, in both directions.
fn is_default_deny(p: &Value, env: &str) -> bool {
    let selects_all = at(p, &["spec", "podSelector"]).is_some_and(selects_everything);
    let types: Vec<&str> = at(p, &["spec", "policyTypes"])
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let empty = |k: &str| {
        at(p, &["spec", k])
            .is_none_or(|v| v.is_null() || v.as_array().is_some_and(|a| a.is_empty()))
    };
    let namespace = str_at(p, &["metadata", "namespace"]);
    selects_all
        && types.contains(&"Ingress")
        && types.contains(&"Egress")
        && empty("ingress")
        && empty("egress")
        && namespace.is_none_or(|ns| ns == format!("cloud-{env}"))
}

fn peers<'a>(rule: &'a Value, key: &str) -> &'a [Value] {
    rule.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// What the NetworkPolicies allow, not only that one exists: the namespace denies everything
/// by default (platform-base or the chart), the gateway accepts only the ingress controller on
/// its API port, identity only the gateway (and the ingress controller when its own Ingress is
/// rendered), both only Prometheus on the admin port; egress goes only to DNS (53) and the
/// destinations each needs (database, Redis, Unleash, identity), with explicit ports.
fn network_policy_allows_only(
    objects: &[Value],
    context: &[Value],
    workloads: &[Workload<'_>],
    t: &Topology,
    env: &str,
    out: &mut Vec<Violation>,
) {
    if workloads.is_empty() {
        return;
    }
    let policies: Vec<&Value> = of_kind(objects, "NetworkPolicy").collect();
    let deny = policies
        .iter()
        .copied()
        .chain(of_kind(context, "NetworkPolicy"))
        .any(|p| is_default_deny(p, env));
    if !deny {
        push(
            out,
            NETWORK_ALLOWS,
            format!("namespace cloud-{env}"),
            "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)",
        );
    }
    for w in workloads {
        let allowed = allowed_for(w, objects, t);
        for p in policies.iter().filter(|p| {
            at(p, &["spec", "podSelector"]).is_some_and(|s| selector_matches(s, &w.labels))
        }) {
            let id = format!("{} (pods of {})", object_id(p), w.id());
            for rule in at(p, &["spec", "ingress"])
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let from = peers(rule, "from");
                let ports = peers(rule, "ports");
                if from.is_empty() {
                    push(
                        out,
                        NETWORK_ALLOWS,
                        id.clone(),
                        "an ingress rule without `from` admits every source",
                    );
                }
                if ports.is_empty() {
                    push(
                        out,
                        NETWORK_ALLOWS,
                        id.clone(),
                        "an ingress rule without `ports` opens every port",
                    );
                }
                for port in ports {
                    if port.get("endPort").is_some() {
                        push(
                            out,
                            NETWORK_ALLOWS,
                            id.clone(),
                            format!("ingress port range {port}"),
                        );
                    }
                    let name = port.get("port").and_then(|v| port_name(w, v));
                    for peer in from {
                        let ok = allowed
                            .ingress
                            .iter()
                            .any(|(who, on)| who == peer && name.as_deref() == Some(*on));
                        if !ok {
                            push(
                                out,
                                NETWORK_ALLOWS,
                                id.clone(),
                                format!(
                                    "ingress from {peer} on port {} is not allowed",
                                    port.get("port").unwrap_or(&Value::Null)
                                ),
                            );
                        }
                    }
                }
            }
            for rule in at(p, &["spec", "egress"])
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let to = peers(rule, "to");
                let ports = peers(rule, "ports");
                if to.is_empty() {
                    push(
                        out,
                        NETWORK_ALLOWS,
                        id.clone(),
                        "an egress rule without `to` reaches every destination",
                    );
                }
                if ports.is_empty() {
                    push(
                        out,
                        NETWORK_ALLOWS,
                        id.clone(),
                        "an egress rule without `ports` opens every port",
                    );
                }
                for port in ports {
                    let number = port.get("port").and_then(Value::as_i64);
                    let protocol = str_at(port, &["protocol"]).unwrap_or("TCP");
                    for peer in to {
                        let ok = port.get("endPort").is_none()
                            && allowed.egress.iter().any(|d| {
                                d.is(peer, t)
                                    && d.ports()
                                        .iter()
                                        .any(|(n, pr)| Some(*n) == number && *pr == protocol)
                            });
                        if !ok {
                            push(
                                out,
                                NETWORK_ALLOWS,
                                id.clone(),
                                format!(
                                    "egress to {peer} on {port} is not one of {:?}",
                                    allowed.egress
                                ),
                            );
                        }
                    }
                }
            }
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
        objects.retain(|o| o["kind"] != "NetworkPolicy" || o["metadata"]["name"] == "default-deny");
        assert_eq!(rules_broken(&objects, "dev"), vec![NETWORK_POLICY]);
    }

    /// The good render as a service `name` with the chart's ports and NetworkPolicy rules.
    fn service(name: &str, ingress: Value, egress: Value) -> Vec<Value> {
        let text = serde_json::to_string(&good()).unwrap().replace(
            r#""app.kubernetes.io/name":"svc""#,
            &format!(r#""app.kubernetes.io/name":"{name}""#),
        );
        let mut objects: Vec<Value> = serde_json::from_str(&text).unwrap();
        container(&mut objects)["ports"] = serde_json::json!([
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "admin", "containerPort": 9090, "protocol": "TCP"},
        ]);
        let np = network_policy(&mut objects);
        np["spec"]["ingress"] = ingress;
        np["spec"]["egress"] = egress;
        objects
    }

    fn network_policy(objects: &mut [Value]) -> &mut Value {
        objects
            .iter_mut()
            .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "svc")
            .unwrap()
    }

    fn peer(ns: &str, label: &str, name: &str) -> Value {
        serde_json::json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}, "podSelector": {"matchLabels": {label: name}}})
    }

    fn dns_rule() -> Value {
        serde_json::json!({"to": [peer("kube-system", "k8s-app", "kube-dns")], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]})
    }

    fn metrics_rule() -> Value {
        serde_json::json!({"from": [peer("monitoring", NAME_LABEL, "prometheus")], "ports": [{"port": "admin", "protocol": "TCP"}]})
    }

    fn unleash_rule() -> Value {
        serde_json::json!({"to": [peer("unleash", NAME_LABEL, "unleash")], "ports": [{"port": 4242, "protocol": "TCP"}]})
    }

    /// The gateway as its chart renders it (values.yaml).
    fn gateway() -> Vec<Value> {
        service(
            GATEWAY,
            serde_json::json!([
                {"from": [peer("ingress-nginx", NAME_LABEL, "ingress-nginx")], "ports": [{"port": "http", "protocol": "TCP"}]},
                metrics_rule(),
            ]),
            serde_json::json!([
                dns_rule(),
                {"to": [{"podSelector": {"matchLabels": {NAME_LABEL: IDENTITY}}}], "ports": [{"port": 8080, "protocol": "TCP"}]},
                {"to": [{"ipBlock": {"cidr": "10.41.0.0/16"}}], "ports": [{"port": 6379, "protocol": "TCP"}]},
                unleash_rule(),
            ]),
        )
    }

    /// Identity as its chart renders it (values.yaml).
    fn identity() -> Vec<Value> {
        service(
            IDENTITY,
            serde_json::json!([
                {"from": [{"podSelector": {"matchLabels": {NAME_LABEL: GATEWAY}}}], "ports": [{"port": "http", "protocol": "TCP"}]},
                metrics_rule(),
            ]),
            serde_json::json!([
                dns_rule(),
                {"to": [{"ipBlock": {"cidr": "10.40.0.0/16"}}], "ports": [{"port": 5432, "protocol": "TCP"}]},
                unleash_rule(),
            ]),
        )
    }

    #[test]
    fn the_charts_network_policies_pass() {
        for objects in [gateway(), identity()] {
            assert_eq!(check(&objects, "prod"), vec![]);
        }
        // The default deny may come from platform-base's render instead, in the env's namespace.
        let mut objects = gateway();
        let deny = objects
            .iter()
            .position(|o| o["metadata"]["name"] == "default-deny")
            .unwrap();
        let mut base = vec![objects.remove(deny)];
        assert_eq!(rules_broken(&objects, "prod"), vec![NETWORK_ALLOWS]);
        base[0]["metadata"]["namespace"] = "cloud-prod".into();
        assert_eq!(
            check_with(&objects, &base, &Topology::default(), "prod"),
            vec![]
        );
        assert_eq!(
            check_with(&objects, &base, &Topology::default(), "dev")
                .iter()
                .map(|v| v.rule)
                .collect::<Vec<_>>(),
            vec![NETWORK_ALLOWS],
            "another namespace's default deny does not count"
        );
    }

    #[test]
    fn network_policies_fail_when_too_open() {
        type Break = Box<dyn Fn(&mut Vec<Value>)>;
        type Render = fn() -> Vec<Value>;
        let cases: Vec<(&str, Render, Break)> = vec![
            (
                "`from`",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][0]["from"] = serde_json::json!([])
                }),
            ),
            (
                "`from`",
                identity,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("from");
                }),
            ),
            (
                "`ports`",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][1]
                        .as_object_mut()
                        .unwrap()
                        .remove("ports");
                }),
            ),
            // The whole ingress-nginx namespace instead of its controller pods.
            (
                "ingress from",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][0]["from"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("podSelector");
                }),
            ),
            // Every namespace's pods called ingress-nginx.
            (
                "ingress from",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][0]["from"][0]["namespaceSelector"] =
                        serde_json::json!({})
                }),
            ),
            // Prometheus on the API port.
            (
                "ingress from",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][1]["ports"][0]["port"] = "http".into()
                }),
            ),
            (
                "ingress from",
                identity,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][1]["ports"][0]["port"] = 8080.into()
                }),
            ),
            // The ingress controller straight into identity, without identity's own Ingress.
            (
                "ingress from",
                identity,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][0]["from"] =
                        serde_json::json!([peer("ingress-nginx", NAME_LABEL, "ingress-nginx")])
                }),
            ),
            (
                "ingress from",
                identity,
                Box::new(|o| {
                    network_policy(o)["spec"]["ingress"][0]["from"] =
                        serde_json::json!([{"podSelector": {}}])
                }),
            ),
            (
                "egress to",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["egress"][2]["to"][0]["ipBlock"]["cidr"] =
                        "0.0.0.0/0".into()
                }),
            ),
            (
                "egress to",
                identity,
                Box::new(|o| {
                    network_policy(o)["spec"]["egress"].as_array_mut().unwrap().push(serde_json::json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}))
                }),
            ),
            // Identity may not reach Redis; DNS only on 53.
            (
                "egress to",
                identity,
                Box::new(|o| {
                    network_policy(o)["spec"]["egress"][1]["ports"][0]["port"] = 6379.into()
                }),
            ),
            (
                "egress to",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["egress"][0]["ports"][0]["port"] = 80.into()
                }),
            ),
            (
                "egress to",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["egress"][1]["to"][0] =
                        serde_json::json!({"namespaceSelector": {}})
                }),
            ),
            (
                "`to`",
                gateway,
                Box::new(|o| {
                    network_policy(o)["spec"]["egress"][3]
                        .as_object_mut()
                        .unwrap()
                        .remove("to");
                }),
            ),
            (
                "without `ports`",
                identity,
                Box::new(|o| {
                    network_policy(o)["spec"]["egress"][1]
                        .as_object_mut()
                        .unwrap()
                        .remove("ports");
                }),
            ),
            (
                "default-deny",
                gateway,
                Box::new(|o| o.retain(|o| o["metadata"]["name"] != "default-deny")),
            ),
            (
                "default-deny",
                identity,
                Box::new(|o| {
                    let deny = o
                        .iter_mut()
                        .find(|o| o["metadata"]["name"] == "default-deny")
                        .unwrap();
                    deny["spec"]["ingress"] = serde_json::json!([{}]);
                }),
            ),
            // A second policy opening the gateway to everything counts too (policies add up).
            (
                "ingress from",
                gateway,
                Box::new(|o| {
                    o.push(serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "extra"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 8080}]}]}}))
                }),
            ),
        ];
        for (i, (what, render, break_it)) in cases.into_iter().enumerate() {
            let mut objects = render();
            break_it(&mut objects);
            let violations = check(&objects, "prod");
            assert_eq!(
                rules_broken(&objects, "prod"),
                vec![NETWORK_ALLOWS],
                "case {i} ({what}): {violations:?}"
            );
            assert!(
                violations.iter().any(|v| v.message.contains(what)),
                "case {i} ({what}): {violations:?}"
            );
        }
    }

    #[test]
    fn identity_admits_the_ingress_controller_only_with_its_own_ingress() {
        let mut objects = identity();
        network_policy(&mut objects)["spec"]["ingress"][0]["from"]
            .as_array_mut()
            .unwrap()
            .push(peer("ingress-nginx", NAME_LABEL, "ingress-nginx"));
        assert_eq!(rules_broken(&objects, "prod"), vec![NETWORK_ALLOWS]);
        objects.push(serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": IDENTITY}}));
        assert_eq!(check(&objects, "prod"), vec![]);
    }

    #[test]
    fn a_topology_must_name_one_namespace_and_its_pods() {
        assert_eq!(
            Topology::default().narrowness_errors(),
            Vec::<String>::new()
        );
        let t = Topology {
            ingress_controller: serde_json::json!({"namespaceSelector": {}}),
            prometheus: serde_json::json!({"ipBlock": {"cidr": "0.0.0.0/0"}}),
            ..Topology::default()
        };
        assert_eq!(t.narrowness_errors().len(), 2);
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
