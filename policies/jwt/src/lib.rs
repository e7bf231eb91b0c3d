//! `jwt`: authenticates a request by a JSON Web Token.
//!
//! ```yaml
//! - name: jwt
//!   config:
//!     providers:
//!       - name: corp
//!         issuer: https://auth.example.com
//!         audiences: [orders]
//!         algorithms: [ES256, RS256]
//!         remote_jwks:
//!           http_uri: { uri: "http://auth.example.com/jwks.json", cluster: auth, timeout: 5s }
//!           cache_duration: 300s
//!         # or local_jwks: { inline_string: '{"keys": [...]}' }
//!         required_scopes: [orders.read]
//!         claim_to_headers: [{ claim_name: sub, header_name: x-user }]
//!     from: [{ header: authorization, prefix: "Bearer " }]   # the default
//! ```
//!
//! The vocabulary is Envoy's `jwt_authn` where the two overlap. A token is
//! checked against the provider its `iss` names: the algorithm must be one
//! the provider lists (so `none`, and an HMAC token against an RSA key,
//! never pass), then the signature, `exp`/`nbf` within the clock skew, the
//! issuer, the audiences, the required claims and scopes. Its claims go to
//! the metadata (`jwt.claims`, CEL `jwt.sub`) for later policies, and to
//! request headers if mapped. Failure gets 401 with `WWW-Authenticate:
//! Bearer` (403 for missing scopes, RFC 6750); the token is never logged.
//!
//! The token is read as `policy_executor::credentials` reads every
//! credential: `bearer` in any case, a malformed one (`Bearer<TAB>x`, an
//! empty token) gets 401 even with `allow_missing`, which only lets
//! through a request with no token at all; two tokens (two
//! `Authorization` lines, a header and a query parameter) get 400
//! `invalid_request`. A mapped header (`claim_to_headers`) is the engine's
//! alone: whatever the client sent under its name, or with `_` for `-`,
//! is removed, and it is set only from a verified token's claim.
//!
//! Remote key sets are fetched by the host (see `policy_executor::remote`):
//! a token naming an unknown `kid` makes the request wait for one refetch,
//! at most once per `min_refetch_interval`. Verified tokens are cached per
//! worker ([`cache`]).

mod keys;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jwt_simple::prelude::{Base64UrlSafeNoPadding, Token, UnixTimeStamp, VerificationOptions};
use jwt_simple::reexports::ct_codecs::Decoder;
use policy_executor::credentials::{CredentialError, Location, RawLocation};
use policy_executor::{
    parse_duration, parse_params, Action, Context, HeaderName, HeaderValue, LocalReply, ParamError,
    Phases, Policy, PolicyFactory, RemoteSource, JWT_CLAIMS,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::keys::{Algorithm, KeySet, Lookup};
use policy_executor::credentials::VerifiedCache;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "jwt",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The metadata key naming the provider that verified the token.
pub const PROVIDER: &str = "jwt.provider";

/// The parameters of `jwt`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// The issuers whose tokens are accepted; a token goes to the provider
    /// of its `iss`.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    providers: Vec<RawProvider>,
    /// Where the token is looked for, in order (default the
    /// `authorization` header, prefix `Bearer `).
    #[serde(default)]
    from: Option<Vec<RawLocation>>,
    /// Keep the token on the request to the upstream (default: removed).
    #[serde(default)]
    forward: bool,
    /// Let requests without a token through, unauthenticated (a bad token
    /// is still refused).
    #[serde(default)]
    allow_missing: bool,
    /// The realm of the `WWW-Authenticate` challenge (default the route
    /// entry's name).
    realm: Option<String>,
    /// Longer tokens are refused unread (default 8192).
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    max_token_bytes: Option<usize>,
    /// Verified tokens kept per worker (default 1024; 0 disables).
    cache_size: Option<usize>,
}

