//! `api-key`: authenticates a request by an API key and names its consumer.
//!
//! ```yaml
//! - name: api-key
//!   config:
//!     from: { header: x-api-key }        # the default; or { query: api_key }, or a list
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
//! the metadata as `api-key.consumer` for later policies and CEL. A missing,
//! malformed or unknown key gets 401 with `WWW-Authenticate: ApiKey`; two
//! keys (a repeated `x-api-key` or query parameter, or keys in two of the
//! `from` locations) get 400, so no upstream ever reads another key than
//! the one checked. The key is read as `policy_executor::credentials`
//! reads every credential (query names and values percent-decoded). The
//! consumer header is the engine's alone: the client's copy, with `_` for
//! `-` too, never reaches the upstream. Keys are never logged.

use policy_executor::credentials::{same_digest, CredentialError, Location, RawLocation};
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

policy_executor::policy_parameters!(Params);

/// The metadata key later policies read the consumer from.
pub const CONSUMER: &str = "api-key.consumer";

/// The parameters of `api-key`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// Where the key is read (default the `x-api-key` header); a list reads
    /// several places, and a key in two of them gets 400.
    #[serde(default)]
    from: Option<RawLocations>,
    /// The accepted keys, by their SHA-256.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    keys: Vec<RawKey>,
    /// A request header to carry the consumer's name upstream; the
    /// client's copy is always removed.
    consumer_header: Option<String>,
    /// Remove the key (header, query parameter or cookie) before the
    /// upstream.
    #[serde(default)]
    strip: bool,
}

/// `from`: one location, or a list of them.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
#[cfg_attr(feature = "schema", schemars(rename = "locations"))]
enum RawLocations {
    One(RawLocation),
    List(Vec<RawLocation>),
}

/// An accepted key.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "key"))]
struct RawKey {
    /// Who holds the key: `metadata["api-key.consumer"]` to later policies.
    consumer: String,
    /// The hex SHA-256 of the key (`sha256sum`), 64 digits.
    #[cfg_attr(feature = "schema", schemars(length(equal = 64)))]
    sha256: String,
}

struct ApiKey {
    from: Vec<Location>,
    keys: Vec<([u8; 32], serde_json::Value)>,
    consumer_header: Option<HeaderName>,
    strip: bool,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let header =
        |field: &str, name: &str| HeaderName::parse(name).map_err(|e| ParamError::at(field, e));
    let from = match params.from {
        None => vec![Location::Header(
            header("from.header", "x-api-key")?,
            String::new(),
        )],
        Some(RawLocations::One(raw)) => vec![Location::parse(raw, "from")?],
        Some(RawLocations::List(list)) => Location::parse_list(list, "from")?,
    };
    let consumer_header = match params.consumer_header {
        Some(name) => Some(header("consumer_header", &name)?),
        None => None,
    };
    if params.keys.is_empty() {
        return Err(ParamError::at("keys", "at least one key is needed"));
    }
    let mut keys = Vec::with_capacity(params.keys.len());
    for (i, raw) in params.keys.into_iter().enumerate() {
        if raw.consumer.is_empty() {
            return Err(ParamError::at(format!("keys[{i}].consumer"), "empty"));
        }
        if consumer_header.is_some() && HeaderValue::parse(&raw.consumer).is_err() {
            return Err(ParamError::at(
                format!("keys[{i}].consumer"),
                "cannot be sent in `consumer_header`: it has CR, LF or NUL",
            ));
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
    Ok(Box::new(ApiKey {
        from,
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

fn deny_unknown(why: &str, cx: &Context) -> Action {
    log::debug!(
        "api-key: route {:?} denied 401: {why}, caller {}",
        cx.route().chain,
        cx.caller()
    );
    unauthorized()
}

fn refuse(error: CredentialError, cx: &Context) -> Action {
    log::debug!(
        "api-key: route {:?} denied {}: {error}, caller {}",
        cx.route().chain,
        error.status(),
        cx.caller()
    );
    match error {
        CredentialError::Duplicate => {
            Action::Respond(LocalReply::text(error.status(), "more than one API key\n"))
        }
        CredentialError::Semicolon => Action::Respond(LocalReply::text(
            error.status(),
            "the API key is beside a ';' in the query\n",
        )),
        _ => unauthorized(),
    }
}

impl Policy for ApiKey {
    fn credential_locations(&self) -> Vec<Location> {
        self.from.clone()
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn asserted_headers(&self) -> Vec<HeaderName> {
        self.consumer_header.iter().cloned().collect()
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let (source, key) = match Location::find_one(&self.from, cx) {
            Ok(Some(found)) => found,
            Ok(None) => return deny_unknown("no key", cx),
            Err(error) => return refuse(error, cx),
        };
        let Some(consumer) = self.consumer(&key).cloned() else {
            return deny_unknown("unknown key", cx);
        };
        if self.strip {
            source.strip(cx);
        }
        if let Some(header) = &self.consumer_header {
            // Checked at load: every consumer is a valid header value.
            match consumer.as_str().map(HeaderValue::parse) {
                Some(Ok(value)) => cx.headers_mut().set_only(header, &value),
                _ => cx.headers_mut().remove_variants(header),
            }
        }
        cx.metadata_mut().insert(CONSUMER.into(), consumer);
        Action::Continue
    }
}

#[cfg(test)]
mod tests;
