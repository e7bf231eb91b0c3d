//! Redis and the rate limit service, as the rate limit tests run them:
//! Debian's `redis-server` on a free loopback port, and the project's
//! `policy-ratelimit` binary counting in it. Both are killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use local_envoy::{announced_addr, ratelimit_bin};

/// A `redis-server` of the test's own, without persistence.
pub struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// Starts one on a free port and waits until it answers `PING`.
    pub fn start() -> std::io::Result<Self> {
        let mut last = None;
        // A free port can be taken between the probe and redis's bind.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut redis = Self { child: None, port };
            match redis.run() {
                Ok(()) => return Ok(redis),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    fn run(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!("redis-server (make setup installs it): {e}"))
            })?;
        self.child = Some(child);
        let started = crate::try_eventually(
            "redis-server answering PING",
            Duration::from_secs(10),
            || {
                if self.ping() {
                    return Some(Ok(()));
                }
                match self.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(Err(format!("redis-server exited: {status}"))),
                    _ => None,
                }
            },
        );
        match started.and_then(|answer| answer) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stop();
                Err(std::io::Error::other(e))
            }
        }
    }

    /// Whether it answers `PING` now.
    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut answer = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// Kills it (its data goes with it) and waits until the port refuses.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.run()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The project's rate limit service (`policy-ratelimit`).
pub struct RateLimitService {
    child: Child,
    addr: SocketAddr,
}

impl RateLimitService {
    /// Starts it on a free port, counting in `redis_url`, and waits until
    /// it serves.
    pub fn start(redis_url: &str) -> std::io::Result<Self> {
        let binary = ratelimit_bin();
        let mut child = Command::new(&binary)
            .args(["--listen", "127.0.0.1:0", "--redis", redis_url])
            .args(["--redis-timeout", "200", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!("{} (make build builds it): {e}", binary.display()))
            })?;
        match announced_addr(&mut child, Duration::from_secs(30)) {
            Some(addr) => Ok(Self { child, addr }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::io::Error::other(
                    "policy-ratelimit did not announce its address",
                ))
            }
        }
    }

    /// Its gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for the policy's `global.grpc.uri`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RateLimitService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
