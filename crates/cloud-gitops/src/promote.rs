//! `promote`, `rollback`, `status` and check records: one environment holds one version of each
//! service, written as `image.tag` (and `image.digest`) in `helm/<service>/values-<env>.yaml`.
//! Every change is one commit with structured trailers, built on HEAD without touching the work
//! tree and published with a compare-and-swap of the branch ([`Git::publish`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::git::{CommitInfo, Git};
use crate::matrix::{EnvFile, Matrix};
use crate::values::{self, Image, released_semver};
use crate::yamledit;

/// Where recorded checks live: `environments/checks/<service>/<version>.yaml`.
pub fn checks_file(service: &str, version: &str) -> PathBuf {
    Path::new("environments")
        .join("checks")
        .join(service)
        .join(format!("{version}.yaml"))
}

/// Called after a change is prepared and before it is published (tests use it to race).
pub type Hook = Arc<dyn Fn() + Send + Sync>;

/// A checkout to promote in.
#[derive(Clone)]
pub struct Gitops {
    pub root: PathBuf,
    pub git: Git,
    pub clock: Arc<dyn Clock>,
    pub before_publish: Option<Hook>,
}

impl std::fmt::Debug for Gitops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gitops")
            .field("root", &self.root)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct PromoteOptions {
    pub dry_run: bool,
    /// For the first stage (no `promotion.from`), the version to deploy; for later stages it must
    /// equal the source environment's version.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub service: String,
    pub environment: String,
    /// `promoted`, `rolled-back`, `up-to-date`, or `dry-run`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub previous: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The rules that passed, with their evidence.
    pub rules: Vec<String>,
    /// What the commit changes (`git diff`), for dry runs and reviews.
    pub diff: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_updates: Option<&'static str>,
    /// Approvals the pull request needs (the matrix's `promotion.approvals`).
    pub approvals_required: u32,
}

/// One cell of `cloudctl status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub service: String,
    pub environment: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When this version got there (RFC 3339), per git history.
    pub since: String,
    /// Who made that commit.
    pub by: String,
    pub commit: String,
    /// `in-sync`, `behind <env> (<version>)`, `differs from <env> (<version>)`, or `-` for the first stage.
    pub drift: String,
    pub image_updates: String,
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn refuse(rule: &'static str, reason: impl Into<String>) -> Error {
    Error::Refused {
        rule,
        reason: reason.into(),
    }
}

impl Gitops {
    pub fn new(root: impl Into<PathBuf>, clock: Arc<dyn Clock>) -> Self {
        let root = root.into();
        Self {
            git: Git::new(root.clone()),
            root,
            clock,
            before_publish: None,
        }
    }

    fn ensure_clean(&self) -> Result<()> {
        let dirty = self.git.dirty_files()?;
        if dirty.is_empty() {
            Ok(())
        } else {
            Err(Error::DirtyTree { files: dirty })
        }
    }

    fn image_at(&self, rev: &str, file: &Path) -> Result<Option<Image>> {
        match self.git.show(rev, file)? {
            Some(text) => Ok(Some(values::read_image(file, &text)?)),
            None => Ok(None),
        }
    }

    fn current_image(&self, head: &str, service: &str, env: &str) -> Result<Image> {
        let file = values::values_file(service, env);
        self.image_at(head, &file)?.ok_or_else(|| {
            Error::Usage(format!(
                "{} does not exist at HEAD: is `{service}` a service with an `{env}` environment?",
                file.display()
            ))
        })
    }

    /// The history of what `file` deployed, newest first: each commit that touched it, with the
    /// image after that commit.
    fn image_history(&self, file: &Path) -> Result<Vec<(CommitInfo, Option<Image>)>> {
        let mut out = Vec::new();
        for c in self.git.log_path(file)? {
            let img = self.image_at(&c.sha, file).ok().flatten();
            out.push((c, img));
        }
        Ok(out)
    }

