//! An open-loop HTTP/1.1 load generator, for `make stress`.
//!
//! wrk is closed-loop: each connection sends its next request only when the
//! last one is answered, so when the server stalls wrk stops sending, a
//! stall shows as a handful of slow requests instead of many (coordinated
//! omission), and the rate is whatever the server allows. A soak and the
//! fault stages need the opposite: a fixed rate that keeps coming whatever
//! happens, and every request's latency counted from when it was due.
//!
//! So the rate is spread over `connections` threads, each holding one
//! keep-alive connection and sending on its own schedule (staggered, so the
//! requests are evenly spaced overall). A request's latency runs from its
//! scheduled send time to the end of its response: a request held up behind
//! a slow one is charged for the wait. Every request is kept as a
//! [`Sample`], so a stage can cut them into windows (per minute, before and
//! after a fault) afterwards.
//!
//! Responses are read by `Content-Length`, chunked, or to the close. A
//! `Connection: close` from the server (Envoy draining a listener after a
//! configuration push) ends that connection after the answered request; the
//! next request opens a new one. A request written on a reused connection
//! that the server had already closed (not one byte of a response came back)
//! is retried once on a fresh connection, as RFC 9112 §9.3.1 allows for an
//! idempotent request; such retries are counted and reported, never hidden.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::measure::quantile;

/// The most a response head may take; more is malformed.
const MAX_HEAD: usize = 64 * 1024;
/// The largest response body read; more is malformed.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How often a stopped load's threads notice, at the latest.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// One kind of request the load sends, and the answer it must get.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// A name for reports.
    pub label: String,
    /// The request target (path and query).
    pub path: String,
    /// Request headers besides `host`.
    pub headers: Vec<(String, String)>,
    /// The status the answer must have.
    pub expect_status: u16,
    /// Text the answer's body must contain, if any.
    pub expect_body: Option<String>,
    /// A body to send (as a POST, with its `content-length`); a GET when
    /// empty.
    pub body: Vec<u8>,
}

impl RequestSpec {
    /// A GET of `path` with `headers` that must be answered `expect_status`.
    pub fn get(
        label: &str,
        path: &str,
        headers: Vec<(String, String)>,
        expect_status: u16,
    ) -> Self {
        Self {
            label: label.to_owned(),
            path: path.to_owned(),
            headers,
            expect_status,
            expect_body: None,
            body: Vec::new(),
        }
    }

    /// A POST of `body` to `path` with `headers` that must be answered
    /// `expect_status`.
    pub fn post(
        label: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        expect_status: u16,
    ) -> Self {
        Self {
            body,
            ..Self::get(label, path, headers, expect_status)
        }
    }

    /// The same, also requiring `text` in the body.
    pub fn with_body(mut self, text: &str) -> Self {
        self.expect_body = Some(text.to_owned());
        self
    }

    fn wire(&self, target: SocketAddr) -> Vec<u8> {
        let method = if self.body.is_empty() { "GET" } else { "POST" };
        let mut head = format!("{method} {} HTTP/1.1\r\nhost: {target}\r\n", self.path);
        if !self.body.is_empty() {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        for (name, value) in &self.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.extend_from_slice(&self.body);
        wire
    }

    fn judge(&self, response: &Response) -> Outcome {
        let body_ok = self
            .expect_body
            .as_ref()
            .is_none_or(|text| String::from_utf8_lossy(&response.body).contains(text.as_str()));
        if response.status == self.expect_status && body_ok {
            Outcome::Expected(response.status)
        } else {
            Outcome::Unexpected(response.status)
        }
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be opened.
    Connect,
    /// The request could not be written.
    Write,
    /// The connection failed or closed before the response was complete.
    Read,
    /// No complete response within the timeout.
    Timeout,
    /// The response was not HTTP/1.1 as this client reads it.
    Malformed,
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer its [`RequestSpec`] expects.
    Expected(u16),
    /// An answer, but not that one (the status, or the body).
    Unexpected(u16),
    /// No answer.
    NoResponse(Failure),
}

impl Outcome {
    /// Whether it is the expected answer.
    pub fn is_expected(&self) -> bool {
        matches!(self, Self::Expected(_))
    }

    /// The status, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Expected(status) | Self::Unexpected(status) => Some(*status),
            Self::NoResponse(_) => None,
        }
    }
}

