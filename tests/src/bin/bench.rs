//! `make bench`: what the filter costs, as throughput ratios to plain Envoy
//! measured side by side.
//!
//! This machine's speed drifts by ±15 %, so separate runs cannot rank
//! configurations. Instead every Envoy runs at once (`--concurrency 1`,
//! pinned to core 0), and `wrk -t1` (pinned to core 1, with the echo
//! upstream) visits them in short bursts, the order rotated every cycle. For
//! each cycle the throughput of a configuration is divided by the baseline's
//! in the same cycle; the table reports the median of those paired ratios
//! with their interquartile range. A second, identical baseline (A/A) must
//! come out within 3 % of 1.00 or the run is void.
//!
//! A second part is open loop: a fixed rate (500 requests/s) far below
//! every configuration's capacity, where latency rather than throughput
//! shows, reported as what a configuration adds to plain Envoy's p50 and
//! p99 for the same request: the auth chain on both hosts, and a chain that
//! checks a 100 KB JSON request body (`BENCH_OPEN_LOOP=0` skips it;
//! `BENCH_OPEN_LOOP_RATE`, `_SECS`, `_ROUNDS` tune it). The load generator
//! is `make stress`'s (`integration_tests::load`), which times each
//! request from when it was due, so a stall is not hidden (no coordinated
//! omission).
//!
//! A third part times the builder: a full build of `build.yaml` from an
//! empty target directory, then the rebuild after one policy's source
//! changed, with the sizes of the module and the shim (`BENCH_BUILD=0`
//! skips it).
//!
//! The ext_proc configurations run the shim on core 1 too (there is no third
//! core): its CPU is reported in its own column and is not charged to the
//! Envoy core, so their ratios show Envoy's side of the cost only.
//!
//! Environment: `BENCH_CYCLES` (default 15), `BENCH_BURST_SECS` (2),
//! `BENCH_CONNECTIONS` (16), `BENCH_OUT` (target/bench/results.md),
//! `BENCH_ONLY` (comma-separated configuration names: run only those, with
//! the two baselines), and `BENCH_MODULE_B` (another build's
//! `plugin.wasm`: adds `b:` rows running it on the wasm-0, wasm-1 and
//! wasm-auth chains, to measure a change side by side with what it
//! changed), and `BENCH_HOST_CALLS=1` (adds `call:` rows, a probe module
//! making one kind of host call per request, to price each).
//!
//! Two probe rows are always there (`tests/probes`): `probe-noop`, a
//! proxy-wasm module that does nothing, is the floor for any Rust filter
//! in V8; `probe-set-header` does wasm-1's header work directly through the
//! SDK. The gap from them to `wasm-0` and `wasm-1` is the engine's own.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::time::Instant;

use integration_tests::authz::{AuthzServer, Decision};
use integration_tests::chains::{json_document, set_headers_chain, CEL_CHAIN, JSON_BODY_CHAIN};
use integration_tests::load::{Load, Plan, RequestSpec};
use integration_tests::measure::{env_or, quantile};
use integration_tests::ratelimit::{RateLimitService, Redis};
use integration_tests::{auth_chain, wrk};
use local_envoy::echo::EchoUpstream;
use local_envoy::shim::Shim;
use local_envoy::{filter_wasm, filters, repo_root, Envoy, Options};
use serde_json::Value;

/// Ratio band the A/A control must fall in.
const AA_TOLERANCE: f64 = 0.03;

struct Config {
    name: String,
    what: String,
    filters: Vec<Value>,
    /// The shim's plugin configuration, for ext_proc configurations.
    shim: Option<String>,
    /// Request headers wrk sends.
    headers: Vec<(String, String)>,
    /// Envoy clusters besides the echo upstream's (the ext-authz service).
    clusters: Vec<Value>,
}

/// The same header work as one set-headers instance, in Lua.
const LUA_SET_HEADERS: &str = r#"
function envoy_on_request(handle)
  handle:headers():replace("x-bench-0", "on")
end
function envoy_on_response(handle)
  handle:headers():replace("x-bench-0", "on")