/// An issuer and how its tokens are checked.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "provider"))]
struct RawProvider {
    /// For logs and `jwt.provider` (default the issuer).
    name: Option<String>,
    /// The `iss` of its tokens.
    issuer: String,
    /// An `aud` the token must carry, one of these (none: any).
    #[serde(default)]
    audiences: Vec<String>,
    /// The signature algorithms accepted: `HS256`, `HS384`, `HS512`,
    /// `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`,
    /// `ES384` or `EdDSA`.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    algorithms: Vec<String>,
    /// The keys, inline (not with `remote_jwks`).
    local_jwks: Option<LocalJwks>,
    /// The keys, fetched and refreshed (not with `local_jwks`).
    remote_jwks: Option<RemoteJwks>,
    /// Leeway for `exp` and `nbf` (default 60).
    clock_skew_seconds: Option<u64>,
    /// Refuse tokens without `exp` (default true).
    require_expiration: Option<bool>,
    /// Claim name to the value it must have (or contain, for a list claim).
    #[serde(default)]
    required_claims: serde_json::Map<String, serde_json::Value>,
    /// Scopes that must all be in `scope` or `scp`.
    #[serde(default)]
    required_scopes: Vec<String>,
    /// Claims copied into request headers for the upstream; the client's
    /// copies are removed.
    #[serde(default)]
    claim_to_headers: Vec<ClaimToHeader>,
}

/// Keys given inline.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "local_jwks"))]
struct LocalJwks {
    /// The JWKS document, as JSON text.
    inline_string: String,
}

/// Keys fetched from a URL.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "remote_jwks"))]
struct RemoteJwks {
    /// Where the JWKS is fetched.
    http_uri: HttpUri,
    /// Refresh interval (default `300s`).
    cache_duration: Option<String>,
    /// Least time between two fetches, e.g. for unknown key ids (default
    /// `30s`).
    min_refetch_interval: Option<String>,
}

/// A URL and the cluster that reaches it.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "http_uri"))]
struct HttpUri {
    /// The JWKS URL; the shim fetches it directly.
    uri: String,
    /// The Envoy cluster the Wasm filter fetches it through.
    cluster: String,
    /// How long a fetch may take, like `5s`.
    timeout: Option<String>,
}

/// A claim copied into a header.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "claim_to_header"))]
struct ClaimToHeader {
    /// The claim.
    claim_name: String,
    /// The request header it goes to.
    header_name: String,
}

/// Where a provider's keys come from.
enum Jwks {
    Inline(Arc<KeySet>),
    /// Parsed from the host's latest fetch, kept until it changes.
    Remote {
        source: RemoteSource,
        parsed: Mutex<Option<(u64, Arc<KeySet>)>>,
    },
}

struct Provider {
    name: String,
    issuer: String,
    audiences: Option<HashSet<String>>,
    algorithms: Vec<Algorithm>,
    jwks: Jwks,
    clock_skew: u64,
    require_expiration: bool,
    required_claims: Vec<(String, serde_json::Value)>,
    required_scopes: Vec<String>,
    claim_to_headers: Vec<(String, HeaderName)>,
}

struct Jwt {
    providers: Vec<Provider>,
    /// Every provider's mapped headers, once each: all are cleared before
    /// the verifying provider's are set.
    asserted: Vec<HeaderName>,
    from: Vec<Location>,
    forward: bool,
    allow_missing: bool,
    realm: Option<String>,
    max_token_bytes: usize,
    /// Tokens verified before, by their SHA-256, until they expire and
    /// only for the key set that verified them: a rotation that drops a key
    /// also drops the tokens it verified.
    cache: Mutex<VerifiedCache<Verified>>,
}

const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
const DEFAULT_CACHE_SIZE: usize = 1024;

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    Ok(Box::new(parse(config)?))
}

fn parse(config: &serde_json::Value) -> Result<Jwt, ParamError> {
    let params: Params = parse_params(config)?;
    if params.providers.is_empty() {
        return Err(ParamError::at(
            "providers",
            "at least one provider is needed",
        ));
    }
    let mut providers = Vec::with_capacity(params.providers.len());
    for (i, raw) in params.providers.into_iter().enumerate() {
        let provider = build_provider(raw, &format!("providers[{i}]"))?;
        if providers
            .iter()
            .any(|p: &Provider| p.issuer == provider.issuer)
        {
            return Err(ParamError::at(
                format!("providers[{i}].issuer"),
                "two providers have this issuer",
            ));
        }
        providers.push(provider);
    }
    let from = match params.from {
        None => vec![bearer()?],
        Some(list) => Location::parse_list(list, "from")?,
    };
    let mut asserted: Vec<HeaderName> = Vec::new();
    for (_, header) in providers.iter().flat_map(|p| &p.claim_to_headers) {
        if !asserted.contains(header) {
            asserted.push(header.clone());
        }
    }
    if params.max_token_bytes == Some(0) {
        return Err(ParamError::at(
            "max_token_bytes",
            "must be at least 1 (0 would refuse every token)",
        ));
    }
    Ok(Jwt {
        providers,
        asserted,
        from,
        forward: params.forward,
        allow_missing: params.allow_missing,
        realm: params.realm,
        max_token_bytes: params.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES),
        cache: Mutex::new(VerifiedCache::new(
            params.cache_size.unwrap_or(DEFAULT_CACHE_SIZE),
        )),
    })
}

