//! The bench's floor: a proxy-wasm module whose HTTP context does nothing.
//!
//! Envoy still creates a context per stream and calls into the VM for every
//! callback, so this measures what any Rust proxy-wasm filter costs in V8
//! before it does any work. `make bench` builds it for wasm32-wasip1 and
//! runs it as the `probe-noop` row.

#![allow(missing_docs)] // `proxy_wasm::main!` expands to an undocumented public entry point

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

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

impl HttpContext for Stream {}
