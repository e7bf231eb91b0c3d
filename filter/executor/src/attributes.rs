//! What a request's connection looks like: the attributes only the host
//! knows (the peer address, its certificate, TLS), fetched per request and
//! only when some expression of the chain reads them.
//!
//! Each [`Attribute`] names the Envoy attribute it comes from, so both hosts
//! translate from one table: the Wasm host reads it as a property
//! (`get_property(["connection", "mtls"])`), the shim receives it in the
//! `ext_proc` request attributes (`connection.mtls`).

use std::ops::BitOr;

use crate::canonical::split_port;

/// A connection attribute a host provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// `source.address`: the peer's `ip:port`.
    SourceAddress,
    /// `connection.uri_san_peer_certificate`: the first URI SAN of the peer
    /// certificate, where a SPIFFE ID lives.
    PeerUriSan,
    /// `connection.mtls`: whether the peer presented a verified certificate.
    Mtls,
    /// `connection.requested_server_name`: the TLS SNI.
    RequestedServerName,
    /// `connection.tls_version`, e.g. `TLSv1.3`.
    TlsVersion,
}

/// How a host encodes an attribute's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeKind {
    /// A UTF-8 string.
    Text,
    /// A boolean (one byte in proxy-wasm).
    Bool,
}

impl Attribute {
    /// Every attribute, in [`AttributeSet`] bit order.
    pub const ALL: [Attribute; 5] = [
        Attribute::SourceAddress,
        Attribute::PeerUriSan,
        Attribute::Mtls,
        Attribute::RequestedServerName,
        Attribute::TlsVersion,
    ];

