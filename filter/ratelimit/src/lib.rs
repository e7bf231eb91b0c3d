//! `policy-ratelimit`: the rate limit service the `rate-limit` policy's
//! global mode asks, so one limit holds across every Envoy and shim replica.
//!
//! It serves `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
//! (Envoy's own protocol, so Envoy's `ratelimit` filter can use it too) and
//! counts in Redis. Each descriptor is a GCRA bucket ([`policy_rate_limit::gcra`],
//! the algorithm local mode uses), its rate given by the descriptor's
//! `limit` override, so the service needs no limits of its own: the
//! policy's configuration is the one place limits are written. A descriptor
//! without a `limit` is not limited (`OK`), as in Envoy's service for a
//! descriptor no limit matches.
//!
//! One request's buckets are checked and updated by one Lua script, atomic
//! in Redis: admitted only if every bucket has room, and a refused request
//! consumes nothing. Time is Redis's clock (`TIME`), so replicas of this
//! service on hosts whose clocks differ still agree. Keys expire once their
//! bucket is full again.
//!
//! Keys are `policy-ratelimit:{<domain hash>}:<descriptor hash>`, of fixed
//! size whatever a caller sends; the hash tag keeps a request's keys in one
//! Redis Cluster slot, as the script needs. Run Redis with
//! `maxmemory-policy noeviction` (or `volatile-ttl`): an evicted key is a
//! bucket that starts full again.
//!
//! When Redis cannot answer, the call fails with `UNAVAILABLE` and the
//! policy's `failure_mode` decides. Precision: exact per Redis. Across a
//! Redis failover, buckets the replica had not received yet (Redis
//! replicates asynchronously) start again full: a client can get up to one
//! more bucket's worth during the failover, never less service.

mod cli;

pub use cli::main;

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit as ProtoUnit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use policy_rate_limit::gcra::{Rate, Verdict, MICROS};
use policy_rate_limit::proto::Unit;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

/// The prefix of every Redis key this service writes.
const KEY_PREFIX: &str = "policy-ratelimit:";

/// The most descriptors one request may carry.
const MAX_DESCRIPTORS: usize = 64;

/// Checks every bucket, then takes the request from all of them or from
/// none. KEYS: the buckets. ARGV: per bucket, its emission interval, its
/// tolerance and the request's cost there (microseconds, microseconds,
/// hits). Returns Redis's time, whether the request was admitted, then each
/// bucket's TAT as it was before. The arithmetic is `Rate::decide`'s.
const SCRIPT: &str = r#"
-- Redis < 5 replicates scripts verbatim, which TIME makes unsafe.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local admitted = 1
local before = {}
local after = {}
for i, key in ipairs(KEYS) do
  local emission = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  before[i] = tat
  local next = math.max(tat, now) + cost * emission
  after[i] = next
  if next - now > tolerance then admitted = 0 end
end
if admitted == 1 then
  for i, key in ipairs(KEYS) do
    if after[i] > now then
      redis.call('SET', key, string.format('%d', after[i]), 'PX', math.ceil((after[i] - now) / 1000) + 1000)
    end
  end
end
local out = { string.format('%d', now), admitted }
for i = 1, #KEYS do out[i + 2] = string.format('%d', before[i]) end
return out
"#;

/// The service: Redis and the script.
#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    script: redis::Script,
}

/// One descriptor's bucket, as the script sees it.
struct Bucket {
    key: String,
    rate: Rate,
    unit: ProtoUnit,
    cost: u64,
}

