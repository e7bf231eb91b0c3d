//! The policies compiled into this module.

use policy_executor::Registry;

/// Every policy this build contains.
pub(crate) fn registry() -> Registry {
    Registry::new([policy_set_headers::FACTORY, policy_respond::FACTORY])
}
