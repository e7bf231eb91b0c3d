//! Runs the real Envoy binary with the policy filter on loopback.
//!
//! One launcher for the three places that need an Envoy: `make run`, the
//! integration tests and the benchmark. It renders `bootstrap.yaml` and
//! `listener.yaml` (next to this crate) into a scratch directory, starts
//! Envoy on free ports (or given ones), waits until the admin endpoint
//! reports it ready, and reads back the port the listener bound. Dropping an
//! [`Envoy`] stops it and removes the scratch directory.

pub mod echo;
pub mod filters;
pub mod shim;

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BOOTSTRAP: &str = include_str!("../bootstrap.yaml");
const LISTENER: &str = include_str!("../listener.yaml");

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Envoy binary: `$ENVOY_BIN`, else the project venv's.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"))
}

/// Where `make build` puts the default build (see `build.yaml`).
pub fn default_build() -> PathBuf {
    repo_root().join("target/builds/default")
}

/// The ext_proc shim: `$POLICY_EXTPROC_BIN`, else the default build's.
pub fn extproc_bin() -> PathBuf {
    std::env::var_os("POLICY_EXTPROC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_build().join("policy-extproc"))
}

/// The address a server process announces on its first line of stdout
/// (`... listening on ADDR`), read within `timeout`; the rest of its stdout
/// is drained so it never blocks on a full pipe. Needs `Stdio::piped()`.
pub fn announced_addr(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Option<SocketAddr> {
    use std::io::BufRead;
    let stdout = child.stdout.take()?;
    let (sender, announced) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = sender.send(lines.next());
        for _ in lines {} // keep the pipe drained
    });
    announced
        .recv_timeout(timeout)
        .ok()
        .flatten()
        .and_then(Result::ok)
        .and_then(|l| l.rsplit(' ').next().and_then(|a| a.parse().ok()))
}

/// The rate limit service: `$POLICY_RATELIMIT_BIN`, else
/// `target/release/policy-ratelimit` (`make build` builds it).
pub fn ratelimit_bin() -> PathBuf {
    std::env::var_os("POLICY_RATELIMIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/policy-ratelimit"))
}

/// The filter module: `$POLICY_FILTER_WASM`, else the default build's.
pub fn filter_wasm() -> PathBuf {
    std::env::var_os("POLICY_FILTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_build().join("plugin.wasm"))
}

/// How to start an Envoy.
#[derive(Debug, Clone)]
pub struct Options {
    /// The HTTP filters before the router (see [`filters`]).
    pub filters: Vec<Value>,
    /// Clusters besides the echo upstream's (see [`filters::ext_proc_cluster`]).
    pub clusters: Vec<Value>,
    /// The upstream the routes send to.
    pub upstream: SocketAddr,
    /// The listener port; 0 picks a free one.
    pub listen_port: u16,
    /// The admin port; 0 picks a free one.
    pub admin_port: u16,
    /// Worker threads.
    pub concurrency: u32,
    /// Pin Envoy to this CPU with `taskset`.
    pub cpu: Option<u32>,
    /// Envoy's log level for the `wasm` component.
    pub wasm_log_level: &'static str,
    /// Serve TLS on the listener instead of plain HTTP.
    pub tls: Option<ListenerTls>,
    /// Envoy's `--drain-time-s`: how long connections on a replaced filter
    /// chain or listener are drained before they are closed (Envoy's
    /// default, 600 s, keeps every replaced chain alive that long).
    pub drain_time_s: Option<u32>,
    /// Envoy's own edge hardening on the listener (`normalize_path`,
    /// `merge_slashes`, `path_with_escaped_slashes_action` and
    /// `headers_with_underscores_action`; see `listener.yaml`). On by
    /// default, as every shipped configuration has it; off only for tests
    /// that must send the engine paths and headers Envoy would otherwise
    /// clean or refuse first, to prove the engine's own canonicalization.
    pub edge_hardening: bool,
    /// Write Envoy's access log to `access.log` in its directory, one line
    /// per request: the decision log's line the Wasm filter leaves as the
    /// filter state `wasm.policy_engine_decision` (see [`Envoy::access_log`]).
    pub decision_access_log: bool,
}

/// TLS for the listener, from PEM files.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// The server certificate chain.
    pub certificate: PathBuf,
    /// Its private key.
    pub private_key: PathBuf,
    /// When set, clients must present a certificate signed by this CA
    /// (mutual TLS), and its URI SAN becomes the caller's SPIFFE ID.
    pub client_ca: Option<PathBuf>,
}

