//! `backend-auth`: gives the upstream the credentials it expects, from the
//! configuration, whatever the client sent.
//!
//! ```yaml
//! - name: backend-auth
//!   config:
//!     bearer: "upstream-token"                          # Authorization: Bearer ...
//!     # or api_key: { header: x-api-key, value: "..." }
//!     # or basic: { username: svc, password: "..." }
//! ```
//!
//! The header is replaced, never appended to, so a client cannot smuggle
//! its own credential past it. The secret is kept only as the prepared
//! header value; nothing here logs it or prints it.

use ct_codecs::{Base64, Encoder};
use policy_executor::{
    parse_params, Action, Context, HeaderName, HeaderValue, ParamError, Phases, Policy,
    PolicyFactory,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "backend-auth",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `backend-auth`: exactly one credential, which
/// replaces whatever the client sent in its place.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// A token sent as `authorization: Bearer <token>`.
    bearer: Option<String>,
    /// A key sent in a header of its own.
    api_key: Option<ApiKey>,
    /// A user and password sent as `authorization: Basic ...`.
    basic: Option<Basic>,
}

/// An API key in a header.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "api_key"))]
struct ApiKey {
    /// The header that carries the key.
    header: String,
    /// The key.
    value: String,
}

/// HTTP Basic credentials.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "basic"))]
struct Basic {
    /// The user name.
    username: String,
    /// The password.
    password: String,
}

struct BackendAuth {
    header: HeaderName,
    value: HeaderValue,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    // Errors name the field, never the secret.
    let value = |field: &str, text: &str| {
        if text.is_empty() {
            return Err(ParamError::at(field, "empty"));
        }
        HeaderValue::parse(text)
            .map_err(|_| ParamError::at(field, "not a valid header value (control characters?)"))
    };
    let name =
        |field: &str, text: &str| HeaderName::parse(text).map_err(|e| ParamError::at(field, e));
    let (header, value) = match (params.bearer, params.api_key, params.basic) {
        (Some(token), None, None) => {
            value("bearer", &token)?;
            (
                name("bearer", "authorization")?,
                value("bearer", &format!("Bearer {token}"))?,
            )
        }
        (None, Some(key), None) => (
            name("api_key.header", &key.header)?,
            value("api_key.value", &key.value)?,
        ),
        (None, None, Some(basic)) => {
            if basic.username.contains(':') {
                return Err(ParamError::at("basic.username", "a user name has no `:`"));
            }
            let pair = format!("{}:{}", basic.username, basic.password);
            let encoded = Base64::encode_to_string(pair)
                .map_err(|_| ParamError::at("basic", "cannot encode the credentials"))?;
            (
                name("basic", "authorization")?,
                value("basic", &format!("Basic {encoded}"))?,
            )
        }
        _ => {
            return Err(ParamError::at(
                "",
                "give exactly one of `bearer`, `api_key` or `basic`",
            ))
        }
    };
    Ok(Box::new(BackendAuth { header, value }))
}

impl Policy for BackendAuth {
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    /// The credential header is the engine's: a client's copy (in any `_`
    /// spelling) is removed even when a guard skips this policy.
    fn asserted_headers(&self) -> Vec<HeaderName> {
        vec![self.header.clone()]
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        cx.headers_mut().set_only(&self.header, &self.value);
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_executor::testing::{changes, engine_for, request, start};
    use policy_executor::HeaderChange;
    use serde_json::json;

    fn injected(config: serde_json::Value) -> Vec<(String, HeaderChange)> {
        let engine = engine_for(FACTORY, config).unwrap();
        let client = [
            ("authorization", "Bearer client-token"),
            ("x-api-key", "client-key"),
        ];
        let mut x = start(&engine, request("GET", "/", &client)).unwrap();
        changes(x.on_request_headers())
    }

    #[test]
    fn each_kind_replaces_what_the_client_sent() {
        let replace = |name: &str, value: &str| {
            (
                name.to_owned(),
                HeaderChange::Replace(vec![value.to_owned()]),
            )
        };
        assert_eq!(
            injected(json!({"bearer": "up-token"})),
            [replace("authorization", "Bearer up-token")]
        );
        assert_eq!(
            injected(json!({"api_key": {"header": "X-API-Key", "value": "up-key"}})),
            [replace("x-api-key", "up-key")]
        );
        // RFC 7617's example: Aladdin / open sesame.
        assert_eq!(
            injected(json!({"basic": {"username": "Aladdin", "password": "open sesame"}})),
            [replace(
                "authorization",
                "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
            )]
        );
    }

    #[test]
    fn errors_never_repeat_the_secret() {
        let error = |config| engine_for(FACTORY, config).err().unwrap().to_string();
        let message = error(json!({"bearer": "s3cret\n"}));
        assert!(
            message.contains("field config.bearer: not a valid header value"),
            "{message}"
        );
        assert!(!message.contains("s3cret"));
        assert!(
            error(json!({"bearer": "a", "basic": {"username": "u", "password": "p"}}))
                .contains("give exactly one of")
        );
    }
}
