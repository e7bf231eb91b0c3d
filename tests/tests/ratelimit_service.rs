//! The rate limit service's gRPC contract (`policy-ratelimit`, the real
//! binary, counting in a real Redis): what `ShouldRateLimit` answers, as
//! any client of Envoy's rate limit protocol reads it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use integration_tests::ratelimit::{RateLimitService, Redis};
use tonic::transport::Channel;

async fn client(service: &RateLimitService) -> RateLimitServiceClient<Channel> {
    let channel = Channel::from_shared(service.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    RateLimitServiceClient::new(channel)
}

fn descriptor(
    entries: &[(&str, &str)],
    limit: Option<(u32, Unit)>,
    hits: Option<u64>,
) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect(),
        limit: limit.map(|(requests_per_unit, unit)| RateLimitOverride {
            requests_per_unit,
            unit: unit as i32,
        }),
        hits_addend: hits.map(|value| envoy_types::pb::google::protobuf::UInt64Value { value }),
        ..Default::default()
    }
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    descriptors: Vec<RateLimitDescriptor>,
    hits_addend: u32,
) -> Result<RateLimitResponse, tonic::Status> {
    client
        .should_rate_limit(RateLimitRequest {
            domain: "contract".into(),
            descriptors,
            hits_addend,
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_limit_admits_exactly_its_quota_and_reports_what_is_left() {
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(&redis.url()).unwrap();
    let mut client = client(&service).await;
    let per_minute = || {
        descriptor(
            &[("limit", "l"), ("user", "alice")],
            Some((3, Unit::Minute)),
            None,
        )
    };
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let answer = ask(&mut client, vec![per_minute()], 0).await.unwrap();
        assert_eq!(answer.overall_code, Code::Ok as i32);
        let status = &answer.statuses[0];
        assert_eq!(status.code, Code::Ok as i32);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (3, Unit::Minute as i32)
        );
        remaining.push(status.limit_remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    let over = ask(&mut client, vec![per_minute()], 0).await.unwrap();
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].code, Code::OverLimit as i32);
    // The next request's room comes back in a third of a minute.
    let retry = over.statuses[0].duration_until_reset.unwrap();
    assert!((19..=20).contains(&retry.seconds), "{retry:?}");
    // Another entry value is another bucket; another domain too.
    let bob = descriptor(
        &[("limit", "l"), ("user", "bob")],
        Some((3, Unit::Minute)),
        None,
    );
    assert_eq!(
        ask(&mut client, vec![bob], 0).await.unwrap().overall_code,
        Code::Ok as i32
    );
    let other_domain = client
        .should_rate_limit(RateLimitRequest {
            domain: "elsewhere".into(),
            descriptors: vec![per_minute()],
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other_domain.overall_code, Code::Ok as i32);
}

#[tokio::test]
async fn every_descriptor_must_have_room_and_a_refusal_takes_nothing() {
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(&redis.url()).unwrap();
    let mut client = client(&service).await;
    let small = || descriptor(&[("limit", "small")], Some((1, Unit::Hour)), None);
    let large = || descriptor(&[("limit", "large")], Some((10, Unit::Hour)), None);
    let unlimited = || descriptor(&[("limit", "none")], None, None);
    let first = ask(&mut client, vec![small(), large(), unlimited()], 0)
        .await
        .unwrap();
    assert_eq!(first.overall_code, Code::Ok as i32);
    assert_eq!(first.statuses.len(), 3);
    assert_eq!(first.statuses[2].code, Code::Ok as i32);
    assert!(
        first.statuses[2].current_limit.is_none(),
        "no limit, not limited"
    );
    let refused = ask(&mut client, vec![small(), large()], 0).await.unwrap();
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    assert_eq!(refused.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(refused.statuses[1].code, Code::Ok as i32);
    assert_eq!(
        refused.statuses[1].limit_remaining, 9,
        "the refusal took nothing from `large`"
    );
    let alone = ask(&mut client, vec![large()], 0).await.unwrap();
    assert_eq!(alone.statuses[0].limit_remaining, 8);
}

#[tokio::test]
async fn hits_count_per_request_or_per_descriptor() {
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(&redis.url()).unwrap();
    let mut client = client(&service).await;
    let bucket = |hits| descriptor(&[("limit", "cost")], Some((10, Unit::Day)), hits);
    let answer = ask(&mut client, vec![bucket(None)], 4).await.unwrap();
    assert_eq!(answer.statuses[0].limit_remaining, 6);
    let answer = ask(&mut client, vec![bucket(Some(5))], 4).await.unwrap();
    assert_eq!(
        answer.statuses[0].limit_remaining, 1,
        "the descriptor's hits win"
    );
    let answer = ask(&mut client, vec![bucket(Some(2))], 0).await.unwrap();
    assert_eq!(answer.overall_code, Code::OverLimit as i32);
    let answer = ask(&mut client, vec![bucket(Some(0))], 0).await.unwrap();
    assert_eq!(
        (answer.overall_code, answer.statuses[0].limit_remaining),
        (Code::Ok as i32, 1)
    );
}

#[tokio::test]
async fn without_redis_calls_fail_unavailable_and_recover_when_it_returns() {
    let mut redis = Redis::start().unwrap();
    let service = RateLimitService::start(&redis.url()).unwrap();
    let mut client = client(&service).await;
    let bucket = || descriptor(&[("limit", "r")], Some((5, Unit::Minute)), None);
    assert!(ask(&mut client, vec![bucket()], 0).await.is_ok());
    redis.stop();
    let failed = ask(&mut client, vec![bucket()], 0).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    redis.restart().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match ask(&mut client, vec![bucket()], 0).await {
            Ok(answer) => {
                // A restarted Redis is empty: a full bucket again.
                assert_eq!(answer.statuses[0].limit_remaining, 4);
                break;
            }
            Err(status) => assert!(std::time::Instant::now() < deadline, "{status:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(&redis.url()).unwrap();
    let channel = Channel::from_shared(service.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for name in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let status = health
            .check(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {name:?}");
    }
}

#[tokio::test]
async fn a_zero_limit_refuses_and_an_unknown_unit_is_an_error_not_no_limit() {
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(&redis.url()).unwrap();
    let mut client = client(&service).await;
    let zero = descriptor(&[("limit", "closed")], Some((0, Unit::Second)), None);
    let answer = ask(&mut client, vec![zero], 0).await.unwrap();
    assert_eq!(answer.overall_code, Code::OverLimit as i32);
    let mut unknown = descriptor(&[("limit", "odd")], Some((5, Unit::Second)), None);
    if let Some(limit) = unknown.limit.as_mut() {
        limit.unit = 42;
    }
    let failed = ask(&mut client, vec![unknown], 0).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::InvalidArgument, "{failed:?}");
}
