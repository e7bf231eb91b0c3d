//! Where clients put credentials (a header, with or without a scheme
//! prefix, a query parameter, a cookie), how to take them out before the
//! upstream, and how to compare secrets. Shared by the authentication
//! policies so that each reads and strips credentials the same way.

use serde::Deserialize;

use crate::headers::{HeaderName, HeaderValue, RequestTarget};
use crate::policy::Context;
use crate::registry::ParamError;

/// Where a credential is read from, as configured:
/// `{header: authorization, prefix: "Bearer "}`, `{query: access_token}` or
/// `{cookie: session}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocation {
    /// A request header.
    pub header: Option<String>,
    /// With `header`: a scheme the value must start with (compared without
    /// regard to case), removed from the credential.
    pub prefix: Option<String>,
    /// A query parameter.
    pub query: Option<String>,
    /// A cookie.
    pub cookie: Option<String>,
}

/// A checked [`RawLocation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header, and the prefix its value must carry.
    Header(HeaderName, String),
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

impl Location {
    /// Checks a configured location; errors name `field`.
    pub fn parse(raw: RawLocation, field: &str) -> Result<Self, ParamError> {
        let one = "give exactly one of `header`, `query` or `cookie`";
        match raw {
            RawLocation {
                header: Some(name),
                prefix,
                query: None,
                cookie: None,
            } => {
                let name = HeaderName::parse(&name)
                    .map_err(|e| ParamError::at(format!("{field}.header"), e))?;
                Ok(Self::Header(name, prefix.unwrap_or_default()))
            }
            RawLocation {
                header: None,
                prefix: None,
                query: Some(name),
                cookie: None,
            } if !name.is_empty() => Ok(Self::Query(name)),
            RawLocation {
                header: None,
                prefix: None,
                query: None,
                cookie: Some(name),
            } if !name.is_empty() => Ok(Self::Cookie(name)),
            RawLocation {
                prefix: Some(_),
                header: None,
                ..
            } => Err(ParamError::at(
                format!("{field}.prefix"),
                "a prefix goes with `header`",
            )),
            _ => Err(ParamError::at(field.to_owned(), one)),
        }
    }

    /// The credential the request carries here, if any (empty counts as
    /// none).
    pub fn find<'a>(&self, cx: &'a Context) -> Option<&'a str> {
        let request = cx.request_headers();
        match self {
            Self::Header(name, prefix) => {
                let value = request.get(name.as_str())?;
                let head = value.get(..prefix.len())?;
                if !head.eq_ignore_ascii_case(prefix) {
                    return None;
                }
                value.get(prefix.len()..).map(str::trim)
            }
            Self::Query(name) => query_param(request.get(":path")?, name),
            Self::Cookie(name) => request
                .get_all("cookie")
                .flat_map(|line| line.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(n, _)| n == name)
                .map(|(_, value)| value),
        }
        .filter(|credential| !credential.is_empty())
    }

    /// Removes the credential from the request before the upstream: the
    /// header, the query parameter, or the one cookie.
    pub fn strip(&self, cx: &mut Context) {
        match self {
            Self::Header(name, _) => cx.headers_mut().remove(name),
            Self::Query(name) => {
                let Some(path) = cx.request_headers().get(":path") else {
                    return;
                };
                let Some(rewritten) = without_query_param(path, name) else {
                    return;
                };
                if let Ok(value) = HeaderValue::parse(&rewritten) {
                    cx.headers_mut().rewrite(RequestTarget::Path, &value);
                }
            }
            Self::Cookie(name) => {
                let kept: Vec<&str> = cx
                    .request_headers()
                    .get_all("cookie")
                    .flat_map(|line| line.split(';'))
                    .map(str::trim)
                    .filter(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n) != name)
                    .filter(|pair| !pair.is_empty())
                    .collect();
                let Ok(cookie) = HeaderName::parse("cookie") else {
                    return;
                };
                match HeaderValue::parse(&kept.join("; ")) {
                    Ok(value) if !kept.is_empty() => cx.headers_mut().set(&cookie, &value),
                    _ => cx.headers_mut().remove(&cookie),
                }
            }
        }
    }
}

/// The first value of query parameter `name` in a request path, not
/// decoded.
pub fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// `path` without query parameter `name`; `None` if it has no query.
pub fn without_query_param(path: &str, name: &str) -> Option<String> {
    let (path_only, query) = path.split_once('?')?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n) != name)
        .collect();
    Some(if kept.is_empty() {
        path_only.to_owned()
    } else {
        format!("{path_only}?{}", kept.join("&"))
    })
}

/// Compares two secrets' digests without an early exit, so the time taken
/// does not reveal where they first differ.
pub fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn location(yaml: &str) -> Result<Location, String> {
        let raw: RawLocation = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        Location::parse(raw, "from[0]").map_err(|e| format!("{}: {}", e.field, e.reason))
    }

    #[test]
    fn finds_credentials_in_headers_queries_and_cookies() {
        let cx = testing::context(testing::request(
            "GET",
            "/a?x=1&access_token=q&y=2",
            &[
                ("authorization", "bearer  abc"),
                ("cookie", "theme=dark; session=s3"),
                ("cookie", "other=1"),
            ],
        ));
        let bearer = location("{header: authorization, prefix: 'Bearer '}").unwrap();
        assert_eq!(bearer.find(&cx), Some("abc"));
        let basic = location("{header: authorization, prefix: 'Basic '}").unwrap();
        assert_eq!(basic.find(&cx), None);
        assert_eq!(
            location("{query: access_token}").unwrap().find(&cx),
            Some("q")
        );
        assert_eq!(location("{cookie: session}").unwrap().find(&cx), Some("s3"));
        assert_eq!(location("{cookie: missing}").unwrap().find(&cx), None);
    }

    #[test]
    fn refuses_ambiguous_locations() {
        assert_eq!(
            location("{header: a, query: b}").unwrap_err(),
            "from[0]: give exactly one of `header`, `query` or `cookie`"
        );
        assert_eq!(
            location("{query: a, prefix: x}").unwrap_err(),
            "from[0].prefix: a prefix goes with `header`"
        );
    }

    #[test]
    fn strips_one_query_parameter() {
        assert_eq!(
            without_query_param("/a?k=1&b=2", "k").as_deref(),
            Some("/a?b=2")
        );
        assert_eq!(without_query_param("/a?k=1", "k").as_deref(), Some("/a"));
        assert_eq!(without_query_param("/a", "k"), None);
    }

    #[test]
    fn compares_digests_of_equal_length_only() {
        assert!(same_digest(b"abc", b"abc"));
        assert!(!same_digest(b"abc", b"abd"));
        assert!(!same_digest(b"abc", b"ab"));
    }
}
