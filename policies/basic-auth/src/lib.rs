//! `basic-auth`: authenticates a request by HTTP Basic credentials
//! (RFC 7617) against password hashes people already have.
//!
//! ```yaml
//! - name: basic-auth
//!   config:
//!     realm: orders
//!     htpasswd: |                     # the contents of an htpasswd file
//!       alice:$2y$10$...              # htpasswd -B (bcrypt)
//!       bob:{SHA}...                  # htpasswd -s
//!     user_header: x-user             # optional: tell the upstream who called
//! ```
//!
//! Hashes may be bcrypt (`$2a$`, `$2b$`, `$2y$`), SHA-crypt (`$5$`, `$6$`)
//! or `{SHA}`; MD5 (`$apr1$`) and DES `crypt` are refused at load time as
//! too weak, and every hash is checked at load so that verifying it can
//! only answer yes or no. bcrypt and SHA-crypt are slow on purpose, so each
//! worker keeps a bounded cache of credentials it has verified, keyed by
//! their SHA-256: a client that sends the same credentials again pays one
//! hash, not one bcrypt. The user name goes to the metadata
//! (`basic-auth.user`); the `Authorization` header is removed before the
//! upstream unless `forward: true`. `user_header` is the engine's alone:
//! the client's copy, with `_` for `-` too, never reaches the upstream.
//!
//! # What a failed attempt costs
//!
//! A wrong password for a known user and any password for an unknown user
//! cost the same: an unknown user's password is verified against a dummy
//! hash of the kind and work factor most users' hashes have, so the time
//! taken does not say who exists. The work factor is bounded at load
//! ([`MAX_BCRYPT_COST`], [`MAX_SHA_CRYPT_ROUNDS`]), as are the credentials
//! a request may send ([`MAX_CREDENTIALS_BYTES`]), because every failed
//! attempt pays the full hash and an attacker chooses how many to make.
//!
//! A missing or wrong credential, or a malformed one, gets 401 with
//! `WWW-Authenticate: Basic realm="..."`; two (two `Authorization` lines)
//! get 400. Passwords are never logged.

use std::collections::HashMap;
use std::sync::Mutex;

use ct_codecs::{Base64, Decoder};
use policy_executor::credentials::{same_digest, CredentialError, Location, VerifiedCache};
use policy_executor::{
    parse_params, Action, Context, HeaderName, HeaderValue, LocalReply, ParamError, Phases, Policy,
    PolicyFactory,
};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use sha_crypt::{Sha256Params, Sha512Params};

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "basic-auth",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The metadata key later policies read the user name from.
pub const USER: &str = "basic-auth.user";

/// Verified credentials kept per worker.
const CACHE_SIZE: usize = 1024;

/// The highest bcrypt cost accepted. Cost 12 takes about a quarter of a
/// second per attempt on a server core (OWASP asks for at least 10); each
/// step doubles it, and every wrong password pays it in full, so a higher
/// cost hands an attacker a worker for half a second per request.
pub const MAX_BCRYPT_COST: u32 = 12;

/// The most SHA-crypt rounds accepted: above the defaults of the tools
/// that make such hashes (`mkpasswd` 5,000; passlib 535,000 for `$5$` and
/// 656,000 for `$6$`), and about the cost of bcrypt at
/// [`MAX_BCRYPT_COST`].
pub const MAX_SHA_CRYPT_ROUNDS: usize = 1_000_000;

/// The longest `user:password` accepted, decoded. SHA-crypt's work grows
/// with the password's length, so an unbounded one would let a single
/// request cost seconds.
pub const MAX_CREDENTIALS_BYTES: usize = 1024;

/// The fewest SHA-crypt rounds the format allows (and its default).
const MIN_SHA_CRYPT_ROUNDS: usize = 1_000;
const DEFAULT_SHA_CRYPT_ROUNDS: usize = 5_000;

