//! The Proxy-Wasm host: Envoy's `envoy.filters.http.wasm` runs this module
//! (ABI 0.2.1) in every worker.
//!
//! It only translates between Envoy and `policy_executor`:
//! * the root context compiles the plugin configuration once in
//!   `on_configure` (returning `false`, so Envoy refuses the configuration,
//!   with one log line naming the fault) and owns the compiled [`Engine`];
//! * each HTTP context reads the request headers in one host call, fetches
//!   `xds.route_name` only if route matching reaches an entry that needs it,
//!   runs the exchange,
//!   and applies its header changes or sends its local reply. Bodies are
//!   buffered only for chains whose policies read them, and response headers
//!   are read only for chains with a policy that inspects them.
//!
//! * policies that call a service, or need a fresher remote document (a
//!   JWKS), wait while their stream sends the call (`host` is the
//!   transport, Envoy's clock and shared data); the root context refreshes
//!   documents on a timer and shares them with the other workers' VMs.
//!
//! Host calls go through `proxy_wasm::hostcalls`, which return `Result`s,
//! rather than the SDK's trait helpers, which `unwrap` (a header value that
//! is not UTF-8 would otherwise trap the VM and fail every later request on
//! the worker).

//!
//! This crate is a library: the module itself is a tiny `cdylib` that the
//! builder (`filter/builder`) generates for each build, whose entry point
//! calls [`install`] with the build's policies.

mod host;
mod http;
mod stats;

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use policy_executor::{Build, CallFailure, Engine, Refresher, RemoteSource};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

/// The build this module was compiled as; set once by [`install`].
static BUILD: OnceLock<Build> = OnceLock::new();

/// Installs the policy engine as the module's root context. Call it from the
/// module's `proxy_wasm::main!` entry point.
pub fn install(build: Build) {
    let _ = BUILD.set(build);
    // Installs the logger and a panic hook that reports to Envoy's log.
    // Host calls are not allowed yet; `on_configure` adopts Envoy's level.
    proxy_wasm::set_log_level(LogLevel::Info);
    // Envoy's histograms take samples, which the tick pushes.
    policy_executor::metrics::keep_samples();
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(PluginRoot::new(context_id))
    });
}

/// How often the root context looks for documents due for a refresh (and
/// renews its claims): `RENEW_EVERY`.
const SLOW_TICK: Duration = policy_executor::remote::attempt::RENEW_EVERY;

/// How often it looks while a stream waits: for the answers other VMs
/// share, and for attempts that lapsed and need a fetch.
const FAST_TICK: Duration = Duration::from_millis(20);

/// A root context's timer, which its streams hurry while they wait.
#[derive(Default)]
pub(crate) struct Tick {
    /// The period set last: `None` before the first.
    fast: Cell<Option<bool>>,
}

impl Tick {
    /// Ticks fast until nothing waits. Envoy restarts the timer whenever its
    /// period is set, so it is set only on a change, or a stream arriving
    /// every few milliseconds would postpone the tick forever. Called from a
    /// stream, it sets its root context's timer.
    pub(crate) fn hurry(&self) {
        self.set(true);
    }

    fn set(&self, fast: bool) {
        if self.fast.get() == Some(fast) {
            return;
        }
        let period = if fast { FAST_TICK } else { SLOW_TICK };
        match hostcalls::set_tick_period(period) {
            Ok(()) => self.fast.set(Some(fast)),
            Err(status) => log::error!("cannot set the refresh timer: {status:?}"),
        }
    }
}

/// The per-VM root context: owns the compiled configuration, keeps its
/// remote documents fresh, and polls the streams that wait.
struct PluginRoot {
    context_id: u32,
    engine: Option<Rc<Engine>>,
    remote_sources: Vec<RemoteSource>,
    tick: Rc<Tick>,
    refresher: Refresher,
    /// The refresher's fetches in flight, by callout token.
    fetching: HashMap<u32, (RemoteSource, host::InFlight)>,
}