fn bearer() -> Result<Location, ParamError> {
    let name = HeaderName::parse("authorization").map_err(|e| ParamError::at("from", e))?;
    Ok(Location::Header(name, "Bearer ".into()))
}

fn build_provider(raw: RawProvider, at: &str) -> Result<Provider, ParamError> {
    let field = |name: &str| format!("{at}.{name}");
    if raw.issuer.is_empty() {
        return Err(ParamError::at(field("issuer"), "empty"));
    }
    if raw.algorithms.is_empty() {
        return Err(ParamError::at(
            field("algorithms"),
            "list the algorithms tokens may use",
        ));
    }
    let mut algorithms = Vec::new();
    for (i, name) in raw.algorithms.iter().enumerate() {
        let algorithm = Algorithm::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            ParamError::at(
                field(&format!("algorithms[{i}]")),
                format!(
                    "unknown algorithm {name:?}; use one of {}",
                    known.join(", ")
                ),
            )
        })?;
        algorithms.push(algorithm);
    }
    let jwks = match (raw.local_jwks, raw.remote_jwks) {
        (Some(local), None) => {
            let set = KeySet::parse(local.inline_string.as_bytes(), &algorithms)
                .map_err(|e| ParamError::at(field("local_jwks.inline_string"), e))?;
            Jwks::Inline(Arc::new(set))
        }
        (None, Some(remote)) => Jwks::Remote {
            source: remote_source(remote, &field("remote_jwks"))?,
            parsed: Mutex::new(None),
        },
        _ => {
            return Err(ParamError::at(
                at.to_owned(),
                "give exactly one of `local_jwks` or `remote_jwks`",
            ))
        }
    };
    let mut claim_to_headers = Vec::new();
    for (i, mapping) in raw.claim_to_headers.into_iter().enumerate() {
        let header = HeaderName::parse(&mapping.header_name)
            .map_err(|e| ParamError::at(field(&format!("claim_to_headers[{i}].header_name")), e))?;
        claim_to_headers.push((mapping.claim_name, header));
    }
    let audiences = (!raw.audiences.is_empty()).then(|| raw.audiences.into_iter().collect());
    Ok(Provider {
        name: raw.name.unwrap_or_else(|| raw.issuer.clone()),
        issuer: raw.issuer,
        audiences,
        algorithms,
        jwks,
        clock_skew: raw.clock_skew_seconds.unwrap_or(60),
        require_expiration: raw.require_expiration.unwrap_or(true),
        required_claims: raw.required_claims.into_iter().collect(),
        required_scopes: raw.required_scopes,
        claim_to_headers,
    })
}

fn remote_source(remote: RemoteJwks, at: &str) -> Result<RemoteSource, ParamError> {
    let uri = remote.http_uri.uri;
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(ParamError::at(
            format!("{at}.http_uri.uri"),
            "an http:// or https:// URL is needed",
        ));
    }
    if remote.http_uri.cluster.is_empty() {
        return Err(ParamError::at(format!("{at}.http_uri.cluster"), "empty"));
    }
    let duration = |value: Option<String>, name: &str, default: u64| match value {
        None => Ok(Duration::from_secs(default)),
        Some(text) => parse_duration(&text).ok_or_else(|| {
            ParamError::at(
                format!("{at}.{name}"),
                format!("{text:?} is not a duration like 5s, 500ms or 10m"),
            )
        }),
    };
    Ok(RemoteSource {
        uri,
        cluster: remote.http_uri.cluster,
        timeout: duration(remote.http_uri.timeout, "http_uri.timeout", 5)?,
        refresh_interval: duration(remote.cache_duration, "cache_duration", 300)?,
        min_refetch_interval: duration(remote.min_refetch_interval, "min_refetch_interval", 30)?,
    })
}

