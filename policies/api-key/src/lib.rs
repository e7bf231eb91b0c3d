//! `api-key`: authenticates a request by an API key and names its consumer.
//!
//! ```yaml
//! - name: api-key
//!   config:
//!     from: { header: x-api-key }        # the default; or { query: api_key }
//!     keys:
//!       - consumer: team-a
//!         sha256: 4052a09c...            # printf %s "$KEY" | sha256sum
//!     consumer_header: x-consumer        # optional: tell the upstream who called
//!     strip: true                        # optional: the upstream never sees the key
//! ```
//!
//! The configuration holds only hashes, so it can be stored and reviewed
//! like any other file. The presented key is hashed once and compared with
//! every stored hash without stopping early, so the time taken says nothing
//! about which key, or how much of one, matched. The consumer is written to
//! the metadata as `api-key.consumer` for later policies and CEL. A missing
//! or unknown key gets 401 with `WWW-Authenticate: ApiKey`; keys are never
//! logged.

use policy_executor::credentials::{same_digest, Location, RawLocation};
use policy_executor::{
    parse_params, Action, Context, HeaderName, HeaderValue, LocalReply, ParamError, Phases, Policy,
    PolicyFactory,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "api-key",
    version: "0.1.0",
    build,
};

/// The metadata key later policies read the consumer from.
pub const CONSUMER: &str = "api-key.consumer";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    from: Option<RawLocation>,
    keys: Vec<RawKey>,
    consumer_header: Option<String>,
    #[serde(default)]
    strip: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    consumer: String,
    sha256: String,
}

struct ApiKey {
    source: Location,
    keys: Vec<([u8; 32], serde_json::Value)>,
    consumer_header: Option<HeaderName>,
    strip: bool,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let header =
        |field: &str, name: &str| HeaderName::parse(name).map_err(|e| ParamError::at(field, e));
    let source = match params.from {
        None => Location::Header(header("from.header", "x-api-key")?, String::new()),
        Some(raw) => Location::parse(raw, "from")?,
    };
    if params.keys.is_empty() {
        return Err(ParamError::at("keys", "at least one key is needed"));
    }
    let mut keys = Vec::with_capacity(params.keys.len());
    for (i, raw) in params.keys.into_iter().enumerate() {
        if raw.consumer.is_empty() {
            return Err(ParamError::at(format!("keys[{i}].consumer"), "empty"));
        }
        let hash = decode_sha256(&raw.sha256).ok_or_else(|| {
            ParamError::at(
                format!("keys[{i}].sha256"),
                "not a SHA-256 hash (64 hex digits)",
            )
        })?;
        if keys.iter().any(|(h, _)| *h == hash) {
            return Err(ParamError::at(
                format!("keys[{i}].sha256"),
                "the same key is listed twice",
            ));
        }
        keys.push((hash, serde_json::Value::String(raw.consumer)));
    }
    let consumer_header = match params.consumer_header {
        Some(name) => Some(header("consumer_header", &name)?),
        None => None,
    };
    Ok(Box::new(ApiKey {
        source,
        keys,
        consumer_header,
        strip: params.strip,
    }))
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

impl ApiKey {
    fn consumer(&self, key: &str) -> Option<&serde_json::Value> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Every stored hash is compared, match or not.
        self.keys.iter().fold(None, |found, (stored, consumer)| {
            if same_digest(stored, &hash) {
                Some(consumer)
            } else {
                found
            }
        })
    }
}

fn unauthorized() -> Action {
    Action::Respond(LocalReply {
        status: 401,
        headers: vec![
            ("www-authenticate".into(), "ApiKey".into()),
            ("content-type".into(), "text/plain".into()),
        ],
        body: b"missing or invalid API key\n".to_vec(),
    })
}

impl Policy for ApiKey {
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let Some(consumer) = self.source.find(cx).and_then(|key| self.consumer(key)) else {
            log::debug!(
                "api-key: route {:?} denied: missing or unknown key, caller {}",
                cx.route().chain,
                cx.caller()
            );
            return unauthorized();
        };
        let consumer = consumer.clone();
        if self.strip {
            self.source.strip(cx);
        }
        if let Some(header) = &self.consumer_header {
            if let Some(value) = consumer.as_str().and_then(|c| HeaderValue::parse(c).ok()) {
                cx.headers_mut().set(header, &value);
            }
        }
        cx.metadata_mut().insert(CONSUMER.into(), consumer);
        Action::Continue
    }
}

#[cfg(test)]
mod tests;
