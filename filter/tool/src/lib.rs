//! `policy-tool`: what a configuration will do, answered before deploying
//! it, with the same policies and the same executor code as the filter and
//! the shim. The builder generates the binary per build (like
//! `policy-extproc`), so the tool knows exactly the build's policies.
//!
//! ```text
//! policy-tool validate CONFIG... [--format json]
//! policy-tool test SUITE... [--case NAME] [--coverage]
//! policy-tool explain CONFIG REQUEST [--route-name NAME]
//! policy-tool schema
//! ```
//!
//! * `validate`: the errors Envoy's load would give (route entry, policy,
//!   field path), exit status 1 on any. A file may be a plugin
//!   configuration, or Kubernetes manifests whose `EnvoyExtensionPolicy`
//!   (`spec.wasm[].config`) or `WasmPlugin` (`spec.pluginConfig`) carry one.
//! * `test`: runs suites ([`suite`]) and reports each case, with what
//!   differed; `--coverage` names the route entries and policies no case
//!   reached.
//! * `explain`: which route entry a request gets and why the earlier ones
//!   did not match, what each policy decided, the calls made, and what the
//!   upstream and the client get.
//! * `schema`: the JSON Schema of the build's plugin configuration.

mod check;
pub mod proto;
pub mod run;
pub mod suite;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use policy_executor::expr::trace::Traced;
use policy_executor::{Build, Engine, HeaderMap, Registry};
use serde::Deserialize;
use serde_json::{json, Value};

pub use check::{offline_engine, run_suite, CaseReport, SuiteReport};

