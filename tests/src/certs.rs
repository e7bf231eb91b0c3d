//! Throwaway certificates made at test time by `envoy/examples/make-certs.sh`
//! (with `openssl`): a CA, a server certificate (`localhost`, `127.0.0.1`,
//! `api.github.com`, `httpbingo.org`) and client certificates with SPIFFE
//! IDs (`team-a`, `team-b`). One maker for every test that needs TLS: the
//! egress scenario's mutual-TLS listener and the shim's mutual-TLS port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use local_envoy::{repo_root, ListenerTls};

/// A directory of certificates, removed when dropped.
pub struct Certificates(PathBuf);

static MADE: AtomicU32 = AtomicU32::new(0);

impl Certificates {
    /// Makes a fresh set in a new temporary directory; fails the test if
    /// `make-certs.sh` (or `openssl`) fails.
    pub fn make() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "test-certs-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::SeqCst)
        ));
        let script = repo_root().join("envoy/examples/make-certs.sh");
        match Command::new(&script).arg(&dir).status() {
            Ok(status) if status.success() => Self(dir),
            Ok(status) => panic!("{} failed: {status}", script.display()),
            Err(e) => panic!("running {} (needs openssl): {e}", script.display()),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// A file of the set: `ca.pem`, `server.pem`, `server.key`,
    /// `team-a.pem`, `team-a.key`, `team-b.pem`, `team-b.key`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// An Envoy listener serving the server certificate and requiring a
    /// client certificate signed by the CA.
    pub fn listener(&self) -> ListenerTls {
        ListenerTls {
            certificate: self.file("server.pem"),
            private_key: self.file("server.key"),
            client_ca: Some(self.file("ca.pem")),
        }
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
