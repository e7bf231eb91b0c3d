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
    parse_params, Action, Context, HeaderName, HeaderValue, ParamError, Phases, Policy,
    PolicyFactory,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "set-headers",
    version: "0.1.0",
    build,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    request: Option<EditParams>,
    #[serde(default)]
    response: Option<EditParams>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditParams {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Validated edits for one message.
#[derive(Debug, Default)]
struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Edits {
    fn compile(section: &str, raw: EditParams) -> Result<Self, ParamError> {
        let name =
            |field: String, n: &str| HeaderName::parse(n).map_err(|e| ParamError::at(field, e));
        let value =
            |field: String, v: &str| HeaderValue::parse(v).map_err(|e| ParamError::at(field, e));
        let mut edits = Edits::default();
        for (i, n) in raw.remove.iter().enumerate() {
            edits
                .remove
                .push(name(format!("{section}.remove[{i}]"), n)?);
        }
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

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn apply(&self, cx: &mut Context) {
        let mut headers = cx.headers_mut();
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.set(name, value);
        }
        for (name, value) in &self.add {
            headers.append(name, value);
        }
    }
}

struct SetHeaders {
    request: Edits,
    response: Edits,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let section = |name: &str, raw: Option<EditParams>| match raw {
        Some(raw) => Edits::compile(name, raw),
        None => Ok(Edits::default()),
    };
    Ok(Box::new(SetHeaders {
        request: section("request", params.request)?,
        response: section("response", params.response)?,
    }))
}

impl Policy for SetHeaders {
    fn phases(&self) -> Phases {
        let mut phases = Phases::NONE;
        if !self.request.is_empty() {
            phases = phases | Phases::REQUEST_HEADERS;
        }
        if !self.response.is_empty() {
            phases = phases | Phases::RESPONSE_HEADERS;
        }
        phases
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        self.request.apply(cx);
        Action::Continue
    }

    fn on_response_headers(&self, cx: &mut Context) -> Action {
        self.response.apply(cx);
        Action::Continue
    }
}
