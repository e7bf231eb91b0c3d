//! Bench probe: makes, on every request's headers, the host calls its
//! plugin configuration lists (space-separated), and nothing else:
//!
//! * `headers`: reads the request header map in one call;
//! * `route`: reads the property `xds.route_name`;
//! * `time`: reads Envoy's clock;
//! * `set`: sets one request header.
//!
//! Its rows beside `probe-noop` price each call, which is what the policy
//! engine's own per-request work is measured against.

#![allow(missing_docs)] // `proxy_wasm::main!` expands to an undocumented public entry point

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Clone, Copy)]
enum Call {
    Headers,
    Route,
    Time,
    Set,
}

#[derive(Default)]
struct Root {
    calls: Rc<Vec<Call>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut calls = Vec::new();
        for word in String::from_utf8_lossy(&text).split_whitespace() {
            calls.push(match word {
                "headers" => Call::Headers,
                "route" => Call::Route,
                "time" => Call::Time,
                "set" => Call::Set,
                _ => return false,
            });
        }
        self.calls = Rc::new(calls);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            calls: Rc::clone(&self.calls),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    calls: Rc<Vec<Call>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for call in self.calls.iter() {
            // Results are dropped: only the calls' cost is of interest.
            match call {
                Call::Headers => drop(hostcalls::get_map_bytes(MapType::HttpRequestHeaders)),
                Call::Route => drop(hostcalls::get_property(vec!["xds", "route_name"])),
                Call::Time => drop(hostcalls::get_current_time()),
                Call::Set => drop(hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    "x-bench-0",
                    Some("on"),
                )),
            }
        }
        Action::Continue
    }
}
