//! Runs the ext_proc shim (`policy-extproc`) as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{extproc_bin, EnvoyError};

/// A running shim; killed when dropped.
pub struct Shim {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
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
        let log = config.with_extension("shim.log");
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
        let mut child = command
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(listen.to_string())
            .args(["--reload-interval", "0.2", "--shutdown-grace", "5"])
            .args(["--log-level", log_level])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| EnvoyError::Io(format!("starting {}", extproc_bin().display()), e))?;
        // The first line on stdout announces the address.
        let (sender, announced) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let _ = sender.send(lines.next());
                for _ in lines {} // keep the pipe drained
            });
        }
        let line = announced.recv_timeout(Duration::from_secs(30));
        let addr = line
            .ok()
            .flatten()
            .and_then(Result::ok)
            .and_then(|l| l.rsplit(' ').next().and_then(|a| a.parse().ok()));
        match addr {
            Some(addr) => Ok(Self { child, addr, log }),
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

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
