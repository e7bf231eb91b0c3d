//! Global buckets: each request asks a rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), which
//! counts in storage every Envoy and shim replica shares (the project's
//! `policy-ratelimit` counts in Redis).
//!
//! Each limit is one descriptor: the entry `limit` with the limit's name,
//! then the limit's descriptors by key (or `default_bucket` with the
//! default bucket's name when one cannot be evaluated), with the limit's
//! rate as the descriptor's `limit` override, so the service needs no
//! configuration of its own. Envoy's ratelimit service and Limitador
//! accept the same request; with them, configure the limits there too.

use std::time::Duration;

use policy_executor::{
    parse_duration, Answer, Call, CallRequest, ParamError, Service as CalloutService,
};
use prost::Message;
use serde::Deserialize;

use crate::proto::{self, Code, RateLimitDescriptor, RateLimitOverride, RateLimitRequest};
use crate::{secs_up, Bucket, Limit, Report, State};

/// Counting in a rate limit service.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "global"))]
pub(crate) struct GlobalParams {
    /// The service.
    grpc: GrpcParams,
    /// The service's domain (default `policy-engine`).
    domain: Option<String>,
    /// How long the service may take (default `100ms`).
    timeout: Option<String>,
    /// When the service (or its Redis) cannot answer.
    #[serde(default)]
    failure_mode: FailureMode,
}

/// A gRPC service.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "grpc_service"))]
struct GrpcParams {
    /// `http://host:port` of the rate limit service (the shim connects to
    /// it).
    uri: String,
    /// The Envoy cluster that reaches it (Wasm filter).
    cluster: String,
}

/// What happens when the service cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", schemars(rename = "failure_mode"))]
pub(crate) enum FailureMode {
    /// Refuse the request (`status_on_error`): fail closed.
    #[default]
    Deny,
    /// Let it through, unlimited; logged.
    Allow,
}

/// The rate limit service of one policy instance.
pub(crate) struct Service {
    service: CalloutService,
    domain: String,
    timeout: Duration,
    pub(crate) failure_mode: FailureMode,
}

impl Service {
    pub(crate) fn build(params: GlobalParams, limits: &[Limit]) -> Result<Self, ParamError> {
        let Some((scheme, rest)) = params
            .grpc
            .uri
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
        else {
            return Err(ParamError::at(
                "global.grpc.uri",
                "an http:// or https:// URL is needed",
            ));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(ParamError::at("global.grpc.uri", "the URL has no host"));
        }
        if params.grpc.cluster.is_empty() {
            return Err(ParamError::at("global.grpc.cluster", "empty"));
        }
        for (index, limit) in limits.iter().enumerate() {
            if limit.unit.is_none() {
                return Err(ParamError::at(
                    format!("limits[{index}].window"),
                    "a rate limit service counts per second, minute, hour or day: use `unit` (or a window of 1s, 1m, 1h or 24h)",
                ));
            }
        }
        let timeout = match &params.timeout {
            None => Duration::from_millis(100),
            Some(text) => parse_duration(text).ok_or_else(|| {
                ParamError::at(
                    "global.timeout",
                    format!("{text:?} is not a duration like 100ms or 1s"),
                )
            })?,
        };
        let domain = params.domain.unwrap_or_else(|| "policy-engine".into());
        if domain.is_empty() {
            return Err(ParamError::at("global.domain", "empty"));
        }
        Ok(Self {
            service: CalloutService {
                cluster: params.grpc.cluster,
                base_uri: format!("{scheme}://{authority}"),
            },
            domain,
            timeout,
            failure_mode: params.failure_mode,
        })
    }