/// One request the load sent.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was due, since the load started.
    pub due: Duration,
    /// From when it was due to the end of its answer (or its failure).
    pub latency: Duration,
    /// Which of the plan's requests it was (an index into
    /// [`Plan::requests`]).
    pub kind: usize,
    /// What became of it.
    pub outcome: Outcome,
}

/// What to send, where, how fast.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to send.
    pub target: SocketAddr,
    /// Requests per second, over all connections.
    pub rate: f64,
    /// Keep-alive connections (one thread each).
    pub connections: usize,
    /// The requests, sent in turn.
    pub requests: Vec<RequestSpec>,
    /// How long a request may take before it counts as timed out.
    pub timeout: Duration,
}

#[derive(Default)]
struct Shared {
    samples: Mutex<Vec<Sample>>,
    retries: AtomicU64,
    connects: AtomicU64,
}

/// A running load; [`Load::stop`] ends it.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A finished load's record.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Every request, in the order they were due.
    pub samples: Vec<Sample>,
    /// Requests retried once on a fresh connection because the server had
    /// closed the reused one before answering.
    pub retries: u64,
    /// Connections opened (one per thread, plus one after each close).
    pub connects: u64,
}

impl Finished {
    /// `F of N failed (what they got); R retried`: the line a report gives
    /// for the whole load.
    pub fn failure_line(&self) -> String {
        let tally = Tally::of(&self.samples);
        format!(
            "{} of {} failed ({}); {} retried on a fresh connection after the server closed a reused one unanswered",
            tally.failed(),
            tally.requests,
            failure_summary(&self.samples),
            self.retries
        )
    }
}

impl Load {
    /// Starts sending.
    pub fn start(plan: &Plan) -> Result<Self, String> {
        if !plan.rate.is_finite()
            || plan.rate <= 0.0
            || plan.connections == 0
            || plan.requests.is_empty()
        {
            return Err(format!(
                "a load needs a positive rate, connections and requests: {} req/s, {} connections, {} requests",
                plan.rate,
                plan.connections,
                plan.requests.len()
            ));
        }
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let wires: Arc<Vec<Vec<u8>>> =
            Arc::new(plan.requests.iter().map(|r| r.wire(plan.target)).collect());
        let specs = Arc::new(plan.requests.clone());
        let interval = plan.connections as f64 / plan.rate;
        let mut load = Self {
            started,
            stop,
            shared,
            threads: Vec::new(),
        };
        for index in 0..plan.connections {
            let worker = Worker {
                index,
                target: plan.target,
                timeout: plan.timeout,
                first_due: interval * index as f64 / plan.connections as f64,
                interval,
                started,
                wires: Arc::clone(&wires),
                specs: Arc::clone(&specs),
                stop: Arc::clone(&load.stop),
                shared: Arc::clone(&load.shared),
            };
            let thread = std::thread::Builder::new()
                .name(format!("load-{index}"))
                .spawn(move || worker.run());
            match thread {
                Ok(thread) => load.threads.push(thread),
                Err(e) => {
                    load.stop.store(true, Ordering::SeqCst);
                    return Err(format!("starting load thread {index}: {e}"));
                }
            }
        }
        Ok(load)
    }

    /// Time since the load started (the clock [`Sample::due`] uses).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs `check` over the samples so far (in the order they completed).
    pub fn inspect<T>(&self, check: impl FnOnce(&[Sample]) -> T) -> T {
        let samples = self
            .shared
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        check(&samples)
    }