    /// Envoy's name for it, as listed in an `ext_proc` filter's
    /// `request_attributes`.
    pub const fn envoy_name(self) -> &'static str {
        match self {
            Self::SourceAddress => "source.address",
            Self::PeerUriSan => "connection.uri_san_peer_certificate",
            Self::Mtls => "connection.mtls",
            Self::RequestedServerName => "connection.requested_server_name",
            Self::TlsVersion => "connection.tls_version",
        }
    }

    /// The same name as a proxy-wasm property path.
    pub const fn property_path(self) -> [&'static str; 2] {
        match self {
            Self::SourceAddress => ["source", "address"],
            Self::PeerUriSan => ["connection", "uri_san_peer_certificate"],
            Self::Mtls => ["connection", "mtls"],
            Self::RequestedServerName => ["connection", "requested_server_name"],
            Self::TlsVersion => ["connection", "tls_version"],
        }
    }

    /// How the value is encoded.
    pub const fn kind(self) -> AttributeKind {
        match self {
            Self::Mtls => AttributeKind::Bool,
            _ => AttributeKind::Text,
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Attribute`]s: what a chain's expressions read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttributeSet(u8);

impl AttributeSet {
    /// No attribute.
    pub const NONE: Self = Self(0);

    /// Just `attribute`.
    pub const fn of(attribute: Attribute) -> Self {
        Self(attribute.bit())
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether `attribute` is in the set.
    pub const fn contains(self, attribute: Attribute) -> bool {
        self.0 & attribute.bit() != 0
    }

    /// The attributes in the set.
    pub fn iter(self) -> impl Iterator<Item = Attribute> {
        Attribute::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl BitOr for AttributeSet {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A value as a host delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// A string attribute.
    Text(String),
    /// A boolean attribute.
    Bool(bool),
}

/// The connection attributes a host provided for one request. An attribute
/// the host did not have (no TLS, no certificate) stays absent, and an
/// expression reading it gets an error rather than a made-up value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    source_address: Option<String>,
    peer_uri_san: Option<String>,
    mtls: Option<bool>,
    requested_server_name: Option<String>,
    tls_version: Option<String>,
}

impl Connection {
    /// No attribute at all.
    pub const EMPTY: Connection = Connection {
        source_address: None,
        peer_uri_san: None,
        mtls: None,
        requested_server_name: None,
        tls_version: None,
    };

    /// Records `value` for `attribute`; a value of the wrong kind, or an empty
    /// string (Envoy's way of saying "none"), is ignored.
    pub fn insert(&mut self, attribute: Attribute, value: AttributeValue) {
        match (attribute, value) {
            (_, AttributeValue::Text(text)) if text.is_empty() => {}
            (Attribute::Mtls, AttributeValue::Bool(mtls)) => self.mtls = Some(mtls),
            (Attribute::SourceAddress, AttributeValue::Text(t)) => self.source_address = Some(t),
            (Attribute::PeerUriSan, AttributeValue::Text(t)) => self.peer_uri_san = Some(t),
            (Attribute::RequestedServerName, AttributeValue::Text(t)) => {
                self.requested_server_name = Some(t)
            }
            (Attribute::TlsVersion, AttributeValue::Text(t)) => self.tls_version = Some(t),
            _ => {}
        }
    }

    /// The peer's IP address, without the port (IPv6 without brackets).
    pub fn source_ip(&self) -> Option<&str> {
        let (host, _) = split_port(self.source_address.as_deref()?);
        Some(
            host.strip_prefix('[')
                .and_then(|inner| inner.strip_suffix(']'))
                .unwrap_or(host),
        )
    }

    /// The peer's port.
    pub fn source_port(&self) -> Option<u16> {
        split_port(self.source_address.as_deref()?).1
    }

    /// The peer certificate's SPIFFE ID, if its URI SAN is one.
    pub fn spiffe_id(&self) -> Option<SpiffeId<'_>> {
        SpiffeId::parse(self.peer_uri_san.as_deref()?)
    }

    /// Whether the peer presented a verified client certificate.
    pub fn mtls(&self) -> Option<bool> {
        self.mtls
    }

    /// The TLS server name the client asked for.
    pub fn requested_server_name(&self) -> Option<&str> {
        self.requested_server_name.as_deref()
    }

    /// The negotiated TLS version.
    pub fn tls_version(&self) -> Option<&str> {
        self.tls_version.as_deref()
    }
}

/// A SPIFFE ID, `spiffe://<trust domain>/<path>`. Kubernetes workloads (Istio,
/// SPIRE's k8s registrar) use the path `/ns/<namespace>/sa/<service account>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    /// The whole ID.
    pub uri: &'a str,
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: &'a str,
    /// The namespace, when the path has the Kubernetes form.
    pub namespace: Option<&'a str>,
    /// The service account, when the path has the Kubernetes form.
    pub service_account: Option<&'a str>,
}

impl<'a> SpiffeId<'a> {
    /// Parses `uri`; `None` if it is not a SPIFFE ID.
    pub fn parse(uri: &'a str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if trust_domain.is_empty() {
            return None;
        }
        let (namespace, service_account) = match path.split('/').collect::<Vec<_>>()[..] {
            ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => (Some(ns), Some(sa)),
            _ => (None, None),
        };
        Some(Self {
            uri,
            trust_domain,
            namespace,
            service_account,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_in_kubernetes_form_name_namespace_and_service_account() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/team-a/sa/api").unwrap();
        assert_eq!(id.trust_domain, "cluster.local");
        assert_eq!(id.namespace, Some("team-a"));
        assert_eq!(id.service_account, Some("api"));

        let other = SpiffeId::parse("spiffe://example.org/workload/7").unwrap();
        assert_eq!((other.trust_domain, other.namespace), ("example.org", None));

        assert_eq!(SpiffeId::parse("https://example.org/ns/a/sa/b"), None);
        assert_eq!(SpiffeId::parse("spiffe:///ns/a/sa/b"), None);
    }

    #[test]
    fn source_addresses_split_into_ip_and_port() {
        let mut connection = Connection::default();
        connection.insert(
            Attribute::SourceAddress,
            AttributeValue::Text("[::1]:4242".into()),
        );
        assert_eq!(connection.source_ip(), Some("::1"));
        assert_eq!(connection.source_port(), Some(4242));
        connection.insert(
            Attribute::SourceAddress,
            AttributeValue::Text("10.0.0.7:80".into()),
        );
        assert_eq!(
            (connection.source_ip(), connection.source_port()),
            (Some("10.0.0.7"), Some(80))
        );
    }

    #[test]
    fn empty_and_mistyped_values_stay_absent() {
        let mut connection = Connection::default();
        connection.insert(Attribute::PeerUriSan, AttributeValue::Text(String::new()));
        connection.insert(Attribute::Mtls, AttributeValue::Text("true".into()));
        assert_eq!(connection, Connection::default());
    }
}
