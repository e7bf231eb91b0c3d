//! `make stress`: what a user runs before trusting the filter in production.
//!
//! `make test` proves the filter right, one request at a time; `make bench`
//! prices it. Neither says what happens with ten thousand clients, after
//! minutes of traffic, when the shim or the JWKS server dies, or when
//! configurations keep arriving. This run does, with every figure measured
//! on this machine and held to a threshold:
//!
//! - **Concurrency**: 10,000 concurrent connections (wrk) through Envoy with
//!   the Wasm filter and with the shim, both running `make bench`'s auth
//!   chain, beside a plain Envoy with the same settings: no failed request
//!   beyond the plain Envoy's.
//! - **Soak**: minutes at a steady rate through the Wasm auth chain (an
//!   open-loop generator, [`integration_tests::load`]): Envoy's memory stays
//!   flat and the last minute's p99 matches the first's.
//! - **Faults**, each under load: the shim killed and restarted (fail
//!   closed, then recover), the JWKS server down and back (cached keys serve,
//!   rotation resumes), a bad configuration pushed (refused, the old one
//!   serves).
//! - **Churn**: a hundred valid configurations pushed under load: no failed
//!   request, no memory growth.
//!
//! It writes `target/stress/report.md` (`STRESS_OUT`) and exits non-zero
//! when any figure fails. Every wait is on a condition (Envoy's readiness
//! and counters, the shim's log, the load's answers) with a deadline.
//!
//! Environment (defaults in brackets): `STRESS_STAGES`
//! [concurrency,soak,faults,churn], `STRESS_CONNECTIONS` [10000],
//! `STRESS_CONCURRENCY_SECS` [30], `STRESS_WRK_THREADS` [cores],
//! `STRESS_ENVOY_WORKERS` [cores], `STRESS_RATE` [500 req/s],
//! `STRESS_LOAD_CONNECTIONS` [50], `STRESS_WARMUP_SECS` [30],
//! `STRESS_SOAK_SECS` [300], `STRESS_OUTAGE_SECS` [3], `STRESS_PUSHES`
//! [100], `STRESS_DRAIN_SECS` [2], `STRESS_OUT` [target/stress/report.md].

mod churn;
mod concurrency;
mod faults;
mod report;
mod rig;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use integration_tests::load::Load;
use integration_tests::measure::env_or;
use local_envoy::{envoy_bin, extproc_bin, filter_wasm, filters, repo_root};

use crate::report::{Report, Section};
use crate::rig::RigOptions;

/// The stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Concurrency,
    Soak,
    Faults,
    Churn,
}

impl Stage {
    const ALL: [Stage; 4] = [Self::Concurrency, Self::Soak, Self::Faults, Self::Churn];

    fn name(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::Soak => "soak",
            Self::Faults => "faults",
            Self::Churn => "churn",
        }
    }
}