    /// The `ShouldRateLimit` call for a request.
    pub(crate) fn call(&self, limits: &[Limit], buckets: &[Bucket], costs: &[u64]) -> Call {
        let descriptors = limits
            .iter()
            .zip(buckets)
            .zip(costs)
            .map(|((limit, bucket), cost)| descriptor(limit, bucket, *cost))
            .collect();
        // Every descriptor carries its own hits; the request's, for
        // services that read only that one, is the largest (never less
        // than a limit asked for). 0 means 1 in the protocol: a request
        // costing nothing anywhere sends 1 there and 0 per descriptor.
        let largest = costs.iter().copied().max().unwrap_or(1);
        let hits_addend = u32::try_from(largest.max(1)).unwrap_or(u32::MAX);
        let request = RateLimitRequest {
            domain: self.domain.clone(),
            descriptors,
            hits_addend,
        };
        Call {
            service: self.service.clone(),
            timeout: self.timeout,
            request: CallRequest::Grpc {
                service: "envoy.service.ratelimit.v3.RateLimitService".into(),
                method: "ShouldRateLimit".into(),
                message: request.encode_to_vec(),
                metadata: Vec::new(),
            },
        }
    }

    /// The service's decision, one report per limit, or why there is none.
    pub(crate) fn read(
        &self,
        answer: &Answer,
        limits: &[Limit],
        buckets: &[Bucket],
    ) -> Result<Vec<Report>, String> {
        let response = answer
            .as_ref()
            .map_err(|failure| format!("the rate limit service failed: {failure}"))?;
        let decoded = proto::RateLimitResponse::decode(response.body.as_slice())
            .map_err(|e| format!("the RateLimitResponse cannot be read: {e}"))?;
        let overall = Code::try_from(decoded.overall_code).unwrap_or(Code::Unknown);
        if overall == Code::Unknown {
            return Err("the rate limit service answered UNKNOWN".into());
        }
        // One status per descriptor, as Envoy's service answers; a
        // service that answers none is read by its overall code alone.
        if !decoded.statuses.is_empty() && decoded.statuses.len() != limits.len() {
            return Err(format!(
                "the rate limit service answered {} statuses for {} descriptors",
                decoded.statuses.len(),
                limits.len()
            ));
        }
        let mut reports = Vec::with_capacity(limits.len());
        for (i, (limit, bucket)) in limits.iter().zip(buckets).enumerate() {
            let rate = limit.rate(bucket);
            let status = decoded.statuses.get(i);
            let code = status.map_or(overall, |s| Code::try_from(s.code).unwrap_or(Code::Unknown));
            let allowed = match code {
                Code::Ok => true,
                Code::OverLimit => false,
                Code::Unknown => return Err(format!("limit {:?}: UNKNOWN", limit.name)),
            };
            let reset = status
                .and_then(|s| s.duration_until_reset)
                .map(|d| d.as_micros());
            reports.push(Report {
                allowed,
                quota: rate.requests,
                window_secs: rate.window_secs(),
                state: status.map(|s| State {
                    remaining: u64::from(s.limit_remaining),
                    reset_secs: secs_up(reset.unwrap_or(0)),
                }),
                retry_after_secs: if allowed {
                    None
                } else {
                    Some(reset.map_or(1, |micros| secs_up(micros).max(1)))
                },
            });
        }
        if overall == Code::OverLimit && reports.iter().all(|r| r.allowed) {
            // Over the limit overall, yet no descriptor said which: refuse.
            if let Some(first) = reports.first_mut() {
                first.allowed = false;
                first.retry_after_secs = Some(1);
            }
        }
        Ok(reports)
    }
}

/// The descriptor of one limit for one request.
fn descriptor(limit: &Limit, bucket: &Bucket, cost: u64) -> RateLimitDescriptor {
    let mut entries = vec![proto::Entry {
        key: "limit".into(),
        value: limit.name.clone(),
    }];
    match bucket {
        Bucket::Values(values) => entries.extend(values.iter().map(|(key, value)| proto::Entry {
            key: key.clone(),
            value: value.clone(),
        })),
        Bucket::Default => entries.push(proto::Entry {
            key: "default_bucket".into(),
            value: limit.default_bucket.clone(),
        }),
    }
    RateLimitDescriptor {
        entries,
        limit: limit.unit.map(|unit| RateLimitOverride {
            requests_per_unit: u32::try_from(limit.quota(bucket)).unwrap_or(u32::MAX),
            unit: unit as i32,
        }),
        hits_addend: Some(proto::UInt64Value { value: cost }),
    }
}
