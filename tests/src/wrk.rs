//! wrk, the closed-loop HTTP load tool `make bench` and `make stress` drive:
//! the command line both build, and the summary it prints, read back into
//! numbers.

/// What one wrk run reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Requests completed (`N requests in ...`).
    pub requests: u64,
    /// `Requests/sec:`.
    pub rps: f64,
    /// The 50th latency percentile, in ms (with `--latency`).
    pub p50_ms: Option<f64>,
    /// The 99th latency percentile, in ms (with `--latency`).
    pub p99_ms: Option<f64>,
    /// `Non-2xx or 3xx responses:` (wrk counts status >= 400).
    pub non_2xx: u64,
    /// `Socket errors:`.
    pub socket_errors: SocketErrors,
}

/// wrk's `Socket errors: connect C, read R, write W, timeout T`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketErrors {
    /// Connections that could not be opened.
    pub connect: u64,
    /// Reads that failed (including connections closed under a request).
    pub read: u64,
    /// Writes that failed.
    pub write: u64,
    /// Requests that outlived `--timeout`.
    pub timeout: u64,
}

impl SocketErrors {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

impl Summary {
    /// Requests that failed: a status of 400 or more, or a socket error.
    pub fn failures(&self) -> u64 {
        self.non_2xx + self.socket_errors.total()
    }
}

/// wrk's arguments for `threads` threads holding `connections` connections
/// for `seconds`, with the latency distribution, sending `headers` to `url`.
pub fn args(
    threads: u32,
    connections: u32,
    seconds: u32,
    headers: &[(String, String)],
    url: &str,
) -> Vec<String> {
    let mut args = vec![
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
    ];
    for (name, value) in headers {
        args.push("-H".to_owned());
        args.push(format!("{name}: {value}"));
    }
    args.push(url.to_owned());
    args
}

/// A wrk duration (`812.00us`, `1.20ms`, `2.01s`, `1.50m`) in milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number / 1000.0),
        "ms" => Some(number),
        "s" => Some(number * 1000.0),
        "m" => Some(number * 60_000.0),
        _ => None,
    }
}

/// Reads wrk's summary; the failure lines count as 0 when wrk printed none
/// (it prints them only when non-zero).
pub fn parse(text: &str) -> Result<Summary, String> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok());
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    let (Some(rps), Some(requests)) = (rps, requests) else {
        return Err(format!("cannot read wrk's output:\n{text}"));
    };
    let non_2xx = match field("Non-2xx or 3xx responses:") {
        Some(n) => n
            .parse()
            .map_err(|e| format!("wrk's non-2xx count {n:?}: {e}"))?,
        None => 0,
    };
    let socket_errors = match field("Socket errors:") {
        Some(line) => parse_socket_errors(line)?,
        None => SocketErrors::default(),
    };
    Ok(Summary {
        requests,
        rps,
        p50_ms: field("50%").and_then(parse_duration_ms),
        p99_ms: field("99%").and_then(parse_duration_ms),
        non_2xx,
        socket_errors,
    })
}

/// `connect 0, read 12, write 0, timeout 3`.
fn parse_socket_errors(line: &str) -> Result<SocketErrors, String> {
    let mut errors = SocketErrors::default();
    for part in line.split(',') {
        let mut words = part.split_whitespace();
        let (Some(kind), Some(count)) = (words.next(), words.next()) else {
            return Err(format!("wrk's socket errors {line:?}"));
        };
        let count: u64 = count
            .parse()
            .map_err(|e| format!("wrk's socket errors {line:?}: {e}"))?;
        match kind {
            "connect" => errors.connect = count,
            "read" => errors.read = count,
            "write" => errors.write = count,
            "timeout" => errors.timeout = count,
            _ => return Err(format!("wrk's socket errors {line:?}: unknown {kind:?}")),
        }
    }
    Ok(errors)
}
