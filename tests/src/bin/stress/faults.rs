//! Stage 3: faults, each under a steady open-loop load.
//!
//! - The shim killed (SIGKILL) and restarted on the same port, Envoy left
//!   running: while it is down Envoy must fail closed (its ext_proc filter
//!   has `failure_mode_allow: false`), and it must recover by itself within
//!   2 s of the restart. Half the load is requests the chain must refuse
//!   (a wrong API key): one of them answered 2xx, or a 2xx whose body does
//!   not show the chain ran, would be a request let through unchecked.
//! - The JWKS server stopped, then back with a new key: the keys already
//!   fetched keep serving (no request with a known key id fails), and a
//!   token signed with the new key is accepted once the server is back.
//!   For both hosts, with the auth chain's keys fetched remotely.
//! - A bad configuration pushed: refused (Envoy's LDS `update_rejected`
//!   counter for the Wasm filter, the shim's log for the shim), with the
//!   previous one serving and no request failing. For both hosts.

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::auth_chain::{self, KeySource, SigningKey};
use integration_tests::jwks::JwksServer;
use integration_tests::load::{
    failure_summary, Finished, Load, Outcome, RequestSpec, Sample, Tally,
};
use local_envoy::filters;

use crate::report::Section;
use crate::rig::{is_2xx, Filter, Push, Rig, REQUEST_TIMEOUT, SHIM_REFUSED};
use crate::{section, sleep_until, Settings};

/// The longest a restarted shim may take to serve again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(2);
/// The longest a new key may take to be accepted once the JWKS server is
/// back (the chain refetches an unknown key id at most once a second).
const ROTATION_LIMIT: Duration = Duration::from_secs(5);
/// How long a condition the run waits for may take before it fails.
const DEADLINE: Duration = Duration::from_secs(30);
/// Seconds of load before a fault, and of clean load that ends a stage.
const STEADY_SECS: f64 = 2.0;

/// A configuration every host must refuse: a header name with a space.
const BAD_CONFIG: &str = r#"
routes:
  - name: stress-bad
    policies:
      - name: set-headers
        config: { request: { set: { "x bad": "on" } } }
"#;

/// Runs the stage: one section per fault and host.
pub fn run(settings: &Settings, dir: &Path) -> Vec<Section> {
    let mut sections = vec![shim_killed(settings, &dir.join("shim-killed"))];
    for filter in [Filter::Wasm, Filter::Shim] {
        sections.push(jwks_outage(
            settings,
            &dir.join(format!("jwks-{filter:?}")),
            filter,
        ));
    }
    for filter in [Filter::Wasm, Filter::Shim] {
        sections.push(bad_config(
            settings,
            &dir.join(format!("bad-config-{filter:?}")),
            filter,
        ));
    }
    sections
}

/// The auth chain with inline keys, and a request it allows.
fn inline_chain() -> Result<(String, String, RequestSpec), String> {
    let key = SigningKey::generate("stress");
    let token = key.token()?;
    let config = auth_chain::config(&KeySource::Inline(auth_chain::key_set(&[&key])), true, None);
    let allowed = allowed(&token);
    Ok((config, token, allowed))
}

/// A request carrying `token` that must reach the upstream through the
/// whole chain.
fn allowed(token: &str) -> RequestSpec {
    RequestSpec::get(
        "allowed",
        "/stress",
        auth_chain::allowed_headers(token),
        200,
    )
    .with_body(auth_chain::UPSTREAM_MARKER)
}

/// Waits until the load has answered `STEADY_SECS` worth of requests due
/// from now on.
fn steady(load: &Load, settings: &Settings) -> Result<(), String> {
    load.wait_for_answers(settings.requests_in(STEADY_SECS), load.now(), DEADLINE)
}

