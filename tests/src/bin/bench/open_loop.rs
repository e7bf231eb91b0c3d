//! The open-loop stage: a fixed rate far below capacity, where latency
//! rather than throughput shows.

// The bench's own types and imports: this is its code, kept apart.
use super::*;

/// Sets up the open-loop stage: the auth chain on both hosts and the
/// 100 KB JSON body chain on both (started here: their POSTs are not
/// wrk's), each beside plain Envoy given the same request.
pub(super) fn run_open_loop(
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
pub(super) fn refuses_what_it_checks<'a>(
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
pub(super) struct OpenLoopRow<'a> {
    pub(super) name: String,
    pub(super) target: &'a Target,
    pub(super) request: RequestSpec,
    pub(super) compared_with: &'static str,
}

/// The open-loop stage: every row at the same fixed rate, well below any
/// configuration's capacity, in rounds with the order rotated. A
/// request's latency runs from when it was due (`integration_tests::load`),
/// so a stall is charged to every request it held up. Returns the report's
/// section.
pub(super) fn open_loop_stage(rows: &[OpenLoopRow<'_>]) -> Result<String, String> {
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
