//! Envoy stats from the engine's metrics ([`policy_executor::metrics`]).
//!
//! Requests only bump counters in the VM's memory; the root contexts' tick
//! pushes what changed since the last push into Envoy's stats, so no
//! request pays a host call for its metrics. What was pushed is kept per
//! VM, like the counters: a configuration reload makes a new root context
//! in the same VM, and it must not push the old counts again. Each VM (one per worker)
//! pushes its own deltas and Envoy adds them up, so `/stats` shows the
//! Envoy-wide counts, at most one tick late. Histograms push the samples
//! recorded since the last tick (at most 1,024 per histogram and tick).

use std::cell::RefCell;
use std::collections::HashMap;

use policy_executor::metrics::metrics;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

thread_local! {
    /// This VM's exporter (a VM is one thread).
    static EXPORTER: RefCell<Exporter> = RefCell::default();
}

/// Pushes every counter's growth and every histogram's new samples.
pub(crate) fn export() {
    EXPORTER.with(|exporter| {
        if let Ok(mut exporter) = exporter.try_borrow_mut() {
            exporter.export();
        }
    });
}

/// What this VM has pushed: per metric, Envoy's id for it and, for
/// counters, the count pushed so far.
#[derive(Default)]
struct Exporter {
    counters: HashMap<String, (u32, u64)>,
    histograms: HashMap<String, u32>,
}

impl Exporter {
    fn export(&mut self) {
        let all = metrics();
        for (name, count) in all.counters() {
            let (id, pushed) = match self.counters.get(&name) {
                Some(known) => *known,
                None => match hostcalls::define_metric(MetricType::Counter, &name) {
                    Ok(id) => (id, 0),
                    Err(status) => {
                        log::warn!("cannot define the stat {name}: {status:?}");
                        continue;
                    }
                },
            };
            let delta = count.saturating_sub(pushed);
            if delta > 0 {
                let by = i64::try_from(delta).unwrap_or(i64::MAX);
                if let Err(status) = hostcalls::increment_metric(id, by) {
                    log::warn!("cannot update the stat {name}: {status:?}");
                    continue;
                }
            }
            self.counters.insert(name, (id, count));
        }
        for (name, histogram) in all.histograms() {
            let samples = histogram.take_samples();
            if samples.is_empty() {
                continue;
            }
            let id = match self.histograms.get(&name) {
                Some(id) => *id,
                None => match hostcalls::define_metric(MetricType::Histogram, &name) {
                    Ok(id) => {
                        self.histograms.insert(name.clone(), id);
                        id
                    }
                    Err(status) => {
                        log::warn!("cannot define the stat {name}: {status:?}");
                        continue;
                    }
                },
            };
            for sample in samples {
                if let Err(status) = hostcalls::record_metric(id, sample) {
                    log::warn!("cannot record into the stat {name}: {status:?}");
                    break;
                }
            }
        }
    }
}
