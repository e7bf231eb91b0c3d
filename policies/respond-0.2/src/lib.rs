//! `respond` 0.2.0: answers the request itself, with a text or JSON body.
//!
//! ```yaml
//! - name: respond
//!   version: 0.2.0
//!   config:
//!     status: 503
//!     json: { error: maintenance, retry_after: 60 }   # or body: "text"
//!     headers: { retry-after: "60" }
//! ```
//!
//! Differences from 0.1.0: `json` (any JSON value, serialized once at
//! configuration time, `content-type: application/json`), and
//! `content_type`, which sets the content type of either kind of body.
//! `body` and `json` exclude each other.

use std::collections::BTreeMap;

use policy_executor::{
    check_reply_status, parse_header_map, parse_params, Action, Context, HeaderValue, LocalReply,
    ParamError, Phases, Policy, PolicyFactory,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "respond",
    version: "0.2.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `respond` 0.2.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// The reply's status, 200 to 599.
    #[cfg_attr(feature = "schema", schemars(range(min = 200, max = 599)))]
    status: u16,
    /// Headers of the reply.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A text body (not with `json`).
    body: Option<String>,
    /// A JSON body, sent as `application/json` (not with `body`).
    json: Option<serde_json::Value>,
    /// The body's `content-type` (default `text/plain` for `body`,
    /// `application/json` for `json`).
    content_type: Option<String>,
}

struct Respond {
    reply: LocalReply,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let status = check_reply_status("status", params.status)?;
    let (body, default_type) = match (params.body, params.json) {
        (Some(_), Some(_)) => {
            return Err(ParamError::at("json", "give `body` or `json`, not both"));
        }
        (Some(text), None) => (text.into_bytes(), "text/plain"),
        (None, Some(json)) => (json.to_string().into_bytes(), "application/json"),
        (None, None) => (Vec::new(), "text/plain"),
    };
    let content_type = params.content_type.as_deref().unwrap_or(default_type);
    let content_type =
        HeaderValue::parse(content_type).map_err(|e| ParamError::at("content_type", e))?;
    let mut headers = vec![("content-type".to_owned(), content_type.as_str().to_owned())];
    for (name, value) in parse_header_map("headers", &params.headers)? {
        headers.retain(|(n, _)| n != name.as_str());
        headers.push((name.as_str().to_owned(), value.as_str().to_owned()));
    }
    Ok(Box::new(Respond {
        reply: LocalReply {
            status,
            headers,
            body,
        },
    }))
}

impl Policy for Respond {
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request_headers(&self, _cx: &mut Context) -> Action {
        Action::Respond(self.reply.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use policy_executor::testing::{engine_for, request, start};
    use policy_executor::Outcome;
    use serde_json::json;

    fn reply(config: serde_json::Value) -> LocalReply {
        let engine = engine_for(FACTORY, config).unwrap();
        let mut x = start(&engine, request("GET", "/", &[])).unwrap();
        match x.on_request_headers() {
            Outcome::Respond(reply) => reply,
            other => panic!("respond did not reply: {other:?}"),
        }
    }

    #[test]
    fn a_json_body_is_serialized_with_its_content_type() {
        let r = reply(
            json!({"status": 503, "json": {"error": "maintenance"}, "headers": {"Retry-After": "60"}}),
        );
        assert_eq!(r.status, 503);
        assert_eq!(r.body, br#"{"error":"maintenance"}"#);
        assert_eq!(
            r.headers,
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("retry-after".to_owned(), "60".to_owned())
            ]
        );
    }

    #[test]
    fn content_type_applies_to_text_bodies_too() {
        let r = reply(json!({"status": 200, "body": "<p>hi</p>", "content_type": "text/html"}));
        assert_eq!(
            r.headers,
            [("content-type".to_owned(), "text/html".to_owned())]
        );
    }

    #[test]
    fn body_and_json_exclude_each_other() {
        let error = engine_for(FACTORY, json!({"status": 200, "body": "a", "json": 1}))
            .err()
            .unwrap();
        assert_eq!(error.field.as_deref(), Some("config.json"));
    }
}
