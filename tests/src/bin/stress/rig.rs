//! One Envoy under test, as the stress stages need it: with no filter, the
//! Wasm filter, or the ext_proc shim, in front of its own echo upstream (so
//! its request count is this rig's alone), with ways to push a new plugin
//! configuration in either host and to kill and restart the shim.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::load::{send_once, Outcome, Plan, RequestSpec};
use local_envoy::echo::EchoUpstream;
use local_envoy::shim::Shim;
use local_envoy::{extproc_bin, filter_wasm, filters, Envoy, EnvoyError, Options};
use serde_json::Value;

/// What the shim logs when it applies a changed configuration file.
const SHIM_APPLIED: &str = "configuration reloaded";
/// What the shim logs when it refuses one.
pub const SHIM_REFUSED: &str = "the previous configuration keeps serving";
/// How long a pushed configuration may take to be judged.
const PUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one request of a load may take before it counts as timed out.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What runs the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Nothing: Envoy's router alone, the baseline.
    Plain,
    /// The Proxy-Wasm filter inside Envoy.
    Wasm,
    /// The ext_proc shim behind Envoy's ext_proc filter.
    Shim,
}

impl Filter {
    /// A name for the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain Envoy",
            Self::Wasm => "Wasm filter",
            Self::Shim => "ext_proc shim",
        }
    }
}

/// Envoy settings every rig of a run shares.
#[derive(Debug, Clone)]
pub struct RigOptions {
    /// Envoy's worker threads.
    pub workers: u32,
    /// Envoy's `--drain-time-s`, if not its default.
    pub drain_time_s: Option<u32>,
}

/// What became of a pushed configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// It serves now.
    Applied,
    /// It was refused; the previous one keeps serving.
    Refused,
}