/// A verified token's outcome.
#[derive(Clone)]
struct Verified {
    /// The index of the provider that verified it.
    provider: usize,
    /// All of its claims.
    claims: Arc<serde_json::Value>,
    /// Seconds since the epoch: usable from `not_before` until `expires`.
    not_before: u64,
    expires: u64,
    /// The version of the provider's key set that verified it.
    keys_version: u64,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a request was refused.
enum Refusal {
    /// No token where one is looked for.
    Missing,
    /// Something that cannot be read as one token: malformed, or two.
    Unreadable(CredentialError),
    /// A token that does not verify; the reason is logged, not sent.
    Invalid(String),
    /// A valid token without a required scope.
    InsufficientScope,
}

/// What verifying a token came to.
enum Verdict {
    Verified(Verified),
    Refused(Refusal),
    /// The provider's keys cannot decide yet: refetch them.
    Refetch(RemoteSource),
}

impl Provider {
    /// The provider's keys and their version, or the source to fetch.
    fn key_set(&self, cx: &Context) -> Result<(Arc<KeySet>, u64), Verdict> {
        let (source, parsed) = match &self.jwks {
            Jwks::Inline(set) => return Ok((Arc::clone(set), 0)),
            Jwks::Remote { source, parsed } => (source, parsed),
        };
        let Some(document) = cx.document(source) else {
            return Err(if cx.refetched(source) {
                Verdict::Refused(Refusal::Invalid(format!(
                    "no keys: {} has not been fetched",
                    source.uri
                )))
            } else {
                Verdict::Refetch(source.clone())
            });
        };
        let mut parsed = parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((version, set)) = parsed.as_ref() {
            if *version == document.fetched_at {
                return Ok((Arc::clone(set), *version));
            }
        }
        match KeySet::parse(&document.body, &self.algorithms) {
            Ok(set) => {
                let set = Arc::new(set);
                *parsed = Some((document.fetched_at, Arc::clone(&set)));
                Ok((set, document.fetched_at))
            }
            // A bad document does not replace good keys.
            Err(error) => match parsed.as_ref() {
                Some((version, set)) => {
                    log::warn!("jwt: {} served an unusable key set: {error}", source.uri);
                    Ok((Arc::clone(set), *version))
                }
                None => Err(Verdict::Refused(Refusal::Invalid(format!(
                    "{} served an unusable key set: {error}",
                    source.uri
                )))),
            },
        }
    }

    // Out of line: the signature check runs on a cache miss only, and
    // inlined into the request path it made one 86 KB function, which
    // Envoy's V8 compiles up front with its optimizing compiler.
    #[inline(never)]
    fn verify(&self, index: usize, token: &str, cx: &Context, now: u64) -> Verdict {
        let header = match Token::decode_metadata(token) {
            Ok(header) => header,
            Err(error) => return Verdict::Refused(Refusal::Invalid(format!("malformed: {error}"))),
        };
        let Some(algorithm) =
            Algorithm::parse(header.algorithm()).filter(|a| self.algorithms.contains(a))
        else {
            return Verdict::Refused(Refusal::Invalid(format!(
                "algorithm {:?} is not allowed",
                header.algorithm()
            )));
        };
        let (keys, keys_version) = match self.key_set(cx) {
            Ok(found) => found,
            Err(verdict) => return verdict,
        };
        match keys.lookup(algorithm, header.key_id()) {
            Lookup::Found => {}
            Lookup::UnknownKid => {
                if let Jwks::Remote { source, .. } = &self.jwks {
                    if !cx.refetched(source) {
                        return Verdict::Refetch(source.clone());
                    }
                }
                return Verdict::Refused(Refusal::Invalid("unknown key id".into()));
            }
            Lookup::NoKey => {
                return Verdict::Refused(Refusal::Invalid(format!("no {} key", algorithm.name())))
            }
        }
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([self.issuer.clone()])),
            allowed_audiences: self.audiences.clone(),
            time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(self.clock_skew)),
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            max_token_length: None,
            ..VerificationOptions::default()
        };
        let registered = match keys.verify(token, algorithm, header.key_id(), &options) {
            Ok(claims) => claims,
            Err(error) => return Verdict::Refused(Refusal::Invalid(error)),
        };
        if self.require_expiration && registered.expires_at.is_none() {
            return Verdict::Refused(Refusal::Invalid("no `exp` claim".into()));
        }
        let Some(claims) = payload(token) else {
            return Verdict::Refused(Refusal::Invalid("the payload is not a JSON object".into()));
        };
        if let Some((name, _)) = self
            .required_claims
            .iter()
            .find(|(name, wanted)| !claim_matches(claims.get(name), wanted))
        {
            return Verdict::Refused(Refusal::Invalid(format!(
                "claim {name:?} does not have the required value"
            )));
        }
        let scopes = scopes(&claims);
        if !self
            .required_scopes
            .iter()
            .all(|s| scopes.contains(&s.as_str()))
        {
            return Verdict::Refused(Refusal::InsufficientScope);
        }
        let skew = self.clock_skew;
        let seconds = |t: Option<UnixTimeStamp>| t.map(|t| t.as_secs());
        Verdict::Verified(Verified {
            provider: index,
            not_before: seconds(registered.invalid_before).map_or(0, |t| t.saturating_sub(skew)),
            // A token without `exp` (allowed only if configured) is cached
            // for a minute at most.
            expires: seconds(registered.expires_at).map_or(now + 60, |t| t.saturating_add(skew)),
            claims: Arc::new(claims),
            keys_version,
        })
    }
}

