//! What the engine counts, kept here and exported by each host under the
//! same names: Envoy stats in the Wasm filter (pushed on the root context's
//! tick), a Prometheus endpoint in the shim.
//!
//! Counting happens in memory, with relaxed atomics: a request costs a few
//! increments and two reads of the host's clock (for the chain latency). Every metric of a route entry or policy is
//! looked up once, when the configuration is compiled; the only names made
//! later are one per (policy, status) a chain denies with and one per
//! callout cluster, the first time each happens. So the number of series
//! is bounded by the configuration, never by request data.
//!
//! # Names
//!
//! A name is dotted, Envoy style, with its tags in it as `<tag>.<value>`
//! pairs (values have every character outside `[A-Za-z0-9_-]` replaced by
//! `_`):
//!
//! | name | kind | |
//! |---|---|---|
//! | `policy_engine.route.<entry>.requests_allowed` | counter | requests the chain let through |
//! | `policy_engine.route.<entry>.policy.<policy>.status.<code>.requests_denied` | counter | requests a policy refused itself, with that status (4xx) |
//! | `policy_engine.route.<entry>.policy.<policy>.status.<code>.requests_answered` | counter | the same below 400: a preflight, a redirect, a health check |
//! | `policy_engine.route.<entry>.policy.<policy>.status.<code>.requests_error` | counter | the same with a 5xx: the policy could not decide |
//! | `policy_engine.route.<entry>.policy.<policy>.policy_continued` | counter | the policy's request phases that let the request go on |
//! | `policy_engine.route.<entry>.policy.<policy>.policy_replied` | counter | ... that answered the request (a denial, a preflight, a redirect) |
//! | `policy_engine.route.<entry>.policy.<policy>.policy_skipped` | counter | requests its `when:` guard skipped it for |
//! | `policy_engine.route.<entry>.chain_latency_us` | histogram | time in the request phases, waits for services included |
//! | `policy_engine.unmatched.requests_allowed` / `requests_denied` | counter | requests no route entry matched |
//! | `policy_engine.requests_invalid` | counter | requests refused before routing (a path that cannot be made canonical) |
//! | `policy_engine.callout.cluster.<cluster>.calls` / `failures` | counter | calls to services (authorization, rate limit) and their failures |
//! | `policy_engine.callout.cluster.<cluster>.latency_us` | histogram | their answer times |
//! | `policy_engine.remote.fetches` / `fetch_failures` | counter | remote document (JWKS) fetches |
//! | `policy_engine.config.loads` / `rejections` | counter | configurations applied and refused (in Envoy, per VM: each worker's VM, and the main thread's, load it) |
//! | `policy_engine.extproc.streams_opened` / `streams_closed` | counter | the shim's ext_proc streams |
//!
//! Tag extraction (Envoy's `stats_tags`, see `envoy/bootstrap.yaml`) turns
//! `policy_engine.route.api.policy.jwt.status.401.requests_denied` into
//! `policy_engine.requests_denied` with `route_entry="api"`, `policy="jwt"`
//! and `status="401"`; [`prometheus_form`] does the same for the shim.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The prefix of every name.
pub const PREFIX: &str = "policy_engine";

/// The upper bounds of the histograms' buckets, in microseconds; the last
/// bucket is unbounded.
pub const BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Raw samples a histogram keeps for hosts that take samples (Envoy)
/// between two exports; more are counted in the buckets but not kept.
const MAX_SAMPLES: usize = 1_024;

/// Whether histograms keep raw samples for a host that takes them
/// ([`keep_samples`]).
static KEEP_SAMPLES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes histograms keep their raw samples (at most 1,024 between two
/// [`Histogram::take_samples`]), for a host whose histograms take samples
/// (Envoy). Hosts that export buckets (the shim) leave it off.
pub fn keep_samples() {
    KEEP_SAMPLES.store(true, Ordering::Relaxed);
}

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution of microsecond values: Prometheus-style buckets for the
/// shim, and the latest raw samples for Envoy's own histograms.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum: AtomicU64,
    samples: Mutex<Vec<u64>>,
}

