//! `set-headers`: edits request and response headers with fixed values.
//!
//! ```yaml
//! - name: set-headers
//!   config:
//!     request:
//!       remove: [x-internal-debug]
//!       set: { x-tenant: acme }           # replaces any value
//!       add: { x-forwarded-by: [edge] }   # appends, one value or a list
//!     response:
//!       set: { x-policy-chain: api }
//! ```
//!
//! Within a section the edits apply in the order remove, set, add, so
//! removing and adding the same name leaves exactly the added values.
//! Pseudo-headers cannot be edited; rewriting the path or host belongs to a
//! transformation policy.

use std::collections::BTreeMap;

use policy_executor::{
    parse_header_names, parse_params, Action, Context, HeaderEdits, HeaderName, HeaderValue,
    ParamError, Phases, Policy, PolicyFactory, ResponseAction,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "set-headers",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `set-headers`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// Edits to the request headers, before the upstream sees them.
    #[serde(default)]
    request: Option<EditParams>,
    /// Edits to the response headers, before the client sees them.
    #[serde(default)]
    response: Option<EditParams>,
}

/// Edits to one message's headers, applied in the order remove, set, add.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "edits"))]
struct EditParams {
    /// Header names to remove.
    #[serde(default)]
    remove: Vec<String>,
    /// Header name to value: replaces every value the message had.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Header name to a value or a list of values: appended to what the
    /// message has.
    #[serde(default)]
    add: BTreeMap<String, OneOrMany>,
}

/// One value or a list of values.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
#[cfg_attr(feature = "schema", schemars(rename = "values"))]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Validates one message's edits.
fn compile(section: &str, raw: EditParams) -> Result<HeaderEdits, ParamError> {
    let name = |field: String, n: &str| HeaderName::parse(n).map_err(|e| ParamError::at(field, e));
    let value =
        |field: String, v: &str| HeaderValue::parse(v).map_err(|e| ParamError::at(field, e));
    let mut edits = HeaderEdits {
        remove: parse_header_names(&format!("{section}.remove"), &raw.remove)?,
        ..HeaderEdits::default()
    };
    for (n, v) in &raw.set {
        let field = format!("{section}.set.{n}");
        edits.set.push((name(field.clone(), n)?, value(field, v)?));
    }
    for (n, values) in raw.add {
        let field = format!("{section}.add.{n}");
        let header = name(field.clone(), &n)?;
        let values = match values {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(vs) => vs,
        };
        for v in &values {
            edits.add.push((header.clone(), value(field.clone(), v)?));
        }
    }
    Ok(edits)
}

struct SetHeaders {
    request: HeaderEdits,
    response: HeaderEdits,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let section = |name: &str, raw: Option<EditParams>| match raw {
        Some(raw) => compile(name, raw),
        None => Ok(HeaderEdits::default()),
    };
    Ok(Box::new(SetHeaders {
        request: section("request", params.request)?,
        response: section("response", params.response)?,
    }))
}

impl Policy for SetHeaders {
    fn phases(&self) -> Phases {
        Phases::headers(!self.request.is_empty(), !self.response.is_empty())
    }

    fn reads_response_headers(&self) -> bool {
        false
    }

    /// The request headers it sets, stripped from the client's request
    /// even when its guard skips it.
    fn asserted_headers(&self) -> Vec<HeaderName> {
        self.request
            .set
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        self.request.apply(&mut cx.headers_mut());
        Action::Continue
    }

    fn on_response_headers(&self, cx: &mut Context) -> ResponseAction {
        self.response.apply(&mut cx.headers_mut());
        ResponseAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use policy_executor::testing::{changes, engine_for, request, start};
    use policy_executor::{HeaderChange, HeaderMap};
    use serde_json::json;

    #[test]
    fn edits_request_and_response_headers() {
        let engine = engine_for(
            FACTORY,
            json!({
                "request": {
                    "remove": ["X-Internal-Debug"],
                    "set": {"x-tenant": "acme"},
                    "add": {"x-via": ["a", "b"]},
                },
                "response": {"set": {"x-chain": "api"}},
            }),
        )
        .unwrap();
        let mut x = start(
            &engine,
            request(
                "GET",
                "/",
                &[("x-internal-debug", "1"), ("x-tenant", "evil")],
            ),
        )
        .unwrap();
        assert_eq!(
            changes(x.on_request_headers()),
            [
                ("x-internal-debug".into(), HeaderChange::Remove),
                (
                    "x-tenant".into(),
                    HeaderChange::Replace(vec!["acme".into()])
                ),
                (
                    "x-via".into(),
                    HeaderChange::Append(vec!["a".into(), "b".into()])
                ),
            ]
        );
        let response = HeaderMap::from_pairs([(":status", "200")]);
        assert_eq!(
            changes(x.on_response_headers(response)),
            [("x-chain".into(), HeaderChange::Replace(vec!["api".into()]))]
        );
    }

    #[test]
    fn a_request_only_instance_does_not_ask_for_the_response() {
        let engine = engine_for(FACTORY, json!({"request": {"set": {"a": "b"}}})).unwrap();
        let x = start(&engine, request("GET", "/", &[])).unwrap();
        assert!(!x.acts_on_response());
        assert!(!x.reads_response_headers());
        assert_eq!(x.body_needs(), Default::default());
    }

    #[test]
    fn bad_names_and_values_are_refused_with_their_path() {
        for (config, field) in [
            (
                json!({"request": {"set": {"bad name": "x"}}}),
                "config.request.set.bad name",
            ),
            (
                json!({"response": {"add": {"x": "a\nb"}}}),
                "config.response.add.x",
            ),
            (
                json!({"request": {"remove": ["ok", ":path"]}}),
                "config.request.remove[1]",
            ),
            (json!({"request": {"rename": {}}}), "config.request.rename"),
        ] {
            let error = engine_for(FACTORY, config).err().unwrap();
            assert_eq!(error.field.as_deref(), Some(field), "{error}");
        }
    }
}
