//! `respond`: answers the request itself; the upstream never sees it.
//!
//! ```yaml
//! - name: respond
//!   config:
//!     status: 200
//!     headers: { content-type: application/json }
//!     body: '{"status":"ok"}'
//! ```
//!
//! Policies earlier in the chain still see the reply in their response
//! phases (see `policy_executor::chain`).

use std::collections::BTreeMap;

use policy_executor::{
    check_reply_status, parse_header_map, parse_params, Action, Context, LocalReply, ParamError,
    Phases, Policy, PolicyFactory,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "respond",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `respond` 0.1.
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
    /// The reply's body (default empty).
    #[serde(default)]
    body: String,
}

struct Respond {
    reply: LocalReply,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let status = check_reply_status("status", params.status)?;
    let headers = parse_header_map("headers", &params.headers)?
        .into_iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_str().to_owned()))
        .collect();
    Ok(Box::new(Respond {
        reply: LocalReply {
            status,
            headers,
            body: params.body.into_bytes(),
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

    #[test]
    fn replies_with_the_configured_response() {
        let engine = engine_for(
            FACTORY,
            json!({"status": 418, "headers": {"Content-Type": "text/plain"}, "body": "teapot"}),
        )
        .unwrap();
        let mut x = start(&engine, request("POST", "/brew", &[])).unwrap();
        let Outcome::Respond(reply) = x.on_request_headers() else {
            panic!("respond did not reply")
        };
        assert_eq!(reply.status, 418);
        assert_eq!(
            reply.headers,
            [("content-type".to_owned(), "text/plain".to_owned())]
        );
        assert_eq!(reply.body, b"teapot");
        assert!(!x.acts_on_response());
    }

    #[test]
    fn bad_parameters_are_refused_with_their_path() {
        for (config, field) in [
            (json!({}), "config"),
            (json!({"status": 99}), "config.status"),
            (json!({"status": "ok"}), "config.status"),
            (
                json!({"status": 200, "headers": {"a b": "x"}}),
                "config.headers.a b",
            ),
        ] {
            let error = engine_for(FACTORY, config).err().unwrap();
            assert_eq!(error.field.as_deref(), Some(field), "{error}");
        }
    }
}
