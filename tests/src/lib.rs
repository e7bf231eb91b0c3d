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

/// Polls `probe` until it gives a value, and returns that value; fails
/// the test, naming `what`, after `timeout`. Tests wait on a condition this
/// way, never on a sleep that races Envoy.
pub fn eventually<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Option<T>) -> T {
    try_eventually(what, timeout, probe).unwrap_or_else(|e| panic!("{e}"))
}

/// [`eventually`], with the time-out as an error rather than a failed test.
pub fn try_eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{what}: not after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

/// How to start a [`Stack`]: `Stack::builder(host, config)`, then what
/// differs from the defaults (the default build's module, one worker,
/// plaintext, Envoy's edge hardening on, no further clusters), then
/// [`StackBuilder::start`].
#[must_use]
pub struct StackBuilder {
    host: Host,
    plugin_config: String,
    module: Option<PathBuf>,
    wasm_filter: Option<Value>,
    tls: Option<ListenerTls>,
    clusters: Vec<Value>,
    workers: u32,
    edge_hardening: bool,
}

impl StackBuilder {
    /// Another build's module (Wasm host).
    pub fn module(mut self, module: &Path) -> Self {
        self.module = Some(module.to_owned());
        self
    }

    /// This HTTP filter entry in place of the Wasm filter the project's
    /// own configuration gives (Wasm host): the filter a platform's
    /// manifests produce, or one without an option.
    pub fn wasm_filter(mut self, filter: Value) -> Self {
        self.wasm_filter = Some(filter);
        self
    }

    /// A TLS listener.
    pub fn tls(mut self, tls: ListenerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Further Envoy clusters: those the configuration's calls and remote
    /// documents go through.
    pub fn clusters(mut self, clusters: Vec<Value>) -> Self {
        self.clusters = clusters;
        self
    }

    /// This many Envoy workers.
    pub fn workers(mut self, workers: u32) -> Self {
        self.workers = workers;
        self
    }

    /// Envoy's own edge hardening off (see `Options::edge_hardening`): the
    /// engine alone stands between the client's raw path and headers and
    /// the upstream.
    pub fn without_edge_hardening(mut self) -> Self {
        self.edge_hardening = false;
        self
    }

    /// Starts it, failing the test if it does not come up.
    pub fn start(self) -> Stack {
        let host = self.host;
        self.try_start().unwrap_or_else(|e| panic!("{host:?}: {e}"))
    }

    /// Starts it.
    pub fn try_start(self) -> Result<Stack, EnvoyError> {
        let Self {
            host,
            plugin_config,
            module,
            wasm_filter,
            tls,
            clusters,
            workers,
            edge_hardening,
        } = self;
        let plugin_config = plugin_config.as_str();
        let upstream = EchoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| EnvoyError::Io("starting the echo upstream".into(), e))?;
        let scratch = scratch_dir()?;
        let (options, shim) = match host {
            Host::Wasm => {
                let module = module.unwrap_or_else(filter_wasm);
                assert!(
                    module.exists(),
                    "{} is missing: build it with `make build` (make test does)",
                    module.display()
                );
                let filter =
                    wasm_filter.unwrap_or_else(|| filters::policy_engine(&module, plugin_config));
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
        Ok(Stack {
            envoy,
            shim,
            upstream,
            scratch,
        })
    }
}

impl Stack {
    /// A stack running `host` on `plugin_config`; see [`StackBuilder`].
    pub fn builder(host: Host, plugin_config: &str) -> StackBuilder {
        StackBuilder {
            host,
            plugin_config: plugin_config.to_owned(),
            module: None,
            wasm_filter: None,
            tls: None,
            clusters: Vec::new(),
            workers: 1,
            edge_hardening: true,
        }
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
        eventually(what, Duration::from_secs(10), || {
            let found = self.decisions();
            done(&found).then_some(found)
        })
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
