//! GitOps for the platform, with nothing but git, Argo CD and one CLI.
//!
//! - [`matrix`]: the environment matrix (`environments/*.yaml`), loaded and checked against
//!   `environments/schema.json`; errors name the file, the key and the reason.
//! - [`validate`]: the repository checks behind `cloudctl env validate`.
//! - [`appset`]: evaluates the ApplicationSets in `argocd/` the way the controller does, so the
//!   checks see the Applications Argo CD would generate.
//! - [`promote`]: `promote`, `rollback` and `status`, driven by the `git` CLI, one commit each,
//!   published with a compare-and-swap on the branch so racing promotions never lose work.
//! - [`diff`]: what differs between two environments as rendered by `helm template`.

pub mod appset;
pub mod argocd_schema;
pub mod clock;
pub mod diff;
pub mod error;
pub mod git;
pub mod matrix;
pub mod promote;
pub mod template;
pub mod validate;
pub mod values;
pub mod yamledit;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use matrix::{Environment, Matrix};
