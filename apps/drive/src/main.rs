//! kv-drive: a drive metadata service that stores folders, files split
//! into SHA-256 blocks, revisions, shares and per-user change feeds in a
//! ringkv cluster. See README.md for the API, the key layout and the
//! consistency of each call.

mod api;
mod feed;
mod files;
mod model;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use kv_apps_common::flags::{self, ClusterArgs, LimitArgs};
use kv_apps_common::ratelimit::{self, RateLimit};
use kv_apps_common::worker::claim_worker;

/// Default block size: 1 MiB, the node's default `--max-value-bytes`. The
/// node rejects only values longer than that limit, so a full block fits.
const DEFAULT_BLOCK_BYTES: usize = 1024 * 1024;

/// Drive metadata service on a ringkv cluster.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(flatten)]
    limits: LimitArgs,

    /// Address the HTTP server listens on.
    #[arg(long, env = "KV_DRIVE_LISTEN", default_value = "127.0.0.1:8083")]
    listen: SocketAddr,

    /// Size of the blocks files are split into, in bytes. Keep it at or
    /// below the nodes' --max-value-bytes.
    #[arg(long, default_value_t = DEFAULT_BLOCK_BYTES,
          value_parser = parse_block_bytes)]
    block_bytes: usize,

    /// Largest accepted upload, in bytes (default 1 GiB).
    #[arg(long, default_value_t = 1 << 30)]
    max_file_bytes: u64,

    /// Age in milliseconds a change must reach before the change feed
    /// returns it, so that a change recorded slightly late is not skipped
    /// by a cursor that moved past its id.
    #[arg(long, default_value_t = 2000)]
    feed_settle_ms: u64,
}

fn parse_block_bytes(text: &str) -> Result<usize, String> {
    let bytes: usize = text
        .parse()
        .map_err(|_| format!("invalid block size {text:?}: expected a number of bytes"))?;
    if !(1024..=DEFAULT_BLOCK_BYTES).contains(&bytes) {
        return Err(format!(
            "invalid block size {bytes}: expected 1024 to {DEFAULT_BLOCK_BYTES} bytes"
        ));
    }
    Ok(bytes)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let client = flags::connect(&args.cluster)
        .await
        .context("failed to connect to the ringkv cluster")?;
    let lease = claim_worker(&client, "drive", args.cluster.worker_id)
        .await
        .with_context(|| format!("failed to claim worker id {}", args.cluster.worker_id))?;
    // The renewal stops when `release` runs at shutdown.
    lease.spawn_renewal();

    let state = Arc::new(api::AppState {
        store: store::DriveStore::new(client),
        ids: lease.generator(),
        block_bytes: args.block_bytes,
        max_file_bytes: args.max_file_bytes,
        feed_settle_ms: args.feed_settle_ms,
    });
    let limit = Arc::new(RateLimit::new(
        args.limits.rate_limit_per_second,
        args.limits.rate_limit_burst,
    ));
    let app = api::router(state).layer(ratelimit::layer(limit));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(
        address = %local,
        worker_id = args.cluster.worker_id,
        block_bytes = args.block_bytes,
        "kv-drive listening"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        shutdown_signal().await;
        tracing::info!("shutting down");
    })
    .await
    .context("HTTP server failed")?;

    if let Err(error) = lease.release().await {
        tracing::warn!(%error, worker_id = args.cluster.worker_id, "failed to release the worker lease");
    }
    tracing::info!("kv-drive stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