/// bcrypt's base64 alphabet, in value order.
const BCRYPT_ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// SHA-crypt's base64 alphabet.
const CRYPT_ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The parameters of `basic-auth`: `users`, `htpasswd` or both.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// The realm of the `WWW-Authenticate` challenge (default
    /// `restricted`).
    realm: Option<String>,
    /// Users and their password hashes.
    #[serde(default)]
    users: Vec<RawUser>,
    /// The contents of an htpasswd file, one `user:hash` per line.
    htpasswd: Option<String>,
    /// A request header to carry the user name upstream.
    user_header: Option<String>,
    /// Keep the `authorization` header for the upstream (default: removed).
    #[serde(default)]
    forward: bool,
}

/// A user.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "user"))]
struct RawUser {
    /// The user name.
    name: String,
    /// bcrypt (`$2y$`), SHA-crypt (`$5$`, `$6$`) or `{SHA}`.
    hash: String,
}

/// The SHA-crypt variants: `$5$` (SHA-256) and `$6$` (SHA-512).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ShaBits {
    Sha256,
    Sha512,
}

impl ShaBits {
    /// The length of the encoded digest.
    const fn encoded_len(self) -> usize {
        match self {
            Self::Sha256 => 43,
            Self::Sha512 => 86,
        }
    }
}

/// A kind of hash and its work factor: what verifying one costs. Hashes
/// with the same `Cost` take the same time for the same password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cost {
    Sha1,
    Bcrypt(u32),
    ShaCrypt(ShaBits, usize),
}

/// A stored password hash, checked so that verifying it never fails for
/// any reason but a wrong password.
#[derive(Debug)]
enum Hash {
    /// `$2y$10$...`, whole, as the bcrypt crate reads it.
    Bcrypt { text: String, cost: u32 },
    /// `$5$` or `$6$`: verified by computing the encoded digest and
    /// comparing the text, so the stored digest is never decoded.
    ShaCrypt {
        bits: ShaBits,
        rounds: usize,
        salt: String,
        encoded: String,
    },
    /// `{SHA}`: the SHA-1 digest itself.
    Sha1([u8; 20]),
}

impl Hash {
    fn parse(text: &str) -> Result<Self, String> {
        if ["$2a$", "$2b$", "$2y$", "$2x$"]
            .iter()
            .any(|p| text.starts_with(p))
        {
            return parse_bcrypt(text);
        }
        if let Some(rest) = text.strip_prefix("$5$") {
            return parse_sha_crypt(ShaBits::Sha256, rest);
        }
        if let Some(rest) = text.strip_prefix("$6$") {
            return parse_sha_crypt(ShaBits::Sha512, rest);
        }
        if let Some(encoded) = text.strip_prefix("{SHA}") {
            let digest = Base64::decode_to_vec(encoded, None)
                .ok()
                .and_then(|d| <[u8; 20]>::try_from(d).ok())
                .ok_or("a {SHA} hash is the base64 of 20 bytes")?;
            return Ok(Self::Sha1(digest));
        }
        if text.starts_with("$apr1$") || text.starts_with("$1$") {
            return Err("MD5 hashes are too weak; re-hash with `htpasswd -B` (bcrypt)".into());
        }
        Err(
            "not a bcrypt ($2y$), SHA-crypt ($5$, $6$) or {SHA} hash; hash with `htpasswd -B`"
                .into(),
        )
    }

    fn cost(&self) -> Cost {
        match self {
            Self::Bcrypt { cost, .. } => Cost::Bcrypt(*cost),
            Self::ShaCrypt { bits, rounds, .. } => Cost::ShaCrypt(*bits, *rounds),
            Self::Sha1(_) => Cost::Sha1,
        }
    }

