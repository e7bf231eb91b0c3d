//! `redirect`: answers with a redirect, like Envoy's route `redirect` action.
//!
//! ```yaml
//! - name: redirect
//!   when: 'request.scheme == "http"'
//!   config: { scheme: https }          # and/or host, port, path, strip_query
//!                                      # status: 301 (default) | 302 | 303 | 307 | 308
//! ```
//!
//! The `Location` is the request's own URL with the given parts replaced.
//! The request's port is kept only when neither the scheme nor the host
//! changes (a port that suits `http` rarely suits `https`); `port` sets one.

use policy_executor::{
    parse_params, Action, Context, HeaderValue, LocalReply, ParamError, Phases, Policy,
    PolicyFactory,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "redirect",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `redirect`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// The scheme of the new location (default the request's).
    scheme: Option<Scheme>,
    /// The host of the new location (default the request's).
    host: Option<String>,
    /// The port of the new location (default: the request's, kept only
    /// when neither the scheme nor the host changes).
    port: Option<u16>,
    /// The path of the new location (default the request's).
    path: Option<String>,
    /// Drop the request's query (default: kept).
    #[serde(default)]
    strip_query: bool,
    /// 301, 302, 303, 307 or 308 (default 301).
    #[serde(default = "moved_permanently")]
    status: u16,
}

/// A URL scheme.
#[derive(Deserialize, Clone, Copy)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", schemars(rename = "scheme"))]
enum Scheme {
    /// `http`
    Http,
    /// `https`
    Https,
}

fn moved_permanently() -> u16 {
    301
}

struct Redirect {
    scheme: Option<&'static str>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    strip_query: bool,
    status: u16,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    if params.scheme.is_none()
        && params.host.is_none()
        && params.port.is_none()
        && params.path.is_none()
        && !params.strip_query
    {
        return Err(ParamError::at(
            ".",
            "give at least one of scheme, host, port, path or strip_query",
        ));
    }
    if !matches!(params.status, 301 | 302 | 303 | 307 | 308) {
        return Err(ParamError::at(
            "status",
            format!(
                "{} is not a redirect status (301, 302, 303, 307, 308)",
                params.status
            ),
        ));
    }
    if let Some(host) = &params.host {
        if host.is_empty()
            || host.contains(['/', '?', '#', '@', ' '])
            || HeaderValue::parse(host).is_err()
        {
            return Err(ParamError::at(
                "host",
                format!("{host:?} is not a host name"),
            ));
        }
    }
    if let Some(path) = &params.path {
        if !path.starts_with('/') || HeaderValue::parse(path).is_err() {
            return Err(ParamError::at(
                "path",
                format!("{path:?} is not a path starting with '/'"),
            ));
        }
    }
    if params.port == Some(0) {
        return Err(ParamError::at("port", "0 is not a port"));
    }
    Ok(Box::new(Redirect {
        scheme: params.scheme.map(|s| match s {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }),
        host: params.host,
        port: params.port,
        path: params.path,
        strip_query: params.strip_query,
        status: params.status,
    }))
}

impl Redirect {
    fn location(&self, cx: &Context) -> String {
        let request = cx.request_headers();
        let scheme = self
            .scheme
            .unwrap_or_else(|| request.get(":scheme").unwrap_or("http"));
        let authority = request
            .get(":authority")
            .or_else(|| request.get("host"))
            .unwrap_or_default();
        let (old_host, old_port) = split_authority(authority);
        let host = self.host.as_deref().unwrap_or(old_host);
        let keeps_port = self.scheme.is_none() && self.host.is_none();
        let port = match (self.port, old_port) {
            (Some(port), _) => format!(":{port}"),
            (None, Some(port)) if keeps_port => format!(":{port}"),
            _ => String::new(),
        };
        let old_path = request.get(":path").unwrap_or("/");
        let (path_only, query) = match old_path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (old_path, None),
        };
        let path = self.path.as_deref().unwrap_or(path_only);
        let query = match query {
            Some(q) if !self.strip_query && !path.contains('?') => format!("?{q}"),
            _ => String::new(),
        };
        format!("{scheme}://{host}{port}{path}{query}")
    }
}

/// `host[:port]` or `[v6][:port]` into host and port text.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    let port_start = match authority.rfind(']') {
        Some(end) => authority[end..].find(':').map(|i| end + i),
        None => authority.rfind(':'),
    };
    match port_start {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    }
}

impl Policy for Redirect {
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        let location = self.location(cx);
        // Every part is a checked header value, but the request's own path is
        // not ours to vouch for.
        if HeaderValue::parse(&location).is_err() {
            return Action::Respond(LocalReply::text(400, "bad request\n"));
        }
        Action::Respond(LocalReply {
            status: self.status,
            headers: vec![("location".into(), location)],
            body: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_executor::testing::{engine_for, start};
    use policy_executor::{HeaderMap, Outcome};
    use serde_json::json;

    fn redirect(config: serde_json::Value, authority: &str, path: &str) -> (u16, String) {
        let engine = engine_for(FACTORY, config).unwrap_or_else(|e| panic!("{e}"));
        let headers = HeaderMap::from_pairs([
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            (":scheme", "http"),
        ]);
        let mut x = start(&engine, headers).unwrap();
        match x.on_request_headers() {
            Outcome::Respond(reply) => {
                let location = reply
                    .headers
                    .iter()
                    .find(|(n, _)| n == "location")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (reply.status, location)
            }
            other => panic!("no redirect: {other:?}"),
        }
    }

    #[test]
    fn builds_the_location_from_the_request() {
        assert_eq!(
            redirect(json!({"scheme": "https"}), "example.com:8080", "/a?b=1"),
            (301, "https://example.com/a?b=1".into())
        );
        assert_eq!(
            redirect(
                json!({"scheme": "https", "port": 8443}),
                "example.com:8080",
                "/a"
            ),
            (301, "https://example.com:8443/a".into())
        );
        assert_eq!(
            redirect(
                json!({"host": "new.example.com", "path": "/welcome", "strip_query": true, "status": 308}),
                "old.example.com",
                "/old?x=1"
            ),
            (308, "http://new.example.com/welcome".into())
        );
        assert_eq!(
            redirect(json!({"path": "/v2"}), "[::1]:9000", "/v1?q"),
            (301, "http://[::1]:9000/v2?q".into())
        );
    }

    #[test]
    fn bad_parameters_are_refused() {
        let error = |config| engine_for(FACTORY, config).err().unwrap().to_string();
        assert!(error(json!({})).contains("at least one of"));
        assert!(error(json!({"status": 200, "scheme": "https"})).contains("field config.status"));
        assert!(error(json!({"path": "v2"})).contains("field config.path"));
        assert!(error(json!({"host": "a/b"})).contains("field config.host"));
    }
}