#[derive(Parser)]
#[command(name = "policy-tool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check plugin configurations as Envoy's load would.
    Validate {
        /// Configuration files (YAML or JSON), or Kubernetes manifests
        /// carrying one.
        #[arg(required = true)]
        configs: Vec<PathBuf>,
        /// How to report.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run test suites.
    Test {
        /// Suite files.
        #[arg(required = true)]
        suites: Vec<PathBuf>,
        /// Run only the case of this name.
        #[arg(long)]
        case: Option<String>,
        /// Name the route entries and policies no case reached.
        #[arg(long)]
        coverage: bool,
    },
    /// Show what a configuration does to one request.
    Explain {
        /// The configuration.
        config: PathBuf,
        /// The request, as a suite case writes it: a file, or inline YAML
        /// such as `{ method: POST, path: /api/x, headers: { x-api-key: k } }`.
        request: String,
        /// Envoy's route name for the request.
        #[arg(long)]
        route_name: Option<String>,
    },
    /// Print the JSON Schema of this build's plugin configuration.
    Schema,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// The entry point of the generated `policy-tool` binary.
pub fn main(build: Build) -> ExitCode {
    let registry = (build.registry)();
    let result = match Cli::parse().command {
        Command::Validate { configs, format } => validate(&registry, &configs, format),
        Command::Test {
            suites,
            case,
            coverage,
        } => test(&registry, &suites, case.as_deref(), coverage),
        Command::Explain {
            config,
            request,
            route_name,
        } => explain(&registry, &config, &request, route_name),
        Command::Schema => {
            println!("{}", schema_text(&registry, build.description));
            Ok(true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("policy-tool: {message}");
            ExitCode::from(2)
        }
    }
}

/// The plugin configuration's JSON Schema for `registry`'s policies.
pub fn schema_text(registry: &Registry, build: &str) -> String {
    let parameters: Vec<Value> = registry
        .entries()
        .iter()
        .map(|e| e.parameters_schema().unwrap_or(json!({ "type": "object" })))
        .collect();
    let policies: Vec<_> = registry
        .entries()
        .iter()
        .zip(&parameters)
        .map(
            |(entry, parameters)| policy_executor::schema::PolicySchema {
                name: entry.factory.name,
                version: entry.factory.version,
                description: entry.description,
                parameters,
            },
        )
        .collect();
    let schema = policy_executor::schema::plugin_configuration(build, &policies);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The plugin configurations a file holds, each with where it sits: the
/// file itself, or the configurations of the Kubernetes resources in it.
pub fn configurations(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    let mut documents = 0;
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| format!("not valid YAML: {e}"))?;
        documents += 1;
        let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or("?");
        let spec = value.get("spec");
        match kind {
            Some("EnvoyExtensionPolicy") => {
                let wasm = spec
                    .and_then(|s| s.get("wasm"))
                    .and_then(|w| w.as_sequence());
                for (i, module) in wasm.into_iter().flatten().enumerate() {
                    if let Some(config) = module.get("config") {
                        found.push((
                            format!("EnvoyExtensionPolicy {name} spec.wasm[{i}].config"),
                            to_text(config)?,
                        ));
                    }
                }
            }
            Some("WasmPlugin") => {
                if let Some(config) = spec.and_then(|s| s.get("pluginConfig")) {
                    found.push((
                        format!("WasmPlugin {name} spec.pluginConfig"),
                        to_text(config)?,
                    ));
                }
            }
            Some(_) => {}
            None if !value.is_null() => found.push((format!("document {index}"), to_text(&value)?)),
            None => {}
        }
    }
    if documents <= 1 && found.len() == 1 {
        // A single plain configuration: its own text, so errors point into it.
        if found[0].0 == "document 0" {
            return Ok(vec![(String::new(), text.to_owned())]);
        }
    }
    Ok(found)
}

fn to_text(value: &serde_yaml::Value) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

fn validate(registry: &Registry, paths: &[PathBuf], format: Format) -> Result<bool, String> {
    let mut reports = Vec::new();
    for path in paths {
        let text = read(path)?;
        let configs = match configurations(&text) {
            Ok(configs) if configs.is_empty() => Err("holds no plugin configuration".to_owned()),
            other => other,
        };
        let file = path.display().to_string();
        match configs {
            Err(reason) => reports.push(json!({ "file": file, "valid": false, "reason": reason })),
            Ok(configs) => {
                for (at, config) in configs {
                    let mut report = json!({ "file": file, "valid": true });
                    if !at.is_empty() {
                        report["in"] = json!(at);
                    }
                    if let Err(e) = Engine::from_config(config.as_bytes(), registry) {
                        report["valid"] = json!(false);
                        report["route"] = json!(e.route);
                        report["policy"] = json!(e.policy);
                        report["field"] = json!(e.field);
                        report["reason"] = json!(e.reason);
                        report["error"] = json!(e.to_string());
                    }
                    reports.push(report);
                }
            }
        }
    }
    let valid = reports.iter().all(|r| r["valid"] == json!(true));
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        ),
        Format::Text => {
            for report in &reports {
                let place = match report["in"].as_str() {
                    Some(at) => format!("{} ({at})", report["file"].as_str().unwrap_or_default()),
                    None => report["file"].as_str().unwrap_or_default().to_owned(),
                };
                match report["valid"].as_bool() {
                    Some(true) => println!("{place}: valid"),
                    _ => {
                        let error = report["error"].as_str().or(report["reason"].as_str());
                        println!("{place}: {}", error.unwrap_or_default());
                    }
                }
            }
        }
    }
    Ok(valid)
}

