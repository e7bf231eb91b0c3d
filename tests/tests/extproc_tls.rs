//! The ext_proc shim over TLS, in the real Envoy: Envoy reaches the shim
//! over mutual TLS (`policy-extproc --tls-cert --tls-key --client-ca`, the
//! cluster from `filters::ext_proc_cluster_tls`) and the shim decides the
//! request; a client without a certificate is refused by the shim itself.
//! Certificates are made at run time by `envoy/examples/make-certs.sh`: the
//! shim serves the server certificate (`localhost`), and Envoy presents
//! team-a's client certificate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use integration_tests::certs::Certificates;
use integration_tests::send;
use local_envoy::echo::EchoUpstream;
use local_envoy::filters::{self, UpstreamTls};
use local_envoy::shim::{Shim, ShimTls};
use local_envoy::{extproc_bin, Envoy, Options};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const CONFIG: &str = r#"
routes:
  - name: api
    match: { path: { prefix: /api/ } }
    policies:
      - name: set-headers
        config: { request: { set: { x-decided-by: policy-extproc } } }
unmatched:
  deny: { status: 404, body: "no route\n" }
"#;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Writes [`CONFIG`] beside the certificates.
fn config(certs: &Certificates) -> PathBuf {
    let path = certs.file("policies.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    path
}

/// The shim serving the server certificate, requiring client certificates
/// signed by the test CA when `mutual`.
fn shim(certs: &Certificates, mutual: bool) -> Shim {
    let tls = ShimTls {
        certificate: certs.file("server.pem"),
        private_key: certs.file("server.key"),
        client_ca: mutual.then(|| certs.file("ca.pem")),
    };
    Shim::start_tls(&config(certs), loopback(), "debug", &tls).unwrap()
}

#[test]
fn envoy_reaches_the_shim_over_mutual_tls_and_the_shim_decides() {
    let certs = Certificates::make();
    let shim = shim(&certs, true);
    assert!(
        shim.wait_for_log("client certificates required", Duration::from_secs(10)),
        "{}",
        shim.log()
    );
    let upstream = EchoUpstream::start(loopback()).unwrap();
    let mut options = Options::new(vec![filters::ext_proc()], upstream.addr());
    options.clusters = vec![filters::ext_proc_cluster_tls(
        shim.addr(),
        &UpstreamTls {
            certificate: certs.file("team-a.pem"),
            private_key: certs.file("team-a.key"),
            trusted_ca: certs.file("ca.pem"),
            server_name: "localhost".into(),
        },
    )];
    let envoy = Envoy::start(&options).unwrap();

    // A chain ran in the shim: the header it sets reached the upstream.
    let reply = send(&envoy.url("/api/hello"), "GET", &[], None);
    assert_eq!(
        reply.status,
        200,
        "{}\nshim log:\n{}",
        reply.body,
        shim.log()
    );
    let echoed = reply.upstream().expect("the upstream answered");
    assert_eq!(echoed.header("x-decided-by"), Some("policy-extproc"));

    // And the shim's refusal is the answer.
    let refused = send(&envoy.url("/elsewhere"), "GET", &[], None);
    assert_eq!(refused.status, 404, "{}", refused.body);
    assert_eq!(refused.body, "no route\n");
    assert_eq!(upstream.requests_seen(), 1);

    // Over TLS: the cluster's TLS handshakes, none failed.
    let handshakes = envoy.stat("cluster.policy_extproc.ssl.handshake");
    assert!(handshakes >= Some(1), "TLS handshakes: {handshakes:?}");
    assert_eq!(
        envoy
            .stat("cluster.policy_extproc.ssl.connection_error")
            .unwrap_or(0),
        0
    );
}

/// The health status the shim reports for `""`, or why the call failed.
async fn health(shim: &Shim, scheme: &str, tls: Option<ClientTlsConfig>) -> Result<i32, String> {
    let mut endpoint = Channel::from_shared(format!("{scheme}://{}", shim.addr())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|response| response.into_inner().status)
        .map_err(|status| format!("{status:?}"))
}

/// A client that trusts the test CA and asks for `localhost`, presenting
/// team-a's certificate when `with_certificate`.
fn client_tls(certs: &Certificates, with_certificate: bool) -> ClientTlsConfig {
    let read = |name: &str| std::fs::read(certs.file(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    if with_certificate {
        tls.identity(Identity::from_pem(read("team-a.pem"), read("team-a.key")))
    } else {
        tls
    }
}

#[tokio::test]
async fn the_shim_refuses_clients_without_a_certificate() {
    let certs = Certificates::make();
    let shim = shim(&certs, true);
    let serving = Ok(ServingStatus::Serving as i32);

    let with_certificate = health(&shim, "https", Some(client_tls(&certs, true))).await;
    assert_eq!(with_certificate, serving);

    let without = health(&shim, "https", Some(client_tls(&certs, false))).await;
    assert!(
        without.is_err(),
        "a client without a certificate was served: {without:?}"
    );
    let cleartext = health(&shim, "http", None).await;
    assert!(
        cleartext.is_err(),
        "a cleartext client was served: {cleartext:?}"
    );
}

#[tokio::test]
async fn without_a_client_ca_the_shim_serves_tls_to_any_client() {
    let certs = Certificates::make();
    let shim = shim(&certs, false);
    assert!(
        shim.wait_for_log("no client certificates", Duration::from_secs(10)),
        "{}",
        shim.log()
    );
    let anonymous = health(&shim, "https", Some(client_tls(&certs, false))).await;
    assert_eq!(anonymous, Ok(ServingStatus::Serving as i32));
}

/// The three flags are checked together, and a bad file is named, before
/// the shim announces an address.
#[test]
fn tls_flags_are_validated_together() {
    let certs = Certificates::make();
    let config = config(&certs);
    let run = |args: &[&str]| {
        let output = Command::new(extproc_bin())
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(certs.dir())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(
            output.stdout.is_empty(),
            "{args:?}: announced {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let said = run(&["--client-ca", "ca.pem"]);
    assert!(
        said.contains("--client-ca needs --tls-cert and --tls-key"),
        "{said}"
    );
    let said = run(&["--tls-cert", "server.pem"]);
    assert!(said.contains("--tls-cert needs --tls-key"), "{said}");
    let said = run(&["--tls-cert", "server.pem", "--tls-key", "missing.key"]);
    assert!(said.contains("--tls-key missing.key"), "{said}");
    let said = run(&["--tls-cert", "server.key", "--tls-key", "server.key"]);
    assert!(
        said.contains("--tls-cert server.key: not a PEM file with"),
        "{said}"
    );
    let said = run(&[
        "--tls-cert",
        "server.pem",
        "--tls-key",
        "team-a.key",
        "--client-ca",
        "ca.pem",
    ]);
    assert!(said.contains("--tls-cert/--tls-key/--client-ca"), "{said}");
}