end
"#;

/// One `ext-authz` check over gRPC against the bench's loopback service,
/// with its decision cache (keyed by the constant `authorization` wrk
/// sends) or without.
fn ext_authz_chain(authz: &AuthzServer, cache: bool) -> String {
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
fn rate_limit_chain(ratelimit: Option<&RateLimitService>) -> String {
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
fn probe(name: &str, krate: &str, configuration: &str, what: &str) -> Config {
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
fn host_call_configs() -> Vec<Config> {
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
fn module_b_configs(module: &std::path::Path) -> Result<Vec<Config>, String> {
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

fn configs(authz: &AuthzServer, ratelimit: &RateLimitService) -> Result<Vec<Config>, String> {
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

/// One wrk burst's figures.
#[derive(Clone, Copy)]
struct Burst {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: f64,
    shim_cpu: Option<f64>,
}

/// One configuration under test.
struct Target {
    envoy: Envoy,
    shim: Option<Shim>,
    headers: Vec<(String, String)>,
}

/// CPU seconds (user + system) Envoy has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

fn wrk(target: &Target, seconds: u32, connections: u32) -> Result<Burst, String> {
    let envoy = &target.envoy;
    let shim_pid = target.shim.as_ref().map(Shim::pid);
    let before = cpu_seconds(envoy.pid()).unwrap_or(0.0);
    let shim_before = shim_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let output = Command::new("taskset")
        .args(["-c", "1", "wrk"])
        .args(wrk::args(
            1,
            connections,
            seconds,
            &target.headers,
            &envoy.url("/bench"),
        ))
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let after = cpu_seconds(envoy.pid()).unwrap_or(0.0);
    let shim_after = shim_pid.and_then(cpu_seconds);
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout);
    let summary = wrk::parse(&text)?;
    if summary.failures() > 0 {
        return Err(format!("wrk saw failed requests:\n{text}"));
    }
    match (summary.p50_ms, summary.p99_ms) {
        (Some(p50_ms), Some(p99_ms)) => Ok(Burst {
            rps: summary.rps,
            p50_ms,
            p99_ms,
            cpu: (after - before) / wall,
            shim_cpu: shim_before.zip(shim_after).map(|(b, a)| (a - b) / wall),
        }),
        _ => Err(format!("cannot read wrk's latency distribution:\n{text}")),
    }
}

/// Sets up the open-loop stage: the auth chain on both hosts and the
/// 100 KB JSON body chain on both (started here: their POSTs are not
/// wrk's), each beside plain Envoy given the same request.
fn run_open_loop(
    configs: &[Config],
    targets: &[Target],
    upstream: &EchoUpstream,
    scratch: &std::path::Path,
) -> Result<String, String> {
    let target = |name: &str| {
        configs
            .iter()
            .position(|c| c.name == name)
            .and_then(|i| targets.get(i))
    };
    let baseline = target("baseline").ok_or("no baseline")?;
    let body_config = |name: &str, wasm: bool| Config {
        name: name.into(),
        what: String::new(),
        filters: vec![if wasm {
            filters::policy_engine(&filter_wasm(), JSON_BODY_CHAIN)
        } else {
            filters::ext_proc()
        }],
        shim: (!wasm).then(|| JSON_BODY_CHAIN.to_owned()),
        headers: Vec::new(),
        clusters: Vec::new(),
    };
    let wasm_body = start_target(&body_config("wasm-json-body", true), upstream, scratch)?;
    let extproc_body = start_target(&body_config("extproc-json-body", false), upstream, scratch)?;
    let document = json_document(100 * 1024);
    let json = vec![("content-type".to_owned(), "application/json".to_owned())];
    let post =
        |label: &str| RequestSpec::post(label, "/bench", json.clone(), document.clone(), 200);
    refuses_what_it_checks(&wasm_body, &extproc_body, &target)?;
    // Each auth row sends its own configuration's credentials; plain Envoy
    // gets the same headers as the first of them.
    let auth_headers = |name: &str| target(name).map(|t| t.headers.clone());
    let get = |name: &str| {
        let headers = auth_headers(name).unwrap_or_default();
        RequestSpec::get("auth", "/bench", headers, 200)
    };
    let baseline_auth = auth_headers("wasm-auth")
        .or_else(|| auth_headers("extproc-auth"))
        .unwrap_or_default();
    let row = |name: &str, target: &'static str, request| (name.to_owned(), target, request);
    let plain = |label: &str| RequestSpec::get(label, "/bench", Vec::new(), 200);
    let wanted = [
        row(
            "baseline (no headers)",
            "baseline (no headers)",
            plain("plain"),
        ),
        row("probe-noop", "baseline (no headers)", plain("plain")),
        row("lua-1", "baseline (no headers)", plain("plain")),
        row("wasm-1", "baseline (no headers)", plain("plain")),
        row(
            "baseline",
            "baseline",
            RequestSpec::get("auth headers", "/bench", baseline_auth, 200),
        ),
        row("wasm-auth", "baseline", get("wasm-auth")),
        row("extproc-auth", "baseline", get("extproc-auth")),
        row(
            "baseline-100k-json",
            "baseline-100k-json",
            post("100 KB JSON"),
        ),
        row("wasm-json-body", "baseline-100k-json", post("100 KB JSON")),
        row(
            "extproc-json-body",
            "baseline-100k-json",
            post("100 KB JSON"),
        ),
    ];
    let mut rows = Vec::new();
    for (name, compared_with, request) in wanted {
        let found = match name.as_str() {
            "baseline" | "baseline (no headers)" | "baseline-100k-json" => Some(baseline),
            "wasm-json-body" => Some(&wasm_body),
            "extproc-json-body" => Some(&extproc_body),
            other => target(other),
        };
        if let Some(target) = found {
            rows.push(OpenLoopRow {
                name,
                target,
                request,
                compared_with,
            });
        }
    }
    open_loop_stage(&rows)
}

/// Checks that the measured chains refuse what they are there to refuse:
/// plain Envoy answers their requests with 200 too, so a chain that never
/// ran would look free. Invalid JSON gets 400 from the body chains, a
/// request without credentials 401 from the auth chains.
fn refuses_what_it_checks<'a>(
    wasm_body: &Target,
    extproc_body: &Target,
    target: &dyn Fn(&str) -> Option<&'a Target>,
) -> Result<(), String> {
    let json = [("content-type", "application/json")];
    let mut checks = vec![
        ("wasm-json-body", wasm_body, "POST", &json[..], 400),
        ("extproc-json-body", extproc_body, "POST", &json[..], 400),
    ];
    for name in ["wasm-auth", "extproc-auth"] {
        if let Some(target) = target(name) {
            checks.push((name, target, "GET", &[], 401));
        }
    }
    for (name, target, method, headers, expected) in checks {
        let url = format!("http://{}/bench", target.envoy.addr());
        let body = (method == "POST").then_some("{\"not\": json");
        let status = integration_tests::send(&url, method, headers, body).status;
        if status != expected {
            return Err(format!(
                "{name}: a request it must refuse got {status}, not {expected}: the chain does not run"
            ));
        }
    }
    Ok(())
}

/// One row of the open-loop stage: a configuration's Envoy, the request
/// sent to it, and the row its latency is compared with.
struct OpenLoopRow<'a> {
    name: String,
    target: &'a Target,
    request: RequestSpec,
    compared_with: &'static str,
}

/// The open-loop stage: every row at the same fixed rate, well below any
/// configuration's capacity, in rounds with the order rotated. A
/// request's latency runs from when it was due (`integration_tests::load`),
/// so a stall is charged to every request it held up. Returns the report's
/// section.
fn open_loop_stage(rows: &[OpenLoopRow<'_>]) -> Result<String, String> {
    eprintln!("bench: open-loop stage, {} rows", rows.len());
    let rate: f64 = env_or("BENCH_OPEN_LOOP_RATE", 500.0);
    let seconds: u64 = env_or("BENCH_OPEN_LOOP_SECS", 4);
    let rounds: usize = env_or("BENCH_OPEN_LOOP_ROUNDS", 3);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut failed = vec![0_u64; rows.len()];
    for round in 0..rounds {
        for step in 0..rows.len() {
            let i = (round + step) % rows.len();
            let row = &rows[i];
            let plan = Plan {
                target: row.target.envoy.addr(),
                rate,
                connections: 8,
                requests: vec![row.request.clone()],
                timeout: std::time::Duration::from_secs(5),
            };
            let load = Load::start(&plan).map_err(|e| format!("{}: {e}", row.name))?;
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            let finished = load.stop();
            // The first half second warms the connections up.
            let kept = finished
                .samples
                .iter()
                .filter(|s| s.due >= std::time::Duration::from_millis(500));
            for sample in kept {
                if sample.outcome.is_expected() {
                    samples[i].push(sample.latency.as_secs_f64() * 1000.0);
                } else {
                    failed[i] += 1;
                }
            }
        }
        eprintln!("bench: open-loop round {}/{rounds} done", round + 1);
    }
    let percentile = |i: usize, q: f64| quantile(&samples[i], q);
    let mut section = String::new();
    let _ = writeln!(
        section,
        "\n## Latency at a fixed rate (open loop)\n\n\
         {rate:.0} requests/s for {rounds} x {seconds} s per row, order rotated each round, 8 \
         connections, the load on core 1; latency from when each request was due. \
         Added = this row minus the row it is compared with (plain Envoy, the same request).\n\n\
         | configuration | requests | failed | p50 ms | p99 ms | added p50 ms | added p99 ms |\n\
         |---|---|---|---|---|---|---|"
    );
    for (i, row) in rows.iter().enumerate() {
        let base = rows
            .iter()
            .position(|r| r.name == row.compared_with)
            .unwrap_or(i);
        // Failed requests are left out of the percentiles, so a row (or
        // its comparison) with any has no added figure to report.
        let added = |q: f64| {
            if base == i {
                "-".to_owned()
            } else if failed[i] > 0 || failed[base] > 0 {
                "void (failures)".to_owned()
            } else {
                format!("{:+.3}", percentile(i, q) - percentile(base, q))
            }
        };
        let _ = writeln!(
            section,
            "| {} | {} | {} | {:.3} | {:.3} | {} | {} |",
            row.name,
            samples[i].len(),
            failed[i],
            percentile(i, 0.5),
            percentile(i, 0.99),
            added(0.5),
            added(0.99),
        );
    }
    Ok(section)
}

/// Starts a configuration's Envoy (and shim) beside the echo upstream.
fn start_target(
    config: &Config,
    upstream: &EchoUpstream,
    scratch: &std::path::Path,
) -> Result<Target, String> {
    let mut options = Options::new(config.filters.clone(), upstream.addr());
    options.cpu = Some(0);
    options.wasm_log_level = "warn";
    let shim = match &config.shim {
        Some(plugin_config) => {
            let file = scratch.join(format!("{}.yaml", config.name));
            std::fs::write(&file, plugin_config)
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
            let shim = Shim::start(
                &file,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Some(1),
                "warn",
            )
            .map_err(|e| format!("{}: {e}", config.name))?;
            options.clusters = vec![filters::ext_proc_cluster(shim.addr())];
            Some(shim)
        }
        None => None,
    };
    options.clusters.extend(config.clusters.clone());
    let envoy = Envoy::start(&options).map_err(|e| format!("{}: {e}", config.name))?;
    Ok(Target {
        envoy,
        shim,
        headers: config.headers.clone(),
    })
}

/// Times the builder; returns the report's "Build" section.
fn measure_builds() -> Result<String, String> {
    let repo = repo_root();
    let builder = repo.join("target/debug/policy-builder");
    let target = repo.join("target/bench/builder-target");
    let out = repo.join("target/bench/build");
    let _ = std::fs::remove_dir_all(&target);
    let build = || -> Result<f64, String> {
        let started = Instant::now();
        // The bench itself is pinned to one core; a build gets them all.
        let status = Command::new("taskset")
            .args(["-c", "0-1023"])
            .arg(&builder)
            .args(["build", "--manifest"])
            .arg(repo.join("build.yaml"))
            .arg("--out")
            .arg(&out)
            .arg("--target-dir")
            .arg(&target)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("running {}: {e}", builder.display()))?;
        if !status.success() {
            return Err(format!("the builder failed ({status})"));
        }
        Ok(started.elapsed().as_secs_f64())
    };
    eprintln!("bench: timing a full build (every dependency, both targets)");
    let full = build()?;
    // Changing one policy: its crate, the registry and both artifacts rebuild.
    let changed = repo.join("policies/set-headers/src/lib.rs");
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&changed)
        .map_err(|e| format!("{}: {e}", changed.display()))?;
    file.set_modified(std::time::SystemTime::now())
        .map_err(|e| format!("touching {}: {e}", changed.display()))?;
    eprintln!("bench: timing the rebuild after one policy changed");
    let incremental = build()?;
    let size = |name: &str| std::fs::metadata(out.join(name)).map_or(0, |m| m.len());
    // The builder's `wasm-release` profile (`policy_builder::generate`).
    let raw_path = target.join("wasm32-wasip1/wasm-release/plugin.wasm");
    let raw_module = std::fs::metadata(&raw_path)
        .map_err(|e| format!("{}: {e}", raw_path.display()))?
        .len();
    let policies = std::fs::read_to_string(repo.join("build.yaml"))
        .unwrap_or_default()
        .matches("- path:")
        .count();
    let mut section = String::new();
    let _ = writeln!(section, "\n## Build (build.yaml, {policies} policies)\n");
    let _ = writeln!(section, "| what | value |\n|---|---|");
    let _ = writeln!(
        section,
        "| full build, empty target dir (module + shim, LTO) | {full:.0} s |"
    );
    let _ = writeln!(
        section,
        "| rebuild after one policy changed | {incremental:.0} s ({:.2} of full) |",
        incremental / full
    );
    let _ = writeln!(
        section,
        "| plugin.wasm after wasm-opt | {} bytes (before: {raw_module}) |",
        size("plugin.wasm")
    );
    let _ = writeln!(
        section,
        "| policy-extproc | {} bytes |",
        size("policy-extproc")
    );
    Ok(section)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    let cycles: usize = env_or("BENCH_CYCLES", 15);
    let burst: u32 = env_or("BENCH_BURST_SECS", 2);
    let connections: u32 = env_or("BENCH_CONNECTIONS", 16);
    let out = std::env::var("BENCH_OUT")
        .map(Into::into)
        .unwrap_or_else(|_| repo_root().join("target/bench/results.md"));

    let upstream = EchoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("starting the echo upstream: {e}"))?;
    // The ext-authz rows' service: it allows everything, on its own thread
    // (not pinned: with Envoy on core 0 it runs beside wrk on core 1).
    let authz = AuthzServer::start_grpc(Decision::allow())
        .map_err(|e| format!("starting the authorization service: {e}"))?;
    let redis = Redis::start().map_err(|e| format!("starting Redis: {e}"))?;
    let ratelimit = RateLimitService::start(&redis.url())
        .map_err(|e| format!("starting the rate limit service: {e}"))?;
    let mut configs = configs(&authz, &ratelimit)?;
    if env_or("BENCH_HOST_CALLS", 0) == 1 {
        configs.extend(host_call_configs());
    }
    if let Ok(module) = std::env::var("BENCH_MODULE_B") {
        configs.extend(module_b_configs(std::path::Path::new(&module))?);
    }
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        // The baselines stay first: ratios are to the first, A/A second.
        configs.retain(|c| {
            c.name.starts_with("baseline")
                || wanted.contains(&c.name.as_str())
                || c.name.starts_with("b:")
                || c.name.starts_with("call:")
        });
    }
    let scratch = std::env::temp_dir().join(format!("policy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let mut targets = Vec::new();
    for config in &configs {
        targets.push(start_target(config, &upstream, &scratch)?);
    }
    eprintln!(
        "bench: {} configurations, {cycles} cycles of {burst}s bursts, {connections} connections",
        configs.len()
    );
    for target in &targets {
        wrk(target, 1, connections)?; // warm-up
    }

    let n = configs.len();
    let mut bursts: Vec<Vec<Burst>> = vec![Vec::new(); n];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); n];
    for cycle in 0..cycles {
        let mut this_cycle = vec![None; n];
        for step in 0..n {
            let i = (cycle + step) % n;
            this_cycle[i] = Some(wrk(&targets[i], burst, connections)?);
        }
        let baseline = this_cycle[0].map_or(f64::NAN, |b| b.rps);
        for (i, burst) in this_cycle.into_iter().enumerate() {
            if let Some(burst) = burst {
                ratios[i].push(burst.rps / baseline);
                bursts[i].push(burst);
            }
        }
        eprintln!("bench: cycle {}/{cycles} done", cycle + 1);
    }

    let aa = quantile(&ratios[1], 0.5);
    let valid = (aa - 1.0).abs() <= AA_TOLERANCE;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "# Policy filter benchmark\n\n\
         {cycles} cycles x {burst}s bursts per configuration, order rotated each cycle; \
         every Envoy `--concurrency 1` pinned to core 0; `wrk -t1 -c{connections}`, the \
         echo upstream and the ext_proc shim on core 1. Filter module: {} ({} bytes).\n\n\
         Ratio = throughput / baseline throughput in the same cycle: median [p25, p75] over cycles. \
         Latency and Envoy CPU = median over cycles (CPU 100 % = core 0 saturated, i.e. Envoy-bound).\n",
        filter_wasm().display(),
        std::fs::metadata(filter_wasm()).map(|m| m.len()).unwrap_or(0),
    );
    let _ = writeln!(
        table,
        "| configuration | ratio to baseline | req/s | p50 ms | p99 ms | Envoy CPU | shim CPU | Envoy RSS MiB | what |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for (i, config) in configs.iter().enumerate() {
        let pick = |f: fn(&Burst) -> f64| {
            let values: Vec<f64> = bursts[i].iter().map(f).collect();
            quantile(&values, 0.5)
        };
        let rss = targets[i]
            .envoy
            .rss_kib()
            .map_or(f64::NAN, |k| k as f64 / 1024.0);
        let shim_cpus: Vec<f64> = bursts[i].iter().filter_map(|b| b.shim_cpu).collect();
        let shim_cpu = if shim_cpus.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0} %", quantile(&shim_cpus, 0.5) * 100.0)
        };
        let _ = writeln!(
            table,
            "| {} | {:.3} [{:.3}, {:.3}] | {:.0} | {:.3} | {:.3} | {:.0} % | {} | {:.1} | {} |",
            config.name,
            quantile(&ratios[i], 0.5),
            quantile(&ratios[i], 0.25),
            quantile(&ratios[i], 0.75),
            pick(|b| b.rps),
            pick(|b| b.p50_ms),
            pick(|b| b.p99_ms),
            pick(|b| b.cpu) * 100.0,
            shim_cpu,
            rss,
            config.what,
        );
    }
    let open_loop = if env_or("BENCH_OPEN_LOOP", 1) == 0 {
        String::new()
    } else {
        run_open_loop(&configs, &targets, &upstream, &scratch)?
    };
    table.push_str(&open_loop);
    let builds = if env_or("BENCH_BUILD", 1) == 0 {
        String::new()
    } else {
        // Measured after the throughput runs: builds load both cores.
        drop(targets);
        measure_builds()?
    };
    let _ = writeln!(
        table,
        "\nA/A control: {aa:.3} ({})",
        if valid {
            "within ±3 %: the run is valid"
        } else {
            "outside ±3 %: this run is VOID, rerun it on a quieter machine"
        }
    );
    table.push_str(&builds);
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(&out, &table).map_err(|e| format!("writing {}: {e}", out.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{table}\nwritten to {}", out.display());
    Ok(valid)
}