/// A histogram's buckets (cumulative, as Prometheus has them), sum and
/// count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bound of [`BUCKETS_US`], then `+Inf`: values at or below it.
    pub cumulative: Vec<u64>,
    /// The sum of the values.
    pub sum: u64,
    /// How many values.
    pub count: u64,
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, micros: u64) {
        let bucket = BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BUCKETS_US.len());
        if let Some(slot) = self.buckets.get(bucket) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(micros, Ordering::Relaxed);
        if KEEP_SAMPLES.load(Ordering::Relaxed) {
            let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            if samples.len() < MAX_SAMPLES {
                samples.push(micros);
            }
        }
    }

    /// The buckets, sum and count so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            // The +Inf bucket, so the count always agrees with the buckets.
            count: cumulative.last().copied().unwrap_or(0),
            cumulative,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }

    /// The samples recorded since the last call (at most 1,024).
    pub fn take_samples(&self) -> Vec<u64> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Every metric of this process (of this VM, in Envoy), by name.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, Arc<Counter>>>,
    histograms: Mutex<BTreeMap<String, Arc<Histogram>>>,
    /// Per callout cluster, its metrics, found without formatting a name.
    callouts: Mutex<HashMap<String, Arc<CalloutMetrics>>>,
}

/// The metrics of calls to one cluster.
#[derive(Debug)]
pub struct CalloutMetrics {
    /// Calls answered or failed.
    pub calls: Arc<Counter>,
    /// Calls without an answer (timeout, unreachable, a gRPC error).
    pub failures: Arc<Counter>,
    /// Answer times.
    pub latency: Arc<Histogram>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// The counter `name`, created at zero the first time.
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(counters.entry(name.to_owned()).or_default())
    }

    /// The histogram `name`, created empty the first time.
    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        let mut histograms = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(histograms.entry(name.to_owned()).or_default())
    }

    /// The metrics of calls to `cluster`.
    pub fn callout(&self, cluster: &str) -> Arc<CalloutMetrics> {
        let mut callouts = self.callouts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = callouts.get(cluster) {
            return Arc::clone(found);
        }
        let prefix = format!("{PREFIX}.callout.cluster.{}", tag_value(cluster));
        let created = Arc::new(CalloutMetrics {
            calls: self.counter(&format!("{prefix}.calls")),
            failures: self.counter(&format!("{prefix}.failures")),
            latency: self.histogram(&format!("{prefix}.latency_us")),
        });
        callouts.insert(cluster.to_owned(), Arc::clone(&created));
        created
    }

    /// Every counter and its count, by name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.iter().map(|(n, c)| (n.clone(), c.get())).collect()
    }

    /// Every histogram, by name.
    pub fn histograms(&self) -> Vec<(String, Arc<Histogram>)> {
        let histograms = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        histograms
            .iter()
            .map(|(n, h)| (n.clone(), Arc::clone(h)))
            .collect()
    }
}

/// A name segment made of `[A-Za-z0-9_-]` only, so names split on `.` and
/// tag regexes stay exact.
pub fn tag_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_owned()
    } else {
        cleaned
    }
}

/// The tags names carry, as `<segment>.<value>`, and the label each
/// becomes.
const TAGS: [(&str, &str); 4] = [
    ("route", "route_entry"),
    ("policy", "policy"),
    ("status", "status"),
    ("cluster", "cluster"),
];

