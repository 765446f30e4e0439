//! Reading and writing the image of a service in `helm/<service>/values-<env>.yaml`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml::Value;

use crate::error::{Error, Result};
use crate::yamledit;

/// The chart directory of a service.
pub fn chart_dir(service: &str) -> PathBuf {
    Path::new("helm").join(service)
}

/// `helm/<service>/values-<env>.yaml`, relative to the repository root.
pub fn values_file(service: &str, env: &str) -> PathBuf {
    chart_dir(service).join(format!("values-{env}.yaml"))
}

/// What is deployed: the image tag (the version) and, when pinned, its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Reads `image.tag` and `image.digest` from a values file's text.
pub fn read_image(file: &Path, text: &str) -> Result<Image> {
    let err = |reason: String| Error::Values {
        file: file.to_path_buf(),
        reason,
    };
    let doc: Value = serde_yaml::from_str(text).map_err(|e| err(format!("not valid YAML: {e}")))?;
    let image = doc
        .get("image")
        .ok_or_else(|| err("key `image`: missing".into()))?;
    let tag = match image.get("tag") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(err("key `image.tag`: missing or empty".into()));
        }
        Some(other) => {
            return Err(err(format!(
                "key `image.tag`: must be a quoted string (YAML reads {other:?} as a number, e.g. 1.10 becomes 1.1)"
            )));
        }
    };
    let digest = match image.get("digest") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(err(format!(
                "key `image.digest`: must be a string, found {other:?}"
            )));
        }
    };
    Ok(Image { tag, digest })
}

/// Returns `text` with `image.tag` and `image.digest` set, everything else untouched.
pub fn write_image(file: &Path, text: &str, image: &Image) -> Result<String> {
    let err = |reason: String| Error::Values {
        file: file.to_path_buf(),
        reason,
    };
    let mut out =
        yamledit::set_scalar(text, &["image", "tag"], &yamledit::quote(&image.tag)).map_err(err)?;
    let has_digest = serde_yaml::from_str::<Value>(&out)
        .ok()
        .and_then(|d| d.get("image").and_then(|i| i.get("digest")).cloned())
        .is_some();
    if image.digest.is_some() || has_digest {
        let digest = image.digest.clone().unwrap_or_default();
        out = yamledit::set_scalar(&out, &["image", "digest"], &yamledit::quote(&digest))
            .map_err(err)?;
    }
    // Read back what we wrote: an edit that does not round-trip is a bug, never a commit.
    let back = read_image(file, &out)?;
    if &back != image {
        return Err(err(format!(
            "internal: wrote {image:?} but read back {back:?}"
        )));
    }
    Ok(out)
}

/// A released semantic version: `MAJOR.MINOR.PATCH` with no pre-release (an optional `v` prefix).
pub fn released_semver(tag: &str) -> Result<semver::Version, String> {
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    let v = semver::Version::parse(bare)
        .map_err(|e| format!("`{tag}` is not a semver version ({e})"))?;
    if !v.pre.is_empty() {
        return Err(format!("`{tag}` is a pre-release, not a released version"));
    }
    if !v.build.is_empty() {
        return Err(format!(
            "`{tag}` carries build metadata; release tags are plain MAJOR.MINOR.PATCH"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_image() {
        let f = Path::new("values-dev.yaml");
        let text = "image:\n  repository: r\n  tag: \"1.0.0\"\n  digest: \"\"\n";
        assert_eq!(
            read_image(f, text).unwrap(),
            Image {
                tag: "1.0.0".into(),
                digest: None
            }
        );
        let img = Image {
            tag: "1.1.0".into(),
            digest: Some("sha256:abc".into()),
        };
        let out = write_image(f, text, &img).unwrap();
        assert_eq!(read_image(f, &out).unwrap(), img);
        let unpinned = Image {
            tag: "1.2.0".into(),
            digest: None,
        };
        assert_eq!(
            read_image(f, &write_image(f, &out, &unpinned).unwrap()).unwrap(),
            unpinned
        );
    }

    #[test]
    fn numeric_tag_is_an_error_naming_the_key() {
        let err = read_image(Path::new("v.yaml"), "image:\n  tag: 1.10\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("v.yaml") && err.contains("image.tag") && err.contains("quoted"),
            "{err}"
        );
    }

    #[test]
    fn semver_rules() {
        assert!(released_semver("1.2.3").is_ok());
        assert!(released_semver("v1.2.3").is_ok());
        assert!(
            released_semver("1.2.3-rc.1")
                .unwrap_err()
                .contains("pre-release")
        );
        assert!(
            released_semver("latest")
                .unwrap_err()
                .contains("not a semver")
        );
        assert!(released_semver("main-abc123").is_err());
    }
}