impl ListenerTls {
    /// The listener's `transport_socket`.
    fn transport_socket(&self) -> Value {
        let file = |path: &Path| json!({ "filename": path.display().to_string() });
        let mut context = json!({
            "tls_certificates": [{
                "certificate_chain": file(&self.certificate),
                "private_key": file(&self.private_key),
            }],
        });
        if let Some(ca) = &self.client_ca {
            context["validation_context"] = json!({ "trusted_ca": file(ca) });
        }
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": self.client_ca.is_some(),
                "common_tls_context": context,
            },
        })
    }
}

impl Options {
    /// One worker, free ports, the given filters, Wasm logs at `debug`.
    pub fn new(filters: Vec<Value>, upstream: SocketAddr) -> Self {
        Self {
            filters,
            clusters: Vec::new(),
            upstream,
            listen_port: 0,
            admin_port: 0,
            concurrency: 1,
            cpu: None,
            wasm_log_level: "debug",
            tls: None,
            drain_time_s: None,
            edge_hardening: true,
            decision_access_log: false,
        }
    }
}

/// Why Envoy could not be started or reconfigured.
#[derive(Debug)]
pub enum EnvoyError {
    /// A file or process operation failed.
    Io(String, io::Error),
    /// The process (Envoy or the shim) exited while starting; its log is
    /// attached.
    Exited {
        /// Which process.
        process: &'static str,
        /// The exit status.
        status: String,
        /// Envoy's log.
        log: String,
    },
    /// Envoy did not become ready in time.
    Timeout(String),
    /// Envoy refused the listener configuration; on a reload, the previous
    /// one keeps serving.
    Rejected {
        /// Envoy's log.
        log: String,
    },
}

impl fmt::Display for EnvoyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(what, e) => write!(f, "{what}: {e}"),
            Self::Exited {
                process,
                status,
                log,
            } => write!(f, "{process} exited ({status}):\n{log}"),
            Self::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Self::Rejected { .. } => write!(f, "envoy rejected the listener update"),
        }
    }
}

impl std::error::Error for EnvoyError {}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> EnvoyError {
    let what = what.into();
    move |e| EnvoyError::Io(what, e)
}

