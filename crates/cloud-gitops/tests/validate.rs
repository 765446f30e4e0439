//! `validate` passes on a repository shaped like this one and fails, naming the problem, on
//! each broken example. The fixture uses the real `environments/` and `argocd/` directories.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use cloud_gitops::validate::{Report, validate};
use common::{Fixture, copy_dir, repo_root};
use serde_json::Value;

const CHART: &str = "apiVersion: v2\nname: cloud-demo\nversion: 0.1.0\ntype: application\n";
const TEMPLATE: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n  namespace: {{ .Release.Namespace }}\nspec:\n  replicas: {{ .Values.replicaCount }}\n  template:\n    spec:\n      containers:\n        - name: app\n          image: \"{{ .Values.image.repository }}:{{ .Values.image.tag }}\"\n          env:\n            - name: LOG_LEVEL\n              value: {{ .Values.config.logLevel | quote }}\n";

fn env_values(tag: &str, replicas: u32, min: u32, max: u32, canary: bool, log: &str) -> String {
    format!(
        "image:\n  tag: \"{tag}\"\n  digest: \"\"\nreplicaCount: {replicas}\nautoscaling:\n  minReplicas: {min}\n  maxReplicas: {max}\nrollout:\n  enabled: {canary}\nconfig:\n  telemetry:\n    log_level: {log}\n"
    )
}

/// A valid repository: the real matrix and Argo CD manifests plus a demo service chart.
fn fixture() -> Fixture {
    let f = Fixture::new();
    for svc in common::SERVICES {
        std::fs::remove_dir_all(f.path(&format!("helm/{svc}"))).unwrap();
    }
    copy_dir(&repo_root().join("argocd"), &f.path("argocd"));
    f.write("helm/cloud-demo/Chart.yaml", CHART);
    f.write("helm/cloud-demo/templates/deployment.yaml", TEMPLATE);
    f.write(
        "helm/cloud-demo/values.yaml",
        "image:\n  repository: ghcr.io/cloud-platform/cloud-demo\n  tag: \"0.0.0\"\n  digest: \"\"\nreplicaCount: 2\nautoscaling:\n  enabled: true\n  minReplicas: 2\n  maxReplicas: 4\nrollout:\n  enabled: false\nconfig:\n  telemetry:\n    log_level: info\n  timeoutSeconds: 30\n",
    );
    f.write(
        "helm/cloud-demo/values-dev.yaml",
        &env_values("1.1.0-dev.4", 1, 1, 2, false, "debug"),
    );
    f.write(
        "helm/cloud-demo/values-staging.yaml",
        &env_values("1.0.0", 2, 2, 4, true, "info"),
    );
    f.write(
        "helm/cloud-demo/values-prod.yaml",
        &env_values("1.0.0", 3, 2, 10, true, "info"),
    );
    // A library chart the ApplicationSet must skip, and the platform base.
    f.write(
        "helm/cloud-service/Chart.yaml",
        "apiVersion: v2\nname: cloud-service\nversion: 0.1.0\ntype: library\n",
    );
    f.write(
        "helm/platform-base/Chart.yaml",
        "apiVersion: v2\nname: platform-base\nversion: 0.1.0\n",
    );
    for env in ["", "-dev", "-staging", "-prod"] {
        f.write(&format!("helm/platform-base/values{env}.yaml"), "{}\n");
    }
    f.commit_all("fixture");
    f
}

fn report(f: &Fixture) -> Report {
    validate(f.root()).unwrap()
}

