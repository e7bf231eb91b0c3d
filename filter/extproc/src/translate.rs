//! Conversions between ext_proc messages and executor types.

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    processing_mode::{BodySendMode, HeaderSendMode},
    ProcessingMode,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HeaderMutation, HttpHeaders, ImmediateResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, BoolValue, Struct};
use policy_executor::{
    AttributeSet, AttributeValue, BodyNeeds, Connection, HeaderChange, HeaderMap, HeaderMutations,
    LocalReply,
};

/// The key Envoy files `request_attributes` under.
const EXT_PROC_ATTRIBUTES: &str = "envoy.filters.http.ext_proc";

/// The headers of an `HttpHeaders` message. Envoy sends values as
/// `raw_value` bytes; values that are not UTF-8 are read lossily.
pub fn headers(message: &HttpHeaders) -> HeaderMap {
    let entries = message.headers.iter().flat_map(|map| map.headers.iter());
    HeaderMap::from_pairs(entries.map(|h| {
        let value = if h.raw_value.is_empty() {
            h.value.clone()
        } else {
            String::from_utf8_lossy(&h.raw_value).into_owned()
        };
        (h.key.clone(), value)
    }))
}

/// Envoy's route name, if the ext_proc filter was configured to send the
/// `xds.route_name` request attribute.
pub fn route_name(attributes: &std::collections::HashMap<String, Struct>) -> Option<String> {
    let value = attributes
        .get(EXT_PROC_ATTRIBUTES)?
        .fields
        .get("xds.route_name")?;
    match &value.kind {
        Some(Kind::StringValue(name)) if !name.is_empty() => Some(name.clone()),
        _ => None,
    }
}

/// The connection attributes the chain reads, from the request attributes
/// Envoy sent. The ext_proc filter must list them in `request_attributes`;
/// the shim logs at start which ones its configuration needs.
pub fn connection(
    attributes: &std::collections::HashMap<String, Struct>,
    wanted: AttributeSet,
) -> Connection {
    let mut connection = Connection::default();
    let Some(sent) = attributes.get(EXT_PROC_ATTRIBUTES) else {
        return connection;
    };
    for attribute in wanted.iter() {
        let value = match sent
            .fields
            .get(attribute.envoy_name())
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StringValue(text)) => AttributeValue::Text(text.clone()),
            Some(Kind::BoolValue(b)) => AttributeValue::Bool(*b),
            _ => continue,
        };
        connection.insert(attribute, value);
    }
    connection
}

/// The net header changes as an ext_proc `HeaderMutation`. Envoy removes
/// before it sets, which is why the executor reports one change per name.
pub fn header_mutation(changes: &HeaderMutations) -> Option<HeaderMutation> {
    if changes.is_empty() {
        return None;
    }
    let mut mutation = HeaderMutation::default();
    for (name, change) in changes.iter() {
        match change {
            HeaderChange::Remove => mutation.remove_headers.push(name.to_owned()),
            HeaderChange::Replace(values) => {
                for (i, value) in values.iter().enumerate() {
                    mutation.set_headers.push(header_option(name, value, i > 0));
                }
            }
            HeaderChange::Append(values) => {
                for value in values {
                    mutation.set_headers.push(header_option(name, value, true));
                }
            }
        }
    }
    Some(mutation)
}

/// One header to set, after (`append`) or instead of the existing values.
///
/// Envoy's ext_proc reads the deprecated `append` flag whenever
/// `append_action` is 0, and 0 is `APPEND_IF_EXISTS_OR_ADD`, the action we
/// need; `append` unset means overwrite. So `append` is set explicitly, and
/// `append_action` left at 0, which every Envoy version reads the same way.
fn header_option(name: &str, value: &str, append: bool) -> HeaderValueOption {
    #[allow(deprecated, reason = "see above: Envoy's ext_proc reads `append`")]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        append: Some(BoolValue { value: append }),
        append_action: HeaderAppendAction::AppendIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A local reply as an `ImmediateResponse`.
pub fn immediate_response(reply: LocalReply) -> ImmediateResponse {
    let headers = HeaderMutation {
        set_headers: reply
            .headers
            .iter()
            .map(|(n, v)| header_option(n, v, true))
            .collect(),
        ..Default::default()
    };
    ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(reply.status),
        }),
        headers: Some(headers),
        body: reply.body,
        details: "policy_engine_local_reply".into(),
        ..Default::default()
    }
}

