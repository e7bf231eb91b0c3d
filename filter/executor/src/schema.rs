//! A small JSON Schema validator for policy parameters.
//!
//! Every policy instance's `config` is checked against the `parameters`
//! schema of its `policy.yaml` before the policy parses it, so a
//! configuration is judged by the same contract editors and CI see (the
//! builder's `config.schema.json`). A general JSON Schema crate would do,
//! but made the module several times larger; this covers the subset policy
//! schemas use, and the builder refuses schemas that step outside it
//! ([`Schema::parse`] names the keyword).

use serde_json::Value;

/// The keywords this validator understands. Annotations (`description`,
/// `default`, `title`, `$schema`, `examples`, `format`, ...) are accepted
/// and ignored: the integer formats schemars writes (`uint16`) come with
/// the `minimum` and `maximum` that enforce them.
const KEYWORDS: &[&str] = &[
    "$schema",
    "$defs",
    "$ref",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "format",
    "deprecated",
    "readOnly",
    "writeOnly",
    "allOf",
    "type",
    "enum",
    "const",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "properties",
    "additionalProperties",
    "required",
    "minProperties",
    "maxProperties",
    "items",
    "minItems",
    "maxItems",
    "oneOf",
    "anyOf",
    "not",
];

/// The JSON Schema (draft 2020-12) of a configuration type, from its
/// serde shape and its doc comments (feature `schema`).
#[cfg(feature = "schema")]
pub fn derive<T: schemars::JsonSchema>() -> Value {
    schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// One policy of a build, as the plugin configuration's schema lists it.
#[cfg(feature = "schema")]
pub struct PolicySchema<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its version.
    pub version: &'a str,
    /// One line for humans.
    pub description: &'a str,
    /// The JSON Schema of its parameters.
    pub parameters: &'a Value,
}

/// The JSON Schema of a build's plugin configuration: the configuration's
/// own, derived from its types ([`crate::config::schema`]), with each policy
/// entry checked against the parameters of the policy it names, for
/// editors and CI.
#[cfg(feature = "schema")]
pub fn plugin_configuration(build: &str, policies: &[PolicySchema<'_>]) -> Value {
    use serde_json::{json, Map};

    let mut root = crate::config::schema();
    let Some(object) = root.as_object_mut() else {
        return root;
    };
    object.insert(
        "title".into(),
        json!(format!(
            "policy engine plugin configuration (build {build})"
        )),
    );
    let mut defs = match object.remove("$defs") {
        Some(Value::Object(defs)) => defs,
        _ => Map::new(),
    };
    // The generic entry the types give (`config` is any value) becomes
    // one alternative per policy of the build, its fields' descriptions
    // kept.
    let generic = defs.remove("policy").unwrap_or(Value::Null);
    let field = |name: &str| generic["properties"][name].clone();
    let mut variants = Vec::new();
    for policy in policies {
        let mut parameters = policy.parameters.clone();
        let prefix = format!("{}_{}_", policy.name, policy.version);
        defs.extend(hoist_definitions(&mut parameters, &prefix));
        let mut name = field("name");
        name["const"] = json!(policy.name);
        let mut version = field("version");
        version["const"] = json!(policy.version);
        variants.push(json!({
            "type": "object",
            "title": format!("{}@{}", policy.name, policy.version),
            "description": policy.description,
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": name,
                "version": version,
                "when": field("when"),
                "config": parameters,
            },
        }));
    }
    // A build without policies accepts no policy entry at all.
    let policy = if variants.is_empty() {
        json!({ "not": {}, "description": "this build contains no policies" })
    } else {
        json!({ "description": generic["description"], "oneOf": variants })
    };
    defs.insert("policy".into(), policy);
    object.insert("$defs".into(), Value::Object(defs));
    root
}