    /// Polls the samples until `done` holds, or fails after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Sample]) -> bool,
    ) -> Result<(), String> {
        crate::try_eventually(what, timeout, || self.inspect(&mut done).then_some(()))
    }

    /// Waits until `count` requests due at `since` or later have completed.
    pub fn wait_for_answers(
        &self,
        count: usize,
        since: Duration,
        timeout: Duration,
    ) -> Result<(), String> {
        self.wait_for(
            &format!("{count} requests answered after {since:.1?}"),
            timeout,
            |samples| samples.iter().filter(|s| s.due >= since).count() >= count,
        )
    }

    /// Stops sending, waits for the requests in flight, and returns the
    /// record.
    pub fn stop(mut self) -> Finished {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let mut samples = std::mem::take(
            &mut *self
                .shared
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        samples.sort_by_key(|s| s.due);
        Finished {
            samples,
            retries: self.shared.retries.load(Ordering::SeqCst),
            connects: self.shared.connects.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One connection's thread.
struct Worker {
    index: usize,
    target: SocketAddr,
    timeout: Duration,
    /// Seconds after the start its first request is due.
    first_due: f64,
    /// Seconds between its requests.
    interval: f64,
    started: Instant,
    wires: Arc<Vec<Vec<u8>>>,
    specs: Arc<Vec<RequestSpec>>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(self) {
        let mut connection = None;
        for sent in 0_usize.. {
            let due = Duration::from_secs_f64(self.first_due + sent as f64 * self.interval);
            if !self.sleep_until(self.started + due) {
                return;
            }
            let kind = (self.index + sent) % self.specs.len();
            let (Some(wire), Some(spec)) = (self.wires.get(kind), self.specs.get(kind)) else {
                return;
            };
            let outcome = exchange(
                &mut connection,
                self.target,
                self.timeout,
                wire,
                spec,
                &self.shared,
            );
            let latency = Instant::now().saturating_duration_since(self.started + due);
            self.shared
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Sample {
                    due,
                    latency,
                    kind,
                    outcome,
                });
        }
    }

    /// Sleeps until `when`; false once the load is stopped.
    fn sleep_until(&self, when: Instant) -> bool {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= when {
                return true;
            }
            std::thread::sleep((when - now).min(STOP_CHECK));
        }
    }
}

/// Sends one request on a fresh connection and waits for its answer: for
/// readiness checks and probes beside a load.
pub fn send_once(target: SocketAddr, spec: &RequestSpec, timeout: Duration) -> Outcome {
    let mut connection = None;
    exchange(
        &mut connection,
        target,
        timeout,
        &spec.wire(target),
        spec,
        &Shared::default(),
    )
}

/// How a request went wrong on the wire.
enum Broken {
    /// The server had closed the connection: the write failed, or it ended
    /// before one byte of a response.
    Closed(Failure),
    /// Anything else.
    Other(Failure),
}

/// A response as read.
struct Response {
    status: u16,
    body: Vec<u8>,
    /// The server will close the connection after it.
    close: bool,
}

/// Sends `wire` on `connection` (opening one if there is none) and reads the
/// answer, retrying once on a fresh connection when a reused one turns out
/// closed.
fn exchange(
    connection: &mut Option<BufReader<TcpStream>>,
    target: SocketAddr,
    timeout: Duration,
    wire: &[u8],
    spec: &RequestSpec,
    shared: &Shared,
) -> Outcome {
    let mut retried = false;
    loop {
        let reused = connection.is_some();
        let stream = match connection {
            Some(stream) => stream,
            None => match open(target, timeout) {
                Ok(stream) => {
                    shared.connects.fetch_add(1, Ordering::Relaxed);
                    connection.insert(stream)
                }
                Err(_) => return Outcome::NoResponse(Failure::Connect),
            },
        };
        let result = match stream.get_mut().write_all(wire) {
            Ok(()) => read_response(stream),
            Err(e) if is_closed(&e) => Err(Broken::Closed(Failure::Write)),
            Err(e) => Err(Broken::Other(failure_of(&e, Failure::Write))),
        };
        match result {
            Ok(response) => {
                if response.close {
                    *connection = None;
                }
                return spec.judge(&response);
            }
            Err(Broken::Closed(failure)) => {
                *connection = None;
                if reused && !retried {
                    retried = true;
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                return Outcome::NoResponse(failure);
            }
            Err(Broken::Other(failure)) => {
                *connection = None;
                return Outcome::NoResponse(failure);
            }
        }
    }
}

fn open(target: SocketAddr, timeout: Duration) -> io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(BufReader::new(stream))
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

fn failure_of(e: &io::Error, otherwise: Failure) -> Failure {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
        _ => otherwise,
    }
}

/// One line (up to `\n`), counted against the head's budget.
fn read_line(
    reader: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    budget: &mut usize,
) -> Result<usize, Broken> {
    line.clear();
    let read = reader
        .by_ref()
        .take(*budget as u64)
        .read_until(b'\n', line)
        .map_err(|e| Broken::Other(failure_of(&e, Failure::Read)))?;
    *budget = budget.saturating_sub(read);
    if read > 0 && !line.ends_with(b"\n") {
        // The budget ran out mid-line, or the connection ended mid-line.
        return Err(Broken::Other(if *budget == 0 {
            Failure::Malformed
        } else {
            Failure::Read
        }));
    }
    Ok(read)
}

fn read_response(reader: &mut BufReader<TcpStream>) -> Result<Response, Broken> {
    let mut budget = MAX_HEAD;
    let mut line = Vec::new();
    // The status line; a connection closed before it is the closed-idle case.
    let status_line = match reader
        .by_ref()
        .take(budget as u64)
        .read_until(b'\n', &mut line)
    {
        Ok(0) => return Err(Broken::Closed(Failure::Read)),
        Ok(read) => {
            budget -= read;
            String::from_utf8_lossy(&line).into_owned()
        }
        Err(e) if is_closed(&e) && line.is_empty() => return Err(Broken::Closed(Failure::Read)),
        Err(e) => return Err(Broken::Other(failure_of(&e, Failure::Read))),
    };
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or_default();
    let status: u16 = words
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or(Broken::Other(Failure::Malformed))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    loop {
        if read_line(reader, &mut line, &mut budget)? == 0 {
            return Err(Broken::Other(Failure::Read));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(Broken::Other(Failure::Malformed));
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| Broken::Other(Failure::Malformed))?,
                );
            }
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" if value.contains("close") => close = true,
            "connection" if value.contains("keep-alive") => close = false,
            _ => {}
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        read_chunked(reader)?
    } else if let Some(length) = content_length {
        if length > MAX_BODY {
            return Err(Broken::Other(Failure::Malformed));
        }
        let mut body = vec![0; length];
        reader
            .read_exact(&mut body)
            .map_err(|e| Broken::Other(failure_of(&e, Failure::Read)))?;
        body
    } else {
        // Delimited by the close.
        close = true;
        let mut body = Vec::new();
        reader
            .by_ref()
            .take(MAX_BODY as u64)
            .read_to_end(&mut body)
            .map_err(|e| Broken::Other(failure_of(&e, Failure::Read)))?;
        body
    };
    Ok(Response {
        status,
        body,
        close,
    })
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, Broken> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    let mut budget = MAX_HEAD;
    loop {
        if read_line(reader, &mut line, &mut budget)? == 0 {
            return Err(Broken::Other(Failure::Read));
        }
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| Broken::Other(Failure::Malformed))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if read_line(reader, &mut line, &mut budget)? == 0 {
                    return Err(Broken::Other(Failure::Read));
                }
                if line == b"\r\n" || line == b"\n" {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(Broken::Other(Failure::Malformed));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(body.get_mut(start..).unwrap_or_default())
            .map_err(|e| Broken::Other(failure_of(&e, Failure::Read)))?;
        if read_line(reader, &mut line, &mut budget)? == 0 {
            return Err(Broken::Other(Failure::Read));
        }
    }
}

