//! `policy-builder`: builds the Wasm filter and the ext_proc shim with the
//! policies a manifest chooses, and nothing else.
//!
//! ```text
//! policy-builder build --manifest build.yaml [--out target/builds/<name>]
//! policy-builder new-policy NAME [--dir policies]
//! ```
//!
//! `build` validates every policy directory (policy.yaml well-formed,
//! name@version unique, crate present), generates the build's crates
//! ([`generate`]), compiles the module for wasm32-wasip1 and the shim
//! natively, builds the offline tool, optimizes the module with wasm-opt,
//! and writes into the output directory: `plugin.wasm`, `policy-extproc`,
//! `policy-tool` (`filter/tool`), `build-info.json` (policies, versions,
//! source commit, sha256 of each artifact, image digests),
//! `config.schema.json` (the JSON Schema of the plugin configuration), the
//! OCI image layout `oci/` ([`image`]: the images and the schema), and
//! `deploy/`: the Envoy Gateway and Istio examples pointing at the build's
//! image digests.

mod definition;
mod generate;
mod image;
mod manifest;
mod scaffold;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(name = "policy-builder", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Build the filter and the shim with a manifest's policies.
    Build {
        /// The build manifest.
        #[arg(long, default_value = "build.yaml")]
        manifest: PathBuf,
        /// Where to put the artifacts (default: target/builds/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only validate the manifest and its policies.
        #[arg(long)]
        check: bool,
        /// Build only the Wasm module, not the ext_proc shim.
        #[arg(long)]
        wasm_only: bool,
        /// The image reference the rendered deployment manifests point at.
        #[arg(long, default_value = "registry.example.com/policy-engine/filter")]
        image: String,
        /// Cargo's target directory (default: target/builder, shared by
        /// builds so only what differs recompiles); the shim and the tool
        /// build in the same path with `-native` appended.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Scaffold a new policy that builds and passes its test as generated.
    NewPolicy {
        /// The policy's name (lower-case letters, digits, '-').
        name: String,
        /// The directory to create it in.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Commands::Build {
            manifest,
            out,
            check,
            wasm_only,
            image,
            target_dir,
        } => build(&manifest, out, check, wasm_only, &image, target_dir),
        Commands::NewPolicy { name, dir } => scaffold::new_policy(&name, &dir, &repo_root()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("policy-builder: {message}");
            ExitCode::FAILURE
        }
    }
}

fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.join("../..")
        .canonicalize()
        .unwrap_or_else(|_| here.join("../.."))
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn source_commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        None => "unknown".into(),
    }
}

/// Copies a built binary into the build directory, unless it is there
/// already.
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
    generate::write_if_changed(to, &bytes).map_err(|e| format!("{}: {e}", to.display()))?;
    // Executable, as cargo left it.
    let permissions = std::fs::metadata(from)
        .map_err(|e| e.to_string())?
        .permissions();
    std::fs::set_permissions(to, permissions).map_err(|e| format!("{}: {e}", to.display()))
}

/// Whether `output` was written after `input` last changed.
fn is_newer(output: &Path, input: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    matches!((modified(output), modified(input)), (Some(out), Some(inp)) if out > inp)
}