/// Envoy, the shim if any, and the echo upstream. Fields drop in order:
/// Envoy first, then the shim, then the upstream.
pub struct Rig {
    /// The Envoy under test.
    pub envoy: Envoy,
    shim: Option<Shim>,
    /// Its upstream, which counts the requests that reached it.
    pub upstream: EchoUpstream,
    filter: Filter,
    shim_config: PathBuf,
    shim_addr: Option<SocketAddr>,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Rig {
    /// Starts `filter` on `plugin_config` (ignored for [`Filter::Plain`]),
    /// with these further Envoy clusters, keeping its files in `dir`.
    pub fn start(
        dir: &Path,
        filter: Filter,
        plugin_config: &str,
        options: &RigOptions,
        clusters: Vec<Value>,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let upstream = EchoUpstream::start(loopback())
            .map_err(|e| format!("starting the echo upstream: {e}"))?;
        let shim_config = dir.join("policies.yaml");
        let (http_filters, shim) = match filter {
            Filter::Plain => (Vec::new(), None),
            Filter::Wasm => (vec![wasm_filter(plugin_config)?], None),
            Filter::Shim => {
                if !extproc_bin().exists() {
                    return Err(format!(
                        "{} is missing: build it with `make build`",
                        extproc_bin().display()
                    ));
                }
                write_atomically(&shim_config, plugin_config)?;
                let shim = Shim::start(&shim_config, loopback(), None, "info")
                    .map_err(|e| format!("starting the shim: {e}"))?;
                (vec![filters::ext_proc()], Some(shim))
            }
        };
        let mut envoy_options = Options::new(http_filters, upstream.addr());
        envoy_options.concurrency = options.workers;
        envoy_options.wasm_log_level = "warn";
        envoy_options.drain_time_s = options.drain_time_s;
        if let Some(shim) = &shim {
            envoy_options
                .clusters
                .push(filters::ext_proc_cluster(shim.addr()));
        }
        envoy_options.clusters.extend(clusters);
        let envoy = Envoy::start(&envoy_options)
            .map_err(|e| format!("starting Envoy ({}): {e}", filter.name()))?;
        let shim_addr = shim.as_ref().map(Shim::addr);
        Ok(Self {
            envoy,
            shim,
            upstream,
            filter,
            shim_config,
            shim_addr,
        })
    }

    /// Where clients send.
    pub fn target(&self) -> SocketAddr {
        self.envoy.addr()
    }

    /// The process running the policies (the shim's, or Envoy's), and its
    /// name, for memory figures.
    pub fn policy_process(&self) -> (u32, &'static str) {
        match &self.shim {
            Some(shim) => (shim.pid(), "shim"),
            None => (self.envoy.pid(), "Envoy"),
        }
    }

    /// A load plan against this rig.
    pub fn plan(&self, requests: Vec<RequestSpec>, rate: f64, connections: usize) -> Plan {
        Plan {
            target: self.target(),
            rate,
            connections,
            requests,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Sends `spec` until it gets its expected answer; returns how long
    /// that took.
    pub fn wait_for_expected(
        &self,
        spec: &RequestSpec,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let outcome = send_once(self.target(), spec, REQUEST_TIMEOUT);
            if outcome.is_expected() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "{} never got its expected {} within {timeout:?} (last: {outcome:?})",
                    spec.label, spec.expect_status
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pushes a new plugin configuration the way each host takes one: LDS
    /// (`Envoy::reload`) for the Wasm filter, the configuration file the
    /// shim watches for the shim. Returns once it is judged.
    pub fn push(&mut self, plugin_config: &str) -> Result<Push, String> {
        match self.filter {
            Filter::Plain => Err("the plain Envoy has no plugin configuration".to_owned()),
            Filter::Wasm => {
                let listener = self.target();
                let verdict = match self.envoy.reload(&[wasm_filter(plugin_config)?]) {
                    Ok(()) => Push::Applied,
                    Err(EnvoyError::Rejected { .. }) => Push::Refused,
                    Err(e) => return Err(format!("pushing a configuration over LDS: {e}")),
                };
                if self.target() != listener {
                    return Err(format!(
                        "the listener moved from {listener} to {} on an update",
                        self.target()
                    ));
                }
                Ok(verdict)
            }
            Filter::Shim => {
                let applied = self.shim_log_count(SHIM_APPLIED);
                let refused = self.shim_log_count(SHIM_REFUSED);
                write_atomically(&self.shim_config, plugin_config)?;
                let started = Instant::now();
                loop {
                    if self.shim_log_count(SHIM_APPLIED) > applied {
                        return Ok(Push::Applied);
                    }
                    if self.shim_log_count(SHIM_REFUSED) > refused {
                        return Ok(Push::Refused);
                    }
                    if started.elapsed() > PUSH_TIMEOUT {
                        return Err(format!(
                            "the shim did not log a verdict on its new configuration within {PUSH_TIMEOUT:?}"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// How many times the shim has logged `text` (0 without a shim).
    pub fn shim_log_count(&self, text: &str) -> usize {
        self.shim
            .as_ref()
            .map_or(0, |shim| shim.log().matches(text).count())
    }

    /// The shim's log lines that contain `text`.
    pub fn shim_log_lines(&self, text: &str) -> Vec<String> {
        self.shim.as_ref().map_or_else(Vec::new, |shim| {
            shim.log()
                .lines()
                .filter(|l| l.contains(text))
                .map(str::to_owned)
                .collect()
        })
    }

    /// Kills the shim (SIGKILL) and waits for it to be gone.
    pub fn kill_shim(&mut self) -> Result<(), String> {
        match self.shim.take() {
            Some(shim) => {
                drop(shim); // kills and reaps it
                Ok(())
            }
            None => Err("there is no shim to kill".to_owned()),
        }
    }

    /// Starts the shim again on the address it had, with its configuration
    /// file; returns once it serves.
    pub fn restart_shim(&mut self) -> Result<(), String> {
        let addr = self
            .shim_addr
            .ok_or_else(|| "this rig has no shim".to_owned())?;
        let shim = Shim::start(&self.shim_config, addr, None, "info")
            .map_err(|e| format!("restarting the shim on {addr}: {e}"))?;
        self.shim = Some(shim);
        Ok(())
    }
}

/// The Wasm filter running `plugin_config`.
fn wasm_filter(plugin_config: &str) -> Result<Value, String> {
    let module = filter_wasm();
    if !module.exists() {
        return Err(format!(
            "{} is missing: build it with `make build`",
            module.display()
        ));
    }
    Ok(filters::policy_engine(&module, plugin_config))
}

/// Replaces `path` with `text` in one step, so a watcher never reads half a
/// file.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).map_err(|e| format!("writing {}: {e}", staged.display()))?;
    std::fs::rename(&staged, path).map_err(|e| format!("replacing {}: {e}", path.display()))
}

/// Whether an answer was a 2xx.
pub fn is_2xx(outcome: &Outcome) -> bool {
    outcome.status().is_some_and(|s| (200..300).contains(&s))
}
