//! The configurations the bench compares: plain Envoy, Lua, the probe
//! modules, and the engine's chains on both hosts.

// The bench's own types and imports: this is its code, kept apart.
use super::*;

/// The same header work as one set-headers instance, in Lua.
const LUA_SET_HEADERS: &str = r#"
function envoy_on_request(handle)
  handle:headers():replace("x-bench-0", "on")
end
function envoy_on_response(handle)
  handle:headers():replace("x-bench-0", "on")
end
"#;

pub(super) struct Config {
    pub(super) name: String,
    pub(super) what: String,
    pub(super) filters: Vec<Value>,
    /// The shim's plugin configuration, for ext_proc configurations.
    pub(super) shim: Option<String>,
    /// Request headers wrk sends.
    pub(super) headers: Vec<(String, String)>,
    /// Envoy clusters besides the echo upstream's (the ext-authz service).
    pub(super) clusters: Vec<Value>,
}

/// One `ext-authz` check over gRPC against the bench's loopback service,
/// with its decision cache (keyed by the constant `authorization` wrk
/// sends) or without.
pub(super) fn ext_authz_chain(authz: &AuthzServer, cache: bool) -> String {
    let cache = if cache {
        "\n          cache: { key: 'request.headers[\"authorization\"]', ttl: 300s }"
    } else {
        ""
    };
    format!(
        "routes:\n  - name: bench\n    match: {{ route: echo-default }}\n    policies:\n      - name: ext-authz\n        config:\n          grpc: {{ uri: \"{}\", cluster: authz }}\n          timeout: 1s{cache}\n",
        authz.uri()
    )
}

/// One `rate-limit` policy: a limit keyed by the `x-client` header wrk
/// sends, too large to be exhausted, counted locally (shared data) or
/// through the rate limit service (`ratelimit`: its gRPC URI).
pub(super) fn rate_limit_chain(ratelimit: Option<&RateLimitService>) -> String {
    let global = ratelimit.map_or_else(String::new, |service| {
        format!(
            "\n          global: {{ grpc: {{ uri: \"{}\", cluster: ratelimit }}, timeout: 1s }}",
            service.uri()
        )
    });
    format!(
        "routes:\n  - name: bench\n    match: {{ route: echo-default }}\n    policies:\n      - name: rate-limit\n        config:\n          limits: [{{ name: per-client, descriptors: {{ client: 'request.headers[\"x-client\"]' }}, requests: 1000000, unit: second }}]{global}\n"
    )
}

/// A row running one of the bench's probe modules (`tests/probes`, built
/// by `make bench` into target/wasm32-wasip1/release/probe_<crate>.wasm)
/// with this plugin configuration.
pub(super) fn probe(name: &str, krate: &str, configuration: &str, what: &str) -> Config {
    let module = repo_root().join(format!("target/wasm32-wasip1/release/probe_{krate}.wasm"));
    Config {
        name: name.into(),
        what: what.into(),
        filters: vec![filters::policy_engine(&module, configuration)],
        shim: None,
        headers: Vec::new(),
        clusters: Vec::new(),
    }
}

/// Rows pricing single host calls (`BENCH_HOST_CALLS=1`): the probe that
/// makes the calls its configuration lists, once per request.
pub(super) fn host_call_configs() -> Vec<Config> {
    [
        (
            "call:headers",
            "headers",
            "reads the request headers (one get_header_map_pairs)",
        ),
        (
            "call:route",
            "route",
            "reads xds.route_name (one get_property)",
        ),
        (
            "call:time",
            "time",
            "reads the clock (one get_current_time_nanoseconds)",
        ),
        (
            "call:set",
            "set",
            "sets one request header (one replace_header_map_value)",
        ),
        (
            "call:headers+route",
            "headers route",
            "the two reads wasm-0 makes",
        ),
        (
            "call:headers+route+time",
            "headers route time time",
            "the reads wasm-0 makes, and the clock twice",
        ),
    ]
    .into_iter()
    .map(|(name, calls, what)| probe(name, "host_calls", calls, what))
    .collect()
}

/// `b:` rows: another build's module on the wasm-0, wasm-1 and wasm-auth
/// chains.
pub(super) fn module_b_configs(module: &std::path::Path) -> Result<Vec<Config>, String> {
    let (auth, auth_headers) = auth_chain::inline(true)?;
    let row = |name: &str, chain: &str, headers: Vec<(String, String)>| Config {
        name: format!("b:{name}"),
        what: format!("{name} with {}", module.display()),
        filters: vec![filters::policy_engine(module, chain)],
        shim: None,
        headers,
        clusters: Vec::new(),
    };
    Ok(vec![
        row("wasm-0", &set_headers_chain(0), Vec::new()),
        row("wasm-1", &set_headers_chain(1), Vec::new()),
        row("wasm-auth", &auth, auth_headers),
    ])
}

