//! The open-loop stage: a fixed rate far below capacity, where latency
//! rather than throughput shows.

// The bench's own types and imports: this is its code, kept apart.
use super::*;

/// Sets up the open-loop stage: the auth chain on both hosts, the 100 KB
/// JSON body chains on both (a check; a transformation with masking), and
/// masking of a 1,000-event SSE stream on both (started here: their
/// requests are not wrk's), each beside plain Envoy given the same request.
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
    let body_config = |name: &str, wasm: bool, chain: &str| Config {
        name: name.into(),
        what: String::new(),
        filters: vec![if wasm {
            filters::policy_engine(&filter_wasm(), chain)
        } else {
            filters::ext_proc()
        }],
        shim: (!wasm).then(|| chain.to_owned()),
        headers: Vec::new(),
        clusters: Vec::new(),
    };
    let start = |name: &str, wasm: bool, chain: &str| {
        start_target(&body_config(name, wasm, chain), upstream, scratch)
    };
    let wasm_body = start("wasm-json-body", true, JSON_BODY_CHAIN)?;
    let extproc_body = start("extproc-json-body", false, JSON_BODY_CHAIN)?;
    let wasm_edit = start("wasm-body-edit", true, BODY_EDIT_CHAIN)?;
    let extproc_edit = start("extproc-body-edit", false, BODY_EDIT_CHAIN)?;
    let wasm_sse = start("wasm-sse-mask", true, SSE_MASK_CHAIN)?;
    let extproc_sse = start("extproc-sse-mask", false, SSE_MASK_CHAIN)?;
    let document = json_document(100 * 1024);
    let json = vec![("content-type".to_owned(), "application/json".to_owned())];
    let post =
        |label: &str| RequestSpec::post(label, "/bench", json.clone(), document.clone(), 200);
    refuses_what_it_checks(&wasm_body, &extproc_body, &target)?;
    edits_and_masks(&[&wasm_edit, &extproc_edit], &[&wasm_sse, &extproc_sse])?;
    let events = vec![(SSE_EVENTS.to_owned(), SSE_STREAM_EVENTS.to_string())];
    let sse = |label: &str| RequestSpec::get(label, "/bench", events.clone(), 200);
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
    let rate: f64 = env_or("BENCH_OPEN_LOOP_RATE", 500.0);
    // Body work costs more per request: its rows run at rates below their
    // capacity on this machine, beside plain Envoy at the same rate.
    let edit_rate: f64 = env_or("BENCH_BODY_EDIT_RATE", 100.0);
    let sse_rate: f64 = env_or("BENCH_SSE_RATE", 20.0);
    let row = |name: &str, target: &'static str, request| (name.to_owned(), target, request, rate);
    let slower =
        |name: &str, target: &'static str, request, rate| (name.to_owned(), target, request, rate);
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
        slower(
            "baseline-body-edit",
            "baseline-body-edit",
            post("100 KB JSON"),
            edit_rate,
        ),
        slower(
            "wasm-body-edit",
            "baseline-body-edit",
            post("100 KB JSON"),
            edit_rate,
        ),
        slower(
            "extproc-body-edit",
            "baseline-body-edit",
            post("100 KB JSON"),
            edit_rate,
        ),
        slower(
            "baseline-sse",
            "baseline-sse",
            sse("1,000 SSE events"),
            sse_rate,
        ),
        slower(
            "wasm-sse-mask",
            "baseline-sse",
            sse("1,000 SSE events"),
            sse_rate,
        ),
        slower(
            "extproc-sse-mask",
            "baseline-sse",
            sse("1,000 SSE events"),
            sse_rate,
        ),
    ];
    let mut rows = Vec::new();
    for (name, compared_with, request, rate) in wanted {
        let found = match name.as_str() {
            "baseline"
            | "baseline (no headers)"
            | "baseline-100k-json"
            | "baseline-body-edit"
            | "baseline-sse" => Some(baseline),
            "wasm-json-body" => Some(&wasm_body),
            "extproc-json-body" => Some(&extproc_body),
            "wasm-body-edit" => Some(&wasm_edit),
            "extproc-body-edit" => Some(&extproc_edit),
            "wasm-sse-mask" => Some(&wasm_sse),
            "extproc-sse-mask" => Some(&extproc_sse),
            other => target(other),
        };
        if let Some(target) = found {
            rows.push(OpenLoopRow {
                name,
                target,
                request,
                compared_with,
                rate,
            });
        }
    }
    let mut section = open_loop_stage(&rows)?;
    section.push_str(&goals(&section));
    Ok(section)
}

