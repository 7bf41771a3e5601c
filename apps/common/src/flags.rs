//! Command-line flags shared by the apps.

use clap::Args;

use kv_client::ids::MAX_WORKER_ID;

/// Flags that locate the cluster and name this process's worker id.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Comma-separated host:port addresses of ringkv nodes. The client
    /// fetches the ring from the first one that replies.
    #[arg(
        long,
        env = "RINGKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7401"
    )]
    pub endpoints: Vec<String>,

    /// Worker id of this process, 0..=1023, part of every id it issues.
    /// Give each running instance of an app its own id. The default 0 suits
    /// a single instance. A second instance with the same id is rejected at
    /// start while the first one's lease in the cluster is live.
    #[arg(
        long,
        env = "RINGKV_WORKER_ID",
        default_value_t = 0,
        value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_WORKER_ID))
    )]
    pub worker_id: u16,
}

/// Flags of the per-client rate limit.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Requests per second per client IP address (token refill rate).
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,

    /// Maximum burst per client IP address, in requests (token bucket size).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,
}

/// Connects a client to the endpoints of `args`.
pub async fn connect(args: &ClusterArgs) -> anyhow::Result<kv_client::Client> {
    let client = kv_client::Client::connect(&args.endpoints)
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "failed to create a ringkv client for {}: {error}",
                args.endpoints.join(",")
            )
        })?;
    Ok(client)
}