    /// The commit where `file`'s current tag arrived (the oldest commit of the newest run of
    /// commits that all have this tag).
    fn landed(&self, file: &Path, tag: &str) -> Result<Option<CommitInfo>> {
        let mut landed = None;
        for (c, img) in self.image_history(file)? {
            if img.as_ref().map(|i| i.tag.as_str()) == Some(tag) {
                landed = Some(c);
            } else {
                break;
            }
        }
        Ok(landed)
    }

    fn prepare_and_publish(
        &self,
        head: &str,
        files: &[(PathBuf, String)],
        message: &str,
        dry_run: bool,
    ) -> Result<(Option<String>, String)> {
        let commit = self.git.commit_on(head, files, message, self.clock.now())?;
        let diff = self.git.diff(head, &commit)?;
        if dry_run {
            return Ok((None, diff));
        }
        if let Some(hook) = &self.before_publish {
            hook();
        }
        let subject = message.lines().next().unwrap_or_default();
        self.git.publish(head, &commit, subject)?;
        Ok((Some(commit), diff))
    }

    /// Removes or adds `service` in `imageUpdates.paused` of an environment file's text.
    fn set_paused(
        env: &EnvFile,
        text: &str,
        service: &str,
        paused: bool,
    ) -> Result<Option<String>> {
        let mut list = env.env.image_updates.paused.clone();
        let has = list.iter().any(|s| s == service);
        if has == paused {
            return Ok(None);
        }
        if paused {
            list.push(service.to_string());
        } else {
            list.retain(|s| s != service);
        }
        let value = format!("[{}]", list.join(", "));
        let out =
            yamledit::set_scalar(text, &["imageUpdates", "paused"], &value).map_err(|reason| {
                Error::Values {
                    file: env.file.clone(),
                    reason,
                }
            })?;
        Ok(Some(out))
    }

