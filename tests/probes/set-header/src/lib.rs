//! The bench's target for one policy: wasm-1's header work (set one request
//! header, set one response header), written directly against the
//! proxy-wasm SDK with nothing else.
//!
//! The gap between this row and `wasm-1` is what the policy engine itself
//! costs for the same host calls. `make bench` builds it for wasm32-wasip1
//! and runs it as the `probe-set-header` row.

#![allow(missing_docs)] // `proxy_wasm::main!` expands to an undocumented public entry point

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // The same call the engine makes; a refusal is ignored, as a probe
        // has nothing to fail.
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-bench-0", Some("on"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, "x-bench-0", Some("on"));
        Action::Continue
    }
}