/// Moves the `$defs` of a policy's schema into the build-wide `$defs`
/// under `<prefix><name>`, rewriting the references to them; returns them.
#[cfg(feature = "schema")]
fn hoist_definitions(schema: &mut Value, prefix: &str) -> serde_json::Map<String, Value> {
    fn rewrite(value: &mut Value, prefix: &str) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match (key.as_str(), child) {
                        ("$ref", Value::String(target)) => {
                            if let Some(name) = target.strip_prefix("#/$defs/") {
                                *target = format!("#/$defs/{prefix}{name}");
                            }
                        }
                        (_, child) => rewrite(child, prefix),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, prefix)),
            _ => {}
        }
    }
    rewrite(schema, prefix);
    let mut hoisted = serde_json::Map::new();
    if let Value::Object(map) = schema {
        map.remove("$schema");
        if let Some(Value::Object(defs)) = map.remove("$defs") {
            for (name, def) in defs {
                hoisted.insert(format!("{prefix}{name}"), def);
            }
        }
    }
    hoisted
}

/// Declares a policy's parameters type, `$params`, the type its `FACTORY`
/// parses `config` into.
///
/// * `parameters_schema()` (feature `schema`: native builds only) derives
///   the JSON Schema of the parameters from the type and its doc comments.
///   The builder's offline tool publishes it; the module embeds the crate's
///   checked-in copy, `schema.json`.
/// * The crate's tests check that `schema.json` is that derived schema
///   (`UPDATE_SCHEMAS=1` rewrites it), and [`crate::testing::check_definition`]
///   checks `policy.yaml` against the crate. They need the feature in tests:
///   list the crate itself under `[dev-dependencies]` with
///   `features = ["schema"]`, as `policy-builder new-policy` does.
#[macro_export]
macro_rules! policy_parameters {
    ($params:ty) => {
        /// The JSON Schema of the policy's parameters, derived from their
        /// types and doc comments.
        #[cfg(feature = "schema")]
        pub fn parameters_schema() -> $crate::serde_json::Value {
            $crate::schema::derive::<$params>()
        }

        #[cfg(all(test, not(feature = "schema")))]
        compile_error!(
            "the parameters tests need the crate's `schema` feature: list the crate itself under [dev-dependencies] with features = [\"schema\"]"
        );

        #[cfg(all(test, feature = "schema"))]
        mod parameters_agree {
            #[test]
            fn the_checked_in_schema_is_current() {
                let dir = ::std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
                if let Err(e) = $crate::testing::check_schema_file(&super::parameters_schema(), dir) {
                    panic!("{e}");
                }
            }

            #[test]
            fn policy_yaml_and_the_typed_parameters_agree() {
                let dir = ::std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
                if let Err(e) = $crate::testing::check_definition(super::FACTORY, dir) {
                    panic!("{e}");
                }
            }
        }
    };
}

/// The schema text a file holds for `schema`: pretty JSON and a newline,
/// so checked-in copies diff line by line.
pub fn to_file_text(schema: &Value) -> String {
    serde_json::to_string_pretty(schema).unwrap_or_default() + "\n"
}

/// A parsed, checked schema.
#[derive(Debug, Clone)]
pub struct Schema {
    root: Value,
}

