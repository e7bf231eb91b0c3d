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
//! too weak. bcrypt and SHA-crypt are slow on purpose, so each worker keeps
//! a bounded cache of credentials it has verified, keyed by their SHA-256:
//! a client that sends the same credentials again pays one hash, not one
//! bcrypt. The user name goes to the metadata (`basic-auth.user`); the
//! `Authorization` header is removed before the upstream unless
//! `forward: true`. A missing or wrong credential gets 401 with
//! `WWW-Authenticate: Basic realm="..."`; passwords are never logged.

use std::collections::HashMap;
use std::sync::Mutex;

use ct_codecs::{Base64, Decoder};
use policy_executor::credentials::{same_digest, Location};
use policy_executor::{
    parse_params, Action, Context, HeaderName, HeaderValue, LocalReply, ParamError, Phases, Policy,
    PolicyFactory,
};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "basic-auth",
    version: "0.1.0",
    build,
};

/// The metadata key later policies read the user name from.
pub const USER: &str = "basic-auth.user";

/// Verified credentials kept per worker.
const CACHE_SIZE: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    realm: Option<String>,
    #[serde(default)]
    users: Vec<RawUser>,
    htpasswd: Option<String>,
    user_header: Option<String>,
    #[serde(default)]
    forward: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    hash: String,
}

/// A stored password hash.
enum Hash {
    Bcrypt(String),
    Sha256Crypt(String),
    Sha512Crypt(String),
    /// `{SHA}`: the SHA-1 digest itself.
    Sha1([u8; 20]),
}

impl Hash {
    fn parse(text: &str) -> Result<Self, String> {
        if ["$2a$", "$2b$", "$2y$", "$2x$"]
            .iter()
            .any(|p| text.starts_with(p))
        {
            return Ok(Self::Bcrypt(text.to_owned()));
        }
        if text.starts_with("$5$") {
            return Ok(Self::Sha256Crypt(text.to_owned()));
        }
        if text.starts_with("$6$") {
            return Ok(Self::Sha512Crypt(text.to_owned()));
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

    fn verify(&self, password: &str) -> bool {
        match self {
            Self::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            Self::Sha256Crypt(hash) => sha_crypt::sha256_check(password, hash).is_ok(),
            Self::Sha512Crypt(hash) => sha_crypt::sha512_check(password, hash).is_ok(),
            Self::Sha1(digest) => same_digest(&Sha1::digest(password.as_bytes()), digest),
        }
    }
}

struct BasicAuth {
    /// `Authorization: Basic ...`.
    location: Location,
    realm: String,
    users: HashMap<String, Hash>,
    user_header: Option<HeaderName>,
    forward: bool,
    /// SHA-256 of `user:password` pairs verified before, to the user.
    verified: Mutex<HashMap<[u8; 32], String>>,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    Ok(Box::new(parse(config)?))
}

fn parse(config: &serde_json::Value) -> Result<BasicAuth, ParamError> {
    let params: Params = parse_params(config)?;
    let mut users = HashMap::new();
    let mut add = |field: String, name: &str, hash: &str| {
        if name.is_empty() || name.contains(':') {
            return Err(ParamError::at(
                field,
                "a user name is not empty and has no `:`",
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
    let user_header = match params.user_header {
        Some(name) => Some(HeaderName::parse(&name).map_err(|e| ParamError::at("user_header", e))?),
        None => None,
    };
    let authorization = HeaderName::parse("authorization").map_err(|e| ParamError::at("", e))?;
    Ok(BasicAuth {
        location: Location::Header(authorization, "Basic ".into()),
        realm: params.realm.unwrap_or_else(|| "restricted".into()),
        users,
        user_header,
        forward: params.forward,
        verified: Mutex::new(HashMap::new()),
    })
}

/// `user` and `password` from the base64 of `user:password`.
fn credentials(encoded: &str) -> Option<(String, String)> {
    let decoded = Base64::decode_to_vec(encoded, None).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl BasicAuth {
    /// The user these credentials authenticate, if any.
    fn authenticate(&self, user: &str, password: &str) -> bool {
        let mut hasher = Sha256::new();
        hasher.update(user.as_bytes());
        hasher.update(b":");
        hasher.update(password.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.get(&key).is_some_and(|u| u == user) {
                return true;
            }
        }
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        if !hash.verify(password) {
            return false;
        }
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= CACHE_SIZE {
            verified.clear();
        }
        verified.insert(key, user.to_owned());
        true
    }

    fn unauthorized(&self, cx: &Context, why: &str) -> Action {
        log::debug!(
            "basic-auth: route {:?} denied: {why}, caller {}",
            cx.route().chain,
            cx.caller()
        );
        Action::Respond(LocalReply {
            status: 401,
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
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let Some((user, password)) = self.location.find(cx).and_then(credentials) else {
            return self.unauthorized(cx, "no Basic credentials");
        };
        if !self.authenticate(&user, &password) {
            return self.unauthorized(cx, "unknown user or wrong password");
        }
        if !self.forward {
            self.location.strip(cx);
        }
        if let Some(header) = &self.user_header {
            match HeaderValue::parse(&user) {
                Ok(value) => cx.headers_mut().set(header, &value),
                Err(_) => cx.headers_mut().remove(header),
            }
        }
        cx.metadata_mut().insert(USER.into(), user.into());
        Action::Continue
    }
}

#[cfg(test)]
mod tests;