/// A running Envoy; stopped when dropped.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    admin: Admin,
    listener: SocketAddr,
    listen_port: u16,
    tls: Option<ListenerTls>,
    edge_hardening: bool,
    access_log: Option<PathBuf>,
    version: u32,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy and waits until it serves.
    pub fn start(options: &Options) -> Result<Self, EnvoyError> {
        let dir = std::env::temp_dir().join(format!(
            "local-envoy-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        let lds_dir = dir.join("lds");
        fs::create_dir_all(&lds_dir).map_err(io_err("creating the scratch directory"))?;
        let lds_path = lds_dir.join("listener.yaml");
        let bootstrap = BOOTSTRAP
            .replace("{{ADMIN_PORT}}", &options.admin_port.to_string())
            .replace("{{LDS_PATH}}", &lds_path.display().to_string())
            .replace("{{LDS_DIR}}", &lds_dir.display().to_string())
            .replace("{{UPSTREAM_PORT}}", &options.upstream.port().to_string())
            .replace(
                "{{CIRCUIT_BREAKERS}}",
                &filters::circuit_breakers().to_string(),
            )
            .replace("{{EXTRA_CLUSTERS}}", &extra_clusters(&options.clusters));
        let bootstrap_path = dir.join("bootstrap.yaml");
        fs::write(&bootstrap_path, bootstrap).map_err(io_err("writing the bootstrap"))?;
        write_listener(
            &lds_path,
            &Listener {
                port: options.listen_port,
                tls: options.tls.as_ref(),
                edge_hardening: options.edge_hardening,
                access_log: options.decision_access_log.then(|| dir.join("access.log")),
                filters: &options.filters,
                version: 1,
            },
        )?;

        let log_path = dir.join("envoy.log");
        let log = fs::File::create(&log_path).map_err(io_err("creating the log"))?;
        let admin_path = dir.join("admin-address");
        let mut command = match options.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(envoy_bin());
                c
            }
            None => Command::new(envoy_bin()),
        };
        command
            .arg("-c")
            .arg(&bootstrap_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", &options.concurrency.to_string()])
            .arg("--disable-hot-restart")
            .args(
                options
                    .drain_time_s
                    .map(|seconds| ["--drain-time-s".to_owned(), seconds.to_string()])
                    .into_iter()
                    .flatten(),
            )
            // The decision access log is read back by tests: flushed every
            // 100 ms rather than Envoy's 10 s.
            .args(
                options
                    .decision_access_log
                    .then_some(["--file-flush-interval-msec", "100"])
                    .into_iter()
                    .flatten(),
            )
            .args(["--log-level", "warn"])
            .args([
                "--component-log-level",
                &format!("wasm:{},config:info,lua:info", options.wasm_log_level),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = command
            .spawn()
            .map_err(io_err(format!("starting {}", envoy_bin().display())))?;
        let started = (|| {
            let admin = Admin(wait_for(&mut child, &dir, "the admin address", || {
                fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })?);
            wait_for(&mut child, &dir, "readiness", || {
                admin.ready().then_some(())
            })?;
            // Envoy is ready even when it rejected the only listener.
            let listener = wait_for(&mut child, &dir, "the listener", || {
                match admin.counter("listener_manager.lds.update_rejected") {
                    Some(rejected) if rejected > 0 => Some(None),
                    _ => admin.listener().map(Some),
                }
            })?;
            let listener = listener.ok_or_else(|| EnvoyError::Rejected {
                log: read_log(&dir),
            })?;
            Ok((admin, listener))
        })();
        match started {
            Ok((admin, listener)) => Ok(Self {
                child,
                access_log: options.decision_access_log.then(|| dir.join("access.log")),
                dir,
                admin,
                listener,
                listen_port: options.listen_port,
                tls: options.tls.clone(),
                edge_hardening: options.edge_hardening,
                version: 1,
            }),
            Err(e) => {
                // The error carries the log; nothing else is worth keeping.
                let _ = child.kill();
                let _ = child.wait();
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listener
    }

    /// `http://<listener><path>` (`https` when the listener serves TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.listener, path)
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.0
    }

    /// The scratch directory holding the generated bootstrap, listener and
    /// log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// The access log's lines so far (with [`Options::decision_access_log`]).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// A counter's or gauge's current value from the admin endpoint (e.g.
    /// `listener_manager.lds.update_rejected`), or `None` if Envoy has no
    /// such statistic.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.admin.counter(name)
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Swaps in new HTTP filters through LDS and waits for Envoy's verdict.
    /// On [`EnvoyError::Rejected`] the previous listener keeps serving.
    pub fn reload(&mut self, filters: &[Value]) -> Result<(), EnvoyError> {
        const SUCCESS: &str = "listener_manager.lds.update_success";
        const REJECTED: &str = "listener_manager.lds.update_rejected";
        let admin = self.admin;
        let ok_before = admin.counter(SUCCESS).unwrap_or(0);
        let bad_before = admin.counter(REJECTED).unwrap_or(0);
        self.version += 1;
        let staged = self.dir.join("listener.yaml.new");
        write_listener(
            &staged,
            &Listener {
                port: self.listen_port,
                tls: self.tls.as_ref(),
                edge_hardening: self.edge_hardening,
                access_log: self.access_log.clone(),
                filters,
                version: self.version,
            },
        )?;
        // Envoy reloads when a file is moved onto the watched path.
        fs::rename(&staged, self.dir.join("lds/listener.yaml"))
            .map_err(io_err("replacing the listener"))?;
        let accepted = wait_for(&mut self.child, &self.dir, "the LDS verdict", || {
            if admin.counter(REJECTED).unwrap_or(0) > bad_before {
                Some(false)
            } else if admin.counter(SUCCESS).unwrap_or(0) > ok_before {
                Some(true)
            } else {
                None
            }
        })?;
        if !accepted {
            return Err(EnvoyError::Rejected { log: self.log() });
        }
        wait_for(
            &mut self.child,
            &self.dir,
            "the new listener to warm",
            || (admin.counter("listener_manager.total_listeners_warming") == Some(0)).then_some(()),
        )?;
        self.listener = wait_for(&mut self.child, &self.dir, "the listener", || {
            admin.listener()
        })?;
        Ok(())
    }

    /// Whether Envoy has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for Envoy to exit by itself and returns its log.
    pub fn wait(mut self) -> Result<String, EnvoyError> {
        self.child.wait().map_err(io_err("waiting for envoy"))?;
        Ok(self.log())
    }
}

/// Envoy's admin endpoint.
#[derive(Debug, Clone, Copy)]
struct Admin(SocketAddr);

impl Admin {
    fn get(&self, path: &str) -> Option<String> {
        ureq::get(format!("http://{}{}", self.0, path))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    }

    fn ready(&self) -> bool {
        self.get("/ready").is_some_and(|s| s.trim() == "LIVE")
    }

    /// The bound address of the (only) listener.
    fn listener(&self) -> Option<SocketAddr> {
        let json: Value = serde_json::from_str(&self.get("/listeners?format=json")?).ok()?;
        let port = json
            .get("listener_statuses")?
            .get(0)?
            .get("local_address")?
            .get("socket_address")?
            .get("port_value")?
            .as_u64()?;
        let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn counter(&self, name: &str) -> Option<u64> {
        let stats = self.get(&format!("/stats?filter=^{name}$"))?;
        stats.split(':').nth(1)?.trim().parse().ok()
    }
}

fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
}

/// Polls `probe` until it yields, Envoy exits, or 30 s pass.
fn wait_for<T>(
    child: &mut Child,
    dir: &Path,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, EnvoyError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(EnvoyError::Exited {
                process: "envoy",
                status: status.to_string(),
                log: read_log(dir),
            });
        }
        if Instant::now() > deadline {
            return Err(EnvoyError::Timeout(what.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn extra_clusters(clusters: &[Value]) -> String {
    clusters
        .iter()
        .map(|cluster| format!("    - {cluster}\n"))
        .collect()
}

/// What `listener.yaml` is rendered with.
struct Listener<'a> {
    port: u16,
    tls: Option<&'a ListenerTls>,
    edge_hardening: bool,
    access_log: Option<PathBuf>,
    filters: &'a [Value],
    version: u32,
}

impl Listener<'_> {
    /// The HTTP connection manager's `access_log`: none, or the decision
    /// log's filter state to a file.
    fn access_log_config(&self) -> Value {
        match &self.access_log {
            None => json!([]),
            Some(path) => json!([{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": path.display().to_string(),
                    "log_format": { "text_format_source": {
                        "inline_string": "%FILTER_STATE(wasm.policy_engine_decision:PLAIN)%\n"
                    } },
                },
            }]),
        }
    }

    /// `listener.yaml` with its placeholders filled in.
    fn render(&self) -> String {
        let transport_socket = self.tls.map_or(Value::Null, ListenerTls::transport_socket);
        let mut chain = self.filters.to_vec();
        chain.push(filters::router());
        // Envoy's defaults, for the tests that turn the hardening off.
        let (normalize, merge, escaped_slashes, underscores) = if self.edge_hardening {
            ("true", "true", "REJECT_REQUEST", "REJECT_REQUEST")
        } else {
            ("false", "false", "KEEP_UNCHANGED", "ALLOW")
        };
        LISTENER
            .replace("{{VERSION}}", &self.version.to_string())
            .replace("{{LISTEN_PORT}}", &self.port.to_string())
            .replace("{{ACCESS_LOG}}", &self.access_log_config().to_string())
            .replace("{{TRANSPORT_SOCKET}}", &transport_socket.to_string())
            .replace("{{NORMALIZE_PATH}}", normalize)
            .replace("{{MERGE_SLASHES}}", merge)
            .replace("{{ESCAPED_SLASHES_ACTION}}", escaped_slashes)
            .replace("{{UNDERSCORES_ACTION}}", underscores)
            .replace("{{HTTP_FILTERS}}", &Value::Array(chain).to_string())
    }
}

fn write_listener(path: &Path, listener: &Listener<'_>) -> Result<(), EnvoyError> {
    fs::write(path, listener.render()).map_err(io_err("writing the listener"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(edge_hardening: bool) -> String {
        Listener {
            port: 10000,
            tls: None,
            edge_hardening,
            access_log: None,
            filters: &[],
            version: 1,
        }
        .render()
    }

    #[test]
    fn the_listener_has_envoys_edge_hardening_by_default() {
        assert!(Options::new(Vec::new(), SocketAddr::from(([127, 0, 0, 1], 1))).edge_hardening);
        let listener = render(true);
        assert!(
            !listener.contains("{{"),
            "a placeholder is left:\n{listener}"
        );
        for setting in [
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: REJECT_REQUEST",
            "headers_with_underscores_action: REJECT_REQUEST",
        ] {
            assert!(listener.contains(setting), "{setting} missing:\n{listener}");
        }
    }

    #[test]
    fn without_edge_hardening_envoy_passes_paths_and_headers_as_sent() {
        let listener = render(false);
        assert!(
            !listener.contains("{{"),
            "a placeholder is left:\n{listener}"
        );
        for setting in [
            "normalize_path: false",
            "merge_slashes: false",
            "path_with_escaped_slashes_action: KEEP_UNCHANGED",
            "headers_with_underscores_action: ALLOW",
        ] {
            assert!(listener.contains(setting), "{setting} missing:\n{listener}");
        }
    }
}
