//! `make bench`'s auth chain, shared by the bench (what the chain costs) and
//! `make stress` (whether it holds up under load and faults).
//!
//! It is the chain users reach for first: a JWT (ES256) read by CEL
//! authorization and a transformation, then an API key and a header edit.
//! The signing keys are made at run time. The JWT provider reads its keys
//! either inline (the bench: no network in the measured path) or from a JWKS
//! server through an Envoy cluster (the stress run's JWKS outage), with the
//! rest of the chain identical, so a figure from one run can be set beside
//! one from the other.

use jwt_simple::prelude::{
    Base64UrlSafeNoPadding, Claims, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair,
};
use jwt_simple::reexports::ct_codecs::Encoder;
use serde_json::{json, Value};

/// The issuer the chain trusts.
pub const ISSUER: &str = "https://issuer.bench";
/// The audience the chain requires.
pub const AUDIENCE: &str = "bench";
/// The token's subject; authorization allows only this caller.
pub const SUBJECT: &str = "bench-user";
/// The key `api-key` accepts (the configuration holds its SHA-256).
pub const API_KEY: &str = "s3cr3t-team-a";
/// `printf %s "$API_KEY" | sha256sum`.
const API_KEY_SHA256: &str = "4052a09cc5fb1c394828ee26788be2daf3a181e5730ecc68a96aed9ee43da056";

/// The request header `set-headers` adds, as the echo upstream reports it in
/// its JSON body: a body carrying it proves the whole chain ran on the
/// request before it reached the upstream.
pub const UPSTREAM_MARKER: &str = r#""x-bench":"on""#;

/// An ES256 signing key and its key id.
pub struct SigningKey {
    pair: ES256KeyPair,
    kid: String,
}

impl SigningKey {
    /// A fresh P-256 key pair published under `kid`.
    pub fn generate(kid: &str) -> Self {
        Self {
            pair: ES256KeyPair::generate().with_key_id(kid),
            kid: kid.to_owned(),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        let point = self.pair.public_key().public_key().to_bytes_uncompressed();
        let b64 =
            |bytes: &[u8]| Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap_or_default();
        json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid,
            "x": b64(point.get(1..33).unwrap_or_default()),
            "y": b64(point.get(33..).unwrap_or_default()),
        })
    }

    /// A token for [`SUBJECT`], valid for a day, that the chain accepts once
    /// it knows this key.
    pub fn token(&self) -> Result<String, String> {
        self.token_for(SUBJECT)
    }

    /// A token like [`SigningKey::token`] for another `subject`.
    pub fn token_for(&self, subject: &str) -> Result<String, String> {
        let claims = Claims::create(jwt_simple::prelude::Duration::from_hours(24))
            .with_issuer(ISSUER)
            .with_audience(AUDIENCE)
            .with_subject(subject);
        self.pair
            .sign(claims)
            .map_err(|e| format!("signing a token with key {}: {e}", self.kid))
    }
}

/// A JWK set (JSON) holding these keys' public halves.
pub fn key_set(keys: &[&SigningKey]) -> String {
    let keys: Vec<Value> = keys.iter().map(|key| key.jwk()).collect();
    json!({ "keys": keys }).to_string()
}

/// Where the chain's JWT provider gets its keys.
pub enum KeySource {
    /// This JWK set, inline in the configuration.
    Inline(String),
    /// A JWKS server at `uri`, fetched through the Envoy cluster `cluster`
    /// (the ext_proc shim fetches `uri` directly), kept for 300 s and
    /// refetched for an unknown key id at most once a second.
    Remote {
        /// The key set's URL.
        uri: String,
        /// The Envoy cluster the Wasm filter fetches through.
        cluster: String,
    },
}

/// The auth chain's plugin configuration, on Envoy's `echo-default` route.
///
/// Without `cache`, every request pays for the signature check
/// (`cache_size: 0`), which is what the verified-token cache saves.
/// `revision` adds a response header carrying that number, so a run can push
/// many valid configurations that differ; `None` is exactly the bench's
/// chain.
pub fn config(keys: &KeySource, cache: bool, revision: Option<u32>) -> String {
    let cache_size = if cache { 1024 } else { 0 };
    let keys = match keys {
        KeySource::Inline(jwks) => format!("local_jwks: {{ inline_string: '{jwks}' }}"),
        KeySource::Remote { uri, cluster } => format!(
            "remote_jwks: {{ http_uri: {{ uri: \"{uri}\", cluster: {cluster}, timeout: 2s }}, \
             cache_duration: 300s, min_refetch_interval: 1s }}"
        ),
    };
    let revision = revision.map_or_else(String::new, |n| format!(", x-chain-revision: \"{n}\""));
    format!(
        r#"
routes:
  - name: bench
    match: {{ route: echo-default }}
    policies:
      - name: jwt
        config:
          providers:
            - issuer: {ISSUER}
              audiences: [{AUDIENCE}]
              algorithms: [ES256]
              {keys}
              claim_to_headers: [{{ claim_name: sub, header_name: x-user }}]
          cache_size: {cache_size}
      - name: authorization
        config:
          rules:
            - {{ allow: 'jwt.sub == "{SUBJECT}" && request.method == "GET"' }}
          default: deny
      - name: transformation
        config:
          request:
            set: {{ x-caller: 'jwt.sub + "@" + request.host' }}
      - name: api-key
        config:
          keys: [{{ consumer: bench, sha256: {API_KEY_SHA256} }}]
          strip: true
      - name: set-headers
        config:
          request: {{ set: {{ x-bench: "on" }} }}
          response: {{ set: {{ x-bench: "on"{revision} }} }}
"#
    )
}

/// The headers of a request the chain allows: `token` and the API key.
pub fn allowed_headers(token: &str) -> Vec<(String, String)> {
    vec![
        ("authorization".into(), format!("Bearer {token}")),
        ("x-api-key".into(), API_KEY.into()),
    ]
}

/// The headers of a request the chain must refuse (401 from `api-key`): a
/// valid token with a wrong API key.
pub fn denied_headers(token: &str) -> Vec<(String, String)> {
    vec![
        ("authorization".into(), format!("Bearer {token}")),
        ("x-api-key".into(), "not-the-key".into()),
    ]
}

/// The bench's chain: keys made here and inlined, the same token on every
/// request (so the verified-token cache serves it when `cache` is on).
/// Returns the configuration and the headers each request carries.
pub fn inline(cache: bool) -> Result<(String, Vec<(String, String)>), String> {
    let key = SigningKey::generate("bench");
    let token = key.token()?;
    let config = config(&KeySource::Inline(key_set(&[&key])), cache, None);
    Ok((config, allowed_headers(&token)))
}
