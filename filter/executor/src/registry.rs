//! The policies a build contains, by name and version.
//!
//! The runtime has no policy of its own: a host crate (the Wasm filter, the
//! ext_proc shim) builds a [`Registry`] from the policy crates it links, and
//! configurations can only name what is in it.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::headers::{HeaderName, HeaderValue};
use crate::policy::Policy;
use crate::schema::Schema;

/// How to build instances of one version of one policy.
#[derive(Clone, Copy)]
pub struct PolicyFactory {
    /// The policy's name, as configurations write it.
    pub name: &'static str,
    /// The policy's version (semver).
    pub version: &'static str,
    /// Compiles an instance from its `config` block.
    pub build: fn(&Value) -> Result<Box<dyn Policy>, ParamError>,
}

/// A fault in a policy instance's `config` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The JSON path of the faulty field inside `config` (`.` for the block).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ParamError {
    /// A fault at `field`.
    pub fn at(field: impl Into<String>, reason: impl ToString) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// Deserializes a policy's `config` block, reporting the path of the first
/// faulty field. A missing block reads as an empty map.
pub fn parse_params<T: DeserializeOwned>(config: &Value) -> Result<T, ParamError> {
    let empty = Value::Object(serde_json::Map::new());
    let config = if config.is_null() { &empty } else { config };
    serde_path_to_error::deserialize(config).map_err(|e| {
        let field = e.path().to_string();
        ParamError::at(field, e.into_inner())
    })
}

/// One policy of a build: how to build it, and the schema its parameters
/// are checked against first.
#[derive(Clone)]
pub struct Entry {
    /// How to build instances.
    pub factory: PolicyFactory,
    /// The schema of its parameters (its `schema.json`), if the build gave
    /// one (an error if it does not parse).
    parameters: Option<Result<Arc<Schema>, String>>,
    /// The schema's text, as the build gave it.
    parameters_text: &'static str,
    /// One line for humans, from its `policy.yaml`.
    pub description: &'static str,
}

impl Entry {
    /// The JSON Schema of the policy's parameters, if the build gave one.
    pub fn parameters_schema(&self) -> Option<Value> {
        serde_json::from_str(self.parameters_text).ok()
    }

    /// Checks an instance's `config` against the parameters schema.
    pub fn check_parameters(&self, config: &Value) -> Result<(), ParamError> {
        match &self.parameters {
            None => Ok(()),
            Some(Err(e)) => Err(ParamError::at(
                ".",
                format!(
                    "this build's parameters schema for {}@{} is unusable: {e}",
                    self.factory.name, self.factory.version
                ),
            )),
            Some(Ok(schema)) => {
                let empty = Value::Object(serde_json::Map::new());
                let config = if config.is_null() { &empty } else { config };
                schema
                    .validate(config)
                    .map_err(|v| ParamError::at(v.path, v.reason))
            }
        }
    }
}

/// Validates a `name: value` header map from a policy's parameters (found
/// at `field`): names become lower-case [`HeaderName`]s, values
/// [`HeaderValue`]s; an error names `<field>.<name>`.
pub fn parse_header_map<'a>(
    field: &str,
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ParamError> {
    map.into_iter()
        .map(|(name, value)| {
            let at = || format!("{field}.{name}");
            let name = HeaderName::parse(name).map_err(|e| ParamError::at(at(), e))?;
            let value = HeaderValue::parse(value).map_err(|e| ParamError::at(at(), e))?;
            Ok((name, value))
        })
        .collect()
}

/// Validates a list of header names from a policy's parameters (found at
/// `field`); an error names `<field>[<index>]`.
pub fn parse_header_names(field: &str, names: &[String]) -> Result<Vec<HeaderName>, ParamError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            HeaderName::parse(name).map_err(|e| ParamError::at(format!("{field}[{i}]"), e))
        })
        .collect()
}

/// `500ms`, `5s`, `1.5s`, `10m`, `1h`: Envoy's duration notation, for
/// policy parameters; `None` for anything else, zero or negative.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return None;
    }
    std::time::Duration::try_from_secs_f64(seconds).ok()
}

/// Checks that `status` (found at `field`) is a status a reply may carry.
pub fn check_reply_status(field: &str, status: u16) -> Result<u16, ParamError> {
    if (200..=599).contains(&status) {
        Ok(status)
    } else {
        Err(ParamError::at(
            field,
            format!("{status} is not an HTTP status between 200 and 599"),
        ))
    }
}

/// The policies available to configurations.
#[derive(Clone, Default)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// A registry of these factories, without parameter schemas (tests).
    pub fn new(factories: impl IntoIterator<Item = PolicyFactory>) -> Self {
        Self {
            entries: factories
                .into_iter()
                .map(|factory| Entry {
                    factory,
                    parameters: None,
                    parameters_text: "",
                    description: "",
                })
                .collect(),
        }
    }

    /// A registry of factories, each with the JSON text of its parameters
    /// schema and its description: what the builder generates.
    pub fn with_schemas(
        entries: impl IntoIterator<Item = (PolicyFactory, &'static str, &'static str)>,
    ) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(factory, schema, description)| Entry {
                    factory,
                    parameters: Some(Schema::parse(schema).map(Arc::new)),
                    parameters_text: schema,
                    description,
                })
                .collect(),
        }
    }

    /// Every registered policy.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// `name@version` of every registered policy.
    pub fn names(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| format!("{}@{}", e.factory.name, e.factory.version))
            .collect()
    }

    /// Finds `name` at `version`; without a version, the only version of
    /// `name` there is.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<&Entry, String> {
        let mut candidates = self.entries.iter().filter(|e| e.factory.name == name);
        let versions = || {
            self.entries
                .iter()
                .filter(|e| e.factory.name == name)
                .map(|e| e.factory.version)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match version {
            Some(v) => candidates.find(|e| e.factory.version == v).ok_or_else(|| {
                if versions().is_empty() {
                    self.unknown(name)
                } else {
                    format!(
                        "{name} has no version {v} in this build (it has {})",
                        versions()
                    )
                }
            }),
            None => match (candidates.next(), candidates.next()) {
                (Some(only), None) => Ok(only),
                (Some(_), Some(_)) => Err(format!(
                    "{name} has several versions in this build ({}); name one with `version`",
                    versions()
                )),
                (None, _) => Err(self.unknown(name)),
            },
        }
    }

    fn unknown(&self, name: &str) -> String {
        let available = self.names();
        if available.is_empty() {
            format!("unknown policy {name:?}: this build contains no policies")
        } else {
            format!(
                "unknown policy {name:?} (this build has {})",
                available.join(", ")
            )
        }
    }
}

/// What a build compiled in: its policies, and a one-line description
/// (name, policies and versions, source commit) that the hosts log at start.
/// The builder generates one per build and hands it to the host's entry
/// point.
#[derive(Clone, Copy)]
pub struct Build {
    /// The policies in the build.
    pub registry: fn() -> Registry,
    /// The build's description, for logs.
    pub description: &'static str,
}
