//! Binding: the variables one evaluation sees, built from the request,
//! the connection and the chain's metadata, holding only the fields the
//! expression reads and borrowing the request's strings rather than copying
//! them. `vocabulary`'s tests check it binds every name with its type.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};

use super::{Fields, JWT_CLAIMS};
use crate::canonical::{percent_decode, query_pairs, strip_port};
use crate::headers::HeaderMap;
use crate::policy::Context;

/// A CEL value that may borrow from the request for the evaluation.
type Val<'a> = Box<dyn cel::common::value::Val + 'a>;
type Vars<'a> = Vec<(&'static str, Val<'a>)>;
type CelRecord<'a> = HashMap<CelMapKey<'a>, Val<'a>>;

/// `request.path` and the query: `:path` split at `?` (`/` if absent).
pub(super) fn path_and_query(request: &HeaderMap) -> (&str, &str) {
    let path = request.get(":path").unwrap_or("/");
    path.split_once('?').unwrap_or((path, ""))
}

/// `request.host`: `:authority`, already canonical (`Engine::start`: lower
/// case, no trailing dot), without its port. Never the `host` header, which
/// nothing made canonical.
pub(super) fn host(request: &HeaderMap) -> Option<&str> {
    request.get(":authority").map(strip_port)
}

/// `response.code`: `:status` as a number.
pub(super) fn response_code(response: &HeaderMap) -> Option<i64> {
    response.get(":status")?.parse().ok()
}

/// The variables for one evaluation, holding only the fields it reads and
/// borrowing the request's strings rather than copying them.
pub(super) fn bind<'a>(fields: Fields, cx: &'a Context) -> Vars<'a> {
    let mut vars = Vec::with_capacity(4);
    let request = cx.request_headers();
    let mut record = Record::default();
    record.put(fields, Fields::REQUEST_METHOD, "method", || {
        text(request.get(":method"))
    });
    let (path_only, query) = path_and_query(request);
    record.put(fields, Fields::REQUEST_PATH, "path", || {
        text(Some(path_only))
    });
    record.put(fields, Fields::REQUEST_QUERY, "query", || query_map(query));
    record.put(fields, Fields::REQUEST_HOST, "host", || text(host(request)));
    record.put(fields, Fields::REQUEST_SCHEME, "scheme", || {
        text(request.get(":scheme"))
    });
    record.put(fields, Fields::REQUEST_HEADERS, "headers", || {
        Some(header_map(request))
    });
    if let Some(body) = cx.body_of(crate::policy::Direction::Request) {
        record.put(fields, Fields::REQUEST_BODY, "body", || {
            Some(body_val(body))
        });
        record.put(fields, Fields::REQUEST_JSON, "json", || {
            body.json().ok().map(json_to_cel)
        });
    }
    record.bind(fields, Fields::REQUEST, "request", &mut vars);

    let connection = cx.connection();
    let spiffe = connection.spiffe_id();
    let mut record = Record::default();
    record.put(fields, Fields::SOURCE_ADDRESS, "address", || {
        text(connection.source_ip())
    });
    record.put(fields, Fields::SOURCE_PORT, "port", || {
        connection.source_port().map(|p| int(p.into()))
    });
    record.put(fields, Fields::SOURCE_SPIFFE_ID, "spiffeId", || {
        text(spiffe.map(|id| id.uri))
    });
    record.put(fields, Fields::SOURCE_IDENTITY, "identity", || {
        let id = spiffe?;
        let mut identity = Record::default();
        for (name, value) in [
            ("trustDomain", Some(id.trust_domain)),
            ("namespace", id.namespace),
            ("serviceAccount", id.service_account),
        ] {
            if let Some(value) = text(value) {
                identity.0.insert(CelMapKey::from(name), value);
            }
        }
        Some(identity.into_val())
    });
    record.bind(fields, Fields::SOURCE, "source", &mut vars);

    let mut record = Record::default();
    record.put(fields, Fields::CONNECTION_MTLS, "mtls", || {
        connection
            .mtls()
            .map(|b| Box::new(CelBool::from(b)) as Val<'a>)
    });
    record.put(fields, Fields::CONNECTION_SNI, "sni", || {
        text(connection.requested_server_name())
    });
    record.put(fields, Fields::CONNECTION_TLS_VERSION, "tlsVersion", || {
        text(connection.tls_version())
    });
    record.bind(fields, Fields::CONNECTION, "connection", &mut vars);

    let mut record = Record::default();
    record.put(fields, Fields::ROUTE_NAME, "name", || {
        text(Some(&cx.route().chain))
    });
    record.bind(fields, Fields::ROUTE, "route", &mut vars);

    if fields.has(Fields::METADATA) {
        let metadata: CelRecord<'a> = cx
            .metadata()
            .iter()
            .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_cel(v)))
            .collect();
        vars.push(("metadata", Box::new(CelMap::from(metadata))));
    }
    if fields.has(Fields::JWT) {
        // Unbound without a verified token, so reading it is an error and
        // `has(jwt.sub)` cannot be true by accident.
        if let Some(claims) = cx.metadata().get(JWT_CLAIMS) {
            vars.push(("jwt", json_to_cel(claims)));
        }
    }

    let response = cx.response_headers();
    let mut record = Record::default();
    record.put(fields, Fields::RESPONSE_CODE, "code", || {
        response_code(response).map(int)
    });
    record.put(fields, Fields::RESPONSE_HEADERS, "headers", || {
        Some(header_map(response))
    });
    if let Some(body) = cx.body_of(crate::policy::Direction::Response) {
        record.put(fields, Fields::RESPONSE_BODY, "body", || {
            Some(body_val(body))
        });
        record.put(fields, Fields::RESPONSE_JSON, "json", || {
            body.json().ok().map(json_to_cel)
        });
    }
    record.bind(fields, Fields::RESPONSE, "response", &mut vars);
    vars
}