fn test(
    registry: &Registry,
    paths: &[PathBuf],
    only: Option<&str>,
    coverage: bool,
) -> Result<bool, String> {
    let mut passed = 0;
    let mut failed = 0;
    let mut skipped = 0;
    for path in paths {
        let suite = suite::Suite::load(path)?;
        let report =
            run_suite(registry, &suite, only).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{}", path.display());
        for case in &report.cases {
            match (&case.skipped, case.faults.is_empty()) {
                (Some(why), _) => {
                    skipped += 1;
                    println!("  skip {} (live only: {why})", case.name);
                }
                (None, true) => {
                    passed += 1;
                    println!("  ok   {}", case.name);
                }
                (None, false) => {
                    failed += 1;
                    println!("  FAIL {}", case.name);
                    for fault in &case.faults {
                        println!("         {fault}");
                    }
                }
            }
        }
        if coverage {
            for uncovered in &report.uncovered {
                println!("  not covered: {uncovered}");
            }
        }
    }
    if let Some(name) = only {
        if passed + failed + skipped == 0 {
            return Err(format!("no case is named {name:?}"));
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped (live only)");
    Ok(failed == 0)
}

/// A header change in words.
fn describe_change(change: &policy_executor::HeaderChange) -> String {
    match change {
        policy_executor::HeaderChange::Remove => "removed".into(),
        policy_executor::HeaderChange::Replace(values) => format!("set to {values:?}"),
        policy_executor::HeaderChange::Append(values) => format!("appended {values:?}"),
    }
}

fn explain(
    registry: &Registry,
    config: &Path,
    request: &str,
    route_name: Option<String>,
) -> Result<bool, String> {
    let request_text = match std::fs::read_to_string(request) {
        Ok(text) => text,
        Err(_) => request.to_owned(),
    };
    let request: suite::Request =
        serde_yaml::from_str(&request_text).map_err(|e| format!("the request: {e}"))?;
    let config = read(config)?;
    let (engine, host) = offline_engine(registry, &config).map_err(|e| e.to_string())?;
    let headers = HeaderMap::from_pairs(
        [
            (":path", request.path.as_str()),
            (":method", request.method.as_str()),
        ]
        .into_iter()
        .chain(request.headers.pairs())
        .map(|(n, v)| {
            if n.eq_ignore_ascii_case("host") {
                (":authority", v)
            } else {
                (n, v)
            }
        }),
    );
    println!("{} {}", request.method, request.path);
    match engine.explain_route(headers, route_name.as_deref()) {
        Err(e) => println!("  refused before any route entry: {e}"),
        Ok(verdicts) => {
            let matched = verdicts
                .last()
                .filter(|(_, why)| why.is_none())
                .map(|(n, _)| n.clone());
            for (name, why) in &verdicts {
                match why {
                    Some(why) => println!("  route entry {name:?}: no match: {why}"),
                    None => println!("  route entry {name:?}: matches"),
                }
            }
            if matched.is_none() {
                println!("  no route entry matches: the configuration's `unmatched` applies");
            }
        }
    }
    let routes = route_name
        .map(|name| std::collections::BTreeMap::from([(name, "/".to_owned())]))
        .unwrap_or_default();
    let result = run::run(&engine, &host, &routes, &[], &request, 1, true)?;
    for call in &result.calls {
        println!("  call: {call}");
    }
    let decisions = result
        .decision
        .as_ref()
        .and_then(|d| d["policies"].as_array().cloned())
        .unwrap_or_default();
    let chain = engine
        .chain_summary()
        .into_iter()
        .find(|(name, _)| {
            result
                .decision
                .as_ref()
                .is_some_and(|d| d["route_entry"] == json!(name))
        })
        .map(|(_, policies)| policies)
        .unwrap_or_default();
    for (policy, decision) in chain.iter().zip(&decisions) {
        let label = &policy.label;
        println!(
            "  policy {label}: {}",
            decision["decision"].as_str().unwrap_or_default()
        );
        for traced in result.trace.iter().filter(|t| t.by() == label) {
            match traced {
                Traced::Evaluation {
                    source,
                    value,
                    parts,
                    ..
                } => {
                    println!("    {} = {value}", source.trim());
                    for (part, value) in parts {
                        println!("      {part} = {value}");
                    }
                }
                Traced::Rule { rule, outcome, .. } => println!("    rule {rule}: {outcome}"),
            }
        }
    }
    for (name, change) in result.request_changes.iter() {
        println!("  request header {name}: {}", describe_change(change));
    }
    match &result.upstream {
        Some(upstream) => {
            println!(
                "  upstream gets: {} {}",
                upstream.header(":method").unwrap_or_default(),
                upstream.header(":path").unwrap_or_default()
            );
            for (name, value) in upstream.headers.iter().filter(|(n, _)| !n.starts_with(':')) {
                println!("    {name}: {value}");
            }
        }
        None => println!("  the upstream is not called"),
    }
    for (name, change) in result.response_changes.iter() {
        println!("  response header {name}: {}", describe_change(change));
    }
    println!("  client gets: {}", result.status);
    for (name, value) in &result.headers {
        println!("    {name}: {value}");
    }
    if result.upstream.is_none() && !result.body.is_empty() {
        println!("    body: {:?}", String::from_utf8_lossy(&result.body));
    }
    Ok(true)
}
