//! Running a suite offline: each case through [`crate::run`], compared
//! with what it expects, and what no case reached.

use std::collections::BTreeSet;
use std::sync::Arc;

use policy_executor::{ConfigError, Engine, Host, Registry, SharedError};
use serde_json::{json, Value};

use crate::run::{run, OfflineHost, Served};
use crate::suite::{Case, Suite};

/// What came of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// Why it was skipped (it runs in real Envoy only).
    pub skipped: Option<String>,
    /// What differed from the expectation; empty when it passed.
    pub faults: Vec<String>,
}

/// What came of a suite.
#[derive(Debug, Clone, Default)]
pub struct SuiteReport {
    /// Each case, in order.
    pub cases: Vec<CaseReport>,
    /// Route entries and policies no case reached.
    pub uncovered: Vec<String>,
}

/// The engine's view of the offline host, which the runner keeps too, to
/// set the clock.
struct SharedHost(Arc<OfflineHost>);

impl Host for SharedHost {
    fn now_millis(&self) -> u64 {
        self.0.now_millis()
    }
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.0.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.0.shared_set(key, value, cas)
    }
}

/// Where a suite's services are, offline: their canned answers match on
/// clusters, so the address only has to be well-formed.
const OFFLINE_SERVICE: &str = "http://127.0.0.1:9";

