//! `make bench`: what the filter costs, as throughput ratios to plain Envoy
//! measured side by side.
//!
//! This machine's speed drifts by ±15 %, so separate runs cannot rank
//! configurations. Instead every Envoy runs at once (`--concurrency 1`,
//! pinned to core 0), and `wrk -t1` (pinned to core 1, with the echo
//! upstream) visits them in short bursts, the order rotated every cycle. For
//! each cycle the throughput of a configuration is divided by the baseline's
//! in the same cycle; the table reports the median of those paired ratios
//! with its 95 % confidence interval (a bootstrap over the cycles:
//! `integration_tests::measure::median_interval`). A second, identical
//! baseline (A/A) must have 1.00 inside its interval or the run is void;
//! a goal counts as met when the median meets it and the interval is no
//! wider than ±0.03 around it.
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

mod builds;
mod configs;
mod open_loop;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::time::Instant;

use integration_tests::authz::{AuthzServer, Decision};
use integration_tests::chains::{
    json_document, set_headers_chain, BODY_EDIT_CHAIN, CEL_CHAIN, JSON_BODY_CHAIN, SSE_MASK_CHAIN,
};
use integration_tests::load::{Load, Plan, RequestSpec};
use integration_tests::measure::{env_or, median_interval, quantile};
use integration_tests::ratelimit::{RateLimitService, Redis};
use integration_tests::{auth_chain, wrk};
use local_envoy::echo::{EchoUpstream, SSE_EVENTS};
use local_envoy::shim::Shim;
use local_envoy::{filter_wasm, filters, repo_root, Envoy, Options};
use serde_json::Value;

use builds::measure_builds;
use configs::{configs, host_call_configs, module_b_configs, Config};
use open_loop::run_open_loop;

/// The half-width a ratio's interval may have for the ratio to decide a
/// goal.
const DECISIVE_HALF_WIDTH: f64 = 0.03;

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
    let (aa_low, aa_high) = median_interval(&ratios[1]);
    let valid = aa_low <= 1.0 && 1.0 <= aa_high;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "# Policy filter benchmark\n\n\
         {cycles} cycles x {burst}s bursts per configuration, order rotated each cycle; \
         every Envoy `--concurrency 1` pinned to core 0; `wrk -t1 -c{connections}`, the \
         echo upstream and the ext_proc shim on core 1. Filter module: {} ({} bytes).\n\n\
         Ratio = throughput / baseline throughput in the same cycle: median [95 % confidence \
         interval, a bootstrap over the cycles]; \"decisive\" when the interval is no wider than \
         ±0.03 around the median, the width a goal needs. \
         Latency and Envoy CPU = median over cycles (CPU 100 % = core 0 saturated, i.e. Envoy-bound).\n",
        filter_wasm().display(),
        std::fs::metadata(filter_wasm()).map(|m| m.len()).unwrap_or(0),
    );
    let _ = writeln!(
        table,
        "| configuration | ratio to baseline | decisive | req/s | p50 ms | p99 ms | Envoy CPU | shim CPU | Envoy RSS MiB | what |\n\
         |---|---|---|---|---|---|---|---|---|---|"
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
        let median = quantile(&ratios[i], 0.5);
        let (low, high) = median_interval(&ratios[i]);
        let decisive = median - low <= DECISIVE_HALF_WIDTH && high - median <= DECISIVE_HALF_WIDTH;
        let _ = writeln!(
            table,
            "| {} | {:.3} [{:.3}, {:.3}] | {} | {:.0} | {:.3} | {:.3} | {:.0} % | {} | {:.1} | {} |",
            config.name,
            median,
            low,
            high,
            if decisive { "yes" } else { "no" },
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
        "\nA/A control: {aa:.3} [{aa_low:.3}, {aa_high:.3}] ({})",
        if valid {
            "1.00 is inside its interval: the run is valid"
        } else {
            "1.00 is outside its interval: this run is VOID, rerun it (more cycles narrow it)"
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
