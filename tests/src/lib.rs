//! Helpers for the end-to-end tests: a real Envoy with the compiled filter,
//! the echo upstream, and a small HTTP client.

#![allow(
    clippy::panic,
    reason = "test support: a step that fails must fail the test that called it"
)]

pub mod auth_chain;
pub mod authz;
pub mod certs;
pub mod chains;
pub mod jwks;
pub mod load;
pub mod measure;
pub mod ratelimit;
pub mod raw;
pub mod wrk;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use local_envoy::echo::EchoUpstream;
use local_envoy::shim::Shim;
use local_envoy::{filter_wasm, filters, Envoy, EnvoyError, ListenerTls, Options};
use serde_json::Value;

/// Where the policies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// Inside Envoy, as the Proxy-Wasm filter.
    Wasm,
    /// Out of process, in the ext_proc shim behind Envoy's ext_proc filter.
    ExtProc,
}

impl Host {
    /// Both hosts.
    pub const ALL: [Host; 2] = [Host::Wasm, Host::ExtProc];
}

/// Envoy running the policy engine (in either host) in front of an echo
/// upstream. Fields drop in order: Envoy, then the shim, then the upstream.
pub struct Stack {
    /// Envoy.
    pub envoy: Envoy,
    /// The ext_proc shim, when the host is [`Host::ExtProc`].
    pub shim: Option<Shim>,
    /// The echo upstream.
    pub upstream: EchoUpstream,
    scratch: PathBuf,
}

static SCRATCH: AtomicU32 = AtomicU32::new(0);