/// Events in the bench's SSE stream.
const SSE_STREAM_EVENTS: usize = 1000;

/// The body goals of issue 25, judged on the open-loop table: what a
/// 100 KB JSON transformation with masking adds to plain Envoy's p50 (at
/// most 1 ms in Wasm, 3 ms through the shim), and what masking adds per
/// SSE event (at most 0.5 ms at p50).
fn goals(table: &str) -> String {
    let added_p50 = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .and_then(|l| l.split('|').nth(6))
            .and_then(|cell| cell.trim().parse::<f64>().ok())
    };
    let mut out = String::from(
        "
### Body goals

| goal | measured (added p50) | limit | met |
|---|---|---|---|
",
    );
    let per_event = SSE_STREAM_EVENTS as f64;
    for (row, what, divisor, limit) in [
        (
            "wasm-body-edit",
            "100 KB JSON transform + mask, Wasm",
            1.0,
            1.0,
        ),
        (
            "extproc-body-edit",
            "100 KB JSON transform + mask, shim",
            1.0,
            3.0,
        ),
        (
            "wasm-sse-mask",
            "SSE masking per event, Wasm",
            per_event,
            0.5,
        ),
        (
            "extproc-sse-mask",
            "SSE masking per event, shim",
            per_event,
            0.5,
        ),
    ] {
        let (measured, met) = match added_p50(row) {
            Some(ms) => (
                format!("{:.4} ms", ms / divisor),
                (ms / divisor <= limit).to_string(),
            ),
            None => ("void".to_owned(), "unknown".to_owned()),
        };
        let _ = writeln!(out, "| {what} | {measured} | {limit} ms | {met} |");
    }
    out
}

/// Checks that the body chains do their work: the edit chains refuse a
/// body that is not JSON (415), and the SSE chains mask every address of
/// the stream.
fn edits_and_masks(edit: &[&Target], sse: &[&Target]) -> Result<(), String> {
    for target in edit {
        let url = format!("http://{}/bench", target.envoy.addr());
        let json = [("content-type", "application/json")];
        let status = integration_tests::send(&url, "POST", &json, Some("{\"not\": json")).status;
        if status != 415 {
            return Err(format!(
                "a body edit chain let a non-JSON body through ({status})"
            ));
        }
    }
    for target in sse {
        let url = format!("http://{}/bench", target.envoy.addr());
        let events = [(SSE_EVENTS, "3")];
        let reply = integration_tests::send(&url, "GET", &events, None);
        if reply.status != 200 || reply.body.contains('@') || !reply.body.contains("[redacted]") {
            return Err(format!(
                "an SSE mask chain did not mask: {} {}",
                reply.status, reply.body
            ));
        }
    }
    Ok(())
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
    /// Requests per second.
    pub(super) rate: f64,
}

/// The open-loop stage: every row at the same fixed rate, well below any
/// configuration's capacity, in rounds with the order rotated. A
/// request's latency runs from when it was due (`integration_tests::load`),
/// so a stall is charged to every request it held up. Returns the report's
/// section.
pub(super) fn open_loop_stage(rows: &[OpenLoopRow<'_>]) -> Result<String, String> {
    eprintln!("bench: open-loop stage, {} rows", rows.len());
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
                rate: row.rate,
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
         Each row at its fixed rate for {rounds} x {seconds} s, order rotated each round, 8 \
         connections, the load on core 1; latency from when each request was due. \
         Added = this row minus the row it is compared with (plain Envoy, the same request, \
         the same rate).\n\n\
         | configuration | requests | failed | p50 ms | p99 ms | added p50 ms | added p99 ms | rate /s |\n\
         |---|---|---|---|---|---|---|---|"
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
            "| {} | {} | {} | {:.3} | {:.3} | {} | {} | {:.0} |",
            row.name,
            samples[i].len(),
            failed[i],
            percentile(i, 0.5),
            percentile(i, 0.99),
            added(0.5),
            added(0.99),
            row.rate,
        );
    }
    Ok(section)
}
