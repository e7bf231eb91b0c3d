//! Stage 1: ten thousand concurrent connections.
//!
//! wrk holds `STRESS_CONNECTIONS` connections open against three Envoys
//! with the same bootstrap, listener and workers, one after the other: a
//! plain Envoy (router only), Envoy with the Wasm filter and Envoy with the
//! shim, both running `make bench`'s auth chain. The plain Envoy shows what
//! this machine and Envoy itself do at that concurrency; the filter must
//! add no failed request to it. wrk's `--timeout` is long, so a slow answer
//! is latency, not an error.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::auth_chain;
use integration_tests::load::RequestSpec;
use integration_tests::wrk::{self, Summary};
use local_envoy::filters::MAX_UPSTREAM_CONNECTIONS;

use crate::report::Section;
use crate::rig::{Filter, Rig};
use crate::{ms, open_files_limit, section, Settings};

/// wrk's per-request timeout: far above any latency expected here, so only
/// a request that is never answered counts as a timeout.
const WRK_TIMEOUT_SECS: u32 = 120;

/// Envoy's counters of requests it shed or failed on its own (circuit
/// breakers, connect failures, timeouts, the ext_proc stream), read after
/// each run to say where failures came from.
const SHEDDING_STATS: [&str; 7] = [
    "cluster.echo.upstream_rq_pending_overflow",
    "cluster.echo.upstream_cx_connect_fail",
    "cluster.echo.upstream_rq_timeout",
    "cluster.policy_extproc.upstream_rq_pending_overflow",
    "http.ingress.ext_proc.message_timeouts",
    "http.ingress.ext_proc.streams_failed",
    // Envoy's HTTP/2 flood guard closing a connection to the shim.
    "cluster.policy_extproc.upstream_cx_protocol_error",
];

/// One Envoy's run.
struct Run {
    filter: Filter,
    summary: Summary,
    shed: String,
}

/// Runs the stage.
pub fn run(settings: &Settings, dir: &Path) -> Section {
    let about = format!(
        "`wrk -t{} -c{} -d{}s --timeout {WRK_TIMEOUT_SECS}s` against three Envoys, one at a time, \
         with the same bootstrap (cluster circuit breakers, listener backlog) and {} workers: \
         a plain Envoy (router only, the baseline), the Wasm filter and the ext_proc shim, both \
         running `make bench`'s auth chain (jwt ES256 with the token cache, CEL authorization, \
         transformation, api-key, set-headers). Every request carries a valid token and API key. \
         A failed request is a status of 400 or more or a socket error, as wrk counts them; the \
         filters may add none to the plain Envoy's.",
        settings.wrk_threads, settings.connections, settings.concurrency_secs, settings.rig.workers
    );
    section("Concurrency", about, |section| {
        measure(settings, dir, section)
    })
}

fn measure(settings: &Settings, dir: &Path, section: &mut Section) -> Result<(), String> {
    // Envoy holds every client connection and up to MAX_UPSTREAM_CONNECTIONS
    // to the upstream; wrk and the echo upstream hold fewer.
    let needed = u64::from(settings.connections) + u64::from(MAX_UPSTREAM_CONNECTIONS) + 1024;
    let limit = open_files_limit().unwrap_or(0);
    if limit < needed {
        return Err(format!(
            "the open-files limit is {limit}; {} connections need {needed} (run through \
             `make stress`, which raises it, or `ulimit -n {needed}` first)",
            settings.connections
        ));
    }
    let key = auth_chain::SigningKey::generate("stress");
    let token = key.token()?;
    let config = auth_chain::config(
        &auth_chain::KeySource::Inline(auth_chain::key_set(&[&key])),
        true,
        None,
    );
    let probe = RequestSpec::get("probe", "/stress", auth_chain::allowed_headers(&token), 200)
        .with_body(auth_chain::UPSTREAM_MARKER);
    let mut runs = Vec::new();
    for filter in [Filter::Plain, Filter::Wasm, Filter::Shim] {
        eprintln!(
            "stress: {} connections through the {}",
            settings.connections,
            filter.name()
        );
        // One Envoy that cannot be measured does not void the others.
        match one_run(settings, dir, filter, &config, &probe) {
            Ok(run) => runs.push(run),
            Err(e) => section.failed(format!("{}: {e}", filter.name())),
        }
    }
    section.table(table(&runs));
    let plain = runs.iter().find(|r| r.filter == Filter::Plain);
    for filter in [Filter::Wasm, Filter::Shim] {
        let run = runs.iter().find(|r| r.filter == filter);
        let (Some(plain), Some(run)) = (plain, run) else {
            section.check(
                &format!(
                    "{}: failed requests beyond the plain Envoy's",
                    filter.name()
                ),
                "not measured (see the error)".to_owned(),
                "0",
                false,
            );
            continue;
        };
        let non_2xx = run.summary.non_2xx.saturating_sub(plain.summary.non_2xx);
        let socket = run
            .summary
            .socket_errors
            .total()
            .saturating_sub(plain.summary.socket_errors.total());
        section.check(
            &format!(
                "{}: non-2xx responses beyond the plain Envoy's",
                filter.name()
            ),
            format!(
                "{non_2xx} ({} vs {})",
                run.summary.non_2xx, plain.summary.non_2xx
            ),
            "0",
            non_2xx == 0,
        );
        section.check(
            &format!("{}: socket errors beyond the plain Envoy's", filter.name()),
            format!(
                "{socket} ({} vs {})",
                run.summary.socket_errors.total(),
                plain.summary.socket_errors.total()
            ),
            "0",
            socket == 0,
        );
    }
    Ok(())
}

/// Starts `filter`'s Envoy and holds the connections against it.
fn one_run(
    settings: &Settings,
    dir: &Path,
    filter: Filter,
    config: &str,
    probe: &RequestSpec,
) -> Result<Run, String> {
    let rig = Rig::start(
        &dir.join(format!("{filter:?}")),
        filter,
        config,
        &settings.rig,
        Vec::new(),
    )?;
    if filter != Filter::Plain {
        // A chain that refuses everything would fail every request; say so
        // plainly rather than as ten thousand non-2xx.
        rig.wait_for_expected(probe, Duration::from_secs(15))?;
    }
    let output = Command::new("wrk")
        .args(["--timeout", &format!("{WRK_TIMEOUT_SECS}s")])
        .args(wrk::args(
            settings.wrk_threads,
            settings.connections,
            settings.concurrency_secs,
            &probe.headers,
            &rig.envoy.url("/stress"),
        ))
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed ({}):\n{text}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let summary = wrk::parse(&text)?;
    let shed = SHEDDING_STATS
        .iter()
        .filter_map(|name| rig.envoy.stat(name).map(|v| format!("{name}: {v}")))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Run {
        filter,
        summary,
        shed,
    })
}

fn table(runs: &[Run]) -> String {
    let mut table = String::from(
        "| Envoy | requests | req/s | p50 | p99 | non-2xx | socket errors (connect/read/write/timeout) | Envoy shedding counters |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        let s = &run.summary;
        let e = &s.socket_errors;
        table.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {}/{}/{}/{} | {} |\n",
            run.filter.name(),
            s.requests,
            s.rps,
            s.p50_ms.map_or_else(|| "?".to_owned(), ms),
            s.p99_ms.map_or_else(|| "?".to_owned(), ms),
            s.non_2xx,
            e.connect,
            e.read,
            e.write,
            e.timeout,
            crate::report::cell(&run.shed),
        ));
    }
    table
}
