//! The images a build writes go through a real OCI registry (Debian's
//! `docker-registry`, on loopback) and come back with the module intact.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::eventually;
use local_envoy::default_build;
use serde_json::Value;

struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Registry {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("oci-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; make setup installs it)");
        let registry = Self { child, addr, dir };
        eventually("the registry", Duration::from_secs(20), || {
            ureq::get(format!("http://{addr}/v2/"))
                .call()
                .ok()
                .map(drop)
        });
        registry
    }
}

impl Registry {
    /// The manifest digest the registry reports for `repository:tag`.
    fn digest(&self, repository: &str, tag: &str) -> String {
        let response = ureq::head(format!(
            "http://{}/v2/{repository}/manifests/{tag}",
            self.addr
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .call()
        .unwrap();
        response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The blob a pulled layout's `tag` has as its only layer.
fn only_layer(layout: &Path, tag: &str) -> (String, PathBuf) {
    let index = json_file(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"));
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest = json_file(&blob(manifest["digest"].as_str().unwrap()));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let media_type = layers[0]["mediaType"].as_str().unwrap().to_owned();
    (media_type, blob(layers[0]["digest"].as_str().unwrap()))
}

#[test]
fn both_images_round_trip_through_a_registry_with_the_module_intact() {
    let build = default_build();
    let info = json_file(&build.join("build-info.json"));
    let module_sha = info["module"]["sha256"].as_str().unwrap().to_owned();
    let registry = Registry::start();
    let scratch = registry.dir.join("pulled");

    for tag in ["compat", "wasm"] {
        let layout = format!("oci:{}:{tag}", build.join("oci").display());
        let remote = format!("docker://{}/policy-engine/filter:{tag}", registry.addr);
        skopeo(&["copy", "--dest-tls-verify=false", &layout, &remote]);

        // The registry serves the digest the build recorded (and rendered
        // into the deployment manifests).
        assert_eq!(
            registry.digest("policy-engine/filter", tag),
            info["images"][tag]["digest"].as_str().unwrap(),
            "{tag}"
        );

        let pulled = format!("oci:{}:{tag}", scratch.display());
        skopeo(&["copy", "--src-tls-verify=false", &remote, &pulled]);
        let (media_type, layer) = only_layer(&scratch, tag);
        let wasm_path = match tag {
            "compat" => {
                assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
                let unpacked = registry.dir.join("unpacked");
                std::fs::create_dir_all(&unpacked).unwrap();
                let status = Command::new("tar")
                    .arg("-xzf")
                    .arg(&layer)
                    .arg("-C")
                    .arg(&unpacked)
                    .status()
                    .unwrap();
                assert!(status.success());
                unpacked.join("plugin.wasm")
            }
            _ => {
                assert_eq!(
                    media_type,
                    "application/vnd.module.wasm.content.layer.v1+wasm"
                );
                layer
            }
        };
        assert_eq!(
            sha256_file(&wasm_path),
            module_sha,
            "{tag}: the module changed"
        );
    }

    // The configuration's schema travels as an artifact beside them.
    let layout = format!("oci:{}:schema", build.join("oci").display());
    let remote = format!("docker://{}/policy-engine/filter:schema", registry.addr);
    skopeo(&["copy", "--dest-tls-verify=false", &layout, &remote]);
    let pulled = format!("oci:{}:schema", scratch.display());
    skopeo(&["copy", "--src-tls-verify=false", &remote, &pulled]);
    let (media_type, layer) = only_layer(&scratch, "schema");
    assert_eq!(media_type, "application/schema+json");
    assert_eq!(
        sha256_file(&layer),
        sha256_file(&build.join("config.schema.json")),
        "the schema changed"
    );

    // The rendered deployment manifests point at those digests.
    let gateway = std::fs::read_to_string(build.join("deploy/wasm-policy.yaml")).unwrap();
    let compat = info["images"]["compat"]["digest"].as_str().unwrap();
    assert!(
        gateway.contains(compat.trim_start_matches("sha256:")),
        "{gateway}"
    );
    let istio = std::fs::read_to_string(build.join("deploy/wasmplugin.yaml")).unwrap();
    let wasm = info["images"]["wasm"]["digest"].as_str().unwrap();
    assert!(
        istio.contains(wasm.trim_start_matches("sha256:")),
        "{istio}"
    );
}