/// A record under construction; absent values are left out, so reading
/// them is a "no such key" error.
#[derive(Default)]
struct Record<'a>(CelRecord<'a>);

impl<'a> Record<'a> {
    fn put(
        &mut self,
        wanted: Fields,
        field: Fields,
        name: &'static str,
        value: impl FnOnce() -> Option<Val<'a>>,
    ) {
        if wanted.has(field) {
            if let Some(value) = value() {
                self.0.insert(CelMapKey::from(name), value);
            }
        }
    }

    fn bind(self, wanted: Fields, root: Fields, name: &'static str, vars: &mut Vars<'a>) {
        if wanted.has(root) {
            vars.push((name, self.into_val()));
        }
    }

    fn into_val(self) -> Val<'a> {
        Box::new(CelMap::from(self.0))
    }
}

fn text(value: Option<&str>) -> Option<Val<'_>> {
    value.map(|s| Box::new(CelString::from(s)) as Val<'_>)
}

/// A body as a CEL string, or bytes when it is not UTF-8.
fn body_val(body: &crate::policy::Body) -> Val<'_> {
    match std::str::from_utf8(body.bytes()) {
        Ok(text) => Box::new(CelString::from(text)),
        Err(_) => Box::new(cel::common::types::CelBytes::from(body.bytes())),
    }
}

fn int<'a>(value: i64) -> Val<'a> {
    Box::new(CelInt::from(value))
}

/// The key a header is read under in `request.headers`: its name with `_`
/// as `-`; none for a pseudo-header.
pub(super) fn header_key(name: &str) -> Option<Cow<'_, str>> {
    if name.starts_with(':') {
        None
    } else if name.contains('_') {
        Some(Cow::Owned(name.replace('_', "-")))
    } else {
        Some(Cow::Borrowed(name))
    }
}

/// The headers by name, `_` read as `-` (many upstream frameworks read
/// `x_user` as `x-user`, so a rule on `x-user` must see it too), each by
/// its first line. A request header sent more than once never reaches an
/// expression that reads it (see [`ambiguous`]); a response header does,
/// by its first line too.
fn header_map(headers: &HeaderMap) -> Val<'_> {
    let mut map: CelRecord<'_> = HashMap::new();
    for (name, value) in headers.iter() {
        let key = match header_key(name) {
            None => continue,
            Some(Cow::Borrowed(name)) => CelMapKey::from(name),
            Some(Cow::Owned(name)) => CelMapKey::from(name),
        };
        map.entry(key)
            .or_insert_with(|| Box::new(CelString::from(value)) as Val<'_>);
    }
    Box::new(CelMap::from(map))
}

/// The query as servers read it: names and values percent-decoded. `None`
/// (so reading `request.query` at all is an evaluation error, which fails
/// closed) when servers disagree on what the query says: a parameter given
/// twice (`?debug=0&debug=1`, `%64ebug=1` beside `debug=0`, or `Debug=1`,
/// since some frameworks ignore case), a `;` (which some read as a
/// separator: `?x=0;debug=1`), or a value that does not decode. No rule
/// may then decide on the query, not even on `"debug" in request.query`.
fn query_map(query: &str) -> Option<Val<'_>> {
    if query.contains(';') {
        return None;
    }
    let mut map: CelRecord<'_> = HashMap::new();
    let mut folded_names = HashSet::new();
    for (name, value) in query_pairs(query) {
        let value: Val<'_> = Box::new(CelString::from(percent_decode(value)?.into_owned()));
        let name = percent_decode(name)?.into_owned();
        if !folded_names.insert(name.to_ascii_lowercase()) {
            return None;
        }
        map.insert(CelMapKey::from(name), value);
    }
    Some(Box::new(CelMap::from(map)))
}

fn json_to_cel(value: &serde_json::Value) -> Val<'_> {
    use serde_json::Value as Json;
    match value {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => int(i),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Json::String(s) => Box::new(CelString::from(s.as_str())),
        Json::Array(items) => Box::new(CelList::from(
            items.iter().map(json_to_cel).collect::<Vec<_>>(),
        )),
        Json::Object(fields) => Box::new(CelMap::from(
            fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_cel(v)))
                .collect::<CelRecord<'_>>(),
        )),
    }
}
