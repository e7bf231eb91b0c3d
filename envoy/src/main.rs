//! `local-envoy`: starts the echo upstream and the real Envoy with the policy
//! engine on a plugin configuration, prints what to try, and serves until
//! interrupted. This is what `make run` runs.
//!
//! ```text
//! local-envoy [--host wasm|extproc] [--config envoy/demo-policies.yaml]
//!             [--port 10000] [--admin-port 9901] [--upstream-port 8081]
//!             [--mtls DIR]
//! ```
//!
//! `--mtls DIR` serves HTTPS and requires client certificates: DIR holds
//! `server.pem`, `server.key` and the clients' `ca.pem`, as
//! `envoy/examples/make-certs.sh DIR` makes them (`make run-egress` does).
//!
//! `--host wasm` (the default) runs the policies inside Envoy as the Wasm
//! filter; `--host extproc` runs them in the ext_proc shim behind Envoy's
//! `ext_proc` filter, on the same configuration.
//!
//! SIGINT or SIGTERM, to the whole process group (a terminal's Ctrl-C) or to
//! this process alone (`kill`), stops Envoy, the shim and the upstream, then
//! exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use local_envoy::echo::EchoUpstream;
use local_envoy::shim::Shim;
use local_envoy::{filter_wasm, filters, repo_root, Envoy, ListenerTls, Options};

struct Args {
    host: String,
    config: PathBuf,
    port: u16,
    admin_port: u16,
    upstream_port: u16,
    mtls: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "wasm".into(),
        config: repo_root().join("envoy/demo-policies.yaml"),
        port: 10000,
        admin_port: 9901,
        upstream_port: 8081,
        mtls: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let port = |v: String| v.parse::<u16>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--host" => args.host = value()?,
            "--config" => args.config = PathBuf::from(value()?),
            "--port" => args.port = port(value()?)?,
            "--admin-port" => args.admin_port = port(value()?)?,
            "--upstream-port" => args.upstream_port = port(value()?)?,
            "--mtls" => args.mtls = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("usage: local-envoy [--host wasm|extproc] [--config FILE] [--port N] [--admin-port N] [--upstream-port N] [--mtls DIR]");
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
    // Watched from the start, so a signal while Envoy starts is not lost.
    let stop = termination();
    let config = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("reading {}: {e}", args.config.display()))?;
    let upstream = EchoUpstream::start(SocketAddr::from(([127, 0, 0, 1], args.upstream_port)))
        .map_err(|e| format!("starting the echo upstream: {e}"))?;
    let (mut options, shim, engine) = match args.host.as_str() {
        "wasm" => {
            let wasm = filter_wasm();
            if !wasm.exists() {
                return Err(format!("{} is missing: run `make build`", wasm.display()));
            }
            let filter = filters::policy_engine(&wasm, &config);
            let engine = format!("the Wasm filter ({})", wasm.display());
            (Options::new(vec![filter], upstream.addr()), None, engine)
        }
        "extproc" => {
            let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
            let shim =
                Shim::start(&args.config, any_port, None, "info").map_err(|e| e.to_string())?;
            let mut options = Options::new(vec![filters::ext_proc()], upstream.addr());
            options.clusters = vec![filters::ext_proc_cluster(shim.addr())];
            let engine = format!(
                "the ext_proc shim on {} (pid {}; edit the configuration file and it reloads)\nshim log: {}",
                shim.addr(),
                shim.pid(),
                shim.log_path().display()
            );
            (options, Some(shim), engine)
        }
        other => return Err(format!("--host {other:?}: expected wasm or extproc")),
    };
    options.listen_port = args.port;
    options.admin_port = args.admin_port;
    options.wasm_log_level = "info";
    options.tls = args.mtls.as_ref().map(|dir| ListenerTls {
        certificate: dir.join("server.pem"),
        private_key: dir.join("server.key"),
        client_ca: Some(dir.join("ca.pem")),
    });
    let mut envoy = Envoy::start(&options).map_err(|e| e.to_string())?;
    let base = envoy.url("");
    let try_these: Vec<(String, &str)> = match &args.mtls {
        Some(dir) => {
            let port = envoy.addr().port();
            let curl = |team: &str, path: &str| {
                format!(
                    "curl -i --cacert {dir}/ca.pem --cert {dir}/{team}.pem --key {dir}/{team}.key --resolve api.github.com:{port}:127.0.0.1 https://api.github.com:{port}{path}",
                    dir = dir.display()
                )
            };
            vec![
                (
                    format!("{} -H 'x-internal-debug: 1'", curl("team-a", "/zen")),
                    "team-a: 200, headers injected and stripped",
                ),
                (curl("team-b", "/zen"), "team-b: 403"),
                (
                    curl("team-a", "/users/torvalds"),
                    "team-a, outside the allowlist: 403",
                ),
            ]
        }
        None => vec![
            (
                format!("curl -i {base}/api/hello -H 'x-internal-debug: 1'"),
                "request header set and removed, response header added",
            ),
            (
                format!("for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' {base}/api/limited -H 'x-client: me'; done"),
                "rate-limit: 200 200 200 429",
            ),
            (
                format!("curl -i {base}/public/page"),
                "a route with an empty chain",
            ),
            (
                format!("curl -i {base}/healthz"),
                "answered by the filter; the upstream sees nothing",
            ),
            (
                format!("curl -i {base}/anything-else"),
                "no chain matches: denied (fail closed)",
            ),
        ],
    };
    println!(
        "\nEnvoy {} is serving on {base} with the policy engine in {}\n\
         plugin configuration: {}\n\
         generated Envoy configuration and log: {}\n\
         echo upstream: http://{}   admin: http://{}\n\n\
         Try:\n{}\n\
         Ctrl-C stops everything.",
        envoy.pid(),
        engine,
        args.config.display(),
        envoy.dir().display(),
        upstream.addr(),
        envoy.admin_addr(),
        aligned(&try_these),
    );
    loop {
        if let Ok(signal) = stop.try_recv() {
            eprintln!("local-envoy: {signal}: stopping Envoy, the shim and the upstream");
            // Dropping them stops them: Envoy first, then the shim (whose
            // client Envoy is), then the upstream.
            drop(envoy);
            drop(shim);
            drop(upstream);
            return Ok(());
        }
        if envoy.has_exited() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = envoy.wait().map_err(|e| e.to_string())?;
    eprintln!("{log}");
    drop(shim);
    Err("Envoy exited".into())
}

/// Each command, then its comment in one column, one per line with a blank
/// line after a command too long to share its line with the comment.
fn aligned(commands: &[(String, &str)]) -> String {
    const WIDEST: usize = 64;
    let column = commands
        .iter()
        .map(|(command, _)| command.len())
        .filter(|len| *len <= WIDEST)
        .max()
        .unwrap_or(0);
    let mut lines = String::new();
    for (command, comment) in commands {
        if command.len() <= WIDEST {
            lines.push_str(&format!("  {command:column$}   # {comment}\n"));
        } else {
            lines.push_str(&format!("  # {comment}\n  {command}\n\n"));
        }
    }
    lines
}

/// Receives the name of the first SIGINT or SIGTERM this process gets.
fn termination() -> mpsc::Receiver<&'static str> {
    let (sender, received) = mpsc::channel();
    let watch = move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                eprintln!("local-envoy: cannot watch for signals");
                return;
            };
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            let _ = sender.send(name);
        });
    };
    if let Err(e) = std::thread::Builder::new()
        .name("signals".into())
        .spawn(watch)
    {
        eprintln!("local-envoy: cannot watch for signals: {e}");
    }
    received
}