impl RateLimiter {
    /// A service counting in the Redis at `url` (`redis://host:port/db`,
    /// `rediss://` for TLS). Nothing is connected yet: a Redis that is down
    /// at start is retried on each request, which fails meanwhile.
    pub fn new(url: &str, timeout: Duration) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self {
            redis: ConnectionManager::new_lazy_with_config(client, config)?,
            script: redis::Script::new(SCRIPT),
        })
    }

    async fn decide(&self, request: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_DESCRIPTORS} descriptors"
            )));
        }
        let request_hits = u64::from(request.hits_addend.max(1));
        let domain = hex(&Sha256::digest(request.domain.as_bytes())[..8]);
        let buckets: Vec<Option<Bucket>> = request
            .descriptors
            .iter()
            .map(|descriptor| bucket(&domain, descriptor, request_hits))
            .collect::<Result<_, _>>()?;
        let limited: Vec<&Bucket> = buckets.iter().flatten().collect();
        if limited.is_empty() {
            return Ok(RateLimitResponse {
                overall_code: Code::Ok as i32,
                statuses: buckets.iter().map(|_| unlimited()).collect(),
                ..Default::default()
            });
        }
        let mut invocation = self.script.prepare_invoke();
        for bucket in &limited {
            invocation
                .key(&bucket.key)
                .arg(bucket.rate.emission_us())
                .arg(bucket.rate.tolerance_us())
                .arg(bucket.cost);
        }
        let mut redis = self.redis.clone();
        let reply: Vec<String> = invocation
            .invoke_async(&mut redis)
            .await
            .map_err(|e| Status::unavailable(format!("redis: {e}")))?;
        let numbers: Vec<u64> = reply
            .iter()
            .map(|n| n.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| Status::internal("redis: the script's answer is not numbers"))?;
        let (Some(&now), Some(&admitted), Some(before)) =
            (numbers.first(), numbers.get(1), numbers.get(2..))
        else {
            return Err(Status::internal("redis: the script's answer is short"));
        };
        if before.len() != limited.len() {
            return Err(Status::internal("redis: the script's answer is short"));
        }
        let admitted = admitted == 1;
        let mut tats = before.iter();
        let statuses = buckets
            .iter()
            .map(|bucket| match bucket {
                None => unlimited(),
                Some(bucket) => {
                    let tat = tats.next().copied().unwrap_or(0);
                    let verdict = bucket.rate.decide(tat, now, bucket.cost);
                    // Refused overall: buckets that had room report it
                    // unconsumed.
                    let shown = if admitted || !verdict.allowed {
                        verdict
                    } else {
                        bucket.rate.decide(tat, now, 0)
                    };
                    status(bucket, &shown, verdict.allowed)
                }
            })
            .collect();
        Ok(RateLimitResponse {
            overall_code: if admitted { Code::Ok } else { Code::OverLimit } as i32,
            statuses,
            ..Default::default()
        })
    }
}

/// The bucket of a descriptor with a `limit`; `None` for one without (not
/// limited). A limit of 0 requests refuses everything, as in Envoy's
/// service; a unit this service does not know is an error, never no limit.
fn bucket(
    domain: &str,
    descriptor: &RateLimitDescriptor,
    request_hits: u64,
) -> Result<Option<Bucket>, Status> {
    let Some(limit) = descriptor.limit.as_ref() else {
        return Ok(None);
    };
    let unknown = || Status::invalid_argument(format!("unknown rate limit unit {}", limit.unit));
    let unit = ProtoUnit::try_from(limit.unit).map_err(|_| unknown())?;
    let seconds = Unit::try_from(limit.unit)
        .ok()
        .and_then(Unit::seconds)
        .ok_or_else(unknown)?;
    // Fixed-size keys, whatever the caller sends: the entries' hash, each
    // part length-prefixed so no value can pose as two. The domain's hash
    // is a hash tag, so a request's keys share a Redis Cluster slot.
    let mut entries = Sha256::new();
    for entry in &descriptor.entries {
        for part in [&entry.key, &entry.value] {
            entries.update((part.len() as u64).to_be_bytes());
            entries.update(part.as_bytes());
        }
    }
    Ok(Some(Bucket {
        key: format!("{KEY_PREFIX}{{{domain}}}:{}", hex(&entries.finalize())),
        rate: Rate {
            // 0 requests: a bucket that never admits (a cost above its size).
            requests: u64::from(limit.requests_per_unit),
            period_us: seconds * MICROS,
        },
        unit,
        cost: descriptor
            .hits_addend
            .map_or(request_hits, |hits| hits.value),
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unlimited() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

fn status(bucket: &Bucket, verdict: &Verdict, allowed: bool) -> DescriptorStatus {
    let until = if allowed {
        verdict.reset_us
    } else {
        verdict.retry_after_us
    };
    DescriptorStatus {
        code: if allowed { Code::Ok } else { Code::OverLimit } as i32,
        current_limit: Some(RateLimit {
            requests_per_unit: u32::try_from(bucket.rate.requests).unwrap_or(u32::MAX),
            unit: bucket.unit as i32,
            ..Default::default()
        }),
        limit_remaining: u32::try_from(verdict.remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(until / MICROS).unwrap_or(i64::MAX),
            nanos: i32::try_from((until % MICROS) * 1_000).unwrap_or(0),
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        match self.decide(request).await {
            Ok(response) => Ok(Response::new(response)),
            Err(status) => {
                log::warn!("ShouldRateLimit failed: {}", status.message());
                Err(status)
            }
        }
    }
}
