//! Helpers for the end-to-end tests: a real Envoy with the compiled filter,
//! the echo upstream, and a small HTTP client.

#![allow(
    clippy::panic,
    reason = "test support: a step that fails must fail the test that called it"
)]

use std::net::SocketAddr;
use std::time::Duration;

use local_envoy::echo::EchoUpstream;
use local_envoy::{filter_wasm, filters, Envoy, EnvoyError, Options};
use serde_json::Value;

/// Envoy running the policy filter in front of an echo upstream.
pub struct Stack {
    /// Envoy with the filter (declared first: it stops before the upstream).
    pub envoy: Envoy,
    /// The echo upstream.
    pub upstream: EchoUpstream,
}

/// Starts the echo upstream and Envoy with the filter on `plugin_config`.
pub fn try_start(plugin_config: &str) -> Result<(EchoUpstream, Envoy), EnvoyError> {
    let upstream = EchoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| EnvoyError::Io("starting the echo upstream".into(), e))?;
    let module = filter_wasm();
    assert!(
        module.exists(),
        "{} is missing: build it with `make wasm` (make test does)",
        module.display()
    );
    let options = Options::new(
        vec![filters::policy_engine(&module, plugin_config)],
        upstream.addr(),
    );
    let envoy = Envoy::start(&options)?;
    Ok((upstream, envoy))
}

impl Stack {
    /// Starts the stack, failing the test if Envoy does not come up.
    pub fn start(plugin_config: &str) -> Self {
        match try_start(plugin_config) {
            Ok((upstream, envoy)) => Self { envoy, upstream },
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends a request through Envoy.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(&self.envoy.url(path), method, headers, None)
    }
}

/// What the client got back.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: String,
}

impl Reply {
    /// The first value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request the echo upstream received, if this reply came from it.
    pub fn upstream(&self) -> Option<Echoed> {
        let json: Value = serde_json::from_str(&self.body).ok()?;
        json.get("method")?;
        Some(Echoed(json))
    }
}

/// The request as the echo upstream saw it.
#[derive(Debug)]
pub struct Echoed(pub Value);

impl Echoed {
    /// A request header the upstream received (repeats joined with `,`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0.get("headers")?.get(name)?.as_str()
    }

    /// The path (and query) the upstream received.
    pub fn path(&self) -> &str {
        self.0.get("path").and_then(Value::as_str).unwrap_or("")
    }

    /// The body the upstream received.
    pub fn body(&self) -> &str {
        self.0.get("body").and_then(Value::as_str).unwrap_or("")
    }
}

/// Sends one HTTP/1.1 request; any status is a reply, not an error.
pub fn send(url: &str, method: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(body.unwrap_or("").to_owned())
        .unwrap_or_else(|e| panic!("building the request: {e}"));
    let mut response = agent
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}
