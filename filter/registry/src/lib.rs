//! The build's choice of policies.
//!
//! Both hosts (the Wasm filter and the ext_proc shim) take their policies
//! from here, so one build serves the same configurations in both. A policy
//! that is not listed here is not in either binary, and a configuration that
//! names it is refused.

use policy_executor::Registry;

/// Every policy this build contains.
pub fn registry() -> Registry {
    Registry::new([
        policy_set_headers::FACTORY,
        policy_respond::FACTORY,
        policy_json_body::FACTORY,
    ])
}
