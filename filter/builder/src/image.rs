//! Packages a build's module as OCI images, the way Envoy Gateway and Istio
//! pull Wasm: an OCI image layout (`<build>/oci`) holding two tags.
//!
//! * `compat`: a single-layer image whose layer is a tar with `plugin.wasm`
//!   at its root (what `FROM scratch` + `COPY plugin.wasm` builds).
//! * `wasm`: the OCI Wasm artifact (config
//!   `application/vnd.module.wasm.config.v1+json`, one layer
//!   `application/vnd.module.wasm.content.layer.v1+wasm` holding the module
//!   itself).
//!
//! * `schema`: an OCI artifact (`artifactType: application/schema+json`)
//!   whose one layer is the build's `config.schema.json`, so the schema of
//!   the configuration travels with the image it configures.
//!
//! All are reproducible (fixed timestamps and modes), so the same module
//! always gives the same image digests. `skopeo copy oci:<layout>:compat
//! docker://<registry>/<repo>:<tag>` pushes them.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The media types, by the OCI image spec and the Wasm artifact spec.
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const TAR_GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const SCHEMA_LAYER: &str = "application/schema+json";

fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A tar archive with one regular file, deterministic (mtime 0, root-owned,
/// mode 0644).
fn tar_with(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut put = |offset: usize, bytes: &[u8]| {
        header[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", content.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        "); // the checksum counts as spaces while computed
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());

    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    let padding = (512 - content.len() % 512) % 512;
    tar.extend(std::iter::repeat_n(0u8, padding + 1024)); // and two end blocks
    tar
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name: the same input gives the
    // same bytes.
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    encoder.finish()
}

struct Layout<'a> {
    dir: &'a Path,
}

impl Layout<'_> {
    fn blob(&self, bytes: &[u8]) -> Result<String, String> {
        let digest = digest(bytes);
        let path = self
            .dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(digest)
    }

    fn descriptor(&self, media_type: &str, bytes: &[u8]) -> Result<Value, String> {
        Ok(json!({ "mediaType": media_type, "digest": self.blob(bytes)?, "size": bytes.len() }))
    }

    /// Writes a manifest; returns its descriptor, tagged `tag`.
    fn manifest(
        &self,
        tag: &str,
        config: Value,
        layers: Vec<Value>,
        annotations: &Value,
    ) -> Result<Value, String> {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config,
            "layers": layers,
            "annotations": annotations,
        });
        self.write_manifest(tag, &manifest)
    }

    fn write_manifest(&self, tag: &str, manifest: &Value) -> Result<Value, String> {
        let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let mut descriptor = self.descriptor(MANIFEST, &bytes)?;
        descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        Ok(descriptor)
    }
}

/// The image digests of a packaged build.
pub struct Images {
    /// The `compat` image's manifest digest.
    pub compat: String,
    /// The `wasm` artifact's manifest digest.
    pub wasm: String,
}

/// Writes `<build>/oci` from `<build>/plugin.wasm` and
/// `<build>/config.schema.json`.
pub fn package(build: &Path, revision: &str, description: &str) -> Result<Images, String> {
    let module = std::fs::read(build.join("plugin.wasm"))
        .map_err(|e| format!("{}: {e}", build.join("plugin.wasm").display()))?;
    let schema_path = build.join("config.schema.json");
    let schema_bytes =
        std::fs::read(&schema_path).map_err(|e| format!("{}: {e}", schema_path.display()))?;
    let dir = build.join("oci");
    // The layout of the same module, schema, revision and description is
    // the same, byte for byte: compressing the layer again (a second) is
    // what a build that changed nothing would spend here.
    let inputs = digest(
        &[
            digest(&module).as_bytes(),
            digest(&schema_bytes).as_bytes(),
            revision.as_bytes(),
            description.as_bytes(),
        ]
        .join(&0u8),
    );
    let stamp = dir.join("inputs.sha256");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == inputs) {
        if let Some(images) = read_images(&dir) {
            return Ok(images);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("blobs/sha256"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let layout = Layout { dir: &dir };
    let annotations = json!({
        "org.opencontainers.image.title": "policy-engine filter",
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.revision": revision,
    });

    let tar = tar_with("plugin.wasm", &module);
    let layer = gzip(&tar).map_err(|e| format!("compressing the layer: {e}"))?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [digest(&tar)] },
    });
    let config = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let compat = layout.manifest(
        "compat",
        layout.descriptor(IMAGE_CONFIG, &config)?,
        vec![layout.descriptor(TAR_GZIP_LAYER, &layer)?],
        &annotations,
    )?;

    let wasm = layout.manifest(
        "wasm",
        layout.descriptor(WASM_CONFIG, b"{}")?,
        vec![layout.descriptor(WASM_LAYER, &module)?],
        &annotations,
    )?;

    let schema = layout.write_manifest(
        "schema",
        &json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": SCHEMA_LAYER,
            "config": layout.descriptor(EMPTY_CONFIG, b"{}")?,
            "layers": [layout.descriptor(SCHEMA_LAYER, &schema_bytes)?],
            "annotations": annotations,
        }),
    )?;

    let images = Images {
        compat: compat["digest"].as_str().unwrap_or_default().to_owned(),
        wasm: wasm["digest"].as_str().unwrap_or_default().to_owned(),
    };
    let index = json!({ "schemaVersion": 2, "manifests": [compat, wasm, schema] });
    let write = |name: &str, value: &Value| {
        std::fs::write(dir.join(name), value.to_string()).map_err(|e| format!("{name}: {e}"))
    };
    write("oci-layout", &json!({ "imageLayoutVersion": "1.0.0" }))?;
    write("index.json", &index)?;
    std::fs::write(&stamp, inputs).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(images)
}

/// The image digests an existing layout's index records.
fn read_images(dir: &Path) -> Option<Images> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).ok()?).ok()?;
    let digest_of = |tag: &str| {
        index["manifests"]
            .as_array()?
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)?["digest"]
            .as_str()
            .map(str::to_owned)
    };
    Some(Images {
        compat: digest_of("compat")?,
        wasm: digest_of("wasm")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_header_has_a_valid_checksum_and_size() {
        let tar = tar_with("plugin.wasm", b"\0asm");
        assert_eq!(tar.len(), 512 * 4);
        let header = &tar[..512];
        let stored = std::str::from_utf8(&header[148..154]).unwrap();
        let mut blanked = header.to_vec();
        blanked[148..156].copy_from_slice(b"        ");
        let sum: u32 = blanked.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&header[124..135], b"00000000004");
        assert_eq!(&tar[512..516], b"\0asm");
    }

    #[test]
    fn packaging_is_reproducible() {
        assert_eq!(gzip(b"abc").unwrap(), gzip(b"abc").unwrap());
    }
}
