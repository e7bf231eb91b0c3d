//! The `policy-extproc` command: serves the policy engine over Envoy's
//! ext_proc API. The builder generates the binary's `main`, which calls
//! [`main`] with the build's policies.
//!
//! Prints `policy-extproc listening on ADDR` once it accepts streams (with
//! `--listen 127.0.0.1:0`, ADDR is the port it picked). SIGTERM or Ctrl-C
//! stops accepting streams, reports NOT_SERVING on the gRPC health service,
//! and waits up to `--shutdown-grace` seconds for streams in flight.
//! `--check` only validates the configuration and exits.
//!
//! gRPC is cleartext HTTP/2 by default, for a shim Envoy reaches over
//! loopback or a network it trusts. `--tls-cert` and `--tls-key` serve it
//! over TLS instead, and `--client-ca` also requires a client certificate
//! signed by that CA ([`crate::tls`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use policy_executor::{Build, Engine};
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use policy_process::{listen, termination};

use crate::service::PolicyProcessor;
use crate::store::{ConfigStore, Reload};
use crate::tls::TlsFiles;

/// The policy engine's ext_proc server: the same policies as the Wasm
/// filter, out of Envoy's process.
#[derive(Parser, Debug)]
#[command(name = "policy-extproc", version, about)]
struct Args {
    /// The plugin configuration (YAML or JSON), as given to the Wasm filter.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Address to serve gRPC on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,

    /// error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,

    /// How often to check the configuration file for changes, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    reload_interval: f64,

    /// How long to wait for streams in flight on shutdown, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    shutdown_grace: f64,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs
    /// --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// Require clients to present a certificate signed by this CA (PEM);
    /// needs --tls-cert and --tls-key.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,

    /// Serve the metrics for Prometheus on this address (`GET /metrics`);
    /// none by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// Only check the configuration against this build's policies, print
    /// the verdict, and exit (0 when valid).
    #[arg(long)]
    check: bool,
}

/// Runs the command with `build`'s policies.
pub fn main(build: Build) -> ExitCode {
    let args = Args::parse();
    policy_process::init_logging(args.log_level);
    if args.check {
        return match ConfigStore::load(&args.config, (build.registry)()) {
            Ok(store) => {
                println!(
                    "{}: valid, {}",
                    args.config.display(),
                    summary(&store.current())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, build)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// The route count, and the request attributes Envoy must send for the
/// configuration's expressions.
fn summary(engine: &Engine) -> String {
    let attributes: Vec<&str> = engine.attributes().iter().map(|a| a.envoy_name()).collect();
    let count = engine.route_count();
    if attributes.is_empty() {
        return format!("{count} route entries");
    }
    format!(
        "{count} route entries; the ext_proc filter must send the request attributes {}",
        attributes.join(", ")
    )
}

fn seconds(value: f64, flag: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|e| format!("--{flag}: {e}"))
}

async fn serve(args: Args, build: Build) -> Result<(), String> {
    let reload_every = seconds(args.reload_interval, "reload-interval")?;
    let grace = seconds(args.shutdown_grace, "shutdown-grace")?;
    // TLS is checked before anything starts: a bad flag or file stops the
    // shim here, with the flag at fault, never after it has announced its
    // address.
    let tls = TlsFiles::from_flags(args.tls_cert, args.tls_key, args.client_ca)?;
    let mut builder = Server::builder();
    if let Some(files) = &tls {
        builder = builder
            .tls_config(files.server_config()?)
            .map_err(|e| format!("--tls-cert/--tls-key/--client-ca: {}", error_chain(&e)))?;
    }
    log::info!("policy engine {}", build.description);
    let store =
        Arc::new(ConfigStore::load(&args.config, (build.registry)()).map_err(|e| e.to_string())?);
    log::info!(
        "configuration {} loaded: {}",
        args.config.display(),
        summary(&store.current())
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExternalProcessorServer<PolicyProcessor>>()
        .await;

    let watcher = Arc::clone(&store);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(reload_every);
        loop {
            ticks.tick().await;
            match watcher.reload_if_changed() {
                Reload::Unchanged => {}
                Reload::Applied => {
                    log::info!("configuration reloaded: {}", summary(&watcher.current()))
                }
                Reload::Rejected(e) => {
                    log::error!("{e}; the previous configuration keeps serving")
                }
            }
        }
    });

    let caller = Arc::new(crate::callout::Caller::default());
    tokio::spawn(crate::fetch::keep_fresh(
        Arc::clone(&store),
        Arc::clone(&caller),
    ));

    let (listener, address) = listen(args.listen).await?;
    if let Some(metrics_address) = args.metrics_listen {
        let (metrics_listener, metrics_address) = listen(metrics_address).await?;
        log::info!(
            "serving metrics on {}",
            crate::prometheus::describe(metrics_address)
        );
        tokio::spawn(crate::prometheus::serve(metrics_listener));
    }

    let (stopping, mut stop_requested) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        log::info!("shutting down: no new streams; finishing those in flight");
        health
            .set_not_serving::<ExternalProcessorServer<PolicyProcessor>>()
            .await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let _ = stopping.send(true);
    });
    let mut grace_over = stop_requested.clone();

    let transport = tls
        .as_ref()
        .map_or_else(|| "cleartext HTTP/2".to_owned(), TlsFiles::describe);

    println!("policy-extproc listening on {address}");
    log::info!("serving ext_proc on {address} ({transport})");
    let server = builder
        .add_service(health_service)
        .add_service(ExternalProcessorServer::new(PolicyProcessor::new(
            store, caller,
        )))
        // Every ext_proc message is a small frame waiting on a reply: Nagle's
        // algorithm would hold it for the peer's delayed ACK (tens of ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop_requested.wait_for(|stop| *stop).await;
            },
        );
    tokio::select! {
        served = server => served.map_err(|e| format!("server failed: {e}")),
        () = async {
            let _ = grace_over.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => {
            log::warn!("shutdown grace period over; closing the streams still open");
            Ok(())
        }
    }
}

/// An error and its sources, `: `-separated (tonic's own message is only
/// "transport error"; the reason is in its source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
