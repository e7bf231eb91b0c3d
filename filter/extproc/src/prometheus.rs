//! The shim's metrics on a Prometheus endpoint (`--metrics-listen`): the
//! engine's metrics ([`policy_executor::metrics`]) under the names and
//! labels Envoy's tag extraction gives the Wasm filter's, plus the shim's
//! ext_proc stream counts.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use policy_executor::metrics::{metrics, prometheus_form, BUCKETS_US};

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let all = metrics();
    // name -> its series (labels, value), so each name has one TYPE line.
    let mut counters: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (name, value) in all.counters() {
        let (metric, labels) = prometheus_form(&name);
        counters
            .entry(metric)
            .or_default()
            .push((label_text(&labels, None), value));
    }
    let mut text = String::new();
    for (metric, series) in &counters {
        let _ = writeln!(text, "# TYPE {metric} counter");
        for (labels, value) in series {
            let _ = writeln!(text, "{metric}{labels} {value}");
        }
    }
    let mut histograms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, histogram) in all.histograms() {
        let (metric, labels) = prometheus_form(&name);
        let snapshot = histogram.snapshot();
        let lines = histograms.entry(metric.clone()).or_default();
        let bounds = BUCKETS_US
            .iter()
            .map(u64::to_string)
            .chain(std::iter::once("+Inf".to_owned()));
        for (bound, count) in bounds.zip(&snapshot.cumulative) {
            lines.push(format!(
                "{metric}_bucket{} {count}",
                label_text(&labels, Some(&bound))
            ));
        }
        let plain = label_text(&labels, None);
        lines.push(format!("{metric}_sum{plain} {}", snapshot.sum));
        lines.push(format!("{metric}_count{plain} {}", snapshot.count));
    }
    for (metric, lines) in &histograms {
        let _ = writeln!(text, "# TYPE {metric} histogram");
        for line in lines {
            let _ = writeln!(text, "{line}");
        }
    }
    text
}

/// `{a="x",b="y"}` (values are `[A-Za-z0-9_-]`: nothing to escape), with
/// `le` last when given.
fn label_text(labels: &[(&str, String)], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// Serves `GET /metrics` (any path, in fact) on `listener` until the
/// process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|_: Request<Incoming>| async {
                let mut response = Response::new(Full::new(Bytes::from(render())));
                if let Ok(value) = "text/plain; version=0.0.4".parse() {
                    response.headers_mut().insert("content-type", value);
                }
                Ok::<_, Infallible>(response)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The address the endpoint was given, for the log.
pub fn describe(address: SocketAddr) -> String {
    format!("http://{address}/metrics")
}