    /// A hash no password matches that costs `cost` to verify.
    fn dummy(cost: Cost) -> Self {
        match cost {
            // All-zero salt and digest: valid, canonical base64.
            Cost::Bcrypt(cost) => Self::Bcrypt {
                text: format!("$2b${cost:02}${}", ".".repeat(22 + 31)),
                cost,
            },
            Cost::ShaCrypt(bits, rounds) => Self::ShaCrypt {
                bits,
                rounds,
                salt: "dummy.salt.16chr".into(),
                encoded: ".".repeat(bits.encoded_len()),
            },
            Cost::Sha1 => Self::Sha1([0; 20]),
        }
    }

    fn verify(&self, password: &str) -> bool {
        #[cfg(test)]
        tests::VERIFIED.with(|costs| costs.borrow_mut().push(self.cost()));
        match self {
            Self::Bcrypt { text, .. } => bcrypt::verify(password, text).unwrap_or(false),
            Self::ShaCrypt {
                bits,
                rounds,
                salt,
                encoded,
            } => {
                let (password, salt) = (password.as_bytes(), salt.as_bytes());
                let computed = match bits {
                    ShaBits::Sha256 => Sha256Params::new(*rounds)
                        .and_then(|params| sha_crypt::sha256_crypt_b64(password, salt, &params)),
                    ShaBits::Sha512 => Sha512Params::new(*rounds)
                        .and_then(|params| sha_crypt::sha512_crypt_b64(password, salt, &params)),
                };
                computed.is_ok_and(|c| same_digest(c.as_bytes(), encoded.as_bytes()))
            }
            Self::Sha1(digest) => same_digest(&Sha1::digest(password.as_bytes()), digest),
        }
    }
}

/// Whether `text` is base64 in `alphabet` whose last character carries
/// no bits beyond the data (`unused` low bits zero), as the decoders
/// demand.
fn canonical_base64(text: &str, alphabet: &[u8], unused: u32) -> bool {
    let value = |c: u8| alphabet.iter().position(|a| *a == c);
    text.bytes().all(|c| value(c).is_some())
        && text
            .bytes()
            .last()
            .and_then(value)
            .is_some_and(|v| v % (1 << unused) == 0)
}

