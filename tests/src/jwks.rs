//! A loopback JWKS server for the JWT tests: serves whatever key set the
//! test publishes, counts the fetches, can answer slowly, and can be taken
//! down (it then closes every connection without answering, as a dead
//! issuer would).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The path the key set is served at.
pub const PATH: &str = "/.well-known/jwks.json";

#[derive(Default)]
struct State {
    body: Mutex<String>,
    fetches: AtomicUsize,
    down: AtomicBool,
    stopped: AtomicBool,
    delay: Mutex<Duration>,
}

/// A running JWKS server; stops when dropped.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<State>,
}

impl JwksServer {
    /// Starts serving `body` (a JWK set, JSON) on a free loopback port.
    pub fn start(body: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        *state.body.lock().unwrap_or_else(|p| p.into_inner()) = body.to_owned();
        let serving = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if serving.stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    serve(stream, &serving);
                }
            }
        });
        Ok(Self { addr, state })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key set's URL.
    pub fn uri(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// Serves a new key set from now on.
    pub fn publish(&self, body: &str) {
        *self.state.body.lock().unwrap_or_else(|p| p.into_inner()) = body.to_owned();
    }

    /// How many times the key set was requested (while up).
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Answers each fetch only after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// Takes the server down (`true`) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, state: &State) {
    if state.down.load(Ordering::SeqCst) {
        return;
    }
    // One request per connection; its head is all that matters.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let found = head
        .lines()
        .next()
        .is_some_and(|line| line.split(' ').nth(1) == Some(PATH));
    let (status, body) = if found {
        state.fetches.fetch_add(1, Ordering::SeqCst);
        thread::sleep(*state.delay.lock().unwrap_or_else(|p| p.into_inner()));
        let body = state.body.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ("200 OK", body)
    } else {
        ("404 Not Found", String::new())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}