/// An engine for `config` on an offline host. Every request is logged with
/// every field (the configuration's own expressions kept): the log is how
/// a case's decision and coverage are read.
pub fn offline_engine(
    registry: &Registry,
    config: &str,
) -> Result<(Engine, Arc<OfflineHost>), ConfigError> {
    let config = config
        .replace("{authz_uri}", OFFLINE_SERVICE)
        .replace("{ratelimit_uri}", OFFLINE_SERVICE);
    // The tool reads each request's decision and each policy's from the
    // log: it logs every request with every field, keeping the
    // configuration's own expressions.
    let logged = match serde_yaml::from_str::<Value>(&config) {
        Ok(Value::Object(mut document)) => {
            let expressions = document
                .get("decision_log")
                .and_then(|log| log.get("expressions"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            document.insert("decision_log".into(), json!({ "expressions": expressions }));
            Value::Object(document).to_string()
        }
        // Anything else is compiled as written, for its own errors.
        _ => config,
    };
    let mut engine = Engine::from_config(logged.as_bytes(), registry)?;
    let host = Arc::new(OfflineHost::default());
    engine.set_host(Box::new(SharedHost(Arc::clone(&host))));
    Ok((engine, host))
}

/// Runs the cases of `suite` (only the one named `only`, if given).
pub fn run_suite(
    registry: &Registry,
    suite: &Suite,
    only: Option<&str>,
) -> Result<SuiteReport, String> {
    let (engine, host) = offline_engine(registry, &suite.config).map_err(|e| e.to_string())?;
    let mut report = SuiteReport::default();
    let mut reached = BTreeSet::new();
    // The rules that decided a request: (policy, rule). A policy that
    // appears twice in a suite counts its rules together.
    let mut rules_fired = BTreeSet::new();
    for (number, case) in suite.cases.iter().enumerate() {
        if only.is_some_and(|name| name != case.name) {
            continue;
        }
        if let Some(why) = &case.live_only {
            report.cases.push(CaseReport {
                name: case.name.clone(),
                skipped: Some(why.clone()),
                faults: Vec::new(),
            });
            continue;
        }
        let outcome = run(
            &engine,
            &host,
            &suite.envoy_routes,
            &[case.callouts.as_slice(), suite.callouts.as_slice()].concat(),
            &case.request,
            number as u64 + 1,
            true,
        )?;
        for traced in &outcome.trace {
            if let policy_executor::expr::trace::Traced::Rule { by, rule, .. } = traced {
                rules_fired.insert((by.clone(), rule.clone()));
            }
        }
        if let Some(line) = &outcome.decision {
            let entry = line["route_entry"].as_str().unwrap_or_default().to_owned();
            for (i, policy) in line["policies"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if !matches!(policy["decision"].as_str(), Some("not_run" | "skipped")) {
                    reached.insert((entry.clone(), Some(i)));
                }
            }
            reached.insert((entry, None));
        }
        report.cases.push(CaseReport {
            name: case.name.clone(),
            skipped: None,
            faults: compare(case, &outcome),
        });
    }
    for (entry, policies) in engine.chain_summary() {
        if !reached.contains(&(entry.clone(), None)) {
            report.uncovered.push(format!("route entry {entry:?}"));
            continue;
        }
        for (i, policy) in policies.iter().enumerate() {
            let (label, rules) = (&policy.label, &policy.rules);
            if !reached.contains(&(entry.clone(), Some(i))) {
                report
                    .uncovered
                    .push(format!("route entry {entry:?}: policies[{i}] {label}"));
                continue;
            }
            for rule in rules {
                if !rules_fired.contains(&(label.clone(), rule.clone())) {
                    report.uncovered.push(format!(
                        "route entry {entry:?}: policies[{i}] {label}: rule {rule:?} never decided"
                    ));
                }
            }
        }
    }
    Ok(report)
}

/// What differs between `outcome` and what `case` expects.
fn compare(case: &Case, outcome: &Served) -> Vec<String> {
    let expect = &case.expect;
    let mut faults = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            faults.push(what);
        }
    };
    let body = String::from_utf8_lossy(&outcome.body);
    check(
        outcome.status == expect.status,
        format!("status {} (want {})", outcome.status, expect.status),
    );
    if let Some(want) = &expect.body {
        check(&body == want, format!("body {body:?} (want {want:?})"));
    }
    if let Some(prefix) = &expect.body_starts_with {
        check(
            body.starts_with(prefix.as_str()),
            format!("body {body:?} (want it to start with {prefix:?})"),
        );
    }
    for (name, want) in &expect.headers {
        let got = outcome.header(name);
        check(
            got.as_deref() == want.as_deref(),
            format!("response header {name}: {got:?} (want {want:?})"),
        );
    }
    let reached = outcome.upstream.is_some();
    check(
        reached == expect.reaches_upstream,
        format!(
            "reached upstream: {reached} (want {})",
            expect.reaches_upstream
        ),
    );
    if let Some(upstream) = &outcome.upstream {
        for (name, want) in &expect.upstream_headers {
            let got = upstream.header(name);
            check(
                got.as_deref() == want.as_deref(),
                format!("upstream header {name}: {got:?} (want {want:?})"),
            );
        }
        if let Some(want) = &expect.upstream_path {
            let got = upstream.header(":path");
            check(
                got.as_deref() == Some(want.as_str()),
                format!("upstream path {got:?} (want {want:?})"),
            );
        }
        if let Some(want) = &expect.upstream_body {
            let got = String::from_utf8_lossy(&upstream.body);
            check(
                &got == want,
                format!("upstream body {got:?} (want {want:?})"),
            );
        }
    }
    let line = outcome.decision.clone().unwrap_or(Value::Null);
    for (name, want) in &expect.decision_fields {
        let got = &line["fields"][name];
        check(
            got == want,
            format!("decision field {name}: {got} (want {want})"),
        );
    }
    let text = line.to_string();
    for secret in &expect.decision_excludes {
        check(
            !text.contains(secret.as_str()),
            format!("the decision line holds {secret:?}"),
        );
    }
    if let Some(want) = &expect.decision {
        let got = &line["decision"];
        check(
            got == want.as_str(),
            format!("decision {got} (want {want:?})"),
        );
    }
    if let Some(want) = &expect.decided_by {
        let got = &line["policy"];
        check(
            got == want.as_str(),
            format!("decided by {got} (want {want:?})"),
        );
    }
    faults
}