impl PluginRoot {
    fn new(context_id: u32) -> Self {
        Self {
            context_id,
            engine: None,
            remote_sources: Vec::new(),
            tick: Rc::default(),
            refresher: Refresher::default(),
            fetching: HashMap::new(),
        }
    }

    /// Polls the waiting streams, then takes what other VMs fetched, renews
    /// this VM's claims and fetches what is due.
    fn on_timer(&mut self) {
        http::poll_waiting();
        stats::export();
        let Some(engine) = self.engine.as_ref().map(Rc::clone) else {
            return;
        };
        // Polling made streams the effective context; a fetch sent now
        // would belong to the last of them and die with it.
        if let Err(status) = hostcalls::set_effective_context(self.context_id) {
            log::error!("cannot act as the root context: {status:?}");
            return;
        }
        let remote = engine.remote();
        for (source, call) in self.refresher.tick(remote, &self.remote_sources) {
            match host::dispatch(&call) {
                Ok(in_flight) => {
                    self.fetching.insert(in_flight.token, (source, in_flight));
                }
                Err(status) => {
                    let failure = CallFailure::Unreachable(format!(
                        "cannot send to cluster {:?}: {status:?}",
                        source.cluster
                    ));
                    self.refresher.on_answer(remote, &source, &Err(failure));
                }
            }
        }
        self.tick.set(http::any_waiting());
    }
}

impl Context for PluginRoot {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        if let Some((source, in_flight)) = self.fetching.remove(&token) {
            if let Some(engine) = self.engine.as_ref() {
                let answer = in_flight.http_answer(headers, body);
                self.refresher.on_answer(engine.remote(), &source, &answer);
            }
            // Streams that waited for it go on now rather than at the next
            // tick.
            http::poll_waiting();
            return;
        }
        // A call a stream sent while the root context's tick polled it.
        http::answer_call(token, |call| call.http_answer(headers, body));
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        http::answer_call(token, |call| call.grpc_answer(status_code, response_size));
    }

    /// The plugin is going away, and Envoy cancels its callouts: the next
    /// claim on each is due at once.
    fn on_done(&mut self) -> bool {
        if let Some(engine) = self.engine.as_ref() {
            self.refresher.release_all(engine.remote());
        }
        true
    }
}

impl RootContext for PluginRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        if let Some(build) = BUILD.get() {
            log::info!("policy engine {}", build.description);
        }
        true
    }

    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        // Formatting a message Envoy would drop is wasted work per request.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let text = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log::error!("cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let Some(build) = BUILD.get() else {
            log::error!("the module's entry point did not install a build");
            return false;
        };
        let registry = (build.registry)();
        let configured = Engine::from_config(&text, &registry);
        // The load (or rejection) shows in Envoy's stats now: a VM whose
        // configuration is refused does not live to tick.
        stats::export();
        match configured {
            Ok(mut engine) => {
                engine.set_host(Box::new(host::EnvoyHost));
                log::info!(
                    "policy engine configured: {} route entries; policies in this build: {}",
                    engine.route_count(),
                    registry.names().join(", ")
                );
                self.remote_sources = engine.remote_sources();
                self.engine = Some(Rc::new(engine));
                // Metrics go out on every tick, whatever else it does.
                self.tick.set(http::any_waiting());
                if !self.remote_sources.is_empty() {
                    // The first fetch waits for the first tick: Envoy also
                    // configures VMs only to check a configuration, then
                    // destroys them, and their claims would lapse unanswered.
                    self.tick.hurry();
                }
                true
            }
            Err(error) => {
                log::error!("{error}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.on_timer();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates no HTTP context before a successful `on_configure`.
        let engine = Rc::clone(self.engine.as_ref()?);
        Some(Box::new(http::Stream::new(
            engine,
            Rc::clone(&self.tick),
            context_id,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
