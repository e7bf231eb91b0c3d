//! Any text as a CEL expression: compiled (then evaluated against a
//! request) or refused, never a panic or a stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_executor::testing::{context, request};
use policy_executor::{Expression, Phase};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expression) = Expression::compile(source, Phase::Request) else {
        return;
    };
    let cx = context(request(
        "POST",
        "/api/items?page=2&q=a%20b",
        &[
            ("x-team", "a"),
            ("x-list", "1,2"),
            ("content-type", "application/json"),
        ],
    ));
    let _ = expression.evaluate_bool(&cx);
    let _ = expression.evaluate_text(&cx);
});