fn seconds(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn shim_killed(settings: &Settings, dir: &Path) -> Section {
    let about = format!(
        "The ext_proc shim running the auth chain, {} req/s over {} connections, half of them \
         requests the chain must refuse (valid token, wrong API key: 401). After {STEADY_SECS} s \
         of load the shim is killed with SIGKILL, stays down {:.1} s, and is started again on the \
         same port; Envoy is not touched. Recovery time: from the restart (the new process \
         spawned) to the scheduled send time of the first request after which none failed.",
        settings.rate,
        settings.load_connections,
        settings.outage.as_secs_f64()
    );
    section("Fault: shim killed under load", about, |section| {
        let (config, token, allowed) = inline_chain()?;
        let denied = RequestSpec::get("denied", "/stress", auth_chain::denied_headers(&token), 401);
        let fail_closed = filters::ext_proc()["typed_config"]["failure_mode_allow"] == false;
        section.check(
            "Envoy's ext_proc failure_mode_allow",
            if fail_closed { "false" } else { "not false" }.to_owned(),
            "false (fail closed)",
            fail_closed,
        );
        let mut rig = Rig::start(dir, Filter::Shim, &config, &settings.rig, Vec::new())?;
        rig.wait_for_expected(&allowed, DEADLINE)?;
        let envoy_pid = rig.envoy.pid();
        let upstream_before = rig.upstream.requests_seen();
        let load = Load::start(&rig.plan(
            vec![allowed, denied],
            settings.rate,
            settings.load_connections,
        ))?;
        steady(&load, settings)?;

        let killed_at = load.now();
        rig.kill_shim()?;
        // The outage is real once a request sent after the kill has failed.
        load.wait_for("a request failing after the kill", DEADLINE, |samples| {
            samples
                .iter()
                .any(|s| s.due >= killed_at && !s.outcome.is_expected())
        })?;
        sleep_until(&load, killed_at + settings.outage);
        let restarted_at = load.now();
        rig.restart_shim()?;
        let serving_at = load.now();
        // Recovered: a second's worth of requests answered as expected, all
        // sent after the last failure.
        let clean = settings.requests_in(1.0);
        let recovered = load.wait_for("recovery after the restart", DEADLINE, |samples| {
            let last_failure = samples
                .iter()
                .filter(|s| !s.outcome.is_expected())
                .map(|s| s.due)
                .max()
                .unwrap_or_default();
            samples
                .iter()
                .filter(|s| s.due > last_failure && s.due >= restarted_at)
                .count()
                >= clean
        });
        let finished = load.stop();
        let upstream_seen = rig.upstream.requests_seen() - upstream_before;
        report_shim_kill(
            section,
            &finished,
            Window {
                killed_at,
                restarted_at,
                serving_at,
            },
            upstream_seen,
            recovered.is_ok(),
        );
        let envoy_alive = rig.envoy.pid() == envoy_pid
            && integration_tests::measure::rss_kib(envoy_pid).is_some();
        section.check(
            "Envoy restarted",
            if envoy_alive {
                format!("no (pid {envoy_pid} throughout)")
            } else {
                "Envoy is gone".to_owned()
            },
            "no",
            envoy_alive,
        );
        Ok(())
    })
}

/// When the shim went down and came back, on the load's clock.
struct Window {
    killed_at: Duration,
    restarted_at: Duration,
    serving_at: Duration,
}

fn report_shim_kill(
    section: &mut Section,
    finished: &Finished,
    window: Window,
    upstream_seen: u64,
    recovered: bool,
) {
    let samples = &finished.samples;
    let of_kind = |kind: usize| samples.iter().filter(move |s| s.kind == kind);
    let denied_2xx = of_kind(1).filter(|s| is_2xx(&s.outcome)).count();
    let unchecked_2xx = of_kind(0)
        .filter(
            |s| matches!(s.outcome, Outcome::Unexpected(status) if (200..300).contains(&status)),
        )
        .count();
    let allowed_sent = of_kind(0).count() as u64;
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.due >= window.killed_at && s.due < window.restarted_at)
        .collect();
    let down = Tally::of(during.iter().copied());
    section.table(format!(
        "| | |\n|---|---|\n\
         | requests | {} ({} allowed, {} to be refused) |\n\
         | killed at | {} into the load |\n\
         | restarted at | {} (serving {} later) |\n\
         | requests due while down | {}; answers: {} |\n\
         | all failures | {} |\n\
         | requests the echo upstream received | {upstream_seen} |\n",
        samples.len(),
        allowed_sent,
        samples.len() as u64 - allowed_sent,
        seconds(window.killed_at),
        seconds(window.restarted_at),
        seconds(window.serving_at.saturating_sub(window.restarted_at)),
        down.requests,
        failure_summary(during.iter().copied()),
        finished.failure_line(),
    ));
    section.check(
        "requests the chain must refuse answered 2xx",
        denied_2xx.to_string(),
        "0",
        denied_2xx == 0,
    );
    section.check(
        "2xx answers without the chain's marker (unchecked)",
        unchecked_2xx.to_string(),
        "0",
        unchecked_2xx == 0,
    );
    section.check(
        "requests reaching the upstream vs allowed requests sent",
        format!("{upstream_seen} of {allowed_sent}"),
        "at most the allowed ones",
        upstream_seen <= allowed_sent,
    );
    section.check(
        "requests failed while the shim was down",
        format!("{} of {} (failing closed)", down.failed(), down.requests),
        "at least 1 (the outage was under load)",
        down.failed() > 0,
    );
    let recovery = recovery_time(samples, window.restarted_at);
    section.check(
        "recovery after the restart",
        match (recovered, recovery) {
            (true, Some(t)) => seconds(t),
            _ => format!("not recovered within {DEADLINE:?}"),
        },
        &format!("at most {}", seconds(RECOVERY_LIMIT)),
        recovered && recovery.is_some_and(|t| t <= RECOVERY_LIMIT),
    );
}

