//! The CEL vocabulary: every name an expression can read, in one table.
//!
//! [`VOCABULARY`] is the one place a name is defined. The static check
//! ([`super::Check`]) walks it to accept or refuse a reference and to
//! record what an expression reads; [`super::bind`] binds the names
//! (a test checks that it binds every one, with the type given here); the
//! fast path (`fast`) reads a subset of them by name (a test checks those
//! names are here); and the attribute table of `docs/cel.md` is rendered
//! from it (a test checks the page is current).

use super::Fields;

/// What is below a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Named fields: the names one segment longer.
    Record,
    /// A map with keys known only at run time.
    Map,
    /// A string, number or bool.
    Scalar,
}

/// Where a name can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phases {
    /// In request and response expressions.
    Both,
    /// In response expressions only.
    Response,
    /// In expressions evaluated on the whole request body (see
    /// [`super::Phase::RequestBody`]).
    RequestBody,
    /// In expressions evaluated on the whole response body.
    ResponseBody,
}

impl Phases {
    /// Whether a name of these phases can be read by an expression
    /// compiled for `phase`.
    pub fn readable_in(self, phase: super::Phase) -> bool {
        use super::Phase as P;
        match self {
            Self::Both => true,
            Self::Response => matches!(phase, P::Response | P::ResponseBody),
            Self::RequestBody => phase == P::RequestBody,
            Self::ResponseBody => phase == P::ResponseBody,
        }
    }
}

/// One name of the vocabulary.
#[derive(Debug, Clone, Copy)]
pub struct Name {
    /// The dotted path, e.g. `request.headers`.
    pub path: &'static str,
    /// What is below it.
    pub shape: Shape,
    /// Its CEL type, as the docs write it.
    pub cel_type: &'static str,
    /// Where it can be read.
    pub phases: Phases,
    /// What it holds; Markdown.
    pub description: &'static str,
    /// The bits recording that an expression reads it.
    pub(super) fields: Fields,
}

const fn name(
    path: &'static str,
    shape: Shape,
    cel_type: &'static str,
    fields: Fields,
    description: &'static str,
) -> Name {
    Name {
        path,
        shape,
        cel_type,
        phases: Phases::Both,
        description,
        fields,
    }
}

const fn response(name: Name) -> Name {
    Name {
        phases: Phases::Response,
        ..name
    }
}

const fn on_body(phases: Phases, name: Name) -> Name {
    Name { phases, ..name }
}

use Shape::{Map, Record, Scalar};