    /// `cloudctl promote SERVICE --to ENV`.
    pub fn promote(&self, service: &str, to: &str, opts: &PromoteOptions) -> Result<Outcome> {
        self.ensure_clean()?;
        let matrix = Matrix::load(&self.root)?;
        let target = matrix.get(to)?;
        let head = self.git.head()?;
        let target_file = values::values_file(service, to);
        let previous = self.current_image(&head, service, to)?;
        let mut rules = Vec::new();

        let (from, image) = match &target.env.promotion.from {
            Some(src) => {
                let image = self.current_image(&head, service, src)?;
                if let Some(v) = &opts.version
                    && v != &image.tag
                {
                    return Err(refuse(
                        "no-skip",
                        format!(
                            "{service} {v} is not the version in {src} ({}); {to} only takes what {src} runs",
                            image.tag
                        ),
                    ));
                }
                (Some(src.clone()), image)
            }
            None => {
                let v = opts.version.clone().ok_or_else(|| {
                    Error::Usage(format!("{to} is the first stage (no promotion.from); name the version with --version (image updates normally set it)"))
                })?;
                (
                    None,
                    Image {
                        tag: v,
                        digest: None,
                    },
                )
            }
        };

        released_semver(&image.tag).map_err(|r| refuse("semver", r))?;
        rules.push(format!("semver: {} is a released version", image.tag));

        if previous == image {
            return Ok(Outcome {
                service: service.into(),
                environment: to.into(),
                result: "up-to-date",
                from,
                version: image.tag,
                digest: image.digest,
                previous: previous.tag,
                commit: None,
                rules,
                diff: String::new(),
                image_updates: None,
                approvals_required: target.env.promotion.approvals,
            });
        }

        if let Some(src) = &from {
            let src_env = matrix.get(src)?;
            // No skipping: the version reached the source through the source's own source.
            if let Some(src_src) = &src_env.env.promotion.from {
                let f = values::values_file(service, src_src);
                let seen = self
                    .image_history(&f)?
                    .into_iter()
                    .any(|(_, img)| img.is_some_and(|i| i.tag == image.tag));
                if !seen {
                    return Err(refuse(
                        "no-skip",
                        format!(
                            "{service} {} is in {src} but was never deployed in {src_src}; it must pass through every stage",
                            image.tag
                        ),
                    ));
                }
                rules.push(format!(
                    "no-skip: {} went through {src_src} -> {src}",
                    image.tag
                ));
            } else {
                rules.push(format!(
                    "no-skip: {to} takes versions from {src}, the previous stage"
                ));
            }
            // Soak time, from git history.
            let src_file = values::values_file(service, src);
            let landed = self.landed(&src_file, &image.tag)?.ok_or_else(|| {
                refuse(
                    "soak",
                    format!("no commit in history put {} into {src}", image.tag),
                )
            })?;
            let min = target
                .env
                .promotion
                .min_soak()
                .map_err(|r| refuse("soak", r))?;
            let soaked = self.clock.now() - landed.time;
            let soaked_std = std::time::Duration::try_from(soaked).unwrap_or_default();
            if soaked_std < min {
                return Err(refuse(
                    "soak",
                    format!(
                        "{service} {} has been in {src} for {} (since {}, commit {}); {to} requires {}",
                        image.tag,
                        human(soaked_std),
                        fmt_time(landed.time),
                        short(&landed.sha),
                        target.env.promotion.min_soak
                    ),
                ));
            }
            rules.push(format!(
                "soak: in {src} for {} (>= {})",
                human(soaked_std),
                target.env.promotion.min_soak
            ));
        }

        // Required checks, recorded in git.
        let required = &target.env.promotion.required_checks;
        if !required.is_empty() {
            let cf = checks_file(service, &image.tag);
            let recorded: BTreeMap<String, String> = match self.git.show(&head, &cf)? {
                Some(text) => read_checks(&cf, &text)?,
                None => BTreeMap::new(),
            };
            let missing: Vec<String> = required
                .iter()
                .filter(|c| recorded.get(*c).map(String::as_str) != Some("passed"))
                .map(|c| {
                    format!(
                        "{c} ({})",
                        recorded
                            .get(c)
                            .map(String::as_str)
                            .unwrap_or("not recorded")
                    )
                })
                .collect();
            if !missing.is_empty() {
                return Err(refuse(
                    "checks",
                    format!(
                        "{to} requires passed checks for {service} {}: missing {} in {}",
                        image.tag,
                        missing.join(", "),
                        cf.display()
                    ),
                ));
            }
            rules.push(format!("checks: {} passed", required.join(", ")));
        }

        let text = self.git.show(&head, &target_file)?.unwrap_or_default();
        let mut files = vec![(
            target_file.clone(),
            values::write_image(&target_file, &text, &image)?,
        )];
        let mut image_updates = None;
        let env_text = self.git.show(&head, &target.file)?.unwrap_or_default();
        if let Some(t) = Self::set_paused(target, &env_text, service, false)? {
            files.push((target.file.clone(), t));
            image_updates = Some("resumed");
        }
        let from_label = from.clone().unwrap_or_else(|| "registry".into());
        let message = format!(
            "promote({service}): {} to {to}\n\n{}\n\nPromote-Service: {service}\nPromote-From: {from_label}\nPromote-To: {to}\nPromote-Version: {}\nPromote-Previous: {}\n",
            image.tag,
            rules
                .iter()
                .map(|r| format!("- {r}"))
                .collect::<Vec<_>>()
                .join("\n"),
            image.tag,
            previous.tag
        );
        let (commit, diff) = self.prepare_and_publish(&head, &files, &message, opts.dry_run)?;
        Ok(Outcome {
            service: service.into(),
            environment: to.into(),
            result: if opts.dry_run { "dry-run" } else { "promoted" },
            from,
            version: image.tag,
            digest: image.digest,
            previous: previous.tag,
            commit,
            rules,
            diff,
            image_updates,
            approvals_required: target.env.promotion.approvals,
        })
    }

