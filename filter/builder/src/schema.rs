//! The JSON Schema of a build's whole plugin configuration: the route map,
//! with each policy entry checked against the `parameters` schema of the
//! policy it names, for editors and CI.

use serde_json::{json, Map, Value};

use crate::definition::Definition;

/// Rewrites `#/$defs/x` references inside a policy's schema to the
/// build-wide `#/$defs/<prefix>x`, returning the policy's own `$defs`.
fn hoist_definitions(schema: &mut Value, prefix: &str) -> Map<String, Value> {
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
    let mut hoisted = Map::new();
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

/// The schema for a build named `build` containing `policies`.
pub fn plugin_configuration(build: &str, policies: &[Definition]) -> Value {
    let mut defs = Map::new();
    let mut variants = Vec::new();
    for policy in policies {
        let mut parameters = policy.parameters.clone();
        let prefix = format!("{}_{}_", policy.name, policy.version);
        defs.extend(hoist_definitions(&mut parameters, &prefix));
        variants.push(json!({
            "type": "object",
            "description": policy.description,
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": { "const": policy.name },
                "version": { "const": policy.version.to_string() },
                "when": {
                    "type": "string",
                    "description": "a CEL guard: the policy runs only when it is true",
                },
                "config": parameters,
            },
        }));
    }
    // A build without policies accepts no policy entry at all.
    let policy = if variants.is_empty() {
        json!({ "not": {}, "description": "this build contains no policies" })
    } else {
        json!({ "oneOf": variants })
    };
    defs.insert("policy".into(), policy);
    defs.insert(
        "chain".into(),
        json!({ "type": "array", "items": { "$ref": "#/$defs/policy" } }),
    );
    defs.insert(
        "route".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "name": { "type": "string" },
                "match": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "route": { "type": "string", "description": "Envoy's route name (xds.route_name)" },
                        "host": { "type": "string", "pattern": "^(\\*\\.)?[^*\\s]+$" },
                        "path": {
                            "type": "object",
                            "minProperties": 1,
                            "maxProperties": 1,
                            "additionalProperties": false,
                            "properties": {
                                "exact": { "type": "string", "pattern": "^/" },
                                "prefix": { "type": "string", "pattern": "^/" },
                            },
                        },
                        "methods": { "type": "array", "items": { "type": "string", "pattern": "^[A-Za-z]+$" } },
                    },
                },
                "policies": { "$ref": "#/$defs/chain" },
            },
        }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("Policy engine plugin configuration (build {build})"),
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "routes": { "type": "array", "items": { "$ref": "#/$defs/route" } },
            "decision_log": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "requests": { "enum": ["all", "denied"] },
                    "fields": {
                        "type": "array",
                        "items": { "enum": [
                            "route_entry", "route", "decision", "status", "policy", "policies",
                            "request_id", "trace_id", "latency_us", "method", "path", "host", "caller",
                        ] },
                    },
                    "expressions": { "type": "object", "additionalProperties": { "type": "string" } },
                },
            },
            "unmatched": {
                "oneOf": [
                    { "enum": ["deny", "allow"] },
                    {
                        "type": "object",
                        "additionalProperties": false,
                        "minProperties": 1,
                        "maxProperties": 1,
                        "properties": {
                            "deny": {
                                "type": "object",
                                "additionalProperties": false,
                                "properties": {
                                    "status": { "type": "integer", "minimum": 200, "maximum": 599 },
                                    "body": { "type": "string" },
                                },
                            },
                            "policies": { "$ref": "#/$defs/chain" },
                        },
                    },
                ],
            },
        },
        "$defs": defs,
    })
}
