//! The HTTP service: the request forwarded to it, and its answer read as
//! Envoy's `ext_authz` HTTP mode reads it (a 2xx allows).

// The policy's own types and imports: this is its code, kept apart.
use super::*;

impl ExtAuthz {
    pub(crate) fn http_request(&self, cx: &Context, prefix: &str, body: &[u8]) -> CallRequest {
        let request = cx.request_headers();
        let mut headers = self.forwarded_headers(cx);
        if let Some(host) = request.get(":authority") {
            headers.push(("x-forwarded-host".into(), host.to_owned()));
        }
        if let Some(proto) = request.get(":scheme") {
            headers.push(("x-forwarded-proto".into(), proto.to_owned()));
        }
        CallRequest::Http {
            method: request.get(":method").unwrap_or("GET").to_owned(),
            path: format!("{prefix}{}", request.get(":path").unwrap_or("/")),
            headers,
            body: body.to_vec(),
        }
    }
}

/// Reads an HTTP answer: a 2xx allows, with the allowed headers for the
/// upstream; anything else is the denial the client gets.
pub(crate) fn http_decision(
    response: CallResponse,
    allowed_upstream: &[HeaderName],
    allowed_client: Option<&[HeaderName]>,
) -> Decision {
    if (200..300).contains(&response.status) {
        // The allowed headers are the engine's: what the service does not
        // set, the client does not get to set either.
        let mut edits = HeaderEdits::default();
        for name in allowed_upstream {
            match response
                .header(name.as_str())
                .and_then(|v| HeaderValue::parse(v).ok())
            {
                Some(value) => edits.set.push((name.clone(), value)),
                None => edits.remove.push(name.clone()),
            }
        }
        return Decision::Allow {
            edits,
            metadata: Vec::new(),
        };
    }
    let headers = response
        .headers
        .into_iter()
        .filter(|(name, value)| reply_header_ok(name, value))
        .filter(|(name, _)| {
            allowed_client.is_none_or(|allowed| allowed.iter().any(|a| a.as_str() == name))
        })
        .collect();
    let status = if (200..=599).contains(&response.status) {
        response.status
    } else {
        403
    };
    Decision::Deny(LocalReply {
        status,
        headers,
        body: response.body,
    })
}

/// Headers proxies set about a request, which a client must not forge
/// into a check Envoy sends.
pub(crate) fn is_proxy_header(name: &str) -> bool {
    name == "forwarded"
        || name == "host"
        || name == "x-real-ip"
        || name.starts_with("x-forwarded-")
        || name.starts_with("x-original-")
        || name.starts_with("x-envoy-")
}

/// The path of a URL, without its scheme and authority.
pub(crate) fn path_of(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    rest.find('/').map_or("", |at| &rest[at..])
}