/// What Envoy must send for the rest of the stream, given the chain: bodies
/// only if a policy reads them, the response only if a policy acts on it.
pub fn mode_for(needs: BodyNeeds, acts_on_response: bool) -> ProcessingMode {
    let body = |needed: bool, streamed: bool| {
        let mode = match (needed, streamed) {
            (false, _) => BodySendMode::None,
            (true, false) => BodySendMode::Buffered,
            (true, true) => BodySendMode::Streamed,
        };
        mode as i32
    };
    let response_headers = if acts_on_response {
        HeaderSendMode::Send
    } else {
        HeaderSendMode::Skip
    };
    ProcessingMode {
        request_body_mode: body(needs.request, false),
        response_header_mode: response_headers as i32,
        response_body_mode: body(needs.response && acts_on_response, needs.response_streamed),
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
        ..Default::default()
    }
}

/// Nothing more is needed from this stream.
pub fn mode_done() -> ProcessingMode {
    mode_for(BodyNeeds::default(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap as PbHeaderMap;
    use envoy_types::pb::google::protobuf::Value;
    use policy_executor::Attribute;

    #[test]
    fn reads_raw_values_and_the_route_name() {
        let message = HttpHeaders {
            headers: Some(PbHeaderMap {
                headers: vec![
                    HeaderValue {
                        key: ":path".into(),
                        raw_value: b"/x".to_vec(),
                        ..Default::default()
                    },
                    HeaderValue {
                        key: "x-latin1".into(),
                        raw_value: b"caf\xe9".to_vec(),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        };
        let map = headers(&message);
        assert_eq!(map.get(":path"), Some("/x"));
        assert_eq!(map.get("x-latin1"), Some("caf\u{fffd}"));

        let mut attributes = std::collections::HashMap::new();
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "xds.route_name".to_owned(),
            Value {
                kind: Some(Kind::StringValue("echo-api".into())),
            },
        );
        attributes.insert(EXT_PROC_ATTRIBUTES.to_owned(), Struct { fields });
        assert_eq!(route_name(&attributes).as_deref(), Some("echo-api"));
        assert_eq!(route_name(&Default::default()), None);

        let fields = attributes.get_mut(EXT_PROC_ATTRIBUTES).unwrap();
        for (name, kind) in [
            ("connection.mtls", Kind::BoolValue(true)),
            (
                "connection.uri_san_peer_certificate",
                Kind::StringValue("spiffe://td/ns/a/sa/b".into()),
            ),
        ] {
            fields
                .fields
                .insert(name.to_owned(), Value { kind: Some(kind) });
        }
        let only_mtls = connection(&attributes, AttributeSet::of(Attribute::Mtls));
        assert_eq!(only_mtls.mtls(), Some(true));
        assert_eq!(only_mtls.spiffe_id(), None, "not asked for");
        let both = AttributeSet::of(Attribute::Mtls) | AttributeSet::of(Attribute::PeerUriSan);
        let id = connection(&attributes, both);
        assert_eq!(id.spiffe_id().and_then(|id| id.namespace), Some("a"));
    }

    #[test]
    fn modes_follow_the_chain() {
        let headers_only = mode_for(BodyNeeds::default(), false);
        assert_eq!(headers_only.request_body_mode, BodySendMode::None as i32);
        assert_eq!(
            headers_only.response_header_mode,
            HeaderSendMode::Skip as i32
        );
        let bodies = mode_for(
            BodyNeeds {
                request: true,
                response: true,
                response_streamed: false,
            },
            true,
        );
        assert_eq!(bodies.request_body_mode, BodySendMode::Buffered as i32);
        assert_eq!(bodies.response_header_mode, HeaderSendMode::Send as i32);
        assert_eq!(bodies.response_body_mode, BodySendMode::Buffered as i32);
    }
}
