//! JSON Web Key Sets (RFC 7517) turned into verifying keys.
//!
//! Each JWK becomes one verifying key per allowed algorithm its key type
//! can serve, built once when the set is parsed, so a request only picks
//! keys by `alg` and `kid`. The key type decides which algorithms a key
//! may verify: an RSA key never verifies an HMAC token (the classic
//! algorithm confusion), and `none` is not an algorithm at all.

use std::fmt;

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::Decoder;
use serde::Deserialize;

/// A signature algorithm this policy accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub(crate) const ALL: [Algorithm; 12] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// One JWK as it appears in a set; members this policy does not use are
/// ignored, as RFC 7517 requires.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

/// A key ready to verify tokens of one algorithm.
enum Verifier {
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
}

impl Verifier {
    fn verify(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<NoCustomClaims>, jwt_simple::Error> {
        let options = Some(options);
        match self {
            Self::HS256(k) => k.verify_token(token, options),
            Self::HS384(k) => k.verify_token(token, options),
            Self::HS512(k) => k.verify_token(token, options),
            Self::RS256(k) => k.verify_token(token, options),
            Self::RS384(k) => k.verify_token(token, options),
            Self::RS512(k) => k.verify_token(token, options),
            Self::PS256(k) => k.verify_token(token, options),
            Self::PS384(k) => k.verify_token(token, options),
            Self::PS512(k) => k.verify_token(token, options),
            Self::ES256(k) => k.verify_token(token, options),
            Self::ES384(k) => k.verify_token(token, options),
            Self::EdDSA(k) => k.verify_token(token, options),
        }
    }
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    verifier: Verifier,
}

/// The verifying keys of one provider.
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

/// Why a JWK set could not be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KeySetError(pub(crate) String);

impl fmt::Display for KeySetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a token's header names, and whether the set has such a key.
pub(crate) enum Lookup {
    /// Keys that may have signed it.
    Found,
    /// The token names a `kid` the set does not have: the set may be stale.
    UnknownKid,
    /// No key of the token's algorithm at all.
    NoKey,
}

impl KeySet {
    /// Parses a JWK set. Keys of types or curves the allowed algorithms
    /// cannot use are skipped (a set often holds encryption keys too); a
    /// set with no usable key at all is an error.
    pub(crate) fn parse(json: &[u8], allowed: &[Algorithm]) -> Result<Self, KeySetError> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| KeySetError(format!("not a JWK set: {e}")))?;
        let mut keys = Vec::new();
        for (i, value) in set.keys.into_iter().enumerate() {
            let jwk: Jwk = serde_json::from_value(value)
                .map_err(|e| KeySetError(format!("keys[{i}]: {e}")))?;
            if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            for &algorithm in allowed {
                if jwk.alg.as_deref().is_some_and(|a| a != algorithm.name()) {
                    continue;
                }
                if let Some(verifier) = verifier(&jwk, algorithm)
                    .map_err(|e| KeySetError(format!("keys[{i}] ({}): {e}", jwk.kty)))?
                {
                    keys.push(Key {
                        kid: jwk.kid.clone(),
                        algorithm,
                        verifier,
                    });
                }
            }
        }
        if keys.is_empty() {
            let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
            return Err(KeySetError(format!(
                "no key in the set can verify {}",
                names.join(", ")
            )));
        }
        Ok(Self { keys })
    }

    fn candidates<'a>(
        &'a self,
        algorithm: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.algorithm == algorithm && (kid.is_none() || k.kid.as_deref() == kid))
    }

    /// Whether the set can verify a token with this header.
    pub(crate) fn lookup(&self, algorithm: Algorithm, kid: Option<&str>) -> Lookup {
        if self.candidates(algorithm, kid).next().is_some() {
            Lookup::Found
        } else if kid.is_some() {
            Lookup::UnknownKid
        } else {
            Lookup::NoKey
        }
    }

    /// Verifies the signature and the registered claims with every key the
    /// header allows until one succeeds; the last error otherwise.
    pub(crate) fn verify(
        &self,
        token: &str,
        algorithm: Algorithm,
        kid: Option<&str>,
        options: &VerificationOptions,
    ) -> Result<JWTClaims<NoCustomClaims>, String> {
        let mut last = String::from("no key for this token");
        for key in self.candidates(algorithm, kid) {
            match key.verifier.verify(token, options.clone()) {
                Ok(claims) => return Ok(claims),
                Err(error) => last = error.to_string(),
            }
        }
        Err(last)
    }
}

fn decode(field: &str, value: Option<&String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("member `{field}` is missing"))?;
    Base64UrlSafeNoPadding::decode_to_vec(value, None)
        .map_err(|_| format!("member `{field}` is not base64url"))
}

/// The verifier for `algorithm` from `jwk`, `None` if the key's type
/// cannot serve that algorithm.
fn verifier(jwk: &Jwk, algorithm: Algorithm) -> Result<Option<Verifier>, String> {
    use Algorithm as A;
    let curve = jwk.crv.as_deref();
    let bad = |e: jwt_simple::Error| e.to_string();
    let verifier = match (jwk.kty.as_str(), algorithm) {
        ("oct", A::HS256 | A::HS384 | A::HS512) => {
            let secret = decode("k", jwk.k.as_ref())?;
            match algorithm {
                A::HS256 => Verifier::HS256(HS256Key::from_bytes(&secret)),
                A::HS384 => Verifier::HS384(HS384Key::from_bytes(&secret)),
                _ => Verifier::HS512(HS512Key::from_bytes(&secret)),
            }
        }
        ("RSA", A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512) => {
            let n = decode("n", jwk.n.as_ref())?;
            let e = decode("e", jwk.e.as_ref())?;
            match algorithm {
                A::RS256 => Verifier::RS256(RS256PublicKey::from_components(&n, &e).map_err(bad)?),
                A::RS384 => Verifier::RS384(RS384PublicKey::from_components(&n, &e).map_err(bad)?),
                A::RS512 => Verifier::RS512(RS512PublicKey::from_components(&n, &e).map_err(bad)?),
                A::PS256 => Verifier::PS256(PS256PublicKey::from_components(&n, &e).map_err(bad)?),
                A::PS384 => Verifier::PS384(PS384PublicKey::from_components(&n, &e).map_err(bad)?),
                _ => Verifier::PS512(PS512PublicKey::from_components(&n, &e).map_err(bad)?),
            }
        }
        ("EC", A::ES256) if curve == Some("P-256") => {
            Verifier::ES256(ES256PublicKey::from_bytes(&ec_point(jwk)?).map_err(bad)?)
        }
        ("EC", A::ES384) if curve == Some("P-384") => {
            Verifier::ES384(ES384PublicKey::from_bytes(&ec_point(jwk)?).map_err(bad)?)
        }
        ("OKP", A::EdDSA) if curve == Some("Ed25519") => {
            let x = decode("x", jwk.x.as_ref())?;
            Verifier::EdDSA(Ed25519PublicKey::from_bytes(&x).map_err(bad)?)
        }
        _ => return Ok(None),
    };
    Ok(Some(verifier))
}

/// The uncompressed SEC1 point `04 || x || y` of an EC key.
fn ec_point(jwk: &Jwk) -> Result<Vec<u8>, String> {
    let mut point = vec![4u8];
    point.extend(decode("x", jwk.x.as_ref())?);
    point.extend(decode("y", jwk.y.as_ref())?);
    Ok(point)
}
