//! Any bytes through the engine's strict JSON reading, checking what the
//! policies that read bodies rely on: checking and parsing agree; what is
//! accepted is UTF-8 and JSON to serde_json too, with the same value (the
//! strict reading only refuses, never reads differently); and the value,
//! written out again, reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_executor::json;

fuzz_target!(|data: &[u8]| {
    let parsed = json::parse(data);
    assert_eq!(json::check(data).is_ok(), parsed.is_ok(), "{data:?}");
    let Ok(value) = parsed else {
        return;
    };
    assert!(std::str::from_utf8(data).is_ok(), "{data:?}");
    let lenient: serde_json::Value = serde_json::from_slice(data).expect("serde_json reads it");
    assert_eq!(lenient, value, "{data:?}");
    let written = serde_json::to_vec(&value).expect("a value can be written");
    assert_eq!(json::parse(&written).ok(), Some(value), "{data:?}");
});