/// The token's claims, decoded without verification: call only on a
/// verified token.
fn payload(token: &str) -> Option<serde_json::Value> {
    let encoded = token.split('.').nth(1)?;
    let bytes = Base64UrlSafeNoPadding::decode_to_vec(encoded, None).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(serde_json::Value::is_object)
}

/// The `iss` of a token, unverified: it only picks the provider to verify
/// against.
fn issuer(token: &str) -> Option<String> {
    let value = payload(token)?;
    value.get("iss")?.as_str().map(str::to_owned)
}

/// A required claim holds if it equals the wanted value, or is a list that
/// contains it.
fn claim_matches(claim: Option<&serde_json::Value>, wanted: &serde_json::Value) -> bool {
    match claim {
        Some(serde_json::Value::Array(items)) if !wanted.is_array() => items.contains(wanted),
        Some(value) => value == wanted,
        None => false,
    }
}

/// The token's scopes: `scope` (space-separated, RFC 8693) or `scp` (a list
/// or a string, as some issuers send).
fn scopes(claims: &serde_json::Value) -> Vec<&str> {
    let mut found = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(serde_json::Value::String(text)) => found.extend(text.split_whitespace()),
            Some(serde_json::Value::Array(items)) => {
                found.extend(items.iter().filter_map(serde_json::Value::as_str));
            }
            _ => {}
        }
    }
    found
}

