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
//! Host calls go through `proxy_wasm::hostcalls`, which return `Result`s,
//! rather than the SDK's trait helpers, which `unwrap` (a header value that
//! is not UTF-8 would otherwise trap the VM and fail every later request on
//! the worker).

//!
//! This crate is a library: the module itself is a tiny `cdylib` that the
//! builder (`filter/builder`) generates for each build, whose entry point
//! calls [`install`] with the build's policies.

mod http;

use std::rc::Rc;
use std::sync::OnceLock;

use policy_executor::{Build, Engine};
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
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PluginRoot::default()) });
}

/// The per-VM root context: owns the compiled configuration.
#[derive(Default)]
struct PluginRoot {
    engine: Option<Rc<Engine>>,
}

impl Context for PluginRoot {}

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
        match Engine::from_config(&text, &registry) {
            Ok(engine) => {
                log::info!(
                    "policy engine configured: {} route entries; policies in this build: {}",
                    engine.route_count(),
                    registry.names().join(", ")
                );
                self.engine = Some(Rc::new(engine));
                true
            }
            Err(error) => {
                log::error!("{error}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates no HTTP context before a successful `on_configure`.
        let engine = Rc::clone(self.engine.as_ref()?);
        Some(Box::new(http::Stream::new(engine)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
