//! A policy directory: its `policy.yaml` and its crate, validated.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The phases a `policy.yaml` may list.
const PHASES: [&str; 4] = [
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
];

/// What a policy needs buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyNeeds {
    /// Headers only.
    None,
    /// The request body.
    Request,
    /// The response body.
    Response,
    /// Both bodies.
    Both,
    /// Depends on the instance's parameters.
    Configurable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: String,
    version: String,
    description: String,
    phases: Vec<String>,
    body: BodyNeeds,
    /// Checked by the policy's own unit test (`testing::check_definition`).
    #[serde(default)]
    #[allow(dead_code, reason = "validated as present; used by the policy's tests")]
    examples: Option<Value>,
}

/// A validated policy definition.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The policy's name.
    pub name: String,
    /// Its version.
    pub version: semver::Version,
    /// One line for humans.
    pub description: String,
    /// The JSON Schema of its parameters: its `schema.json`, which the
    /// crate's tests keep equal to the one its types give.
    pub parameters: Value,
    /// The policy's directory (absolute).
    pub dir: PathBuf,
    /// The crate's package name.
    pub package: String,
}

impl Definition {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The crate's library name (`-` becomes `_`).
    pub fn lib_name(&self) -> String {
        self.package.replace('-', "_")
    }
}

/// Why a policy directory was refused.
#[derive(Debug)]
pub struct DefinitionError {
    /// The directory.
    pub dir: PathBuf,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy {}: {}", self.dir.display(), self.reason)
    }
}

/// Reads and validates the policy in `dir`.
pub fn load(dir: &Path) -> Result<Definition, DefinitionError> {
    let fault = |reason: String| DefinitionError {
        dir: dir.to_owned(),
        reason,
    };
    let yaml_path = dir.join("policy.yaml");
    let text = std::fs::read_to_string(&yaml_path)
        .map_err(|e| fault(format!("cannot read policy.yaml: {e}")))?;
    let document: Value = serde_yaml::from_str(&text)
        .map_err(|e| fault(format!("policy.yaml is not valid YAML: {e}")))?;
    let raw: RawDefinition = serde_path_to_error::deserialize(&document)
        .map_err(|e| fault(format!("policy.yaml: field {}: {}", e.path(), e.inner())))?;

    let name_ok = !raw.name.is_empty()
        && raw.name.starts_with(|c: char| c.is_ascii_lowercase())
        && raw
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(fault(format!(
            "policy.yaml: name {:?} must be lower-case letters, digits and '-'",
            raw.name
        )));
    }
    let version = semver::Version::parse(&raw.version).map_err(|e| {
        fault(format!(
            "policy.yaml: version {:?} is not semver: {e}",
            raw.version
        ))
    })?;
    if raw.description.trim().is_empty() {
        return Err(fault("policy.yaml: description is empty".into()));
    }
    if raw.phases.is_empty() {
        return Err(fault("policy.yaml: phases is empty".into()));
    }
    for phase in &raw.phases {
        if !PHASES.contains(&phase.as_str()) {
            return Err(fault(format!(
                "policy.yaml: unknown phase {phase:?} (phases are {})",
                PHASES.join(", ")
            )));
        }
    }
    let has = |phase: &str| raw.phases.iter().any(|p| p == phase);
    let body_phase_missing = match raw.body {
        BodyNeeds::Request | BodyNeeds::Both if !has("request_body") => Some("request_body"),
        BodyNeeds::Response | BodyNeeds::Both if !has("response_body") => Some("response_body"),
        _ => None,
    };
    if let Some(phase) = body_phase_missing {
        return Err(fault(format!(
            "policy.yaml: body {:?} needs the {phase} phase",
            raw.body
        )));
    }
    let schema_path = dir.join("schema.json");
    let schema_text = std::fs::read_to_string(&schema_path).map_err(|e| {
        fault(format!(
            "cannot read schema.json (the schema of the parameters, which `make schemas` derives from their types): {e}"
        ))
    })?;
    let parameters: Value = serde_json::from_str(&schema_text)
        .map_err(|e| fault(format!("schema.json is not JSON: {e}")))?;
    if parameters.get("type").and_then(Value::as_str) != Some("object") {
        return Err(fault(
            "schema.json must be a JSON Schema with `type: object`".into(),
        ));
    }
    // The module checks parameters with this validator at configure time.
    policy_executor::schema::Schema::parse(&schema_text)
        .map_err(|e| fault(format!("schema.json: {e}")))?;

    let cargo_toml = dir.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&cargo_toml)
        .map_err(|e| fault(format!("no crate: cannot read Cargo.toml: {e}")))?;
    let manifest: toml::Table = manifest
        .parse()
        .map_err(|e| fault(format!("Cargo.toml: {e}")))?;
    let package = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| fault("Cargo.toml has no [package] name".into()))?
        .to_owned();
    if !dir.join("src/lib.rs").exists() {
        return Err(fault("the crate has no src/lib.rs".into()));
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| fault(format!("cannot resolve the directory: {e}")))?;
    Ok(Definition {
        name: raw.name,
        version,
        description: raw.description.trim().to_owned(),
        parameters,
        dir,
        package,
    })
}