impl Jwt {
    fn provider_for(&self, token: &str) -> Option<(usize, &Provider)> {
        if let [only] = self.providers.as_slice() {
            return Some((0, only));
        }
        let issuer = issuer(token)?;
        self.providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.issuer == issuer)
    }

    fn check(&self, token: &str, cx: &Context) -> Verdict {
        if token.len() > self.max_token_bytes {
            return Verdict::Refused(Refusal::Invalid(format!(
                "{} bytes, more than {}",
                token.len(),
                self.max_token_bytes
            )));
        }
        let now = now_seconds();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&digest, now).cloned()
        };
        if let Some(verified) = cached {
            let current = self
                .providers
                .get(verified.provider)
                .map(|p| p.key_set(cx).map(|(_, version)| version));
            if let Some(Ok(version)) = current {
                if version == verified.keys_version {
                    return Verdict::Verified(verified);
                }
            }
        }
        let Some((index, provider)) = self.provider_for(token) else {
            return Verdict::Refused(Refusal::Invalid("no provider for its issuer".into()));
        };
        let verdict = provider.verify(index, token, cx, now);
        if let Verdict::Verified(verified) = &verdict {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(
                digest,
                verified.clone(),
                verified.not_before,
                verified.expires,
                now,
            );
        }
        verdict
    }

    fn refuse(&self, refusal: &Refusal, cx: &Context) -> Action {
        let realm = self.realm.as_deref().unwrap_or(&cx.route().chain);
        let (status, challenge, body) = match refusal {
            Refusal::Missing => (401, format!("Bearer realm=\"{realm}\""), "missing token\n"),
            Refusal::Unreadable(
                error @ (CredentialError::Duplicate | CredentialError::Semicolon),
            ) => (
                error.status(),
                format!("Bearer realm=\"{realm}\", error=\"invalid_request\""),
                "more than one token\n",
            ),
            Refusal::Unreadable(error) => (
                error.status(),
                format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
                "invalid token\n",
            ),
            Refusal::Invalid(_) => (
                401,
                format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
                "invalid token\n",
            ),
            Refusal::InsufficientScope => (
                403,
                format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\""),
                "insufficient scope\n",
            ),
        };
        let unreadable;
        let reason = match refusal {
            Refusal::Missing => "no token",
            Refusal::Unreadable(error) => {
                unreadable = error.to_string();
                &unreadable
            }
            Refusal::Invalid(reason) => reason,
            Refusal::InsufficientScope => "a required scope is missing",
        };
        log::debug!(
            "jwt: route {:?} denied {status}: {reason}, caller {}",
            cx.route().chain,
            cx.caller()
        );
        Action::Respond(LocalReply {
            status,
            headers: vec![
                ("www-authenticate".into(), challenge),
                ("content-type".into(), "text/plain".into()),
            ],
            body: body.as_bytes().to_vec(),
        })
    }

    /// Sets the mapped headers from `verified`'s claims, and removes every
    /// mapped header (of any provider, in any `_` variant) it gives no
    /// value: none is ever left as the client sent it.
    fn assert_headers(&self, verified: Option<&Verified>, cx: &mut Context) {
        for header in &self.asserted {
            cx.headers_mut().remove_variants(header);
        }
        let Some(verified) = verified else {
            return;
        };
        let Some(provider) = self.providers.get(verified.provider) else {
            return;
        };
        for (claim, header) in &provider.claim_to_headers {
            let value = verified.claims.get(claim).and_then(claim_text);
            if let Some(value) = value.and_then(|v| HeaderValue::parse(&v).ok()) {
                cx.headers_mut().set(header, &value);
            }
        }
    }

    fn accept(&self, verified: &Verified, location: &Location, cx: &mut Context) {
        let Some(provider) = self.providers.get(verified.provider) else {
            return;
        };
        self.assert_headers(Some(verified), cx);
        if !self.forward {
            location.strip(cx);
        }
        let metadata = cx.metadata_mut();
        metadata.insert(JWT_CLAIMS.into(), (*verified.claims).clone());
        metadata.insert(PROVIDER.into(), provider.name.clone().into());
    }
}

/// A claim as a header value: strings as they are, lists joined with `,`,
/// numbers and booleans as JSON; objects are not mapped.
fn claim_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_owned)
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Some(value.to_string()),
        serde_json::Value::Null | serde_json::Value::Object(_) => None,
    }
}

impl Policy for Jwt {
    fn credential_locations(&self) -> Vec<Location> {
        self.from.clone()
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn remote_sources(&self) -> Vec<RemoteSource> {
        self.providers
            .iter()
            .filter_map(|p| match &p.jwks {
                Jwks::Remote { source, .. } => Some(source.clone()),
                Jwks::Inline(_) => None,
            })
            .collect()
    }

    fn asserted_headers(&self) -> Vec<HeaderName> {
        self.asserted.clone()
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let found = match Location::find_one(&self.from, cx) {
            Ok(found) => found,
            Err(error) => return self.refuse(&Refusal::Unreadable(error), cx),
        };
        let Some((location, token)) = found else {
            if self.allow_missing {
                self.assert_headers(None, cx);
                return Action::Continue;
            }
            return self.refuse(&Refusal::Missing, cx);
        };
        match self.check(&token, cx) {
            Verdict::Verified(verified) => {
                self.accept(&verified, location, cx);
                Action::Continue
            }
            Verdict::Refused(refusal) => self.refuse(&refusal, cx),
            Verdict::Refetch(source) => Action::Refresh(source),
        }
    }
}

#[cfg(test)]
mod tests;