/// From `restarted_at` to the scheduled send time of the first request
/// after which none failed.
fn recovery_time(samples: &[Sample], restarted_at: Duration) -> Option<Duration> {
    let last_failure = samples
        .iter()
        .filter(|s| !s.outcome.is_expected())
        .map(|s| s.due)
        .max();
    let recovered_at = samples
        .iter()
        .filter(|s| last_failure.is_none_or(|f| s.due > f) && s.due >= restarted_at)
        .map(|s| s.due)
        .min()?;
    Some(recovered_at.saturating_sub(restarted_at))
}

fn jwks_outage(settings: &Settings, dir: &Path, filter: Filter) -> Section {
    let title = format!("Fault: JWKS server down under load ({})", filter.name());
    let about = format!(
        "The {} running the auth chain with its keys from a JWKS server (`remote_jwks` through \
         the Envoy cluster `jwks`; the shim fetches the URL itself), 300 s key cache, refetch for \
         an unknown key id at most once a second. {} req/s over {} connections, all with a token \
         whose key id was fetched at the start. The server is taken down (it closes every \
         connection unanswered) for {:.1} s; meanwhile a token with a key id it has not published \
         is sent every 250 ms. Then it publishes that key and comes back, and the new token is \
         sent until it is accepted.",
        filter.name(),
        settings.rate,
        settings.load_connections,
        settings.outage.as_secs_f64()
    );
    section(&title, about, |section| {
        let known = SigningKey::generate("stress-1");
        let rotated = SigningKey::generate("stress-2");
        let server = JwksServer::start(&auth_chain::key_set(&[&known]))
            .map_err(|e| format!("starting the JWKS server: {e}"))?;
        let config = auth_chain::config(
            &KeySource::Remote {
                uri: server.uri(),
                cluster: "jwks".to_owned(),
            },
            true,
            None,
        );
        let rig = Rig::start(
            dir,
            filter,
            &config,
            &settings.rig,
            vec![filters::static_cluster("jwks", server.addr())],
        )?;
        let known_request = allowed(&known.token()?);
        rig.wait_for_expected(&known_request, DEADLINE)?;
        let mut new_key_request = allowed(&rotated.token()?);
        new_key_request.label = "new key id".to_owned();
        let mut refused_new_key = new_key_request.clone();
        refused_new_key.expect_status = 401;
        refused_new_key.expect_body = None;

        let load = Load::start(&rig.plan(
            vec![known_request],
            settings.rate,
            settings.load_connections,
        ))?;
        steady(&load, settings)?;
        let fetches_before = server.fetches();
        let down_at = load.now();
        server.set_down(true);
        let mut probes: Vec<Outcome> = Vec::new();
        while load.now() < down_at + settings.outage {
            probes.push(integration_tests::load::send_once(
                rig.target(),
                &refused_new_key,
                REQUEST_TIMEOUT,
            ));
            sleep_until(&load, load.now() + Duration::from_millis(250));
        }
        server.publish(&auth_chain::key_set(&[&known, &rotated]));
        let back_at = load.now();
        server.set_down(false);
        let back = Instant::now();
        let rotation = rig.wait_for_expected(&new_key_request, ROTATION_LIMIT.max(DEADLINE));
        let rotation_at = back.elapsed();
        steady(&load, settings)?;
        let finished = load.stop();

        let samples = &finished.samples;
        let while_down: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.due >= down_at && s.due < back_at)
            .collect();
        let down = Tally::of(while_down.iter().copied());
        let all = Tally::of(samples);
        let probes_refused = probes.iter().filter(|o| o.is_expected()).count();
        section.table(format!(
            "| | |\n|---|---|\n\
             | requests with the known key id | {} |\n\
             | of them due while the server was down | {} |\n\
             | key set fetches before the outage | {fetches_before} |\n\
             | key set fetches in all | {} |\n\
             | new key id while down: answers | {} |\n",
            all.requests,
            down.requests,
            server.fetches(),
            probes
                .iter()
                .map(|o| o
                    .status()
                    .map_or_else(|| format!("{o:?}"), |s| s.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        section.check(
            "known key id: non-200 while the server was down",
            format!(
                "{} of {} ({})",
                down.failed(),
                down.requests,
                failure_summary(while_down.iter().copied())
            ),
            "0",
            down.failed() == 0 && down.requests > 0,
        );
        section.check(
            "known key id: non-200 over the whole stage",
            finished.failure_line(),
            "0",
            all.failed() == 0,
        );
        section.check(
            "unpublished key id while the server was down",
            format!("{probes_refused} of {} refused with 401", probes.len()),
            "all refused with 401",
            !probes.is_empty() && probes_refused == probes.len(),
        );
        section.check(
            "new key id accepted after the server came back",
            match &rotation {
                Ok(_) => format!("200 after {}", seconds(rotation_at)),
                Err(e) => e.clone(),
            },
            &format!("200 within {}", seconds(ROTATION_LIMIT)),
            rotation.is_ok() && rotation_at <= ROTATION_LIMIT,
        );
        Ok(())
    })
}

fn bad_config(settings: &Settings, dir: &Path, filter: Filter) -> Section {
    let title = format!(
        "Fault: bad configuration pushed under load ({})",
        filter.name()
    );
    let how = match filter {
        Filter::Wasm => {
            "pushed over LDS (the listener file Envoy watches); Envoy must reject the \
                         update (`listener_manager.lds.update_rejected` goes up)"
        }
        _ => {
            "written over the configuration file the shim watches; the shim must refuse it in \
              its log"
        }
    };
    let about = format!(
        "The {} running the auth chain, {} req/s over {} connections. After {STEADY_SECS} s a \
         configuration with an invalid header name is {how}, and the load goes on for \
         {STEADY_SECS} s more: every request must still get 200 through the previous chain.",
        filter.name(),
        settings.rate,
        settings.load_connections,
    );
    section(&title, about, |section| {
        const REJECTED: &str = "listener_manager.lds.update_rejected";
        let (config, _, allowed) = inline_chain()?;
        let mut rig = Rig::start(dir, filter, &config, &settings.rig, Vec::new())?;
        rig.wait_for_expected(&allowed, DEADLINE)?;
        let load = Load::start(&rig.plan(vec![allowed], settings.rate, settings.load_connections))?;
        steady(&load, settings)?;
        let rejected_before = rig.envoy.stat(REJECTED).unwrap_or(0);
        let pushed_at = load.now();
        let verdict = rig.push(BAD_CONFIG)?;
        let rejected_after = rig.envoy.stat(REJECTED).unwrap_or(0);
        steady(&load, settings)?;
        let finished = load.stop();

        match filter {
            Filter::Wasm => section.check(
                "Envoy's lds.update_rejected",
                format!("{rejected_before} -> {rejected_after}"),
                "goes up",
                verdict == Push::Refused && rejected_after > rejected_before,
            ),
            _ => {
                let refusals = rig.shim_log_lines(SHIM_REFUSED);
                section.check(
                    "the shim's log",
                    refusals
                        .last()
                        .map_or_else(|| "no refusal logged".to_owned(), |l| format!("`{l}`")),
                    "the configuration refused",
                    verdict == Push::Refused,
                );
            }
        }
        let samples = &finished.samples;
        let after: Vec<&Sample> = samples.iter().filter(|s| s.due >= pushed_at).collect();
        let after = Tally::of(after.iter().copied());
        let all = Tally::of(samples);
        section.check(
            "requests after the push answered by the previous chain",
            format!("{} of {}", after.expected, after.requests),
            "all (and at least one)",
            after.requests > 0 && after.failed() == 0,
        );
        section.check(
            "failed requests",
            finished.failure_line(),
            "0",
            all.failed() == 0,
        );
        Ok(())
    })
}