    /// `cloudctl rollback SERVICE --env ENV [--to VERSION]`.
    pub fn rollback(
        &self,
        service: &str,
        env: &str,
        to: Option<&str>,
        dry_run: bool,
    ) -> Result<Outcome> {
        self.ensure_clean()?;
        let matrix = Matrix::load(&self.root)?;
        let target = matrix.get(env)?;
        let head = self.git.head()?;
        let file = values::values_file(service, env);
        let current = self.current_image(&head, service, env)?;
        let history = self.image_history(&file)?;

        let restore: Image = match to {
            Some(v) => {
                if v == current.tag {
                    return Err(refuse(
                        "history",
                        format!("{service} is already at {v} in {env}"),
                    ));
                }
                history
                    .iter()
                    .find_map(|(_, img)| img.clone().filter(|i| i.tag == v))
                    .ok_or_else(|| {
                        refuse(
                            "history",
                            format!(
                                "{service} {v} was never deployed in {env} (see `git log -- {}`)",
                                file.display()
                            ),
                        )
                    })?
            }
            None => {
                // The newest commit that changed the version, and what was there before it.
                let mut found = None;
                for (i, (c, img)) in history.iter().enumerate() {
                    let before = history.get(i + 1).and_then(|(_, b)| b.clone());
                    if img.as_ref().map(|x| &x.tag) != before.as_ref().map(|x| &x.tag) {
                        found = Some((c, before));
                        break;
                    }
                }
                let (change, before) = found.ok_or_else(|| refuse("history", format!("{service} has only ever had one version in {env}; nothing to roll back to")))?;
                let named = change
                    .trailers
                    .get("Promote-Previous")
                    .or_else(|| change.trailers.get("Rollback-Previous"))
                    .cloned();
                match (named, before) {
                    // The trailer names the version; the file history gives its exact digest.
                    (Some(v), Some(b)) if b.tag == v => b,
                    (Some(v), _) => history
                        .iter()
                        .find_map(|(_, img)| img.clone().filter(|i| i.tag == v))
                        .ok_or_else(|| refuse("history", format!("commit {} names previous version {v}, which is not in the history of {}", short(&change.sha), file.display())))?,
                    (None, Some(b)) => b,
                    (None, None) => return Err(refuse("history", format!("{service} has no earlier version in {env}"))),
                }
            }
        };

        let text = self.git.show(&head, &file)?.unwrap_or_default();
        let mut files = vec![(file.clone(), values::write_image(&file, &text, &restore)?)];
        let mut image_updates = None;
        if target.env.image_updates.enabled {
            let env_text = self.git.show(&head, &target.file)?.unwrap_or_default();
            if let Some(t) = Self::set_paused(target, &env_text, service, true)? {
                files.push((target.file.clone(), t));
            }
            image_updates = Some("paused");
        }
        let message = format!(
            "rollback({service}): {env} back to {} from {}\n\nRestores the image that was deployed before {}.{}\n\nRollback-Service: {service}\nRollback-Env: {env}\nRollback-Version: {}\nRollback-Previous: {}\n",
            restore.tag,
            current.tag,
            current.tag,
            if image_updates.is_some() {
                format!(" Image updates for {service} in {env} are paused until the next promote.")
            } else {
                String::new()
            },
            restore.tag,
            current.tag
        );
        let (commit, diff) = self.prepare_and_publish(&head, &files, &message, dry_run)?;
        Ok(Outcome {
            service: service.into(),
            environment: env.into(),
            result: if dry_run { "dry-run" } else { "rolled-back" },
            from: None,
            version: restore.tag,
            digest: restore.digest,
            previous: current.tag,
            commit,
            rules: Vec::new(),
            diff,
            image_updates,
            approvals_required: target.env.promotion.approvals,
        })
    }

