//! Stage 2: a soak.
//!
//! Minutes of steady, open-loop traffic through the Wasm filter running
//! `make bench`'s auth chain. What a long run exposes and a short one does
//! not: memory that creeps (a leak per request or per token check) and
//! latency that drifts (caches that grow, fragmentation). Envoy's resident
//! memory is sampled every 10 s; the requests are cut into minutes.
//!
//! Warm-up: the first `STRESS_WARMUP_SECS` (30 s) of traffic fill the
//! caches, start every worker's VM and grow Envoy's buffers to their
//! working size; nothing in it is held to a threshold. The memory sample
//! taken when it ends is the reference no later sample may grow more than
//! 5 % past, and the "first minute" starts there. Only growth fails: the
//! allocator returning memory after the warm-up is not a leak.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use integration_tests::auth_chain;
use integration_tests::load::{latency_ms, Load, RequestSpec, Sample, Tally};
use integration_tests::measure::rss_kib;

use crate::report::Section;
use crate::rig::{Filter, Rig};
use crate::{mib, ms, percent, section, sleep_until, Settings};

/// How often Envoy's memory is sampled.
const RSS_EVERY: Duration = Duration::from_secs(10);
/// How far memory may grow past the reference after the warm-up.
const RSS_GROWTH: f64 = 0.05;
/// How much the last minute's p99 may grow over the first minute's. Only
/// growth fails: a soak looks for a filter that slows down as it runs, and a
/// last minute faster than the first is noise in the good direction.
const P99_BAND: f64 = 0.10;

/// Runs the stage.
pub fn run(settings: &Settings, dir: &Path) -> Section {
    let window = window_secs(settings.soak_secs);
    let about = format!(
        "The Wasm filter running `make bench`'s auth chain (jwt ES256 with the token cache, CEL \
         authorization, transformation, api-key, set-headers) at a fixed {} req/s over {} \
         keep-alive connections (open loop: requests are sent on schedule whatever the answers, \
         and each one's latency counts from its scheduled send time), for {} s of warm-up and \
         then {} s measured. A request passes when it gets 200 with the body showing the chain \
         ran. Envoy's RSS is sampled every {} s; the warm-up ends at the sample taken at {} s, \
         the reference for the ones after. The first and last windows are {window} s long.",
        settings.rate,
        settings.load_connections,
        settings.warmup_secs,
        settings.soak_secs,
        RSS_EVERY.as_secs(),
        settings.warmup_secs,
    );
    section("Soak", about, |section| measure(settings, dir, section))
}

/// The first and last windows compared: a minute, or half a short soak.
fn window_secs(soak_secs: u64) -> u64 {
    60.min(soak_secs / 2)
}

/// When memory is sampled: every `RSS_EVERY` through the warm-up, then
/// from its end (the reference) every `RSS_EVERY` to `end`.
fn sample_times(warmup: Duration, end: Duration) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut at = Duration::ZERO;
    while at < warmup {
        times.push(at);
        at += RSS_EVERY;
    }
    at = warmup;
    while at <= end {
        times.push(at);
        at += RSS_EVERY;
    }
    times
}

