//! Per-client rate limiting for the HTTP layer of the apps.
//!
//! Each client IP address gets a token bucket (the GCRA of the `governor`
//! crate) that refills at `per_second` requests per second and has room for
//! at most `burst` requests. Every response carries `X-Ratelimit-Limit` (the bucket
//! size) and `X-Ratelimit-Remaining` (requests left in the bucket). A request
//! over the limit gets `429 Too Many Requests` with `Retry-After` in whole
//! seconds, rounded up, and never reaches the handler.
//!
//! The key is the peer address of the TCP connection, so serve the router
//! with `into_make_service_with_connect_info::<SocketAddr>()`:
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use kv_apps_common::ratelimit::{self, RateLimit};
//!
//! # async fn example() -> std::io::Result<()> {
//! let limit = Arc::new(RateLimit::new(50, 100));
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(ratelimit::layer(limit));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Header with the bucket size of the client (the burst).
pub const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Header with the number of requests left in the client's bucket.
pub const REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// Number of checks between two sweeps that drop the buckets of idle
/// clients, which bounds the memory used by clients that went away.
const SWEEP_EVERY_CHECKS: u64 = 4096;

type KeyedLimiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// Token buckets of all clients, keyed by IP address.
pub struct RateLimit {
    limiter: KeyedLimiter,
    clock: DefaultClock,
    per_second: u32,
    burst: u32,
    checks: AtomicU64,
    warned_missing_peer: AtomicBool,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

/// Outcome of one rate-limit check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The request may proceed; `remaining` requests are left in the bucket.
    Allowed { limit: u32, remaining: u32 },
    /// The request is over the limit; the bucket has a token again after
    /// `retry_after_secs` seconds (rounded up, at least 1).
    Limited { limit: u32, retry_after_secs: u64 },
}

impl RateLimit {
    /// Creates buckets that refill at `per_second` requests per second and
    /// hold at most `burst` requests. A zero in either is raised to 1.
    pub fn new(per_second: u32, burst: u32) -> RateLimit {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RateLimit {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            per_second: per_second.get(),
            burst: burst.get(),
            checks: AtomicU64::new(0),
            warned_missing_peer: AtomicBool::new(false),
        }
    }

    /// Returns the refill rate in requests per second.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Returns the bucket size in requests.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Takes one token from the bucket of `client`.
    pub fn check(&self, client: IpAddr) -> Decision {
        let checks = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if checks.is_multiple_of(SWEEP_EVERY_CHECKS) {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }

        match self.limiter.check_key(&client) {
            Ok(snapshot) => Decision::Allowed {
                limit: self.burst,
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Decision::Limited {
                    limit: self.burst,
                    retry_after_secs: retry_after_secs.max(1),
                }
            }
        }
    }

    /// Returns the client address of a request, from the `ConnectInfo` that
    /// `into_make_service_with_connect_info` sets.
    fn client_of(&self, request: &Request) -> IpAddr {
        if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
            return peer.ip();
        }
        if !self.warned_missing_peer.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "request has no peer address; serve the router with \
                 into_make_service_with_connect_info::<SocketAddr>(). \
                 All such requests share one rate-limit bucket"
            );
        }
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// Returns a layer that applies `limit` to every request of a router.
pub fn layer(limit: Arc<RateLimit>) -> RateLimitLayer {
    RateLimitLayer { limit }
}

/// Tower layer that wraps a service in [`RateLimitService`].
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limit: Arc<RateLimit>,
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService {
            inner,
            limit: Arc::clone(&self.limit),
        }
    }
}

/// Service that checks each request against the client's bucket before
/// calling the inner service.
#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    limit: Arc<RateLimit>,
}

impl<S> tower_service::Service<Request> for RateLimitService<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let client = self.limit.client_of(&request);
        match self.limit.check(client) {
            Decision::Limited {
                limit,
                retry_after_secs,
            } => {
                tracing::debug!(%client, retry_after_secs, "request over the rate limit");
                let response = too_many_requests(limit, retry_after_secs);
                Box::pin(async move { Ok(response) })
            }
            Decision::Allowed { limit, remaining } => {
                // The clone that was polled ready serves this request, and
                // the fresh clone stays behind for the next poll_ready.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let mut response = inner.call(request).await?;
                    set_limit_headers(response.headers_mut(), limit, remaining);
                    Ok(response)
                })
            }
        }
    }
}

fn set_limit_headers(headers: &mut HeaderMap, limit: u32, remaining: u32) {
    headers.insert(LIMIT_HEADER, HeaderValue::from(limit));
    headers.insert(REMAINING_HEADER, HeaderValue::from(remaining));
}

fn too_many_requests(limit: u32, retry_after_secs: u64) -> Response {
    let message = format!(
        "too many requests: over the limit of this client IP address; retry after \
         {retry_after_secs} s\n"
    );
    let mut response = (StatusCode::TOO_MANY_REQUESTS, message).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs),
    );
    set_limit_headers(headers, limit, 0);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited() {
        let limit = RateLimit::new(1, 3);
        let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
        let remaining: Vec<Decision> = (0..3).map(|_| limit.check(client)).collect();
        assert_eq!(
            remaining,
            vec![
                Decision::Allowed {
                    limit: 3,
                    remaining: 2
                },
                Decision::Allowed {
                    limit: 3,
                    remaining: 1
                },
                Decision::Allowed {
                    limit: 3,
                    remaining: 0
                },
            ]
        );
        let Decision::Limited {
            limit: bucket,
            retry_after_secs,
        } = limit.check(client)
        else {
            panic!("fourth request within a second must be limited");
        };
        assert_eq!(bucket, 3);
        assert_eq!(retry_after_secs, 1);
    }

    #[test]
    fn clients_have_own_buckets() {
        let limit = RateLimit::new(1, 1);
        let first = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let second = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        assert!(matches!(limit.check(first), Decision::Allowed { .. }));
        assert!(matches!(limit.check(first), Decision::Limited { .. }));
        assert!(matches!(limit.check(second), Decision::Allowed { .. }));
    }

    #[test]
    fn zero_settings_raised_to_one() {
        let limit = RateLimit::new(0, 0);
        assert_eq!(limit.per_second(), 1);
        assert_eq!(limit.burst(), 1);
    }
}