/// The run's settings, from the environment.
pub struct Settings {
    stages: Vec<Stage>,
    /// wrk's concurrent connections in the concurrency stage.
    pub connections: u32,
    /// How long wrk runs against each Envoy.
    pub concurrency_secs: u32,
    /// wrk's threads.
    pub wrk_threads: u32,
    /// The fixed rate of the open-loop load, req/s.
    pub rate: f64,
    /// The open-loop load's connections.
    pub load_connections: usize,
    /// The soak's warm-up, before anything is measured.
    pub warmup_secs: u64,
    /// The soak's measured part.
    pub soak_secs: u64,
    /// How long the shim and the JWKS server stay down.
    pub outage: Duration,
    /// Configurations pushed in the churn stage.
    pub pushes: u32,
    /// Envoy's settings.
    pub rig: RigOptions,
    out: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let stages = match std::env::var("STRESS_STAGES") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|name| {
                    Stage::ALL
                        .into_iter()
                        .find(|s| s.name() == name.trim())
                        .ok_or_else(|| {
                            format!(
                                "STRESS_STAGES: unknown stage {name:?} (known: concurrency, soak, faults, churn)"
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            _ => Stage::ALL.to_vec(),
        };
        let settings = Self {
            stages,
            connections: env_or("STRESS_CONNECTIONS", 10_000),
            concurrency_secs: env_or("STRESS_CONCURRENCY_SECS", 30),
            wrk_threads: env_or("STRESS_WRK_THREADS", cores),
            rate: env_or("STRESS_RATE", 500.0),
            load_connections: env_or("STRESS_LOAD_CONNECTIONS", 50),
            warmup_secs: env_or("STRESS_WARMUP_SECS", 30),
            soak_secs: env_or("STRESS_SOAK_SECS", 300),
            outage: Duration::from_secs_f64(env_or("STRESS_OUTAGE_SECS", 3.0_f64).max(0.5)),
            pushes: env_or("STRESS_PUSHES", 100),
            rig: RigOptions {
                workers: env_or("STRESS_ENVOY_WORKERS", cores),
                drain_time_s: Some(env_or("STRESS_DRAIN_SECS", 2)),
            },
            out: std::env::var_os("STRESS_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target/stress/report.md")),
        };
        if !settings.rate.is_finite() || settings.rate <= 0.0 || settings.load_connections == 0 {
            return Err("STRESS_RATE and STRESS_LOAD_CONNECTIONS must be positive".to_owned());
        }
        if settings.connections < settings.wrk_threads || settings.wrk_threads == 0 {
            return Err("STRESS_CONNECTIONS must be at least STRESS_WRK_THREADS (>= 1)".to_owned());
        }
        if settings.soak_secs < 20 {
            return Err("STRESS_SOAK_SECS must be at least 20".to_owned());
        }
        Ok(settings)
    }

    /// Requests the open-loop load sends in `seconds`.
    pub fn requests_in(&self, seconds: f64) -> usize {
        (self.rate * seconds).ceil() as usize
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("stress: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the stages; returns the number of failed figures.
fn run() -> Result<usize, String> {
    let settings = Settings::from_env()?;
    for (what, path) in [
        ("the filter module", filter_wasm()),
        ("the shim", extproc_bin()),
    ] {
        if !path.exists() {
            return Err(format!(
                "{what} ({}) is missing: build it with `make build`",
                path.display()
            ));
        }
    }
    let scratch = std::env::temp_dir().join(format!("policy-stress-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let mut report = Report::new(environment(&settings));
    for stage in &settings.stages {
        eprintln!("stress: stage {}", stage.name());
        let dir = scratch.join(stage.name());
        match stage {
            Stage::Concurrency => report.add(concurrency::run(&settings, &dir)),
            Stage::Soak => report.add(soak::run(&settings, &dir)),
            Stage::Faults => {
                for section in faults::run(&settings, &dir) {
                    report.add(section);
                }
            }
            Stage::Churn => {
                for section in churn::run(&settings, &dir) {
                    report.add(section);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if let Some(dir) = settings.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let text = report.render();
    std::fs::write(&settings.out, &text)
        .map_err(|e| format!("writing {}: {e}", settings.out.display()))?;
    println!("{text}");
    let failures = report.failures();
    println!(
        "stress: {} — report written to {}",
        if failures == 0 {
            "PASS".to_owned()
        } else {
            format!("FAIL ({failures} figures)")
        },
        settings.out.display()
    );
    Ok(failures)
}

/// Runs `body` as one report section; an error it returns ends the section
/// as a FAIL, with the checks recorded so far kept.
pub fn section(
    title: &str,
    about: String,
    body: impl FnOnce(&mut Section) -> Result<(), String>,
) -> Section {
    let mut section = Section::new(title, about);
    eprintln!("stress: {title}");
    if let Err(e) = body(&mut section) {
        eprintln!("stress: {title}: {e}");
        section.failed(e);
    }
    section
}

/// Sleeps until the load's clock reads `at`. Used to hold a state (an
/// outage, a sampling interval) for a set time, never to wait for Envoy.
pub fn sleep_until(load: &Load, at: Duration) {
    while let Some(left) = at.checked_sub(load.now()) {
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
}

/// `value` as a percentage with a sign, e.g. `+1.3 %`.
pub fn percent(value: f64) -> String {
    format!("{:+.1} %", value * 100.0)
}

/// Milliseconds with three decimals.
pub fn ms(value: f64) -> String {
    format!("{value:.3} ms")
}

/// A KiB figure in MiB.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The soft limit on open files this process (and so wrk and Envoy, which
/// inherit it) has.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn first_line(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_else(|e| format!("cannot run {}: {e}", program.display()))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned())
}

/// What the report says about where it ran.
fn environment(settings: &Settings) -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let module = filter_wasm();
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let stages: Vec<&str> = settings.stages.iter().map(|s| s.name()).collect();
    vec![
        ("stages".into(), stages.join(", ")),
        ("cores".into(), cores.to_string()),
        ("kernel".into(), read_trimmed("/proc/sys/kernel/osrelease")),
        ("Envoy".into(), first_line(&envoy_bin(), "--version")),
        ("Envoy workers".into(), settings.rig.workers.to_string()),
        (
            "Envoy drain time".into(),
            format!("{} s", settings.rig.drain_time_s.unwrap_or(600)),
        ),
        (
            "cluster circuit breakers".into(),
            filters::circuit_breakers().to_string(),
        ),
        ("wrk".into(), first_line(Path::new("wrk"), "-v")),
        (
            "open files (soft limit)".into(),
            open_files_limit().map_or_else(|| "?".to_owned(), |n| n.to_string()),
        ),
        (
            "net.core.somaxconn".into(),
            read_trimmed("/proc/sys/net/core/somaxconn"),
        ),
        (
            "filter module".into(),
            format!("{} ({} bytes)", module.display(), size(&module)),
        ),
        (
            "shim".into(),
            format!("{} ({} bytes)", extproc_bin().display(), size(&extproc_bin())),
        ),
        (
            "concurrency".into(),
            format!(
                "{} connections, wrk -t{} for {} s per Envoy",
                settings.connections, settings.wrk_threads, settings.concurrency_secs
            ),
        ),
        (
            "open-loop load".into(),
            format!(
                "{} req/s over {} keep-alive connections, latency from each request's scheduled send time",
                settings.rate, settings.load_connections
            ),
        ),
        (
            "soak".into(),
            format!(
                "{} s warm-up, then {} s measured",
                settings.warmup_secs, settings.soak_secs
            ),
        ),
        (
            "outages".into(),
            format!("{:.1} s", settings.outage.as_secs_f64()),
        ),
        ("configuration pushes".into(), settings.pushes.to_string()),
    ]
}
