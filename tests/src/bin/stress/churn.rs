//! Stage 4: configuration churn.
//!
//! A control plane pushes configurations all day. Each push must be taken
//! without failing a request in flight, and must not leave memory behind:
//! a plugin configuration compiled per push and never freed, or a replaced
//! filter chain kept alive, would grow the process push after push. So
//! `STRESS_PUSHES` valid configurations (each a different revision of the
//! auth chain) are pushed under a steady load, and the memory of the
//! process that runs the policies (Envoy for the Wasm filter, the shim for
//! the shim) is compared before and after.
//!
//! Envoy drains the connections of a replaced filter chain for
//! `--drain-time-s` before closing them (and only then frees the chain);
//! the run passes a short one (`STRESS_DRAIN_SECS`) and waits for the
//! draining to end before the last memory sample. A draining connection's
//! answers carry `Connection: close`, after which the load opens a new one.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::auth_chain::{self, KeySource, SigningKey};
use integration_tests::load::{Load, RequestSpec, Tally};
use integration_tests::measure::rss_kib;

use crate::report::Section;
use crate::rig::{Filter, Push, Rig};
use crate::{mib, percent, section, Settings};

/// How much the policy process's memory may grow over the pushes.
const RSS_GROWTH_LIMIT: f64 = 0.05;
/// Seconds of load before the first memory sample.
const WARMUP_SECS: f64 = 10.0;
/// Seconds of load after the draining ends, before the last sample.
const SETTLE_SECS: f64 = 2.0;
/// Envoy's gauges of what is still draining.
const DRAINING: [&str; 2] = [
    "listener_manager.total_filter_chains_draining",
    "listener_manager.total_listeners_draining",
];

/// Runs the stage: one section per host.
pub fn run(settings: &Settings, dir: &Path) -> Vec<Section> {
    [Filter::Wasm, Filter::Shim]
        .into_iter()
        .map(|filter| churn(settings, &dir.join(format!("{filter:?}")), filter))
        .collect()
}

fn churn(settings: &Settings, dir: &Path, filter: Filter) -> Section {
    let (how, process) = match filter {
        Filter::Wasm => (
            "over LDS (`Envoy::reload`: the listener file Envoy watches)",
            "Envoy",
        ),
        _ => (
            "by rewriting the configuration file the shim watches",
            "the shim",
        ),
    };
    let about = format!(
        "The {} running the auth chain, {} req/s over {} connections. After {WARMUP_SECS} s of \
         load, {} valid configurations (the chain with a new revision number in a response \
         header each time) are pushed {how}, each once the previous one is applied. Envoy's \
         drain time is {} s; once nothing is draining and {SETTLE_SECS} s more of load are \
         answered, {process}'s RSS is compared with the sample taken before the first push.",
        filter.name(),
        settings.rate,
        settings.load_connections,
        settings.pushes,
        settings.rig.drain_time_s.unwrap_or(600),
    );
    let title = format!(
        "Churn: {} configuration pushes ({})",
        settings.pushes,
        filter.name()
    );
    section(&title, about, |section| {
        let key = SigningKey::generate("stress");
        let keys = KeySource::Inline(auth_chain::key_set(&[&key]));
        let mut rig = Rig::start(
            dir,
            filter,
            &auth_chain::config(&keys, true, Some(0)),
            &settings.rig,
            Vec::new(),
        )?;
        let allowed = RequestSpec::get(
            "allowed",
            "/stress",
            auth_chain::allowed_headers(&key.token()?),
            200,
        )
        .with_body(auth_chain::UPSTREAM_MARKER);
        rig.wait_for_expected(&allowed, Duration::from_secs(15))?;
        let (pid, _) = rig.policy_process();
        let rss = || rss_kib(pid).ok_or_else(|| format!("{process} exited"));

        let load = Load::start(&rig.plan(vec![allowed], settings.rate, settings.load_connections))?;
        load.wait_for_answers(
            settings.requests_in(WARMUP_SECS),
            Duration::ZERO,
            Duration::from_secs(60),
        )?;
        let before = rss()?;
        let mut memory = format!(
            "| after push | {process} RSS | vs before |\n|---|---|---|\n| 0 | {} | {} |\n",
            mib(before),
            percent(0.0)
        );
        let started = Instant::now();
        let mut applied = 0;
        for revision in 1..=settings.pushes {
            if rig.push(&auth_chain::config(&keys, true, Some(revision)))? == Push::Applied {
                applied += 1;
            }
            if revision % 10 == 0 || revision == settings.pushes {
                let now = rss()?;
                let _ = writeln!(
                    memory,
                    "| {revision} | {} | {} |",
                    mib(now),
                    percent(now as f64 / before as f64 - 1.0)
                );
                eprintln!(
                    "stress: {} pushes ({}): {process} RSS {}",
                    revision,
                    filter.name(),
                    mib(now)
                );
            }
        }
        let pushing = started.elapsed();
        let drain_deadline =
            Duration::from_secs(u64::from(settings.rig.drain_time_s.unwrap_or(600)) + 60);
        let drained = Instant::now();
        while DRAINING
            .iter()
            .any(|name| rig.envoy.stat(name).is_some_and(|n| n > 0))
        {
            if drained.elapsed() > drain_deadline {
                return Err(format!("Envoy was still draining after {drain_deadline:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let drain_wait = drained.elapsed();
        load.wait_for_answers(
            settings.requests_in(SETTLE_SECS),
            load.now(),
            Duration::from_secs(60),
        )?;
        let after = rss()?;
        let _ = writeln!(
            memory,
            "| {} (drained, settled) | {} | {} |",
            settings.pushes,
            mib(after),
            percent(after as f64 / before as f64 - 1.0)
        );
        let finished = load.stop();
        section.table(memory);
        section.table(format!(
            "| | |\n|---|---|\n\
             | pushing took | {:.1} s ({:.0} ms a push) |\n\
             | waiting for the draining to end | {:.1} s |\n\
             | connections the load opened | {} ({} at the start) |\n\
             | requests retried on a fresh connection (server had closed the reused one unanswered) | {} |\n",
            pushing.as_secs_f64(),
            pushing.as_secs_f64() * 1000.0 / f64::from(settings.pushes.max(1)),
            drain_wait.as_secs_f64(),
            finished.connects,
            settings.load_connections,
            finished.retries,
        ));

        let all = Tally::of(&finished.samples);
        let growth = after as f64 / before as f64 - 1.0;
        section.check(
            "valid configurations applied",
            format!("{applied} of {}", settings.pushes),
            "all",
            applied == settings.pushes,
        );
        section.check(
            "failed requests",
            finished.failure_line(),
            "0",
            all.failed() == 0,
        );
        section.check(
            &format!("{process} RSS growth over the pushes"),
            format!("{} ({} -> {})", percent(growth), mib(before), mib(after)),
            "under 5 %",
            growth < RSS_GROWTH_LIMIT,
        );
        Ok(())
    })
}