    /// Services: those the ApplicationSets in `argocd/` generate Applications for; in a
    /// repository without `argocd/`, the `helm/*` directories with a values file per environment.
    pub fn services(&self, matrix: &Matrix) -> Result<Vec<String>> {
        if self.root.join(crate::appset::ARGOCD_DIR).is_dir() {
            return Ok(crate::validate::grid(&self.root)?.services);
        }
        let mut out = Vec::new();
        let dir = self.root.join("helm");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if matrix.envs.iter().any(|e| {
                self.root
                    .join(values::values_file(&name, &e.env.name))
                    .is_file()
            }) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// `cloudctl status`.
    pub fn status(&self) -> Result<Vec<StatusRow>> {
        let matrix = Matrix::load(&self.root)?;
        let head = self.git.head()?;
        let mut rows = Vec::new();
        for service in self.services(&matrix)? {
            for e in &matrix.envs {
                let env = &e.env.name;
                let file = values::values_file(&service, env);
                let Some(img) = self.image_at(&head, &file)? else {
                    continue;
                };
                let landed = self.landed(&file, &img.tag)?;
                let drift = match &e.env.promotion.from {
                    None => "-".to_string(),
                    Some(src) => match self.image_at(&head, &values::values_file(&service, src))? {
                        None => format!("{src}: no values file"),
                        Some(s) if s.tag == img.tag => "in-sync".to_string(),
                        Some(s) => match (released_semver(&s.tag), released_semver(&img.tag)) {
                            (Ok(a), Ok(b)) if a > b => format!("behind {src} ({})", s.tag),
                            _ => format!("differs from {src} ({})", s.tag),
                        },
                    },
                };
                let image_updates = if !e.env.image_updates.enabled {
                    "off".to_string()
                } else if e.env.image_updates.paused.contains(&service) {
                    "paused".to_string()
                } else {
                    "on".to_string()
                };
                rows.push(StatusRow {
                    service: service.clone(),
                    environment: env.clone(),
                    version: img.tag,
                    digest: img.digest,
                    since: landed
                        .as_ref()
                        .map(|c| fmt_time(c.time))
                        .unwrap_or_else(|| "-".into()),
                    by: landed
                        .as_ref()
                        .map(|c| c.author.clone())
                        .unwrap_or_else(|| "-".into()),
                    commit: landed
                        .as_ref()
                        .map(|c| short(&c.sha).to_string())
                        .unwrap_or_else(|| "-".into()),
                    drift,
                    image_updates,
                });
            }
        }
        Ok(rows)
    }

    /// Records a check result for a service version and commits it (what CI does after a run).
    pub fn record_check(
        &self,
        service: &str,
        version: &str,
        check: &str,
        status: &str,
    ) -> Result<String> {
        self.ensure_clean()?;
        if !matches!(status, "passed" | "failed") {
            return Err(Error::Usage(format!(
                "check status must be passed or failed, not `{status}`"
            )));
        }
        if check.is_empty()
            || !check
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::Usage(format!(
                "check name `{check}` must be letters, digits, '-', '_' or '.'"
            )));
        }
        released_semver(version).map_err(Error::Usage)?;
        let head = self.git.head()?;
        let file = checks_file(service, version);
        let mut checks = match self.git.show(&head, &file)? {
            Some(text) => read_checks(&file, &text)?,
            None => BTreeMap::new(),
        };
        checks.insert(check.to_string(), status.to_string());
        let mut text = format!(
            "# Checks recorded for {service} {version} (cloudctl checks record).\nchecks:\n"
        );
        for (k, v) in &checks {
            text.push_str(&format!("  {k}: {v}\n"));
        }
        let message = format!(
            "checks({service}): {check} {status} for {version}\n\nCheck-Service: {service}\nCheck-Version: {version}\nCheck-Name: {check}\nCheck-Status: {status}\n"
        );
        let (commit, _) = self.prepare_and_publish(&head, &[(file, text)], &message, false)?;
        commit.ok_or_else(|| Error::Usage("no commit was made".into()))
    }
}

fn read_checks(file: &Path, text: &str) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Checks {
        checks: BTreeMap<String, String>,
    }
    let parsed: Checks = serde_yaml::from_str(text).map_err(|e| Error::Values {
        file: file.to_path_buf(),
        reason: format!("not a checks record ({e})"),
    })?;
    Ok(parsed.checks)
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{}d{}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}