/// Every name. Both hosts (the Wasm filter and the ext_proc shim) give
/// every one of them: the connection's are fetched by each host when an
/// expression reads them.
pub const VOCABULARY: &[Name] = &[
    name("request", Record, "map", Fields::REQUEST, "The request, in its canonical form."),
    name("request.method", Scalar, "string", Fields::REQUEST_METHOD, "The method."),
    name("request.path", Scalar, "string", Fields::REQUEST_PATH, "The canonical path, without the query."),
    name(
        "request.query",
        Map,
        "map(string, string)",
        Fields::REQUEST_QUERY,
        "The query parameters, name and value percent-decoded (`%2B` is `+`, `%20` a space). If a parameter is given twice (in any encoding or case: `debug` and `%64ebug`), the query has a `;`, or a name or value does not decode, servers disagree on what the query says, and reading `request.query` at all is an error (which fails closed). A parameter the expression reads with a raw `+`, or under its name in another case (`?DEBUG=1` for `request.query[\"debug\"]`), is an error too: see [Read one way](security.md#read-one-way).",
    ),
    name("request.host", Scalar, "string", Fields::REQUEST_HOST, "`:authority` without the port, in its one spelling (see [Security model](security.md#security-model))."),
    name("request.scheme", Scalar, "string", Fields::REQUEST_SCHEME, "`http` or `https`."),
    name(
        "request.headers",
        Map,
        "map(string, string)",
        Fields::REQUEST_HEADERS,
        "The request headers: lower-case names, `_` read as `-`. A header the expression reads that the request sends more than once is an error (see [Read one way](security.md#read-one-way)).",
    ),
    on_body(Phases::RequestBody, name(
        "request.body",
        Scalar,
        "string",
        Fields::REQUEST_BODY,
        "The whole request body as text (bytes if it is not UTF-8), after the edits of earlier policies. Read by policies that run on the body (`authorization`, `transformation`), which then hold the request until it has arrived, up to the route entry's `max_body_bytes`.",
    )),
    on_body(Phases::RequestBody, name(
        "request.json",
        Map,
        "dyn",
        Fields::REQUEST_JSON,
        "The request body as JSON, read once per request the strict way (UTF-8, no duplicate keys in any spelling, at most 64 levels): `request.json.model`. A body that is empty or not such JSON leaves it unbound, so reading it is an error (which fails closed).",
    )),
    name("source", Record, "map", Fields::SOURCE, "The peer of the connection, as Envoy saw it."),
    name("source.address", Scalar, "string", Fields::SOURCE_ADDRESS, "The peer's IP address."),
    name("source.port", Scalar, "int", Fields::SOURCE_PORT, "The peer's port."),
    name("source.spiffeId", Scalar, "string", Fields::SOURCE_SPIFFE_ID, "The client certificate's URI SAN, when it is a SPIFFE ID."),
    name("source.identity", Record, "map", Fields::SOURCE_IDENTITY, "The parts of the SPIFFE ID `spiffe://<td>/ns/<ns>/sa/<sa>`."),
    name("source.identity.trustDomain", Scalar, "string", Fields::SOURCE_IDENTITY, "`<td>`."),
    name("source.identity.namespace", Scalar, "string", Fields::SOURCE_IDENTITY, "`<ns>`."),
    name("source.identity.serviceAccount", Scalar, "string", Fields::SOURCE_IDENTITY, "`<sa>`."),
    name("connection", Record, "map", Fields::CONNECTION, "The downstream connection."),
    name("connection.mtls", Scalar, "bool", Fields::CONNECTION_MTLS, "Whether the client presented a certificate Envoy verified."),
    name("connection.sni", Scalar, "string", Fields::CONNECTION_SNI, "The TLS server name the client asked for."),
    name("connection.tlsVersion", Scalar, "string", Fields::CONNECTION_TLS_VERSION, "The negotiated TLS version (`TLSv1.3`)."),
    name("route", Record, "map", Fields::ROUTE, "The route entry of the plugin configuration."),
    name("route.name", Scalar, "string", Fields::ROUTE_NAME, "The matched entry's name."),
    name("metadata", Map, "map(string, dyn)", Fields::METADATA, "What earlier policies of the chain wrote (`metadata[\"api-key.consumer\"]`)."),
    name("jwt", Map, "map(string, dyn)", Fields::JWT, "The claims of the token `jwt` verified: `jwt.sub`, `jwt.scope`, any custom claim. Unbound without a verified token."),
    response(name("response", Record, "map", Fields::RESPONSE, "The upstream's response (or a local reply).")),
    response(name("response.code", Scalar, "int", Fields::RESPONSE_CODE, "The status.")),
    response(name("response.headers", Map, "map(string, string)", Fields::RESPONSE_HEADERS, "The response headers, lower-case names.")),
    on_body(Phases::ResponseBody, name("response.body", Scalar, "string", Fields::RESPONSE_BODY, "The whole response body as text (bytes if it is not UTF-8).")),
    on_body(Phases::ResponseBody, name("response.json", Map, "dyn", Fields::RESPONSE_JSON, "The response body as JSON, read as `request.json` is.")),
];

/// The name at `path`.
pub fn lookup(path: &str) -> Option<&'static Name> {
    VOCABULARY.iter().find(|n| n.path == path)
}

/// The top-level names.
pub fn roots() -> impl Iterator<Item = &'static str> {
    VOCABULARY
        .iter()
        .map(|n| n.path)
        .filter(|p| !p.contains('.'))
}

