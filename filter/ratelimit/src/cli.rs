//! The `policy-ratelimit` command.
//!
//! Prints `policy-ratelimit listening on ADDR` once it accepts calls (with
//! `--listen 127.0.0.1:0`, ADDR is the port it picked). SIGTERM or Ctrl-C
//! reports NOT_SERVING on the gRPC health service and stops after the calls
//! in flight (each takes at most `--redis-timeout`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use policy_process::{listen, termination};

use crate::RateLimiter;

/// The rate limit service of the policy engine: Envoy's rate limit
/// protocol, counted in Redis.
#[derive(Parser, Debug)]
#[command(name = "policy-ratelimit", version, about)]
struct Args {
    /// Address to serve gRPC (cleartext HTTP/2) on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,

    /// The Redis to count in: redis://[user:password@]host:port[/db], or
    /// rediss:// for TLS. Also read from $REDIS_URL.
    #[arg(
        long,
        value_name = "URL",
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,

    /// How long a connection to Redis, or one answer, may take, in
    /// milliseconds; past it the call fails with UNAVAILABLE.
    #[arg(long, value_name = "MILLIS", default_value_t = 100)]
    redis_timeout: u64,

    /// error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
}

/// Runs the command.
pub fn main() -> ExitCode {
    let args = Args::parse();
    policy_process::init_logging(args.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let limiter = RateLimiter::new(&args.redis, Duration::from_millis(args.redis_timeout))
        .map_err(|e| format!("--redis: {e}"))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RateLimitServiceServer<RateLimiter>>()
        .await;
    let (listener, address) = listen(args.listen).await?;
    println!("policy-ratelimit listening on {address}");
    log::info!(
        "serving envoy.service.ratelimit.v3.RateLimitService on {address}, counting in {}",
        redacted(&args.redis)
    );
    Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(limiter))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                termination().await;
                log::info!("shutting down");
                health
                    .set_not_serving::<RateLimitServiceServer<RateLimiter>>()
                    .await;
            },
        )
        .await
        .map_err(|e| format!("server failed: {e}"))
}

/// The Redis URL without its password, for the log.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_the_log() {
        assert_eq!(
            super::redacted("redis://user:secret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(super::redacted("redis://redis:6379"), "redis://redis:6379");
    }
}
