//! `local-envoy`: starts the echo upstream and the real Envoy with the policy
//! filter on a plugin configuration, prints what to try, and serves until
//! interrupted. This is what `make run` runs.
//!
//! ```text
//! local-envoy [--config envoy/demo-policies.yaml] [--port 10000]
//!             [--admin-port 9901] [--upstream-port 8081]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use local_envoy::echo::EchoUpstream;
use local_envoy::{filter_wasm, filters, repo_root, Envoy, Options};

struct Args {
    config: PathBuf,
    port: u16,
    admin_port: u16,
    upstream_port: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: repo_root().join("envoy/demo-policies.yaml"),
        port: 10000,
        admin_port: 9901,
        upstream_port: 8081,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let port = |v: String| v.parse::<u16>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--config" => args.config = PathBuf::from(value()?),
            "--port" => args.port = port(value()?)?,
            "--admin-port" => args.admin_port = port(value()?)?,
            "--upstream-port" => args.upstream_port = port(value()?)?,
            "-h" | "--help" => {
                println!("usage: local-envoy [--config FILE] [--port N] [--admin-port N] [--upstream-port N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("local-envoy: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let config = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("reading {}: {e}", args.config.display()))?;
    let wasm = filter_wasm();
    if !wasm.exists() {
        return Err(format!("{} is missing: run `make wasm`", wasm.display()));
    }
    let upstream = EchoUpstream::start(SocketAddr::from(([127, 0, 0, 1], args.upstream_port)))
        .map_err(|e| format!("starting the echo upstream: {e}"))?;
    let mut options = Options::new(
        vec![filters::policy_engine(&wasm, &config)],
        upstream.addr(),
    );
    options.listen_port = args.port;
    options.admin_port = args.admin_port;
    options.wasm_log_level = "info";
    let envoy = Envoy::start(&options).map_err(|e| e.to_string())?;
    let base = envoy.url("");
    println!(
        "\nEnvoy {} is serving on {base} with the policy filter ({})\n\
         plugin configuration: {}\n\
         generated Envoy configuration and log: {}\n\
         echo upstream: http://{}   admin: http://{}\n\n\
         Try:\n\
         \x20 curl -i {base}/api/hello -H 'x-internal-debug: 1'   # request header set and removed, response header added\n\
         \x20 curl -i {base}/public/page                          # a route with an empty chain\n\
         \x20 curl -i {base}/healthz                              # answered by the filter; the upstream sees nothing\n\
         \x20 curl -i {base}/anything-else                        # no chain matches: denied (fail closed)\n\n\
         Ctrl-C stops everything.",
        envoy.pid(),
        wasm.display(),
        args.config.display(),
        envoy.dir().display(),
        upstream.addr(),
        envoy.admin_addr(),
    );
    let log = envoy.wait().map_err(|e| e.to_string())?;
    eprintln!("{log}");
    Ok(())
}
