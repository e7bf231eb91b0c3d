//! Runs the ext_proc shim (`policy-extproc`) as a child process.
//!
//! Its log goes to `target/logs/`, never beside its configuration: that may
//! be a file in the source tree (`make run` serves `envoy/`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{extproc_bin, repo_root, EnvoyError};

static LOGS: AtomicU32 = AtomicU32::new(0);

/// A new log file under `target/logs/`, named for this process and the
/// configuration it serves.
fn new_log_path(config: &Path) -> Result<PathBuf, EnvoyError> {
    let dir = repo_root().join("target/logs");
    std::fs::create_dir_all(&dir)
        .map_err(|e| EnvoyError::Io(format!("creating {}", dir.display()), e))?;
    let stem = config
        .file_stem()
        .map_or("shim".into(), |s| s.to_string_lossy());
    Ok(dir.join(format!(
        "{stem}.shim-{}-{}.log",
        std::process::id(),
        LOGS.fetch_add(1, Ordering::SeqCst)
    )))
}

/// TLS for the shim's gRPC port: its `--tls-cert`, `--tls-key` and, for
/// mutual TLS, `--client-ca`.
#[derive(Debug, Clone)]
pub struct ShimTls {
    /// The shim's certificate chain (PEM).
    pub certificate: PathBuf,
    /// Its private key (PEM).
    pub private_key: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

impl ShimTls {
    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--tls-cert".into(),
            self.certificate.clone().into(),
            "--tls-key".into(),
            self.private_key.clone().into(),
        ];
        if let Some(ca) = &self.client_ca {
            args.extend(["--client-ca".into(), ca.clone().into()]);
        }
        args
    }
}

/// A running shim; killed when dropped.
pub struct Shim {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    /// Its standard output: the address line, then the decision log.
    stdout: PathBuf,
}

impl Shim {
    /// Starts the shim on `config`, listening on `listen` (port 0 picks a
    /// free port), pinned to `cpu` if given, logging at `log_level`
    /// (`debug` shows every decision), and waits until it serves.
    pub fn start(
        config: &Path,
        listen: SocketAddr,
        cpu: Option<u32>,
        log_level: &str,
    ) -> Result<Self, EnvoyError> {
        Self::spawn(config, listen, cpu, log_level, Vec::new())
    }

    /// Like [`Shim::start`], serving gRPC over TLS (mutual TLS when
    /// `tls.client_ca` is set).
    pub fn start_tls(
        config: &Path,
        listen: SocketAddr,
        log_level: &str,
        tls: &ShimTls,
    ) -> Result<Self, EnvoyError> {
        Self::spawn(config, listen, None, log_level, tls.args())
    }

    fn spawn(
        config: &Path,
        listen: SocketAddr,
        cpu: Option<u32>,
        log_level: &str,
        extra_args: Vec<OsString>,
    ) -> Result<Self, EnvoyError> {
        let log = new_log_path(config)?;
        let log_file = std::fs::File::create(&log)
            .map_err(|e| EnvoyError::Io("creating the shim log".into(), e))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(extproc_bin());
                c
            }
            None => Command::new(extproc_bin()),
        };
        let stdout = log.with_extension("stdout");
        let stdout_file = std::fs::File::create(&stdout)
            .map_err(|e| EnvoyError::Io("creating the shim's stdout file".into(), e))?;
        let mut child = command
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(listen.to_string())
            .args(["--reload-interval", "0.2", "--shutdown-grace", "5"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--log-level", log_level])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(stdout_file)
            .stderr(log_file)
            .spawn()
            .map_err(|e| EnvoyError::Io(format!("starting {}", extproc_bin().display()), e))?;
        let addr = announced_in(&stdout, &mut child, Duration::from_secs(30));
        match addr {
            Some(addr) => Ok(Self {
                child,
                addr,
                log,
                stdout,
            }),
            None => {
                let _ = child.kill();
                let status = child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                Err(EnvoyError::Exited {
                    process: "policy-extproc",
                    status,
                    log: std::fs::read_to_string(&log).unwrap_or_default(),
                })
            }
        }
    }

    /// The gRPC address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where it logs.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it has written to its standard output so far: the line
    /// announcing its address, then one decision log line per request when
    /// the configuration asks for them.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for a line containing `needle` in its log
    /// (what it logs after announcing its address may come a moment
    /// later); whether it came.
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Where it serves its metrics (`--metrics-listen 127.0.0.1:0`, as
    /// every shim started here has): the address it logged.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        const LOGGED: &str = "serving metrics on http://";
        if !self.wait_for_log(LOGGED, Duration::from_secs(10)) {
            return None;
        }
        let log = self.log();
        let (_, rest) = log.split_once(LOGGED)?;
        rest.split('/').next()?.parse().ok()
    }

    /// Sends SIGTERM: the shim stops taking streams and drains.
    pub fn signal_terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the shim to exit; returns whether it exited successfully.
    pub fn wait(&mut self) -> bool {
        self.child.wait().is_ok_and(|status| status.success())
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address announced on the first line of `stdout` (`... listening on
/// ADDR`), waited for up to `timeout` or until the process exits.
fn announced_in(stdout: &Path, child: &mut Child, timeout: Duration) -> Option<SocketAddr> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(stdout).unwrap_or_default();
        if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
            return line.rsplit(' ').next().and_then(|a| a.parse().ok());
        }
        if std::time::Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
