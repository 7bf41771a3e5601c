//! Retries of idempotent cluster requests, with exponential backoff within
//! a time budget.

use std::future::Future;
use std::time::{Duration, Instant};

/// Longest time an app keeps retrying one cluster request.
pub const RETRY_BUDGET: Duration = Duration::from_secs(20);

/// Runs `op` until it succeeds, retrying retryable errors within
/// [`RETRY_BUDGET`]. Only for idempotent requests.
pub async fn with_retries<T, F, Fut>(key: &str, mut op: F) -> Result<T, kv_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kv_client::Error>>,
{
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) => backoff_or_fail(key, error, started, attempt).await?,
        }
    }
}

/// Sleeps before the next attempt when `error` is retryable and the retry
/// budget allows; otherwise returns the error.
pub async fn backoff_or_fail(
    key: &str,
    error: kv_client::Error,
    started: Instant,
    attempt: u32,
) -> Result<(), kv_client::Error> {
    // A sibling cap is cleared by the read-merge-write of the next round.
    let retryable =
        error.is_retryable() || matches!(error, kv_client::Error::FailedPrecondition { .. });
    if !retryable || started.elapsed() >= RETRY_BUDGET {
        tracing::warn!(key, attempt, %error, "cluster request failed; giving up");
        return Err(error);
    }
    let pause = Duration::from_millis(50u64 << attempt.min(5));
    tracing::info!(key, attempt, %error, ?pause, "cluster request failed; retrying");
    tokio::time::sleep(pause).await;
    Ok(())
}