pub(super) fn configs(
    authz: &AuthzServer,
    ratelimit: &RateLimitService,
) -> Result<Vec<Config>, String> {
    let module = filter_wasm();
    let ratelimit_cluster = vec![filters::grpc_cluster("ratelimit", ratelimit.addr())];
    let client_header = vec![("x-client".to_owned(), "bench".to_owned())];
    let authz_cluster = vec![filters::grpc_cluster("authz", authz.addr())];
    let authz_headers = vec![("authorization".to_owned(), "Bearer bench".to_owned())];
    let longest = 8;
    let (auth, auth_headers) = auth_chain::inline(true)?;
    let (uncached, uncached_headers) = auth_chain::inline(false)?;
    Ok(vec![
        Config {
            name: "baseline".into(),
            what: "Envoy, router only".into(),
            filters: vec![],
            shim: None,
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        Config {
            name: "baseline-aa".into(),
            what: "a second, identical baseline (A/A control)".into(),
            filters: vec![],
            shim: None,
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        probe("probe-noop", "noop", "", "a proxy-wasm module that does nothing: the floor for any Rust proxy-wasm filter in V8"),
        probe("probe-set-header", "set_header", "", "wasm-1's header work written directly against the proxy-wasm SDK"),
        Config {
            name: "wasm-0".into(),
            what: "Wasm filter, empty chain (the host's own cost)".into(),
            filters: vec![filters::policy_engine(&module, &set_headers_chain(0))],
            shim: None,
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        Config {
            name: "wasm-1".into(),
            what: "Wasm filter, 1 policy (set-headers: 1 request + 1 response header)".into(),
            filters: vec![filters::policy_engine(&module, &set_headers_chain(1))],
            shim: None,
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        Config {
            name: format!("wasm-{longest}"),
            what: format!("Wasm filter, {longest} policies (set-headers x{longest})"),
            filters: vec![filters::policy_engine(&module, &set_headers_chain(longest))],
            shim: None,
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        Config {
            name: "wasm-cel".into(),
            what: "Wasm filter, CEL authorization (2 rules) + transformation (4 edits)".into(),
            filters: vec![filters::policy_engine(&module, CEL_CHAIN)],
            shim: None,
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        Config {
            name: "wasm-auth".into(),
            what: "Wasm filter, jwt (ES256, token reused) + CEL authorization + transformation + api-key + set-headers".into(),
            filters: vec![filters::policy_engine(&module, &auth)],
            shim: None,
            headers: auth_headers.clone(),
            clusters: Vec::new(),
        },
        Config {
            name: "wasm-auth-nocache".into(),
            what: "the wasm-auth chain with jwt's token cache off: every request verifies ES256".into(),
            filters: vec![filters::policy_engine(&module, &uncached)],
            shim: None,
            headers: uncached_headers,
            clusters: Vec::new(),
        },
        Config {
            name: "extproc-1".into(),
            what: "ext_proc shim, the wasm-1 chain".into(),
            filters: vec![filters::ext_proc()],
            shim: Some(set_headers_chain(1)),
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        Config {
            name: format!("extproc-{longest}"),
            what: format!("ext_proc shim, the wasm-{longest} chain"),
            filters: vec![filters::ext_proc()],
            shim: Some(set_headers_chain(longest)),
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        Config {
            name: "extproc-cel".into(),
            what: "ext_proc shim, the wasm-cel chain".into(),
            filters: vec![filters::ext_proc()],
            shim: Some(CEL_CHAIN.into()),
            headers: Vec::new(),
            clusters: Vec::new(),
        },
        Config {
            name: "extproc-auth".into(),
            what: "ext_proc shim, the wasm-auth chain".into(),
            filters: vec![filters::ext_proc()],
            shim: Some(auth),
            headers: auth_headers,
            clusters: Vec::new(),
        },
        Config {
            name: "wasm-extauthz".into(),
            what: "Wasm filter, ext-authz: a gRPC Check per request to a loopback service (allows)".into(),
            filters: vec![filters::policy_engine(&module, &ext_authz_chain(authz, false))],
            shim: None,
            headers: authz_headers.clone(),
            clusters: authz_cluster.clone(),
        },
        Config {
            name: "wasm-extauthz-cache".into(),
            what: "the wasm-extauthz chain with its decision cache on (one check, then hits)".into(),
            filters: vec![filters::policy_engine(&module, &ext_authz_chain(authz, true))],
            shim: None,
            headers: authz_headers.clone(),
            clusters: authz_cluster.clone(),
        },
        Config {
            name: "extproc-extauthz".into(),
            what: "ext_proc shim, the wasm-extauthz chain (the shim calls the service)".into(),
            filters: vec![filters::ext_proc()],
            shim: Some(ext_authz_chain(authz, false)),
            headers: authz_headers,
            clusters: Vec::new(),
        },
        Config {
            name: "wasm-ratelimit-local".into(),
            what: "Wasm filter, rate-limit: one local limit keyed by a header, never exhausted".into(),
            filters: vec![filters::policy_engine(&module, &rate_limit_chain(None))],
            shim: None,
            headers: client_header.clone(),
            clusters: Vec::new(),
        },
        Config {
            name: "wasm-ratelimit-global".into(),
            what: "Wasm filter, the same limit counted in Redis through policy-ratelimit (a gRPC call per request)".into(),
            filters: vec![filters::policy_engine(&module, &rate_limit_chain(Some(ratelimit)))],
            shim: None,
            headers: client_header.clone(),
            clusters: ratelimit_cluster,
        },
        Config {
            name: "extproc-ratelimit-local".into(),
            what: "ext_proc shim, the wasm-ratelimit-local chain".into(),
            filters: vec![filters::ext_proc()],
            shim: Some(rate_limit_chain(None)),
            headers: client_header.clone(),
            clusters: Vec::new(),
        },
        Config {
            name: "extproc-ratelimit-global".into(),
            what: "ext_proc shim, the wasm-ratelimit-global chain (the shim calls the service)".into(),
            filters: vec![filters::ext_proc()],
            shim: Some(rate_limit_chain(Some(ratelimit))),
            headers: client_header,
            clusters: Vec::new(),
        },
        Config {
            name: "lua-1".into(),
            what: "Lua filter doing the 1-policy header work".into(),
            filters: vec![filters::lua(LUA_SET_HEADERS)],
            shim: None,
            headers: Vec::new(),
            clusters: Vec::new(),
        },
    ])
}
