//! Any request target through the path canonicalizer (and any authority
//! through the host's), checking what the engine relies on: a canonical
//! path is absolute, has no dot segments or empty segments, no raw
//! backslash, and is its own canonical form; a canonical authority is its
//! own canonical form, and its host has one spelling: an IP literal is
//! IPv6 as RFC 5952 writes it, never IPv4-mapped, or IPv4 as a.b.c.d.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use policy_executor::canonical::{canonical_authority, canonical_path, strip_port, EscapedSlashes};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    for slashes in [EscapedSlashes::Reject, EscapedSlashes::Keep] {
        let Ok(canonical) = canonical_path(target, slashes) else {
            continue;
        };
        let path = canonical.split('?').next().unwrap_or_default();
        if path == "*" {
            continue;
        }
        assert!(path.starts_with('/'), "{target:?} -> {canonical:?}");
        assert!(!path.contains('\\'), "{target:?} -> {canonical:?}");
        let segments: Vec<&str> = path[1..].split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            assert!(
                *segment != "." && *segment != "..",
                "{target:?} -> {canonical:?}"
            );
            assert!(
                !segment.is_empty() || i == segments.len() - 1,
                "{target:?} -> {canonical:?}"
            );
        }
        let again = canonical_path(&canonical, slashes);
        assert_eq!(again.as_deref(), Ok(canonical.as_ref()), "{target:?}");
    }
    // A canonical authority is its own canonical form, and its host (what
    // rules compare) has no upper case, no empty label, no trailing dot.
    if let Ok(authority) = canonical_authority(target) {
        assert_eq!(
            canonical_authority(&authority).as_deref(),
            Ok(authority.as_ref()),
            "{target:?}"
        );
        let host = strip_port(&authority);
        assert!(!host.is_empty(), "{target:?}");
        assert!(!host.bytes().any(|b| b.is_ascii_uppercase()), "{target:?}");
        match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(literal) => {
                let address: Ipv6Addr = literal.parse().unwrap_or_else(|_| {
                    panic!("{target:?} -> {authority:?}: not an IPv6 address")
                });
                assert_eq!(address.to_string(), literal, "{target:?}");
                assert!(address.to_ipv4_mapped().is_none(), "{target:?}");
            }
            None => {
                assert!(host.split('.').all(|l| !l.is_empty()), "{target:?}");
                assert!(!host.contains(':'), "{target:?}");
                if let Ok(v4) = host.parse::<Ipv4Addr>() {
                    assert_eq!(v4.to_string(), host, "{target:?}");
                }
            }
        }
    }
});