/// `$2y$CC$` + 22 characters of salt + 31 of digest.
fn parse_bcrypt(text: &str) -> Result<Hash, String> {
    let bad = || "not a bcrypt hash: `$2y$`, a two-digit cost, `$`, then 53 characters".to_owned();
    let rest = text.get(4..).ok_or_else(bad)?;
    let (cost, salt_and_digest) = rest.split_once('$').ok_or_else(bad)?;
    let cost: u32 = match cost.as_bytes() {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => cost.parse().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let (salt, digest) = match salt_and_digest.len() {
        53 => salt_and_digest.split_at_checked(22).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    // 22 characters carry 16 bytes and 4 spare bits, 31 carry 23 and 2.
    if !canonical_base64(salt, BCRYPT_ALPHABET, 4) || !canonical_base64(digest, BCRYPT_ALPHABET, 2)
    {
        return Err(bad());
    }
    if cost < 4 {
        return Err(format!(
            "bcrypt cost {cost} is below 4, the least bcrypt allows"
        ));
    }
    if cost > MAX_BCRYPT_COST {
        return Err(format!(
            "bcrypt cost {cost} is above {MAX_BCRYPT_COST}: every wrong password would cost \
             {}x a cost-{MAX_BCRYPT_COST} hash; re-hash with `htpasswd -B -C {MAX_BCRYPT_COST}`",
            1u64 << (cost - MAX_BCRYPT_COST).min(32)
        ));
    }
    Ok(Hash::Bcrypt {
        text: text.to_owned(),
        cost,
    })
}

/// After `$5$` or `$6$`: an optional `rounds=N$`, a salt of up to 16
/// characters, `$`, and the encoded digest.
fn parse_sha_crypt(bits: ShaBits, rest: &str) -> Result<Hash, String> {
    let bad = || "not a SHA-crypt hash: `$5$` or `$6$`, optional `rounds=N$`, salt, `$`, digest";
    let (rounds, rest) = match rest.strip_prefix("rounds=") {
        Some(rest) => {
            let (rounds, rest) = rest.split_once('$').ok_or_else(bad)?;
            let rounds: usize = rounds
                .parse()
                .map_err(|_| format!("SHA-crypt rounds {rounds:?} is not a number"))?;
            (rounds, rest)
        }
        None => (DEFAULT_SHA_CRYPT_ROUNDS, rest),
    };
    let (salt, encoded) = rest.split_once('$').ok_or_else(bad)?;
    if salt.len() > 16 || salt.contains([':', '\n']) {
        return Err("a SHA-crypt salt has at most 16 characters".into());
    }
    if encoded.len() != bits.encoded_len() || !canonical_base64(encoded, CRYPT_ALPHABET, 0) {
        return Err(bad().into());
    }
    if rounds < MIN_SHA_CRYPT_ROUNDS {
        return Err(format!(
            "SHA-crypt rounds {rounds} is below {MIN_SHA_CRYPT_ROUNDS}, the least the format allows"
        ));
    }
    if rounds > MAX_SHA_CRYPT_ROUNDS {
        return Err(format!(
            "SHA-crypt rounds {rounds} is above {MAX_SHA_CRYPT_ROUNDS}: every wrong password would \
             pay them all; re-hash with fewer rounds (or with `htpasswd -B`)"
        ));
    }
    Ok(Hash::ShaCrypt {
        bits,
        rounds,
        salt: salt.to_owned(),
        encoded: encoded.to_owned(),
    })
}

/// The dummy for unknown users: the cost most users' hashes have (the
/// higher one on a tie), so that for most users a wrong password and an
/// unknown user look alike. Hash every user alike to cover them all.
fn dummy_for<'a>(hashes: impl Iterator<Item = &'a Hash>) -> Hash {
    let mut counts: Vec<(Cost, usize)> = Vec::new();
    for cost in hashes.map(Hash::cost) {
        match counts.iter_mut().find(|(c, _)| *c == cost) {
            Some((_, n)) => *n += 1,
            None => counts.push((cost, 1)),
        }
    }
    let commonest = counts
        .into_iter()
        .max_by_key(|(cost, n)| (*n, *cost))
        .map_or(Cost::Sha1, |(cost, _)| cost);
    Hash::dummy(commonest)
}

struct BasicAuth {
    /// `Authorization: Basic ...`.
    location: Location,
    realm: String,
    users: HashMap<String, Hash>,
    /// What an unknown user's password is verified against.
    dummy: Hash,
    user_header: Option<HeaderName>,
    forward: bool,
    /// SHA-256 of `user:password` pairs verified before, to the user.
    verified: Mutex<VerifiedCache<String>>,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    Ok(Box::new(parse(config)?))
}

fn parse(config: &serde_json::Value) -> Result<BasicAuth, ParamError> {
    let params: Params = parse_params(config)?;
    let user_header = match params.user_header {
        Some(name) => Some(HeaderName::parse(&name).map_err(|e| ParamError::at("user_header", e))?),
        None => None,
    };
    let mut users = HashMap::new();
    let mut add = |field: String, name: &str, hash: &str| {
        if name.is_empty() || name.contains(':') {
            return Err(ParamError::at(
                field,
                "a user name is not empty and has no `:`",
            ));
        }
        if user_header.is_some() && HeaderValue::parse(name).is_err() {
            return Err(ParamError::at(
                field,
                "this user name cannot be sent in `user_header`: it has CR, LF or NUL",
            ));
        }
        let hash = Hash::parse(hash.trim()).map_err(|e| ParamError::at(field.clone(), e))?;
        if users.insert(name.to_owned(), hash).is_some() {
            return Err(ParamError::at(
                field,
                format!("user {name:?} is listed twice"),
            ));
        }
        Ok(())
    };
    for (i, user) in params.users.iter().enumerate() {
        add(format!("users[{i}]"), &user.name, &user.hash)?;
    }
    if let Some(file) = &params.htpasswd {
        for (i, line) in file.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let field = format!("htpasswd line {}", i + 1);
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| ParamError::at(field.clone(), "not `user:hash`"))?;
            add(field, name, hash)?;
        }
    }
    if users.is_empty() {
        return Err(ParamError::at(
            "users",
            "give at least one user, in `users` or `htpasswd`",
        ));
    }
    let authorization = HeaderName::parse("authorization").map_err(|e| ParamError::at("", e))?;
    Ok(BasicAuth {
        location: Location::Header(authorization, "Basic ".into()),
        realm: params.realm.unwrap_or_else(|| "restricted".into()),
        dummy: dummy_for(users.values()),
        users,
        user_header,
        forward: params.forward,
        verified: Mutex::new(VerifiedCache::new(CACHE_SIZE)),
    })
}

