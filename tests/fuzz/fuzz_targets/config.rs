//! Any bytes as the plugin configuration: refused with an error or
//! compiled, never a panic (a panic at configure time traps the Wasm VM).
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_executor::Engine;

fuzz_target!(|data: &[u8]| {
    let registry = policy_fuzz::registry();
    let _ = Engine::from_config(data, &registry);
});
