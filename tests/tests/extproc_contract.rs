//! The shim's ext_proc contract, spoken by a real gRPC client to the real
//! `policy-extproc` binary: message sequences in, responses asserted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request as In, processing_response::Response as Out, HeaderMutation,
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use local_envoy::shim::Shim;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const CONFIG: &str = r#"
routes:
  - name: api
    match: { route: echo-api }
    policies:
      - name: set-headers
        config:
          request: { set: { x-tenant: acme }, add: { x-via: [a, b] }, remove: [x-debug] }
          response: { set: { x-chain: api } }
  - name: orders
    match: { route: echo-public }
    policies:
      - name: set-headers
        config: { response: { set: { x-outer: "yes" } } }
      - name: json-body
        config: { request: true, response: true, max_bytes: 1024 }
  - name: health
    match: { path: { exact: /healthz } }
    policies:
      - name: respond
        version: 0.1.0
        config: { status: 204, headers: { x-served-by: policy-engine } }
"#;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("extproc-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policies.yaml"), config).unwrap();
        Self(dir)
    }
    fn config(&self) -> PathBuf {
        self.0.join("policies.yaml")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn client(shim: &Shim) -> ExternalProcessorClient<Channel> {
    ExternalProcessorClient::connect(format!("http://{}", shim.addr()))
        .await
        .unwrap()
}

fn header_map(pairs: &[(&str, &str)]) -> Option<HeaderMap> {
    Some(HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).into(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    })
}

fn request_headers(path: &str, route: Option<&str>, end_of_stream: bool) -> ProcessingRequest {
    let mut attributes = HashMap::new();
    if let Some(route) = route {
        let mut fields = HashMap::new();
        fields.insert(
            "xds.route_name".to_owned(),
            Value {
                kind: Some(Kind::StringValue(route.into())),
            },
        );
        attributes.insert("envoy.filters.http.ext_proc".to_owned(), Struct { fields });
    }
    ProcessingRequest {
        request: Some(In::RequestHeaders(HttpHeaders {
            headers: header_map(&[
                (":method", "POST"),
                (":path", path),
                (":authority", "example.com"),
                ("x-debug", "1"),
            ]),
            end_of_stream,
            ..Default::default()
        })),
        attributes,
        ..Default::default()
    }
}