/// Where an instance breaks its schema, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The JSON path of the value, e.g. `request.set.x` or `items[2]`
    /// (empty for the whole instance).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Schema {
    /// Parses a schema (JSON text) and checks it uses only supported
    /// keywords and resolvable `$ref`s.
    pub fn parse(text: &str) -> Result<Self, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        check_keywords(&root, &root, "")?;
        Ok(Self { root })
    }

    /// Checks `instance`; the first violation found, if any.
    pub fn validate(&self, instance: &Value) -> Result<(), Violation> {
        self.check(&self.root, instance, &mut Vec::new())
    }

    fn resolve<'a>(&'a self, reference: &str) -> Option<&'a Value> {
        let name = reference.strip_prefix("#/$defs/")?;
        self.root.get("$defs")?.get(name)
    }

    fn check(
        &self,
        schema: &Value,
        value: &Value,
        path: &mut Vec<String>,
    ) -> Result<(), Violation> {
        let fail = |path: &[String], reason: String| {
            Err(Violation {
                path: join(path),
                reason,
            })
        };
        let schema = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return fail(path, "is not allowed here".into()),
            Value::Object(schema) => schema,
            _ => return Ok(()),
        };
        if let Some(Value::String(reference)) = schema.get("$ref") {
            match self.resolve(reference) {
                Some(target) => self.check(target, value, path)?,
                None => return fail(path, format!("unresolvable $ref {reference:?}")),
            }
        }
        if let Some(types) = schema.get("type") {
            let allowed: Vec<&str> = match types {
                Value::String(one) => vec![one.as_str()],
                Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !allowed.iter().any(|t| has_type(value, t)) {
                return fail(
                    path,
                    format!(
                        "expected {}, found {}",
                        allowed.join(" or "),
                        type_name(value)
                    ),
                );
            }
        }
        if let Some(Value::Array(options)) = schema.get("enum") {
            if !options.contains(value) {
                let options: Vec<String> = options.iter().map(Value::to_string).collect();
                return fail(path, format!("must be one of {}", options.join(", ")));
            }
        }
        if let Some(constant) = schema.get("const") {
            if constant != value {
                return fail(path, format!("must be {constant}"));
            }
        }
        if let Some(number) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if number < min {
                    return fail(path, format!("must be at least {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if number > max {
                    return fail(path, format!("must be at most {max}"));
                }
            }
        }
        if let Value::String(text) = value {
            let length = text.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if length < min {
                    return fail(path, format!("must be at least {min} characters long"));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if length > max {
                    return fail(path, format!("must be at most {max} characters long"));
                }
            }
        }
        if let Value::Object(object) = value {
            self.check_object(schema, object, path)?;
        }
        if let Value::Array(items) = value {
            let count = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if count < min {
                    return fail(path, format!("must have at least {min} items"));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if count > max {
                    return fail(path, format!("must have at most {max} items"));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    path.push(format!("[{i}]"));
                    self.check(item_schema, item, path)?;
                    path.pop();
                }
            }
        }
        if let Some(Value::Array(alternatives)) = schema.get("oneOf") {
            let matched = alternatives
                .iter()
                .filter(|a| self.check(a, value, &mut path.clone()).is_ok())
                .count();
            if matched != 1 {
                return fail(
                    path,
                    format!(
                        "must match exactly one of {} alternatives (matched {matched})",
                        alternatives.len()
                    ),
                );
            }
        }
        if let Some(Value::Array(all)) = schema.get("allOf") {
            for part in all {
                self.check(part, value, path)?;
            }
        }
        if let Some(Value::Array(alternatives)) = schema.get("anyOf") {
            // `Option<T>` derives as `anyOf: [T, null]`: a value that is not
            // null is held to T alone, so its fault is named precisely.
            let not_null: Vec<&Value> = alternatives
                .iter()
                .filter(|a| **a != serde_json::json!({ "type": "null" }))
                .collect();
            if let ([only], false) = (not_null.as_slice(), value.is_null()) {
                self.check(only, value, path)?;
            } else if !alternatives
                .iter()
                .any(|a| self.check(a, value, &mut path.clone()).is_ok())
            {
                return fail(path, "matches none of the allowed forms".into());
            }
        }
        if let Some(negated) = schema.get("not") {
            if self.check(negated, value, &mut path.clone()).is_ok() {
                // A `not` rule says best in its own words why it exists.
                let reason = negated
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("has a form that is not allowed");
                return fail(path, reason.to_owned());
            }
        }
        Ok(())
    }

    fn check_object(
        &self,
        schema: &serde_json::Map<String, Value>,
        object: &serde_json::Map<String, Value>,
        path: &mut Vec<String>,
    ) -> Result<(), Violation> {
        let count = object.len() as u64;
        let bounds = [("minProperties", true), ("maxProperties", false)];
        for (keyword, is_min) in bounds {
            if let Some(limit) = schema.get(keyword).and_then(Value::as_u64) {
                if (is_min && count < limit) || (!is_min && count > limit) {
                    let word = if is_min { "at least" } else { "at most" };
                    return Err(Violation {
                        path: join(path),
                        reason: format!("must have {word} {limit} fields"),
                    });
                }
            }
        }
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(Violation {
                        path: join(path),
                        reason: format!("missing field `{name}`"),
                    });
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, field) in object {
            path.push(name.clone());
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => self.check(field_schema, field, path)?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        let known: Vec<String> = properties
                            .map(|p| p.keys().map(|k| format!("`{k}`")).collect())
                            .unwrap_or_default();
                        return Err(Violation {
                            path: join(path),
                            reason: format!(
                                "unknown field `{name}`, expected one of {}",
                                known.join(", ")
                            ),
                        });
                    }
                    Some(extra) => self.check(extra, field, path)?,
                    None => {}
                },
            }
            path.pop();
        }
        Ok(())
    }
}

