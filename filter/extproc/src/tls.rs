//! TLS for the shim's gRPC port (`--tls-cert`, `--tls-key`, `--client-ca`).
//!
//! The shim decides what reaches the upstream, so whoever can open an
//! ext_proc stream to it can ask it anything; inside one host a loopback
//! port is enough, across a network it is not. With a certificate and key
//! the shim serves gRPC over TLS; with a client CA as well, it requires every
//! client (Envoy) to present a certificate that CA signed, and refuses the
//! handshake otherwise (mutual TLS).
//!
//! The files are read and checked here, before the port is opened, so a
//! wrong path or a file of the wrong kind stops the shim with the flag and
//! the reason instead of a generic transport error, or a server that starts
//! and then refuses every connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// A client that has opened a connection has this long to finish the TLS
/// handshake; one that stalls is dropped rather than held forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS files named on the command line.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `--tls-cert`: the server's certificate chain (PEM), leaf first.
    pub certificate: PathBuf,
    /// `--tls-key`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// `--client-ca`: when set, clients must present a certificate signed by
    /// one of these CA certificates (PEM).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// What the flags ask for, or `None` for cleartext HTTP/2 (no flag).
    ///
    /// The three flags go together: a certificate without its key (or the
    /// reverse), or a client CA without a server certificate, is an error
    /// naming the missing flag.
    pub fn from_flags(
        certificate: Option<PathBuf>,
        private_key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, String> {
        match (certificate, private_key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(certificate), Some(private_key), client_ca) => Ok(Some(Self {
                certificate,
                private_key,
                client_ca,
            })),
            (Some(_), None, _) => Err("--tls-cert needs --tls-key (the certificate's private key)".into()),
            (None, Some(_), _) => Err("--tls-key needs --tls-cert (the certificate it belongs to)".into()),
            (None, None, Some(_)) => Err(
                "--client-ca needs --tls-cert and --tls-key: client certificates are only asked for over TLS"
                    .into(),
            ),
        }
    }

    /// Reads and checks the files and builds tonic's server configuration.
    pub fn server_config(&self) -> Result<ServerTlsConfig, String> {
        let certificate = read_pem(&self.certificate, "--tls-cert", &["CERTIFICATE"])?;
        let private_key = read_pem(
            &self.private_key,
            "--tls-key",
            &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"],
        )?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(certificate, private_key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            let ca = read_pem(ca, "--client-ca", &["CERTIFICATE"])?;
            // Required, not optional: a client without a certificate is
            // refused during the handshake.
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        Ok(config)
    }

    /// How it serves, for the log.
    pub fn describe(&self) -> String {
        match &self.client_ca {
            Some(ca) => format!(
                "TLS with {}, client certificates required (signed by {})",
                self.certificate.display(),
                ca.display()
            ),
            None => format!(
                "TLS with {}, no client certificates",
                self.certificate.display()
            ),
        }
    }
}

/// The file's contents, if it holds at least one PEM block of one of
/// `labels` (`-----BEGIN <label>-----`).
fn read_pem(path: &Path, flag: &str, labels: &[&str]) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = labels
        .iter()
        .any(|label| text.contains(&format!("-----BEGIN {label}-----")));
    if !found {
        let wanted: Vec<String> = labels
            .iter()
            .map(|label| format!("-----BEGIN {label}-----"))
            .collect();
        return Err(format!(
            "{flag} {}: not a PEM file with {}",
            path.display(),
            wanted.join(" or ")
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> Option<PathBuf> {
        Some(PathBuf::from(name))
    }

    #[test]
    fn no_flag_means_cleartext() {
        assert!(TlsFiles::from_flags(None, None, None).unwrap().is_none());
    }

    #[test]
    fn certificate_and_key_go_together() {
        let error = TlsFiles::from_flags(path("c.pem"), None, None).unwrap_err();
        assert!(error.contains("--tls-cert needs --tls-key"), "{error}");
        let error = TlsFiles::from_flags(None, path("k.pem"), path("ca.pem")).unwrap_err();
        assert!(error.contains("--tls-key needs --tls-cert"), "{error}");
        let error = TlsFiles::from_flags(None, None, path("ca.pem")).unwrap_err();
        assert!(
            error.contains("--client-ca needs --tls-cert and --tls-key"),
            "{error}"
        );
    }

    #[test]
    fn the_client_ca_is_optional() {
        let files = TlsFiles::from_flags(path("c.pem"), path("k.pem"), None)
            .unwrap()
            .unwrap();
        assert!(files.client_ca.is_none());
        assert!(files.describe().contains("no client certificates"));
        let files = TlsFiles::from_flags(path("c.pem"), path("k.pem"), path("ca.pem"))
            .unwrap()
            .unwrap();
        assert!(files.describe().contains("client certificates required"));
    }

    #[test]
    fn unreadable_or_wrong_files_name_the_flag() {
        let dir = std::env::temp_dir().join(format!("shim-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let files = TlsFiles {
            certificate: dir.join("missing.pem"),
            private_key: not_pem.clone(),
            client_ca: None,
        };
        let error = files.server_config().unwrap_err();
        assert!(error.starts_with("--tls-cert "), "{error}");
        assert!(error.contains("missing.pem"), "{error}");

        let cert = dir.join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let files = TlsFiles {
            certificate: cert.clone(),
            private_key: not_pem.clone(),
            client_ca: None,
        };
        let error = files.server_config().unwrap_err();
        assert!(error.starts_with("--tls-key "), "{error}");
        assert!(error.contains("PRIVATE KEY"), "{error}");

        let key = dir.join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let files = TlsFiles {
            certificate: cert,
            private_key: key,
            client_ca: Some(not_pem),
        };
        let error = files.server_config().unwrap_err();
        assert!(error.starts_with("--client-ca "), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