fn response_headers(end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::ResponseHeaders(HttpHeaders {
            headers: header_map(&[(":status", "200"), ("content-type", "text/html")]),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn body(request: bool, bytes: &[u8]) -> ProcessingRequest {
    let body = HttpBody {
        body: bytes.to_vec(),
        end_of_stream: true,
        ..Default::default()
    };
    ProcessingRequest {
        request: Some(if request {
            In::RequestBody(body)
        } else {
            In::ResponseBody(body)
        }),
        ..Default::default()
    }
}

/// Sends the messages on one stream and collects every response.
async fn converse(shim: &Shim, messages: Vec<ProcessingRequest>) -> Vec<ProcessingResponse> {
    let mut client = client(shim).await;
    let mut responses = client
        .process(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(response) = responses.next().await {
        out.push(response.unwrap());
    }
    out
}

/// (name, value, append) of each header set, and the removed names.
fn mutation(m: Option<&HeaderMutation>) -> (Vec<(String, String, bool)>, Vec<String>) {
    let Some(m) = m else {
        return (vec![], vec![]);
    };
    #[allow(
        deprecated,
        reason = "the shim sets `append`; see its translate module"
    )]
    let set = m
        .set_headers
        .iter()
        .map(|o| {
            let h = o.header.as_ref().unwrap();
            let append = o.append.as_ref().is_some_and(|a| a.value);
            (
                h.key.clone(),
                String::from_utf8(h.raw_value.clone()).unwrap(),
                append,
            )
        })
        .collect();
    (set, m.remove_headers.clone())
}

fn headers_mutation(response: &ProcessingResponse) -> (Vec<(String, String, bool)>, Vec<String>) {
    match &response.response {
        Some(Out::RequestHeaders(h) | Out::ResponseHeaders(h)) => {
            mutation(h.response.as_ref().and_then(|c| c.header_mutation.as_ref()))
        }
        other => panic!("expected a headers response, got {other:?}"),
    }
}

fn immediate(response: &ProcessingResponse) -> (i32, Vec<(String, String, bool)>, String) {
    match &response.response {
        Some(Out::ImmediateResponse(r)) => (
            r.status.as_ref().unwrap().code,
            mutation(r.headers.as_ref()).0,
            String::from_utf8(r.body.clone()).unwrap(),
        ),
        other => panic!("expected an immediate response, got {other:?}"),
    }
}

fn owned(set: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
    set.iter()
        .map(|(n, v, a)| ((*n).into(), (*v).into(), *a))
        .collect()
}

#[tokio::test]
async fn a_headers_only_chain_asks_for_no_body() {
    let scratch = Scratch::new("headers", CONFIG);
    let shim = Shim::start(&scratch.config(), any_port(), None, "debug").unwrap();
    let replies = converse(
        &shim,
        vec![
            request_headers("/api/x", Some("echo-api"), true),
            response_headers(false),
        ],
    )
    .await;
    assert_eq!(replies.len(), 2);
    let (set, removed) = headers_mutation(&replies[0]);
    assert_eq!(
        set,
        owned(&[
            ("x-tenant", "acme", false),
            ("x-via", "a", true),
            ("x-via", "b", true)
        ])
    );
    assert_eq!(removed, ["x-debug"]);
    let mode = replies[0].mode_override.as_ref().unwrap();
    assert_eq!(mode.request_body_mode, BodySendMode::None as i32);
    assert_eq!(mode.response_header_mode, HeaderSendMode::Send as i32);
    assert_eq!(mode.response_body_mode, BodySendMode::None as i32);
    assert!(matches!(replies[1].response, Some(Out::ResponseHeaders(_))));
    assert_eq!(
        headers_mutation(&replies[1]).0,
        owned(&[("x-chain", "api", false)])
    );
}

#[tokio::test]
async fn a_body_chain_gets_bodies_and_can_refuse_them() {
    let scratch = Scratch::new("bodies", CONFIG);
    let shim = Shim::start(&scratch.config(), any_port(), None, "debug").unwrap();

    let replies = converse(
        &shim,
        vec![
            request_headers("/public/orders", Some("echo-public"), false),
            body(true, br#"{"order": 1}"#),
            response_headers(false),
            body(false, b"<html>not json</html>"),
        ],
    )
    .await;
    assert_eq!(replies.len(), 4);
    let mode = replies[0].mode_override.as_ref().unwrap();
    assert_eq!(mode.request_body_mode, BodySendMode::Buffered as i32);
    assert_eq!(mode.response_body_mode, BodySendMode::Buffered as i32);
    assert!(matches!(replies[1].response, Some(Out::RequestBody(_))));
    assert_eq!(
        headers_mutation(&replies[2]).0,
        owned(&[("x-outer", "yes", false)])
    );
    let (status, headers, text) = immediate(&replies[3]);
    assert_eq!(status, 502);
    assert!(
        headers.contains(&("x-outer".into(), "yes".into(), true)),
        "{headers:?}"
    );
    assert_eq!(text, "upstream response is not valid JSON\n");

    let refused = converse(
        &shim,
        vec![
            request_headers("/public/orders", Some("echo-public"), false),
            body(true, b"{\"order\": "),
        ],
    )
    .await;
    let (status, headers, text) = immediate(&refused[1]);
    assert_eq!(status, 400);
    assert!(text.starts_with("request body is not valid JSON"), "{text}");
    assert!(
        headers.contains(&("x-outer".into(), "yes".into(), true)),
        "{headers:?}"
    );

    // Headers that end the stream run the body phase at once, on no body.
    let no_body = converse(
        &shim,
        vec![request_headers("/public/orders", Some("echo-public"), true)],
    )
    .await;
    assert!(matches!(no_body[0].response, Some(Out::RequestHeaders(_))));
}

#[tokio::test]
async fn short_circuits_and_unmatched_requests_get_immediate_responses() {
    let scratch = Scratch::new("immediate", CONFIG);
    let shim = Shim::start(&scratch.config(), any_port(), None, "debug").unwrap();

    let health = converse(&shim, vec![request_headers("/healthz", None, true)]).await;
    let (status, headers, _) = immediate(&health[0]);
    assert_eq!(status, 204);
    assert_eq!(headers, owned(&[("x-served-by", "policy-engine", true)]));

    // Without the route-name attribute the `route:` entries cannot match:
    // the request is unmatched and denied.
    let unmatched = converse(&shim, vec![request_headers("/api/x", None, true)]).await;
    let (status, _, text) = immediate(&unmatched[0]);
    assert_eq!(status, 403);
    assert_eq!(text, "no policy chain matches this request\n");
}

#[tokio::test]
async fn a_malformed_message_ends_the_stream_with_invalid_argument() {
    let scratch = Scratch::new("malformed", CONFIG);
    let shim = Shim::start(&scratch.config(), any_port(), None, "debug").unwrap();
    let mut client = client(&shim).await;
    let mut responses = client
        .process(tokio_stream::iter(vec![ProcessingRequest::default()]))
        .await
        .unwrap()
        .into_inner();
    let error = responses.next().await.unwrap().unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    // The server is unharmed.
    let again = converse(&shim, vec![request_headers("/healthz", None, true)]).await;
    assert_eq!(immediate(&again[0]).0, 204);
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let scratch = Scratch::new("health", CONFIG);
    let shim = Shim::start(&scratch.config(), any_port(), None, "debug").unwrap();
    let channel = Channel::from_shared(format!("http://{}", shim.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.ext_proc.v3.ExternalProcessor"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

#[tokio::test]
async fn sigterm_finishes_streams_in_flight() {
    let scratch = Scratch::new("sigterm", CONFIG);
    let mut shim = Shim::start(&scratch.config(), any_port(), None, "debug").unwrap();
    let mut client = client(&shim).await;
    let (outbound, inbound) = tokio::sync::mpsc::channel(4);
    let mut responses = client
        .process(tokio_stream::wrappers::ReceiverStream::new(inbound))
        .await
        .unwrap()
        .into_inner();
    outbound
        .send(request_headers("/api/x", Some("echo-api"), true))
        .await
        .unwrap();
    assert!(responses.next().await.unwrap().is_ok());

    shim.signal_terminate();
    // Until it says so, the signal may not have reached it yet.
    assert!(
        shim.wait_for_log("shutting down", Duration::from_secs(10)),
        "{}",
        shim.log()
    );
    // The stream in flight is still answered...
    outbound.send(response_headers(true)).await.unwrap();
    let reply = responses.next().await.unwrap().unwrap();
    assert_eq!(
        headers_mutation(&reply).0,
        owned(&[("x-chain", "api", false)])
    );
    // ...and once it ends the shim exits cleanly.
    drop(outbound);
    assert!(responses.next().await.is_none());
    let log = shim.log_path().to_owned();
    assert!(tokio::task::spawn_blocking(move || shim.wait())
        .await
        .unwrap());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("finishing those in flight"), "{log}");
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_at_start_with_its_location() {
    let bad = CONFIG.replace("max_bytes: 1024", "max_bytes: lots");
    let scratch = Scratch::new("invalid", &bad);
    let error = match Shim::start(&scratch.config(), any_port(), None, "debug") {
        Err(local_envoy::EnvoyError::Exited { log, .. }) => log,
        Err(other) => panic!("unexpected failure: {other}"),
        Ok(_) => panic!("the shim accepted an invalid configuration"),
    };
    assert!(
        error.contains(r#"route routes[1] "orders", policy policies[1] json-body@0.1.0, field config.max_bytes: expected integer, found string"#),
        "{error}"
    );
}

#[tokio::test]
async fn a_changed_file_is_reloaded_and_a_bad_one_refused() {
    let scratch = Scratch::new("reload", CONFIG);
    let shim = Shim::start(&scratch.config(), any_port(), None, "debug").unwrap();
    let tenant = |replies: Vec<ProcessingResponse>| {
        headers_mutation(&replies[0])
            .0
            .into_iter()
            .find(|(n, _, _)| n == "x-tenant")
            .map(|(_, v, _)| v)
    };
    let ask = || {
        converse(
            &shim,
            vec![request_headers("/api/x", Some("echo-api"), true)],
        )
    };

    // Write-then-rename, as config management tools and Kubernetes do.
    let replace = |text: &str| {
        let staged = scratch.0.join("staged.yaml");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, scratch.config()).unwrap();
    };
    replace(&CONFIG.replace("x-tenant: acme", "x-tenant: globex"));
    let mut seen = None;
    for _ in 0..50 {
        seen = tenant(ask().await);
        if seen.as_deref() == Some("globex") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.as_deref(), Some("globex"));

    replace(&CONFIG.replace("name: respond", "name: responder"));
    let mut logged = false;
    for _ in 0..50 {
        if shim
            .log()
            .contains("the previous configuration keeps serving")
        {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged, "{}", shim.log());
    assert!(
        shim.log().contains(
            r#"policy policies[0] responder@0.1.0, field name: unknown policy "responder""#
        ),
        "{}",
        shim.log()
    );
    assert_eq!(tenant(ask().await).as_deref(), Some("globex"));
}
