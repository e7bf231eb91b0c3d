//! The rate limit service's messages (`envoy.service.ratelimit.v3`),
//! declared by hand for the reasons `ext-authz`'s are: `envoy-types` would
//! bring tonic's transport into the Wasm module. Numbers and types are
//! Envoy's (the tests check them against `envoy-types`); fields left out
//! are skipped when decoding.

/// `envoy.service.ratelimit.v3.RateLimitRequest`, the argument of
/// `RateLimitService/ShouldRateLimit`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    /// The namespace of the service's limits.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// What to limit on; every one must be under its limit.
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// The hits the request adds to each descriptor; 0 means 1.
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    /// The key-value pairs that name the bucket.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// The limit to apply, given by the caller rather than the service's
    /// configuration.
    #[prost(message, optional, tag = "2")]
    pub limit: Option<RateLimitOverride>,
    /// The hits this request adds to this descriptor (overrides the
    /// request's `hits_addend`).
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
}

/// `google.protobuf.UInt64Value`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct UInt64Value {
    /// The value.
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Entry {
    /// The descriptor key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.RateLimitOverride`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RateLimitOverride {
    /// Requests admitted per unit.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// A [`Unit`].
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Unit {
    /// Not set.
    Unknown = 0,
    /// Per second.
    Second = 1,
    /// Per minute.
    Minute = 2,
    /// Per hour.
    Hour = 3,
    /// Per day.
    Day = 4,
    /// Per month.
    Month = 5,
    /// Per year.
    Year = 6,
    /// Per week.
    Week = 7,
}

impl Unit {
    /// The unit's length in seconds (a month is 30 days, a year 365);
    /// `None` for [`Unit::Unknown`].
    pub fn seconds(self) -> Option<u64> {
        const DAY: u64 = 86_400;
        match self {
            Self::Unknown => None,
            Self::Second => Some(1),
            Self::Minute => Some(60),
            Self::Hour => Some(3_600),
            Self::Day => Some(DAY),
            Self::Week => Some(7 * DAY),
            Self::Month => Some(30 * DAY),
            Self::Year => Some(365 * DAY),
        }
    }
}

/// `envoy.service.ratelimit.v3.RateLimitResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    /// A [`Code`]: OVER_LIMIT if any descriptor is.
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    /// One per descriptor of the request, in its order.
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    /// The service could not decide.
    Unknown = 0,
    /// Under the limit.
    Ok = 1,
    /// Over the limit.
    OverLimit = 2,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    /// A [`Code`] for this descriptor.
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    /// The limit that applied.
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    /// Requests left in the current window (or bucket).
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    /// When the quota is restored.
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimit {
    /// Requests per unit.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// A [`Unit`].
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
    /// The limit's name, if the service gives one.
    #[prost(string, tag = "3")]
    pub name: String,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Duration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds past them.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Duration {
    /// A duration of `micros` microseconds.
    pub fn from_micros(micros: u64) -> Self {
        Self {
            seconds: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
            // Below 1e9: fits.
            nanos: i32::try_from((micros % 1_000_000) * 1_000).unwrap_or(0),
        }
    }

    /// The duration in microseconds (0 if negative).
    pub fn as_micros(&self) -> u64 {
        let seconds = u64::try_from(self.seconds).unwrap_or(0);
        let nanos = u64::try_from(self.nanos).unwrap_or(0);
        seconds
            .saturating_mul(1_000_000)
            .saturating_add(nanos / 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as common;
    use envoy_types::pb::envoy::service::ratelimit::v3 as generated;
    use prost::Message;

    #[test]
    fn requests_encode_as_envoys() {
        let ours = RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "limit".into(),
                    value: "per-tenant".into(),
                }],
                limit: Some(RateLimitOverride {
                    requests_per_unit: 7,
                    unit: Unit::Minute as i32,
                }),
                hits_addend: Some(UInt64Value { value: 3 }),
            }],
            hits_addend: 3,
        };
        let theirs =
            generated::RateLimitRequest::decode(ours.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(theirs.domain, "edge");
        assert_eq!(theirs.hits_addend, 3);
        let descriptor: &common::RateLimitDescriptor = &theirs.descriptors[0];
        assert_eq!(descriptor.entries[0].key, "limit");
        assert_eq!(descriptor.entries[0].value, "per-tenant");
        let limit = descriptor.limit.expect("limit");
        assert_eq!(limit.requests_per_unit, 7);
        assert_eq!(
            limit.unit,
            generated::rate_limit_response::rate_limit::Unit::Minute as i32
        );
        assert_eq!(descriptor.hits_addend.map(|h| h.value), Some(3));
    }

    #[test]
    fn responses_decode_as_envoys() {
        use generated::rate_limit_response as r;
        let theirs = generated::RateLimitResponse {
            overall_code: r::Code::OverLimit as i32,
            statuses: vec![r::DescriptorStatus {
                code: r::Code::OverLimit as i32,
                current_limit: Some(r::RateLimit {
                    name: "n".into(),
                    requests_per_unit: 5,
                    unit: r::rate_limit::Unit::Hour as i32,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 12,
                    nanos: 500_000_000,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ours = RateLimitResponse::decode(theirs.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(ours.overall_code, Code::OverLimit as i32);
        let status = &ours.statuses[0];
        assert_eq!(status.code, Code::OverLimit as i32);
        let limit = status.current_limit.as_ref().expect("limit");
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (5, Unit::Hour as i32)
        );
        assert_eq!(limit.name, "n");
        let reset = status.duration_until_reset.expect("reset");
        assert_eq!(reset.as_micros(), 12_500_000);
        assert_eq!(Duration::from_micros(12_500_000), reset);
    }
}
