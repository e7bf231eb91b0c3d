//! The demo upstream: answers every request with a JSON description of what
//! it received, so a person with curl and a test alike can see what the
//! filter changed.
//!
//! ```json
//! {"method":"GET","path":"/api/x","headers":{"x-tenant":"demo"},"body":""}
//! ```
//! Repeated headers are joined with `,`. It also counts requests, so a test
//! can prove that a short-circuited request never reached it, and a request
//! carrying `x-echo-respond-with: TEXT` gets `TEXT` back as a `text/plain`
//! body instead, for tests of policies that inspect responses. In `TEXT`,
//! `\n` stands for a newline (a header cannot hold one, an SSE stream
//! needs them). With it, `x-echo-content-type` sets the content type,
//! `x-echo-content-encoding` a content encoding (the body is sent as
//! given), and `x-echo-chunk-bytes: N` sends the body in chunks of N
//! bytes, a few milliseconds apart, without a content length. A request
//! carrying `x-echo-sse-events: N` gets a server-sent event stream of N
//! events, each written as it is made, each with an email address in its
//! data ([`sse_events`]): what `make bench` masks.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// A running echo upstream; stops when dropped.
pub struct EchoUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoUpstream {
    /// Listens on `addr` (port 0 picks a free port) on a thread of its own.
    pub fn start(addr: SocketAddr) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let requests = Arc::new(AtomicU64::new(0));
        let (shutdown, stop) = oneshot::channel();
        let counter = Arc::clone(&requests);
        let thread = std::thread::Builder::new()
            .name("echo-upstream".into())
            .spawn(move || runtime.block_on(serve(listener, counter, stop)))?;
        Ok(Self {
            addr,
            requests,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has answered.
    pub fn requests_seen(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    requests: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let requests = Arc::clone(&requests);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                requests.fetch_add(1, Ordering::SeqCst);
                echo(req)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Asks the echo upstream to answer with the header's value as a plain body.
pub const RESPOND_WITH: &str = "x-echo-respond-with";

/// A body sent in parts, a few milliseconds apart (or all at once).
pub struct Chunks {
    parts: VecDeque<Bytes>,
    /// Parts go a few milliseconds apart, so that each reaches Envoy alone.
    spaced: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The size is known: one part, sent with its content length.
    whole: bool,
}

impl Chunks {
    fn whole(body: Bytes) -> Self {
        Self {
            parts: VecDeque::from([body]),
            spaced: false,
            pause: None,
            whole: true,
        }
    }

    fn split(body: &[u8], size: usize) -> Self {
        Self {
            parts: body
                .chunks(size.max(1))
                .map(Bytes::copy_from_slice)
                .collect(),
            spaced: true,
            pause: None,
            whole: false,
        }
    }

    fn events(count: usize) -> Self {
        Self {
            parts: sse_events(count).into_iter().map(Bytes::from).collect(),
            spaced: false,
            pause: None,
            whole: false,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let Some(part) = self.parts.pop_front() else {
            return Poll::Ready(None);
        };
        if self.spaced && !self.parts.is_empty() {
            self.pause = Some(Box::pin(tokio::time::sleep(
                std::time::Duration::from_millis(2),
            )));
        }
        Poll::Ready(Some(Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (self.whole, self.parts.front()) {
            (true, Some(part)) => hyper::body::SizeHint::with_exact(part.len() as u64),
            (true, None) => hyper::body::SizeHint::with_exact(0),
            (false, _) => hyper::body::SizeHint::default(),
        }
    }
}

/// Asks for a server-sent event stream of this many events.
pub const SSE_EVENTS: &str = "x-echo-sse-events";

/// The events `x-echo-sse-events: N` answers with, one per part.
pub fn sse_events(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            format!(
                "data: {{\"index\": {i}, \"delta\": \"token {i} for jane.doe@example.com\"}}\n\n"
            )
        })
        .collect()
}

/// Asks for the answer's content type, with `x-echo-respond-with`.
pub const CONTENT_TYPE: &str = "x-echo-content-type";
/// Asks for a `content-encoding` on the answer.
pub const CONTENT_ENCODING: &str = "x-echo-content-encoding";
/// Asks for the answer in chunks of this many bytes.
pub const CHUNK_BYTES: &str = "x-echo-chunk-bytes";

/// The canned answer's bytes: `\n` is a newline.
pub fn canned_body(text: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(text)
        .replace("\\n", "\n")
        .into_bytes()
}

async fn echo(req: Request<Incoming>) -> Result<Response<Chunks>, Infallible> {
    let events = req
        .headers()
        .get(SSE_EVENTS)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Some(count) = events {
        let mut response = Response::new(Chunks::events(count));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        return Ok(response);
    }
    if let Some(text) = req.headers().get(RESPOND_WITH) {
        let body = canned_body(text.as_bytes());
        let chunk = req
            .headers()
            .get(CHUNK_BYTES)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let body = match chunk {
            Some(size) => Chunks::split(&body, size),
            None => Chunks::whole(Bytes::from(body)),
        };
        let mut response = Response::new(body);
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or(hyper::header::HeaderValue::from_static("text/plain"));
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, content_type);
        if let Some(encoding) = req.headers().get(CONTENT_ENCODING) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_ENCODING, encoding.clone());
        }
        return Ok(response);
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let body = match req.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let json = serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body": body,
    });
    let mut response = Response::new(Chunks::whole(Bytes::from(json.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