/// `user` and `password` from the base64 of `user:password`, if it is
/// that and not longer than [`MAX_CREDENTIALS_BYTES`].
fn credentials(encoded: &str) -> Option<(String, String)> {
    let decoded = Base64::decode_to_vec(encoded, None).ok()?;
    if decoded.len() > MAX_CREDENTIALS_BYTES {
        return None;
    }
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl BasicAuth {
    /// Whether these credentials authenticate `user`.
    fn authenticate(&self, user: &str, password: &str) -> bool {
        let mut hasher = Sha256::new();
        hasher.update(user.as_bytes());
        hasher.update(b":");
        hasher.update(password.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.get(&key, 0).is_some_and(|u| u == user) {
                return true;
            }
        }
        let known = match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                // The same work as for a known user, and never a match.
                std::hint::black_box(self.dummy.verify(password));
                false
            }
        };
        if !known {
            return false;
        }
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        // Good until the configuration changes: nothing expires a password.
        verified.insert(key, user.to_owned(), 0, u64::MAX, 0);
        true
    }

    fn refuse(&self, cx: &Context, status: u16, why: &str) -> Action {
        log::debug!(
            "basic-auth: route {:?} denied {status}: {why}, caller {}",
            cx.route().chain,
            cx.caller()
        );
        if status == CredentialError::Duplicate.status() {
            return Action::Respond(LocalReply::text(status, "more than one credential\n"));
        }
        Action::Respond(LocalReply {
            status,
            headers: vec![
                (
                    "www-authenticate".into(),
                    format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm),
                ),
                ("content-type".into(), "text/plain".into()),
            ],
            body: b"missing or invalid credentials\n".to_vec(),
        })
    }
}

impl Policy for BasicAuth {
    fn credential_locations(&self) -> Vec<Location> {
        vec![self.location.clone()]
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn asserted_headers(&self) -> Vec<HeaderName> {
        self.user_header.iter().cloned().collect()
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let encoded = match self.location.find(cx) {
            Ok(Some(encoded)) => encoded,
            Ok(None) => return self.refuse(cx, 401, "no Basic credentials"),
            Err(error) => return self.refuse(cx, error.status(), &error.to_string()),
        };
        let Some((user, password)) = credentials(&encoded) else {
            return self.refuse(cx, 401, "malformed or overlong Basic credentials");
        };
        if !self.authenticate(&user, &password) {
            return self.refuse(cx, 401, "unknown user or wrong password");
        }
        if !self.forward {
            self.location.strip(cx);
        }
        if let Some(header) = &self.user_header {
            // Checked at load: every user name is a valid header value.
            match HeaderValue::parse(&user) {
                Ok(value) => cx.headers_mut().set_only(header, &value),
                Err(_) => cx.headers_mut().remove_variants(header),
            }
        }
        cx.metadata_mut().insert(USER.into(), user.into());
        Action::Continue
    }
}

#[cfg(test)]
mod tests;
