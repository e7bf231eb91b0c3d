//! The gRPC service: the `CheckRequest` sent and the `CheckResponse` read
//! (`envoy.service.auth.v3.Authorization/Check`).

// The policy's own types and imports: this is its code, kept apart.
use super::*;

impl ExtAuthz {
    pub(crate) fn check_request(&self, cx: &Context, body: &[u8]) -> proto::CheckRequest {
        let request = cx.request_headers();
        let text = |name: &str| request.get(name).unwrap_or_default().to_owned();
        let path = text(":path");
        let query = path
            .split_once('?')
            .map(|(_, q)| q.to_owned())
            .unwrap_or_default();
        let connection = cx.connection();
        let source = proto::Peer {
            address: connection.source_ip().map(|ip| proto::Address {
                socket_address: Some(proto::SocketAddress {
                    address: ip.to_owned(),
                    port_value: connection.source_port().map(u32::from),
                }),
            }),
            principal: connection
                .spiffe_id()
                .map(|id| id.uri.to_owned())
                .unwrap_or_default(),
        };
        let size = request
            .get("content-length")
            .and_then(|n| n.parse().ok())
            .unwrap_or(if body.is_empty() {
                -1
            } else {
                i64::try_from(body.len()).unwrap_or(i64::MAX)
            });
        proto::CheckRequest {
            attributes: Some(proto::AttributeContext {
                source: Some(source),
                destination: None,
                request: Some(proto::Request {
                    http: Some(proto::HttpRequest {
                        id: text("x-request-id"),
                        method: text(":method"),
                        headers: self.forwarded_headers(cx).into_iter().collect(),
                        path,
                        host: text(":authority"),
                        scheme: text(":scheme"),
                        query,
                        fragment: String::new(),
                        size,
                        protocol: String::new(),
                        body: String::from_utf8_lossy(body).into_owned(),
                        raw_body: body.to_vec(),
                    }),
                }),
                context_extensions: self.context_extensions.clone(),
            }),
        }
    }
}

/// Reads a `CheckResponse`. An OK status allows; anything else denies,
/// with the `denied_response` if the service gave one, else 403.
pub(crate) fn grpc_decision(response: &CallResponse) -> Result<Decision, String> {
    let check = proto::CheckResponse::decode(response.body.as_slice())
        .map_err(|e| format!("the CheckResponse cannot be read: {e}"))?;
    // No status is no decision: fail closed rather than read it as OK.
    let code = check
        .status
        .as_ref()
        .map(|s| s.code)
        .ok_or("the CheckResponse has no status")?;
    if code != 0 {
        let mut reply = LocalReply {
            status: 403,
            headers: Vec::new(),
            body: Vec::new(),
        };
        if let Some(proto::HttpResponse::DeniedResponse(denied)) = check.http_response {
            if let Some(status) = denied.status.and_then(|s| u16::try_from(s.code).ok()) {
                if (200..=599).contains(&status) {
                    reply.status = status;
                }
            }
            reply.headers = denied
                .headers
                .iter()
                .filter_map(header_pair)
                .filter(|(name, value)| reply_header_ok(name, value))
                .collect();
            reply.body = denied.body.into_bytes();
        }
        return Ok(Decision::Deny(reply));
    }
    let mut edits = HeaderEdits::default();
    if let Some(proto::HttpResponse::OkResponse(ok)) = &check.http_response {
        for option in &ok.headers {
            // A header the service wants set but that cannot be: the
            // client's copy would stay, so the check cannot be trusted.
            let Some((name, value)) = header_pair(option).and_then(|(n, v)| {
                Some((HeaderName::parse(&n).ok()?, HeaderValue::parse(&v).ok()?))
            }) else {
                return Err(format!(
                    "the service asked for an invalid header: {:?}",
                    option.header
                ));
            };
            // As Envoy's ext_authz: appended only when `append` says so,
            // else set, replacing the client's copy (proto3 cannot tell an
            // unset `append_action` from APPEND_IF_EXISTS_OR_ADD).
            if option.append.as_ref().is_some_and(|flag| flag.value) {
                edits.add.push((name, value));
            } else {
                edits.set.push((name, value));
            }
        }
        for name in &ok.headers_to_remove {
            // Pseudo-headers and Host are where the request goes: not the
            // service's to remove.
            match HeaderName::parse(name) {
                Ok(name) if name.as_str() != "host" => edits.remove.push(name),
                _ => {}
            }
        }
    }
    let metadata = check
        .dynamic_metadata
        .map(|m| {
            let mut fields: Vec<_> = m
                .fields
                .iter()
                .map(|(key, value)| {
                    (
                        format!("{METADATA_PREFIX}{key}"),
                        proto::value_to_json(value),
                    )
                })
                .collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            fields
        })
        .unwrap_or_default();
    Ok(Decision::Allow { edits, metadata })
}

pub(crate) fn header_pair(option: &proto::HeaderValueOption) -> Option<(String, String)> {
    let header = option.header.as_ref()?;
    let value = if header.raw_value.is_empty() {
        header.value.clone()
    } else {
        String::from_utf8(header.raw_value.clone()).ok()?
    };
    Some((header.key.to_ascii_lowercase(), value))
}