fn assert_finding(r: &Report, check: &str, needles: &[&str]) {
    let hit = r
        .findings
        .iter()
        .any(|x| x.check == check && needles.iter().all(|n| x.to_string().contains(n)));
    assert!(
        hit,
        "expected a [{check}] finding containing {needles:?}; got:\n{}",
        r.findings
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn edit(f: &Fixture, rel: &str, from: &str, to: &str) {
    let text = f.read(rel);
    assert!(text.contains(from), "{rel} does not contain {from:?}");
    f.write(rel, &text.replacen(from, to, 1));
}

#[test]
fn the_fixture_is_valid_and_generates_the_expected_applications() {
    let f = fixture();
    let r = report(&f);
    assert!(r.ok(), "{:#?}", r.findings);
    assert!(
        r.checked
            .iter()
            .any(|c| c.contains("3 environment files (dev -> staging -> prod)")),
        "{:?}",
        r.checked
    );
    let grid = cloud_gitops::validate::grid(f.root()).unwrap();
    assert_eq!(
        grid.services,
        vec!["cloud-demo".to_string()],
        "library charts are not services"
    );
    let dev = grid.app("cloud-demo", "dev").unwrap();
    let prod = grid.app("cloud-demo", "prod").unwrap();
    assert_eq!(dev.name(), "cloud-demo-dev");
    assert_eq!(
        dev.app.pointer("/spec/syncPolicy/automated"),
        Some(&serde_json::json!({"prune": true, "selfHeal": true}))
    );
    assert_eq!(
        prod.app.pointer("/spec/syncPolicy/automated"),
        None,
        "prod gets no automated sync"
    );
    assert_eq!(
        prod.app.pointer("/spec/project"),
        Some(&Value::from("prod"))
    );
    assert_eq!(
        prod.app.pointer("/spec/destination/namespace"),
        Some(&Value::from("cloud-prod"))
    );
    assert_eq!(
        prod.app.pointer("/spec/source/helm/valueFiles"),
        Some(&serde_json::json!(["values.yaml", "values-prod.yaml"]))
    );
    let ann = |a: &cloud_gitops::appset::GeneratedApp, k: &str| {
        cloud_gitops::validate::annotation(&a.app, k).map(str::to_string)
    };
    assert_eq!(
        ann(dev, "argocd-image-updater.argoproj.io/write-back-target").as_deref(),
        Some("helmvalues:/helm/cloud-demo/values-dev.yaml")
    );
    assert_eq!(
        ann(prod, "argocd-image-updater.argoproj.io/image-list"),
        None,
        "image updates are dev only"
    );
    let staging = grid.app("cloud-demo", "staging").unwrap();
    assert_eq!(
        ann(staging, "argocd-image-updater.argoproj.io/image-list"),
        None
    );
    // Add-ons: every add-on in every environment, pinned, Unleash with its own PostgreSQL.
    let unleash_prod = grid
        .apps
        .iter()
        .find(|a| a.name() == "unleash-prod")
        .unwrap();
    assert_eq!(
        unleash_prod.app.pointer("/spec/source/targetRevision"),
        Some(&Value::from("5.3.4"))
    );
    assert_eq!(
        unleash_prod
            .app
            .pointer("/spec/source/helm/valuesObject/postgresql/enabled"),
        Some(&Value::Bool(true))
    );
    assert_eq!(unleash_prod.app.pointer("/spec/syncPolicy/automated"), None);
    let db_prod = grid
        .apps
        .iter()
        .find(|a| a.name() == "identity-postgres-prod")
        .unwrap();
    assert_eq!(
        db_prod
            .app
            .pointer("/spec/source/helm/valuesObject/backups/enabled"),
        Some(&Value::Bool(true))
    );
    // Backups go to the environment's own S3 prefix, with credentials only by secret name.
    let backups = db_prod
        .app
        .pointer("/spec/source/helm/valuesObject/backups")
        .unwrap();
    assert_eq!(backups["provider"], "s3");
    assert_eq!(
        backups["destinationPath"],
        "s3://cloud-platform-db-backups/prod/identity-postgres"
    );
    assert_eq!(backups["s3"]["region"], "eu-central-1");
    assert_eq!(backups["s3"].get("accessKey"), None);
    assert_eq!(backups["s3"].get("secretKey"), None);
    assert_eq!(backups["secret"]["create"], false);
    assert_eq!(backups["secret"]["name"], "identity-postgres-backup-s3");
    let db_dev = grid
        .apps
        .iter()
        .find(|a| a.name() == "identity-postgres-dev")
        .unwrap();
    assert_eq!(
        db_dev
            .app
            .pointer("/spec/source/helm/valuesObject/backups/enabled"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        grid.apps
            .iter()
            .filter(|a| cloud_gitops::validate::label(&a.app, "cloud-platform.io/addon").is_some())
            .count(),
        9 * 3
    );
}

#[test]
fn paused_service_loses_its_image_updater_annotations() {
    let f = fixture();
    edit(
        &f,
        "environments/dev.yaml",
        "  paused: []",
        "  paused: [cloud-demo]",
    );
    let grid = cloud_gitops::validate::grid(f.root()).unwrap();
    let dev = grid.app("cloud-demo", "dev").unwrap();
    assert_eq!(
        cloud_gitops::validate::annotation(&dev.app, "argocd-image-updater.argoproj.io/image-list"),
        None
    );
    assert!(report(&f).ok());
}

#[test]
fn broken_schema_unknown_key() {
    let f = fixture();
    edit(
        &f,
        "environments/staging.yaml",
        "canary:\n  enabled: true",
        "canary:\n  enabled: true\n  steps: 4",
    );
    let r = report(&f);
    assert_finding(
        &r,
        "schema",
        &["environments/staging.yaml", "canary", "steps"],
    );
}

#[test]
fn broken_backup_enabled_without_destination() {
    let f = fixture();
    edit(
        &f,
        "environments/staging.yaml",
        "    destination: s3://cloud-platform-db-backups/staging/identity-postgres\n",
        "",
    );
    assert_finding(
        &report(&f),
        "schema",
        &["environments/staging.yaml", "data.backup", "destination"],
    );
}

#[test]
fn broken_backup_destination_not_an_s3_url() {
    let f = fixture();
    edit(
        &f,
        "environments/prod.yaml",
        "destination: s3://cloud-platform-db-backups/prod/identity-postgres",
        "destination: cloud-platform-db-backups/prod/identity-postgres",
    );
    assert_finding(
        &report(&f),
        "schema",
        &["environments/prod.yaml", "data.backup.destination"],
    );
}

#[test]
fn broken_backup_destination_under_another_environment() {
    let f = fixture();
    edit(
        &f,
        "environments/staging.yaml",
        "cloud-platform-db-backups/staging/identity-postgres",
        "cloud-platform-db-backups/prod/identity-postgres",
    );
    assert_finding(
        &report(&f),
        "backup",
        &[
            "environments/staging.yaml",
            "data.backup.destination",
            "/staging/",
        ],
    );
}

#[test]
fn broken_missing_values_file() {
    let f = fixture();
    std::fs::remove_file(f.path("helm/cloud-demo/values-prod.yaml")).unwrap();
    let r = report(&f);
    assert_finding(
        &r,
        "files",
        &[
            "helm/cloud-demo/values-prod.yaml",
            "no values file for environment prod",
        ],
    );
    assert_finding(
        &r,
        "files",
        &[
            "Application cloud-demo-prod",
            "references helm/cloud-demo/values-prod.yaml which does not exist",
        ],
    );
}

#[test]
fn broken_applicationset_references_a_missing_file() {
    let f = fixture();
    edit(
        &f,
        "argocd/applicationsets/services.yaml",
        "\"values-{{ .name }}.yaml\"",
        "\"values-{{ .name }}-overrides.yaml\"",
    );
    assert_finding(
        &report(&f),
        "files",
        &["references helm/cloud-demo/values-dev-overrides.yaml which does not exist"],
    );
}

#[test]
fn broken_parity_key_only_in_one_environment() {
    let f = fixture();
    let prod = f.read("helm/cloud-demo/values-prod.yaml") + "  timeoutSeconds: 5\n";
    f.write("helm/cloud-demo/values-prod.yaml", &prod);
    assert_finding(
        &report(&f),
        "parity",
        &[
            "config.timeoutSeconds",
            "prod=5",
            "dev=30",
            "not in parity.mayDiffer",
        ],
    );
    let dev = f.read("helm/cloud-demo/values-dev.yaml") + "featureX: true\n";
    f.write("helm/cloud-demo/values-dev.yaml", &dev);
    assert_finding(&report(&f), "parity", &["featureX", "staging=(absent)"]);
}

#[test]
fn broken_prod_invariants() {
    let f = fixture();
    edit(
        &f,
        "helm/cloud-demo/values-prod.yaml",
        "tag: \"1.0.0\"",
        "tag: \"1.1.0-rc.1\"",
    );
    edit(
        &f,
        "helm/cloud-demo/values-prod.yaml",
        "rollout:\n  enabled: true",
        "rollout:\n  enabled: false",
    );
    edit(
        &f,
        "helm/cloud-demo/values-prod.yaml",
        "replicaCount: 3",
        "replicaCount: 1",
    );
    let r = report(&f);
    assert_finding(
        &r,
        "prod",
        &["values-prod.yaml", "image.tag", "pre-release"],
    );
    assert_finding(&r, "prod", &["rollout.enabled", "must be true in prod"]);
    assert_finding(&r, "prod", &["replicaCount", "1 < 2"]);
    assert_finding(
        &r,
        "matrix-values",
        &["rollout.enabled", "canary.enabled: true"],
    );
}

#[test]
fn broken_prod_matrix_invariants() {
    let f = fixture();
    edit(
        &f,
        "environments/prod.yaml",
        "  automated: false",
        "  automated: true",
    );
    edit(
        &f,
        "environments/prod.yaml",
        "replicas:\n  min: 2",
        "replicas:\n  min: 1",
    );
    let r = report(&f);
    assert_finding(&r, "prod", &["environments/prod.yaml", "sync", "manual"]);
    assert_finding(&r, "prod", &["replicas.min", "1 < 2"]);
}

#[test]
fn broken_template_patch_gives_prod_automated_sync() {
    let f = fixture();
    edit(
        &f,
        "argocd/applicationsets/services.yaml",
        "{{- if .sync.automated }}",
        "{{- if true }}",
    );
    let r = report(&f);
    assert_finding(
        &r,
        "prod",
        &[
            "Application cloud-demo-prod",
            "spec.syncPolicy.automated",
            "is set but the matrix says sync.automated: false",
        ],
    );
}

#[test]
fn broken_ingress_host_outside_the_base_domain() {
    let f = fixture();
    let prod = f.read("helm/cloud-demo/values-prod.yaml")
        + "ingress:\n  enabled: true\n  host: demo.example.org\n";
    f.write("helm/cloud-demo/values-prod.yaml", &prod);
    assert_finding(
        &report(&f),
        "matrix-values",
        &[
            "ingress.host",
            "demo.example.org",
            "baseDomain cloud-platform.example",
        ],
    );
}

#[test]
fn broken_argocd_manifest_fails_the_crd_schema() {
    let f = fixture();
    edit(
        &f,
        "argocd/projects/staging.yaml",
        "  sourceRepos:",
        "  sourceRepositories:\n    - x\n  sourceRepos:",
    );
    assert_finding(
        &report(&f),
        "argocd-schema",
        &[
            "argocd/projects/staging.yaml",
            "AppProject staging",
            "sourceRepositories",
        ],
    );

    let f = fixture();
    edit(
        &f,
        "argocd/applicationsets/services.yaml",
        "      revisionHistoryLimit: 10",
        "      revisionHistoryLimit: ten",
    );
    let r = report(&f);
    assert_finding(
        &r,
        "argocd-schema",
        &["ApplicationSet services", "revisionHistoryLimit", "\"ten\""],
    );
    assert_finding(
        &r,
        "argocd-schema",
        &[
            "generated Application cloud-demo-dev",
            "revisionHistoryLimit",
        ],
    );
}

#[test]
fn broken_template_fails_with_missing_key() {
    let f = fixture();
    edit(
        &f,
        "argocd/applicationsets/services.yaml",
        "namespace: \"{{ .cluster.namespace }}\"",
        "namespace: \"{{ .cluster.namespce }}\"",
    );
    assert_finding(
        &report(&f),
        "applicationset",
        &["services", ".cluster.namespce"],
    );
}

#[test]
fn broken_project_groups_differ_from_the_matrix() {
    let f = fixture();
    edit(
        &f,
        "environments/prod.yaml",
        "  promote: [cloud-platform:release-managers]",
        "  promote: [cloud-platform:release-captains]",
    );
    assert_finding(
        &report(&f),
        "argocd-project",
        &[
            "argocd/projects/prod.yaml",
            "spec.roles[promote].groups",
            "release-captains",
        ],
    );
}

#[test]
fn broken_image_updates_enabled_in_prod() {
    let f = fixture();
    edit(
        &f,
        "environments/prod.yaml",
        "imageUpdates:\n  enabled: false",
        "imageUpdates:\n  enabled: true",
    );
    let r = report(&f);
    assert_finding(&r, "prod", &["imageUpdates.enabled", "dev only"]);
}

#[test]
fn the_real_repository_matrix_loads() {
    let m = cloud_gitops::Matrix::load(&repo_root()).unwrap();
    assert_eq!(m.names(), vec!["dev", "staging", "prod"]);
}
