//! `json-body`: only well-formed JSON bodies pass.
//!
//! ```yaml
//! - name: json-body
//!   config:
//!     request: true        # check request bodies (default true)
//!     response: false      # check upstream response bodies (default false)
//!     max_bytes: 1048576   # larger bodies are refused (default 1 MiB)
//! ```
//!
//! A body is read as the engine reads all JSON (`policy_executor::json`):
//! UTF-8 only, no lone surrogate escapes, no duplicate keys, at most 64
//! levels deep; anything else is malformed. An empty body passes (a GET has
//! none). A malformed request body gets 400
//! and an oversized one 413, before the upstream sees either. An upstream
//! response that is malformed or oversized is replaced with 502, so clients
//! of a JSON API never receive half an error page. This policy needs the
//! whole body, so its chain buffers it (up to Envoy's buffer limit).

use policy_executor::json::{self, JsonError};
use policy_executor::{
    parse_params, Action, Context, LocalReply, ParamError, Phases, Policy, PolicyFactory,
    ResponseAction,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "json-body",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `json-body`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// Check request bodies (default true).
    #[serde(default = "yes")]
    request: bool,
    /// Check response bodies (default false).
    #[serde(default)]
    response: bool,
    /// A larger body is refused (413 for a request, 502 for a response);
    /// default 1 MiB.
    #[serde(default = "one_mebibyte")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    max_bytes: usize,
}

fn yes() -> bool {
    true
}

fn one_mebibyte() -> usize {
    1 << 20
}

struct JsonBody {
    request: bool,
    response: bool,
    max_bytes: usize,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    if params.max_bytes == 0 {
        return Err(ParamError::at("max_bytes", "must be at least 1"));
    }
    if !params.request && !params.response {
        return Err(ParamError::at(
            ".",
            "checks nothing: enable `request`, `response` or both",
        ));
    }
    Ok(Box::new(JsonBody {
        request: params.request,
        response: params.response,
        max_bytes: params.max_bytes,
    }))
}

/// Why a body is refused.
enum Fault {
    TooLarge,
    Malformed(JsonError),
}

impl JsonBody {
    fn check(&self, body: &[u8]) -> Result<(), Fault> {
        if body.len() > self.max_bytes {
            return Err(Fault::TooLarge);
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        json::check(body).map_err(Fault::Malformed)
    }
}

impl Policy for JsonBody {
    fn phases(&self) -> Phases {
        let mut phases = Phases::NONE;
        if self.request {
            phases = phases | Phases::REQUEST_BODY;
        }
        if self.response {
            phases = phases | Phases::RESPONSE_BODY;
        }
        phases
    }

    fn reads_response_headers(&self) -> bool {
        false
    }

    fn on_request_body(&self, _cx: &mut Context, body: &[u8]) -> Action {
        match self.check(body) {
            Ok(()) => Action::Continue,
            Err(Fault::TooLarge) => Action::Respond(LocalReply::text(
                413,
                format!("request body exceeds {} bytes\n", self.max_bytes),
            )),
            Err(Fault::Malformed(e)) => Action::Respond(LocalReply::text(
                400,
                format!("request body is not valid JSON: {e}\n"),
            )),
        }
    }

    fn on_response_body(&self, cx: &mut Context, body: &[u8]) -> ResponseAction {
        match self.check(body) {
            Ok(()) => ResponseAction::Continue,
            Err(fault) => {
                let why = match fault {
                    Fault::TooLarge => format!("exceeds {} bytes", self.max_bytes),
                    Fault::Malformed(e) => format!("is not valid JSON: {e}"),
                };
                log::warn!(
                    "json-body on {:?}: upstream response body {why}",
                    cx.route().chain
                );
                ResponseAction::Respond(LocalReply::text(
                    502,
                    "upstream response is not valid JSON\n",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use policy_executor::testing::{engine_for, request, start};
    use policy_executor::{HeaderMap, Outcome};
    use serde_json::json;

    fn status(outcome: impl Into<Outcome>) -> u16 {
        match outcome.into() {
            Outcome::Continue(_) => 0,
            Outcome::Respond(reply) => reply.status,
            Outcome::Wait(wait) => panic!("unexpected wait: {wait:?}"),
        }
    }

    #[test]
    fn checks_request_bodies() {
        let engine = engine_for(FACTORY, json!({"max_bytes": 16})).unwrap();
        let run = |body: &[u8]| {
            let mut x = start(&engine, request("POST", "/", &[])).unwrap();
            assert!(x.body_needs().request && !x.body_needs().response);
            assert_eq!(status(x.on_request_headers()), 0);
            status(x.on_request_body(body))
        };
        assert_eq!(run(br#"{"a": [1, 2]}"#), 0);
        assert_eq!(run(b""), 0);
        assert_eq!(run(b"{\"a\": "), 400);
        assert_eq!(run(b"not json"), 400);
        assert_eq!(run(br#"{"a": "0123456789abcdef"}"#), 413);
        // The engine's strict reading: what parsers disagree on is refused.
        assert_eq!(run(b"{\"a\":\"\xff\xfe\"}"), 400);
        assert_eq!(run(br#"{"a":1,"a":2}"#), 400);
        assert_eq!(run(br#"["\ud800"]"#), 400);
    }

    #[test]
    fn replaces_malformed_responses() {
        let engine = engine_for(FACTORY, json!({"request": false, "response": true})).unwrap();
        let mut x = start(&engine, request("GET", "/", &[])).unwrap();
        assert!(!x.body_needs().request && x.body_needs().response);
        x.on_request_headers();
        x.on_response_headers(HeaderMap::from_pairs([(":status", "200")]));
        assert_eq!(status(x.on_response_body(b"<html>oops</html>")), 502);
    }

    #[test]
    fn refuses_configurations_that_check_nothing() {
        let error = engine_for(FACTORY, json!({"request": false}))
            .err()
            .unwrap();
        assert_eq!(error.field.as_deref(), Some("config"));
        let error = engine_for(FACTORY, json!({"max_bytes": -1})).err().unwrap();
        assert_eq!(error.field.as_deref(), Some("config.max_bytes"));
    }
}