/// Counts of what became of some requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests.
    pub requests: u64,
    /// Answered as expected.
    pub expected: u64,
    /// Answered, but not as expected.
    pub unexpected: u64,
    /// Not answered.
    pub no_response: u64,
}

impl Tally {
    /// Counts `samples`.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Self {
        let mut tally = Self::default();
        for sample in samples {
            tally.requests += 1;
            match sample.outcome {
                Outcome::Expected(_) => tally.expected += 1,
                Outcome::Unexpected(_) => tally.unexpected += 1,
                Outcome::NoResponse(_) => tally.no_response += 1,
            }
        }
        tally
    }

    /// Requests not answered as expected.
    pub fn failed(&self) -> u64 {
        self.unexpected + self.no_response
    }
}

/// The `q` quantile of the samples' latencies, in ms (NaN for none).
pub fn latency_ms<'a>(samples: impl IntoIterator<Item = &'a Sample>, q: f64) -> f64 {
    let latencies: Vec<f64> = samples
        .into_iter()
        .map(|s| s.latency.as_secs_f64() * 1000.0)
        .collect();
    quantile(&latencies, q)
}

/// What the failed samples got, e.g. `12 x 500, 3 x Read`; `none` if none
/// failed.
pub fn failure_summary<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> String {
    let mut counts: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for sample in samples {
        let what = match sample.outcome {
            Outcome::Expected(_) => continue,
            Outcome::Unexpected(status) => status.to_string(),
            Outcome::NoResponse(failure) => format!("{failure:?}"),
        };
        *counts.entry(what).or_default() += 1;
    }
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(what, count)| format!("{count} x {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}
