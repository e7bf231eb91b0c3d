//! The build stage: a full build from an empty target directory, then
//! the rebuild after one policy's source changed.

// The bench's own types and imports: this is its code, kept apart.
use super::*;

/// Times the builder; returns the report's "Build" section.
pub(super) fn measure_builds() -> Result<String, String> {
    let repo = repo_root();
    let builder = repo.join("target/debug/policy-builder");
    let target = repo.join("target/bench/builder-target");
    let out = repo.join("target/bench/build");
    let _ = std::fs::remove_dir_all(&target);
    let build = || -> Result<f64, String> {
        let started = Instant::now();
        // The bench itself is pinned to one core; a build gets them all.
        let status = Command::new("taskset")
            .args(["-c", "0-1023"])
            .arg(&builder)
            .args(["build", "--manifest"])
            .arg(repo.join("build.yaml"))
            .arg("--out")
            .arg(&out)
            .arg("--target-dir")
            .arg(&target)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("running {}: {e}", builder.display()))?;
        if !status.success() {
            return Err(format!("the builder failed ({status})"));
        }
        Ok(started.elapsed().as_secs_f64())
    };
    eprintln!("bench: timing a full build (every dependency, both targets)");
    let full = build()?;
    // Changing one policy: its crate, the registry and both artifacts rebuild.
    let changed = repo.join("policies/set-headers/src/lib.rs");
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&changed)
        .map_err(|e| format!("{}: {e}", changed.display()))?;
    file.set_modified(std::time::SystemTime::now())
        .map_err(|e| format!("touching {}: {e}", changed.display()))?;
    eprintln!("bench: timing the rebuild after one policy changed");
    let incremental = build()?;
    let size = |name: &str| std::fs::metadata(out.join(name)).map_or(0, |m| m.len());
    // The builder's `wasm-release` profile (`policy_builder::generate`).
    let raw_path = target.join("wasm32-wasip1/wasm-release/plugin.wasm");
    let raw_module = std::fs::metadata(&raw_path)
        .map_err(|e| format!("{}: {e}", raw_path.display()))?
        .len();
    let policies = std::fs::read_to_string(repo.join("build.yaml"))
        .unwrap_or_default()
        .matches("- path:")
        .count();
    let mut section = String::new();
    let _ = writeln!(section, "\n## Build (build.yaml, {policies} policies)\n");
    let _ = writeln!(section, "| what | value |\n|---|---|");
    let _ = writeln!(
        section,
        "| full build, empty target dir (module + shim, LTO) | {full:.0} s |"
    );
    let _ = writeln!(
        section,
        "| rebuild after one policy changed | {incremental:.0} s ({:.2} of full) |",
        incremental / full
    );
    let _ = writeln!(
        section,
        "| plugin.wasm after wasm-opt | {} bytes (before: {raw_module}) |",
        size("plugin.wasm")
    );
    let _ = writeln!(
        section,
        "| policy-extproc | {} bytes |",
        size("policy-extproc")
    );
    Ok(section)
}