fn measure(settings: &Settings, dir: &Path, section: &mut Section) -> Result<(), String> {
    let key = auth_chain::SigningKey::generate("stress");
    let token = key.token()?;
    let config = auth_chain::config(
        &auth_chain::KeySource::Inline(auth_chain::key_set(&[&key])),
        true,
        None,
    );
    let rig = Rig::start(dir, Filter::Wasm, &config, &settings.rig, Vec::new())?;
    let allowed = RequestSpec::get(
        "allowed",
        "/stress",
        auth_chain::allowed_headers(&token),
        200,
    )
    .with_body(auth_chain::UPSTREAM_MARKER);
    rig.wait_for_expected(&allowed, Duration::from_secs(15))?;

    let warmup = Duration::from_secs(settings.warmup_secs);
    let end = warmup + Duration::from_secs(settings.soak_secs);
    let load = Load::start(&rig.plan(vec![allowed], settings.rate, settings.load_connections))?;
    let mut rss: Vec<(Duration, u64)> = Vec::new();
    for at in sample_times(warmup, end) {
        sleep_until(&load, at);
        let kib = rss_kib(rig.envoy.pid())
            .ok_or_else(|| format!("Envoy exited during the soak:\n{}", rig.envoy.log()))?;
        eprintln!("stress: soak {:>4} s: Envoy RSS {}", at.as_secs(), mib(kib));
        rss.push((at, kib));
    }
    let finished = load.stop();
    let samples: Vec<&Sample> = finished.samples.iter().filter(|s| s.due < end).collect();

    // Memory.
    let reference = rss
        .iter()
        .find(|(t, _)| *t >= warmup)
        .map(|(_, kib)| *kib)
        .ok_or("no memory sample after the warm-up")?;
    let mut rss_table = String::from("| time | Envoy RSS | vs reference |\n|---|---|---|\n");
    // The most memory grew past the reference (0 if it only shrank).
    let mut worst = 0.0_f64;
    for (t, kib) in &rss {
        let change = *kib as f64 / reference as f64 - 1.0;
        let phase = if *t < warmup {
            " (warm-up)"
        } else if *t == warmup {
            " (reference)"
        } else {
            worst = worst.max(change);
            ""
        };
        let _ = writeln!(
            rss_table,
            "| {} s{phase} | {} | {} |",
            t.as_secs(),
            mib(*kib),
            percent(change)
        );
    }

    // Latency and failures per minute, from the end of the warm-up.
    let mut minutes =
        String::from("| window | requests | failed | p50 | p99 |\n|---|---|---|---|---|\n");
    let in_window = |from: Duration, to: Duration| -> Vec<&Sample> {
        samples
            .iter()
            .copied()
            .filter(|s| s.due >= from && s.due < to)
            .collect()
    };
    let mut row = |label: String, window: &[&Sample]| {
        let tally = Tally::of(window.iter().copied());
        let _ = writeln!(
            minutes,
            "| {label} | {} | {} | {} | {} |",
            tally.requests,
            tally.failed(),
            ms(latency_ms(window.iter().copied(), 0.5)),
            ms(latency_ms(window.iter().copied(), 0.99)),
        );
    };
    row(
        format!("warm-up (0-{} s)", warmup.as_secs()),
        &in_window(Duration::ZERO, warmup),
    );
    let mut from = warmup;
    while from < end {
        let to = (from + Duration::from_secs(60)).min(end);
        row(
            format!(
                "{}-{} s",
                (from - warmup).as_secs(),
                (to - warmup).as_secs()
            ),
            &in_window(from, to),
        );
        from = to;
    }
    section.table(rss_table);
    section.table(minutes);

    let window = Duration::from_secs(window_secs(settings.soak_secs));
    let first = in_window(warmup, warmup + window);
    let last = in_window(end - window, end);
    let first_p99 = latency_ms(first.iter().copied(), 0.99);
    let last_p99 = latency_ms(last.iter().copied(), 0.99);
    let p99_change = last_p99 / first_p99 - 1.0;
    let all = Tally::of(samples.iter().copied());
    let measured = Tally::of(samples.iter().copied().filter(|s| s.due >= warmup));

    section.check(
        "Envoy RSS after the warm-up, most above the reference",
        format!("{} (reference {})", percent(worst), mib(reference)),
        "at most +5 %",
        worst <= RSS_GROWTH,
    );
    section.check(
        "p99, last window vs first",
        format!(
            "{} ({} vs {})",
            percent(p99_change),
            ms(last_p99),
            ms(first_p99)
        ),
        "at most +10 %",
        p99_change <= P99_BAND,
    );
    section.check(
        "failed requests (warm-up included)",
        finished.failure_line(),
        "0",
        all.failed() == 0,
    );
    section.check(
        "load generator kept its schedule (requests due in the measured part)",
        format!(
            "{} ({:.1} req/s)",
            measured.requests,
            measured.requests as f64 / settings.soak_secs as f64
        ),
        &format!("the schedule's {:.0} req/s", settings.rate),
        (measured.requests as f64) >= settings.rate * settings.soak_secs as f64 * 0.99,
    );
    Ok(())
}