/// The names at `path` and below it.
fn at_and_under(path: &str) -> impl Iterator<Item = &'static Name> + '_ {
    VOCABULARY.iter().filter(move |n| {
        n.path
            .strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// The fields read by using `path` whole: its own and everything below.
pub(super) fn fields_under(path: &str) -> Fields {
    at_and_under(path).fold(Fields::NONE, |all, n| all.with(n.fields))
}

/// The fields read by using `path` whole in `phase`: those of
/// [`fields_under`] that `phase` can read.
pub(super) fn fields_under_readable(path: &str, phase: super::Phase) -> Fields {
    at_and_under(path)
        .filter(|n| n.phases.readable_in(phase))
        .fold(Fields::NONE, |all, n| all.with(n.fields))
}

/// The fields of the names below `path`.
pub(super) fn fields_under_children(path: &str) -> Fields {
    VOCABULARY
        .iter()
        .filter(|n| {
            n.path
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('.'))
        })
        .fold(Fields::NONE, |all, n| all.with(n.fields))
}

/// The names of a record's fields.
pub(super) fn fields_of_record(path: &str) -> Vec<&'static str> {
    VOCABULARY
        .iter()
        .filter_map(|n| n.path.strip_prefix(path)?.strip_prefix('.'))
        .filter(|rest| !rest.contains('.'))
        .collect()
}

/// The attribute table of `docs/cel.md`, one row per name.
pub fn markdown_table() -> String {
    let mut table = String::from("| name | type | where | |\n|---|---|---|---|\n");
    for name in VOCABULARY {
        let phases = match name.phases {
            Phases::Both => "requests, responses",
            Phases::Response => "responses",
            Phases::RequestBody => "request bodies",
            Phases::ResponseBody => "response bodies",
        };
        table.push_str(&format!(
            "| `{}` | {} | {phases} | {} |\n",
            name.path, name.cel_type, name.description
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{Expression, Phase};
    use crate::testing::{context, request};
    use crate::{Attribute, AttributeValue, Connection, HeaderMap};

    const START: &str = "<!-- vocabulary: generated from filter/executor/src/expr/vocabulary.rs; UPDATE_DOCS=1 cargo test -p policy-executor rewrites it -->";
    const END: &str = "<!-- end of vocabulary -->";

    #[test]
    fn the_cel_page_lists_the_vocabulary() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cel.md");
        let page = std::fs::read_to_string(&path).unwrap();
        let (before, rest) = page
            .split_once(START)
            .expect("the page has the start marker");
        let (_, after) = rest.split_once(END).expect("the page has the end marker");
        let current = format!("{before}{START}\n{}{END}{after}", markdown_table());
        if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
            std::fs::write(&path, current).unwrap();
        } else {
            assert!(
                page == current,
                "docs/cel.md's table is not the vocabulary's: UPDATE_DOCS=1 cargo test -p policy-executor rewrites it"
            );
        }
    }

    /// A context where every name has a value: a request, a verified
    /// SPIFFE client certificate over TLS, metadata with a token's claims,
    /// and a response.
    fn everything() -> crate::Context {
        let mut cx = context(request("GET", "/a?b=c", &[("x-a", "1")]));
        let mut connection = Connection::EMPTY;
        for (attribute, value) in [
            (
                Attribute::SourceAddress,
                AttributeValue::Text("10.0.0.1:5000".into()),
            ),
            (
                Attribute::PeerUriSan,
                AttributeValue::Text("spiffe://td/ns/a/sa/b".into()),
            ),
            (Attribute::Mtls, AttributeValue::Bool(true)),
            (
                Attribute::RequestedServerName,
                AttributeValue::Text("a.example".into()),
            ),
            (
                Attribute::TlsVersion,
                AttributeValue::Text("TLSv1.3".into()),
            ),
        ] {
            connection.insert(attribute, value);
        }
        cx.set_connection(connection);
        cx.metadata_mut().insert(
            crate::JWT_CLAIMS.into(),
            serde_json::json!({ "sub": "alice" }),
        );
        cx.set_body(
            crate::policy::Direction::Request,
            std::sync::Arc::from(&br#"{"model": "small"}"#[..]),
        );
        cx.begin_response(HeaderMap::from_pairs([(":status", "200"), ("x-b", "2")]));
        cx.set_body(
            crate::policy::Direction::Response,
            std::sync::Arc::from(&b"[1]"[..]),
        );
        cx
    }

    /// An expression that is true exactly when `name` holds a value of its
    /// declared type.
    fn typed(name: &Name) -> String {
        let path = name.path;
        match name.cel_type {
            "string" => format!("{path} + \"\" == {path}"),
            "int" => format!("{path} + 0 == {path}"),
            "bool" => format!("{path} || !{path}"),
            "dyn" => format!("{path} == {path}"),
            map if map.starts_with("map") => format!("size({path}) >= 0"),
            other => panic!("{path}: no check for type {other}"),
        }
    }

    #[test]
    fn every_name_is_bound_with_its_type() {
        let cx = everything();
        for name in VOCABULARY {
            let phase = match name.phases {
                Phases::Both => Phase::Request,
                Phases::Response => Phase::Response,
                Phases::RequestBody => Phase::RequestBody,
                Phases::ResponseBody => Phase::ResponseBody,
            };
            let source = typed(name);
            let expression = Expression::compile(&source, phase)
                .unwrap_or_else(|e| panic!("{}: {e}", name.path));
            assert_eq!(
                expression.evaluate_bool(&cx),
                Ok(true),
                "{}: `{source}`",
                name.path
            );
        }
    }

    #[test]
    fn names_are_refused_where_they_cannot_be_read() {
        let phases = [
            Phase::Request,
            Phase::RequestBody,
            Phase::Response,
            Phase::ResponseBody,
        ];
        for name in VOCABULARY {
            for phase in phases {
                assert_eq!(
                    Expression::compile(&typed(name), phase).is_ok(),
                    name.phases.readable_in(phase),
                    "{} in {phase:?}",
                    name.path
                );
            }
        }
        // A whole record leaves out the body where it cannot be read.
        assert!(Expression::compile("size(request) > 0", Phase::Request).is_ok());
    }

    #[test]
    fn every_record_field_is_a_name_and_roots_have_no_dot() {
        for name in VOCABULARY {
            if let Some((parent, _)) = name.path.rsplit_once('.') {
                assert_eq!(
                    lookup(parent).map(|p| p.shape),
                    Some(Shape::Record),
                    "{}",
                    name.path
                );
            }
        }
        assert!(roots().all(|r| !r.contains('.')));
    }
}
