//! The build manifest: which policies a build contains.
//!
//! ```yaml
//! name: default                  # names the build and its output directory
//! policies:
//!   - path: policies/set-headers # a policy directory, relative to the manifest
//!     version: 0.1.0             # optional: must match its policy.yaml
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::definition::{self, Definition};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    policies: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    path: PathBuf,
    version: Option<String>,
}

/// A validated manifest.
pub struct Manifest {
    /// The build's name.
    pub name: String,
    /// Its policies, in manifest order.
    pub policies: Vec<Definition>,
}

/// Reads the manifest at `path` and every policy it lists.
pub fn load(path: &Path) -> Result<Manifest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw: RawManifest =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let name_ok = !raw.name.is_empty()
        && raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(format!(
            "{}: name {:?} must be letters, digits, '-' and '_'",
            path.display(),
            raw.name
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut policies: Vec<Definition> = Vec::with_capacity(raw.policies.len());
    for (i, entry) in raw.policies.iter().enumerate() {
        let definition = definition::load(&base.join(&entry.path))
            .map_err(|e| format!("{}: policies[{i}]: {e}", path.display()))?;
        if let Some(want) = &entry.version {
            if definition.version.to_string() != *want {
                return Err(format!(
                    "{}: policies[{i}]: wants version {want}, but {} is {}",
                    path.display(),
                    entry.path.display(),
                    definition.id()
                ));
            }
        }
        if let Some(twin) = policies.iter().find(|p| p.id() == definition.id()) {
            return Err(format!(
                "{}: policies[{i}]: {} is already in this build (from {})",
                path.display(),
                definition.id(),
                twin.dir.display()
            ));
        }
        if let Some(twin) = policies.iter().find(|p| p.package == definition.package) {
            return Err(format!(
                "{}: policies[{i}]: crate {} is already in this build (as {}); give each version its own package name",
                path.display(),
                definition.package,
                twin.id()
            ));
        }
        policies.push(definition);
    }
    Ok(Manifest {
        name: raw.name,
        policies,
    })
}