fn sha256_hex(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn build(
    manifest_path: &Path,
    out: Option<PathBuf>,
    check: bool,
    wasm_only: bool,
    image_ref: &str,
    target_dir: Option<PathBuf>,
) -> Result<(), String> {
    let repo = repo_root();
    // Where Cargo is asked to fetch the manifest's external crates.
    let fetch_scratch = repo.join("target/builder-fetch").join(
        manifest_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let manifest = manifest::load(manifest_path, &fetch_scratch)?;
    let ids: Vec<String> = manifest.policies.iter().map(|p| p.id()).collect();
    if check {
        println!(
            "{}: build {:?} with {} policies: {}",
            manifest_path.display(),
            manifest.name,
            ids.len(),
            ids.join(", ")
        );
        return Ok(());
    }
    let commit = source_commit(&repo);
    let description = format!(
        "build {} (source {commit}): {}",
        manifest.name,
        if ids.is_empty() {
            "no policies".to_owned()
        } else {
            ids.join(", ")
        }
    );
    let out = out.unwrap_or_else(|| repo.join("target/builds").join(&manifest.name));
    let workspace = out.join("workspace");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    generate::workspace(&workspace, &repo, &manifest, &description)
        .map_err(|e| format!("generating {}: {e}", workspace.display()))?;

    // Builds share one target directory, so only what differs recompiles.
    // The native binaries (the shim, the tool) have one of their own, so
    // that they build while the module does: Cargo locks a target
    // directory for the whole of a build, and the shim's LTO link alone
    // takes about as long as the module's build and wasm-opt together.
    let target = target_dir.unwrap_or_else(|| repo.join("target/builder"));
    let native_target = {
        let mut name = target.file_name().unwrap_or_default().to_owned();
        name.push("-native");
        target.with_file_name(name)
    };
    let cargo_in = |target: &Path, args: &[&str]| {
        let mut command = Command::new(env!("CARGO"));
        command
            .current_dir(&workspace)
            .env("CARGO_TARGET_DIR", target)
            .args(args);
        // The generated workspace is outside this repository, so rustup's
        // proxy would otherwise pick the toolchain from each dependency's
        // own directory, and some crates (ff) pin an ancient one there.
        let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
        if rustc.is_file() {
            command.env("RUSTC", rustc);
        }
        command
    };
    let cargo = |args: &[&str]| cargo_in(&target, args);
    // Checking the registry first turns "this crate is not a policy" into
    // an error that names the policy.
    if let Err(e) = run(
        &mut cargo(&["check", "-q", "-p", generate::REGISTRY_PACKAGE]),
        "cargo check",
    ) {
        let names: Vec<String> = manifest
            .policies
            .iter()
            .map(|p| format!("{} ({})", p.id(), p.package))
            .collect();
        return Err(format!(
            "{e}: every policy crate must export `pub const FACTORY: policy_executor::PolicyFactory`; see cargo's message above (policies: {})",
            names.join(", ")
        ));
    }
    // The shim in `release` (all at opt-level 3, LTO); the tool in debug:
    // it runs suites, not traffic, and a policy change then costs it
    // seconds, not another LTO link.
    let build_native = || -> Result<(), String> {
        run(
            &mut cargo_in(
                &native_target,
                &["build", "-q", "--release", "-p", "build-extproc"],
            ),
            "building the ext_proc shim",
        )?;
        run(
            &mut cargo_in(
                &native_target,
                &["build", "-q", "-p", generate::TOOL_PACKAGE],
            ),
            "building policy-tool",
        )
    };
    let build_module = || -> Result<(), String> {
        run(
            &mut cargo(&[
                "build",
                "-q",
                "--profile",
                generate::WASM_PROFILE,
                "--target",
                "wasm32-wasip1",
                "-p",
                generate::WASM_PACKAGE,
            ]),
            "building the Wasm module",
        )
    };
    let module = out.join("plugin.wasm");
    let linked = target
        .join("wasm32-wasip1")
        .join(generate::WASM_PROFILE)
        .join("plugin.wasm");
    let optimize_module = || -> Result<(), String> {
        // wasm-opt takes most of a build whose sources did not change.
        if is_newer(&module, &linked) {
            return Ok(());
        }
        run(
            Command::new("wasm-opt")
                .args(["-O3", "--strip-debug"])
                .arg(&linked)
                .arg("-o")
                .arg(&module),
            "wasm-opt",
        )
    };
    std::thread::scope(|scope| {
        let native = (!wasm_only).then(|| scope.spawn(build_native));
        let module = build_module().and_then(|()| optimize_module());
        let native = match native {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err("the native build's thread failed".into())),
            None => Ok(()),
        };
        module.and(native)
    })?;
    let module_bytes = std::fs::metadata(&module).map(|m| m.len()).unwrap_or(0);
    let (extproc, tool) = if wasm_only {
        (serde_json::Value::Null, serde_json::Value::Null)
    } else {
        let shim = out.join("policy-extproc");
        copy_if_changed(&native_target.join("release/policy-extproc"), &shim)?;
        let file = out.join("policy-tool");
        copy_if_changed(&native_target.join("debug/policy-tool"), &file)?;
        (
            json!({ "file": "policy-extproc", "sha256": sha256_hex(&shim)? }),
            json!({ "file": "policy-tool", "sha256": sha256_hex(&file)? }),
        )
    };
    let write_json = |name: &str, value: &serde_json::Value| {
        let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
        generate::write_if_changed(&out.join(name), text.as_bytes())
            .map_err(|e| format!("writing {name}: {e}"))
    };
    let versions: Vec<String> = manifest
        .policies
        .iter()
        .map(|p| p.version.to_string())
        .collect();
    let policies: Vec<_> = manifest
        .policies
        .iter()
        .zip(&versions)
        .map(|(p, version)| policy_executor::schema::PolicySchema {
            name: &p.name,
            version,
            description: &p.description,
            parameters: &p.parameters,
        })
        .collect();
    write_json(
        "config.schema.json",
        &policy_executor::schema::plugin_configuration(&manifest.name, &policies),
    )?;
    let images = image::package(&out, &commit, &description)?;
    render_deployments(&repo, &out, image_ref, &images)?;
    let info = json!({
        "name": manifest.name,
        "source_commit": commit,
        "description": description,
        "policies": manifest.policies.iter().map(|p| json!({
            "name": p.name,
            "version": p.version.to_string(),
            "crate": p.package,
            "path": p.dir.strip_prefix(&repo).unwrap_or(&p.dir).display().to_string(),
        })).collect::<Vec<_>>(),
        "module": { "file": "plugin.wasm", "sha256": sha256_hex(&module)?, "bytes": module_bytes },
        "extproc": extproc,
        "tool": tool,
        "images": {
            "layout": "oci",
            "compat": { "tag": "compat", "digest": images.compat },
            "wasm": { "tag": "wasm", "digest": images.wasm },
        },
    });
    write_json("build-info.json", &info)?;
    println!(
        "{description}\n  -> {} ({module_bytes} bytes)",
        out.display()
    );
    Ok(())
}

/// Writes the Envoy Gateway and Istio examples into `<out>/deploy`, pointing
/// at `image_ref` with the build's real image digests.
fn render_deployments(
    repo: &Path,
    out: &Path,
    image_ref: &str,
    images: &image::Images,
) -> Result<(), String> {
    const PLACEHOLDER_REF: &str = "registry.example.com/policy-engine/filter";
    const PLACEHOLDER_DIGEST: &str =
        "0000000000000000000000000000000000000000000000000000000000000000";
    let deploy = out.join("deploy");
    std::fs::create_dir_all(&deploy).map_err(|e| format!("{}: {e}", deploy.display()))?;
    for (template, tag, digest) in [
        ("envoy/gateway/wasm-policy.yaml", "compat", &images.compat),
        ("envoy/istio/wasmplugin.yaml", "wasm", &images.wasm),
    ] {
        let path = repo.join(template);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rendered = text
            .replace(
                &format!("{PLACEHOLDER_REF}:{tag}"),
                &format!("{image_ref}:{tag}"),
            )
            .replace(PLACEHOLDER_DIGEST, digest.trim_start_matches("sha256:"));
        let file = deploy.join(Path::new(template).file_name().unwrap_or_default());
        std::fs::write(&file, rendered).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}