/// A name as Envoy's tag extraction (and Prometheus) shows it: the
/// tag-extracted name with `_` for `.`, and its labels.
/// `policy_engine.route.api.policy.jwt.status.401.requests_denied` is
/// `policy_engine_requests_denied` with `route_entry="api"`,
/// `policy="jwt"` and `status="401"`.
pub fn prometheus_form(name: &str) -> (String, Vec<(&'static str, String)>) {
    let mut parts = name.split('.').peekable();
    let mut kept: Vec<&str> = Vec::new();
    let mut labels = Vec::new();
    while let Some(part) = parts.next() {
        match TAGS.iter().find(|(segment, _)| *segment == part) {
            Some((_, label)) if parts.peek().is_some() => {
                if let Some(value) = parts.next() {
                    labels.push((*label, value.to_owned()));
                }
            }
            _ => kept.push(part),
        }
    }
    (kept.join("_"), labels)
}

/// What happens to requests no chain takes.
pub(crate) struct UnmatchedMetrics {
    pub(crate) allowed: Arc<Counter>,
    pub(crate) denied: Arc<Counter>,
    pub(crate) invalid: Arc<Counter>,
}

impl UnmatchedMetrics {
    pub(crate) fn new() -> Self {
        let all = metrics();
        Self {
            allowed: all.counter(&format!("{PREFIX}.unmatched.requests_allowed")),
            denied: all.counter(&format!("{PREFIX}.unmatched.requests_denied")),
            invalid: all.counter(&format!("{PREFIX}.requests_invalid")),
        }
    }
}

/// The metrics of one chain, found when the configuration is compiled.
pub(crate) struct ChainMetrics {
    prefix: String,
    pub(crate) allowed: Arc<Counter>,
    pub(crate) latency: Arc<Histogram>,
    pub(crate) entries: Vec<EntryMetrics>,
    /// Per (entry, status): denials and errors, made on first use.
    denied: Mutex<HashMap<(usize, u16), Arc<Counter>>>,
}

/// The metrics of one policy of a chain.
pub(crate) struct EntryMetrics {
    policy: String,
    pub(crate) continued: Arc<Counter>,
    pub(crate) replied: Arc<Counter>,
    pub(crate) skipped: Arc<Counter>,
}

impl ChainMetrics {
    /// The metrics of route entry `entry`, whose policies are `policies`
    /// (by name).
    pub(crate) fn new<'a>(entry: &str, policies: impl Iterator<Item = &'a str>) -> Self {
        let all = metrics();
        let prefix = format!("{PREFIX}.route.{}", tag_value(entry));
        let entries = policies
            .map(|policy| {
                let at = format!("{prefix}.policy.{}", tag_value(policy));
                EntryMetrics {
                    policy: tag_value(policy),
                    continued: all.counter(&format!("{at}.policy_continued")),
                    replied: all.counter(&format!("{at}.policy_replied")),
                    skipped: all.counter(&format!("{at}.policy_skipped")),
                }
            })
            .collect();
        Self {
            allowed: all.counter(&format!("{prefix}.requests_allowed")),
            latency: all.histogram(&format!("{prefix}.chain_latency_us")),
            entries,
            denied: Mutex::default(),
            prefix,
        }
    }

    /// Counts a request the policy at `position` answered with `status`.
    pub(crate) fn deny(&self, position: usize, status: u16) {
        let mut denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        let counter = denied.entry((position, status)).or_insert_with(|| {
            let policy = self
                .entries
                .get(position)
                .map_or("_", |e| e.policy.as_str());
            metrics().counter(&format!(
                "{}.policy.{policy}.status.{status}.requests_{}",
                self.prefix,
                reply_outcome(status)
            ))
        });
        counter.increment();
    }
}

/// What a reply the engine made means: `answered` below 400 (a preflight,
/// a redirect, a health check), `denied` for a 4xx, `error` for a 5xx.
pub(crate) fn reply_outcome(status: u16) -> &'static str {
    match status {
        ..=399 => "answered",
        400..=499 => "denied",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_tagged_prometheus_series() {
        assert_eq!(
            prometheus_form("policy_engine.route.api.policy.jwt.status.401.requests_denied"),
            (
                "policy_engine_requests_denied".to_owned(),
                vec![
                    ("route_entry", "api".to_owned()),
                    ("policy", "jwt".to_owned()),
                    ("status", "401".to_owned())
                ]
            )
        );
        assert_eq!(
            prometheus_form("policy_engine.callout.cluster.authz.latency_us"),
            (
                "policy_engine_callout_latency_us".to_owned(),
                vec![("cluster", "authz".to_owned())]
            )
        );
        assert_eq!(
            prometheus_form("policy_engine.config.loads"),
            ("policy_engine_config_loads".to_owned(), vec![])
        );
        assert_eq!(tag_value("my.route/v1"), "my_route_v1");
    }

    #[test]
    fn histograms_bucket_and_keep_samples() {
        keep_samples();
        let histogram = Histogram::default();
        for micros in [10, 60, 2_000_000] {
            histogram.record(micros);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.sum, 2_000_070);
        assert_eq!(snapshot.cumulative.first(), Some(&1));
        assert_eq!(snapshot.cumulative.get(1), Some(&2));
        assert_eq!(snapshot.cumulative.last(), Some(&3));
        assert_eq!(histogram.take_samples(), vec![10, 60, 2_000_000]);
        assert!(histogram.take_samples().is_empty());
    }
}