fn join(path: &[String]) -> String {
    let mut joined = String::new();
    for segment in path {
        if !joined.is_empty() && !segment.starts_with('[') {
            joined.push('.');
        }
        joined.push_str(segment);
    }
    joined
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Refuses keywords outside [`KEYWORDS`] and `$ref`s that do not resolve.
fn check_keywords(schema: &Value, root: &Value, at: &str) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return Ok(());
    };
    for (key, child) in map {
        let here = format!("{at}/{key}");
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(format!("unsupported JSON Schema keyword `{key}` at {here}"));
        }
        match key.as_str() {
            "properties" | "$defs" => {
                for (name, sub) in child.as_object().into_iter().flatten() {
                    check_keywords(sub, root, &format!("{here}/{name}"))?;
                }
            }
            "items" | "additionalProperties" | "not" => check_keywords(child, root, &here)?,
            "oneOf" | "anyOf" | "allOf" => {
                for (i, sub) in child.as_array().into_iter().flatten().enumerate() {
                    check_keywords(sub, root, &format!("{here}/{i}"))?;
                }
            }
            "$ref" => {
                let target = child.as_str().unwrap_or_default();
                let resolved = target
                    .strip_prefix("#/$defs/")
                    .and_then(|name| root.get("$defs")?.get(name));
                if resolved.is_none() {
                    return Err(format!("unresolvable $ref {target:?} at {here}"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::parse(
            &json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["status"],
                "properties": {
                    "status": { "type": "integer", "minimum": 200, "maximum": 599 },
                    "edits": { "$ref": "#/$defs/edits" },
                    "mode": { "enum": ["a", "b"] },
                    "add": { "type": "object", "additionalProperties": {
                        "oneOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }]
                    }},
                },
                "not": { "required": ["mode", "edits"] },
                "$defs": { "edits": { "type": "array", "items": { "type": "string", "minLength": 1 } } },
            })
            .to_string(),
        )
        .unwrap()
    }

    fn violation(instance: serde_json::Value) -> (String, String) {
        let v = schema().validate(&instance).unwrap_err();
        (v.path, v.reason)
    }

    #[test]
    fn valid_instances_pass() {
        let s = schema();
        assert!(s.validate(&json!({"status": 200})).is_ok());
        assert!(s
            .validate(&json!({"status": 599, "edits": ["x"], "add": {"a": "1", "b": ["2"]}}))
            .is_ok());
    }

    #[test]
    fn violations_name_the_path_and_the_reason() {
        assert_eq!(
            violation(json!({})),
            ("".into(), "missing field `status`".into())
        );
        assert_eq!(
            violation(json!({"status": "ok"})),
            ("status".into(), "expected integer, found string".into())
        );
        assert_eq!(violation(json!({"status": 99})).1, "must be at least 200");
        assert_eq!(
            violation(json!({"status": 200, "edits": ["x", ""]})),
            (
                "edits[1]".into(),
                "must be at least 1 characters long".into()
            )
        );
        assert_eq!(
            violation(json!({"status": 200, "add": {"a": 1}})),
            (
                "add.a".into(),
                "must match exactly one of 2 alternatives (matched 0)".into()
            )
        );
        assert!(violation(json!({"status": 200, "colour": "red"}))
            .1
            .starts_with("unknown field `colour`"));
        assert_eq!(
            violation(json!({"status": 200, "mode": "a", "edits": []})).1,
            "has a form that is not allowed"
        );
        assert!(violation(json!({"status": 200, "mode": "c"}))
            .1
            .starts_with("must be one of"));
    }

    #[test]
    fn unsupported_keywords_and_bad_refs_are_refused() {
        let pattern = Schema::parse(r#"{"type":"string","pattern":"^a"}"#).unwrap_err();
        assert!(
            pattern.contains("unsupported JSON Schema keyword `pattern` at /pattern"),
            "{pattern}"
        );
        let reference =
            Schema::parse(r##"{"properties":{"a":{"$ref":"#/$defs/missing"}}}"##).unwrap_err();
        assert!(reference.contains("unresolvable $ref"), "{reference}");
    }
}