fn scratch_dir() -> Result<PathBuf, EnvoyError> {
    let dir = std::env::temp_dir().join(format!(
        "policy-stack-{}-{}",
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| EnvoyError::Io("creating a scratch dir".into(), e))?;
    Ok(dir)
}

impl Stack {
    /// Starts the Wasm host on `plugin_config`, failing the test if Envoy
    /// does not come up.
    pub fn start(plugin_config: &str) -> Self {
        Self::start_on(Host::Wasm, plugin_config)
    }

    /// Starts `host` on `plugin_config`, failing the test if it does not
    /// come up.
    pub fn start_on(host: Host, plugin_config: &str) -> Self {
        Self::try_start_on(host, plugin_config).unwrap_or_else(|e| panic!("{host:?}: {e}"))
    }

    /// Starts the Wasm host from another build's `module`.
    pub fn try_start_wasm_module(module: &Path, plugin_config: &str) -> Result<Self, EnvoyError> {
        Self::try_start_with(Host::Wasm, Some(module), plugin_config, None)
    }

    /// Starts `host` on `plugin_config` behind a TLS listener.
    pub fn start_tls(host: Host, plugin_config: &str, tls: ListenerTls) -> Self {
        Self::try_start_with(host, None, plugin_config, Some(tls))
            .unwrap_or_else(|e| panic!("{host:?}: {e}"))
    }

    /// Starts `host` on `plugin_config`.
    pub fn try_start_on(host: Host, plugin_config: &str) -> Result<Self, EnvoyError> {
        Self::try_start_with(host, None, plugin_config, None)
    }

    /// Starts `host` on `plugin_config` with further Envoy clusters (those
    /// the configuration's remote documents are fetched through) and this
    /// many Envoy workers.
    pub fn start_with_clusters(
        host: Host,
        plugin_config: &str,
        clusters: Vec<Value>,
        workers: u32,
    ) -> Self {
        Self::try_start_full(host, None, plugin_config, None, clusters, workers, true)
            .unwrap_or_else(|e| panic!("{host:?}: {e}"))
    }

    /// Starts `host` on `plugin_config` with Envoy's own edge hardening off
    /// (see `Options::edge_hardening`): the engine alone stands between the
    /// client's raw path and headers and the upstream.
    pub fn start_without_edge_hardening(host: Host, plugin_config: &str) -> Self {
        Self::try_start_full(host, None, plugin_config, None, Vec::new(), 1, false)
            .unwrap_or_else(|e| panic!("{host:?}: {e}"))
    }

    fn try_start_with(
        host: Host,
        module: Option<&Path>,
        plugin_config: &str,
        tls: Option<ListenerTls>,
    ) -> Result<Self, EnvoyError> {
        Self::try_start_full(host, module, plugin_config, tls, Vec::new(), 1, true)
    }

    fn try_start_full(
        host: Host,
        module: Option<&Path>,
        plugin_config: &str,
        tls: Option<ListenerTls>,
        clusters: Vec<Value>,
        workers: u32,
        edge_hardening: bool,
    ) -> Result<Self, EnvoyError> {
        let upstream = EchoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| EnvoyError::Io("starting the echo upstream".into(), e))?;
        let scratch = scratch_dir()?;
        let (options, shim) = match host {
            Host::Wasm => {
                let module = module.map_or_else(filter_wasm, Path::to_path_buf);
                assert!(
                    module.exists(),
                    "{} is missing: build it with `make build` (make test does)",
                    module.display()
                );
                let filter = filters::policy_engine(&module, plugin_config);
                (Options::new(vec![filter], upstream.addr()), None)
            }
            Host::ExtProc => {
                let config = scratch.join("policies.yaml");
                std::fs::write(&config, plugin_config)
                    .map_err(|e| EnvoyError::Io("writing the shim config".into(), e))?;
                let shim = Shim::start(
                    &config,
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    None,
                    "debug",
                )?;
                let mut options = Options::new(vec![filters::ext_proc()], upstream.addr());
                options.clusters = vec![filters::ext_proc_cluster(shim.addr())];
                (options, Some(shim))
            }
        };
        let mut options = Options {
            tls,
            concurrency: workers,
            edge_hardening,
            decision_access_log: host == Host::Wasm,
            ..options
        };
        options.clusters.extend(clusters);
        let envoy = Envoy::start(&options)?;
        Ok(Self {
            envoy,
            shim,
            upstream,
            scratch,
        })
    }

    /// The shim's configuration file (ext_proc host only).
    pub fn shim_config(&self) -> PathBuf {
        self.scratch.join("policies.yaml")
    }

    /// Sends a request through Envoy.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(&self.envoy.url(path), method, headers, None)
    }

    /// The decision-log lines the host wrote so far, parsed: the shim's
    /// standard output, or Envoy's log for the Wasm filter.
    pub fn decisions(&self) -> Vec<Value> {
        let text = match &self.shim {
            Some(shim) => shim.stdout(),
            None => self.envoy.log(),
        };
        text.lines()
            .filter_map(|line| {
                let json = match &self.shim {
                    Some(_) => line.strip_prefix('{').map(|_| line)?,
                    None => line.split_once("decision ")?.1,
                };
                serde_json::from_str(json).ok()
            })
            .collect()
    }

    /// The decision-log lines, once there are at least `count`.
    pub fn wait_for_decisions(&self, count: usize) -> Vec<Value> {
        self.wait_for_decisions_until(&format!("{count} decision lines"), |lines| {
            lines.len() >= count
        })
    }

    /// The first decision-log line that `matches`, once one is written
    /// (hosts write lines in their own time, not in request order).
    pub fn wait_for_decision(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_decisions_until(what, |lines| lines.iter().any(&matches))
            .into_iter()
            .find(|line| matches(line))
            .unwrap_or_default()
    }

    /// The decision-log lines, once `done` says they are all there (within
    /// 10 seconds, or the test fails naming `what`).
    fn wait_for_decisions_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.decisions();
            if done(&found) {
                return found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} after 10 s; {} decision lines",
                found.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The `.yaml` files directly in `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
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
    /// A response header's values joined with `,` (as the echo upstream
    /// reports request headers), or `None` if absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
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
    pub fn path(&self) -> Option<&str> {
        self.0.get("path")?.as_str()
    }

    /// The body the upstream received.
    pub fn body(&self) -> &str {
        self.0.get("body").and_then(Value::as_str).unwrap_or("")
    }
}

/// Sends one HTTP/1.1 request; any status is a reply, not an error, and
/// redirects are not followed.
pub fn send(url: &str, method: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
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
