//! kv-chat: a chat history service that stores channels, messages and read
//! cursors in a ringkv cluster. See README.md for the API, the key layout
//! and the consistency of each call.

mod api;
mod model;
mod store;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use kv_apps_common::flags::{self, ClusterArgs, LimitArgs};
use kv_apps_common::ratelimit::{self, RateLimit};
use kv_apps_common::worker::claim_worker;

/// Default width of a history bucket: one hour.
const DEFAULT_BUCKET_MS: u64 = 3_600_000;

/// Notices of appended messages buffered for each slow stream; a stream
/// that falls further behind polls the cluster at once.
const STREAM_NOTICE_CAPACITY: usize = 1024;

/// Chat history service on a ringkv cluster.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(flatten)]
    limits: LimitArgs,

    /// Address the HTTP server listens on.
    #[arg(long, env = "KV_CHAT_LISTEN", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,

    /// Width of the history buckets of new channels, in milliseconds.
    /// Existing channels keep the width they were created with.
    #[arg(long, default_value_t = DEFAULT_BUCKET_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    bucket_ms: u64,
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
    let lease = claim_worker(&client, "chat", args.cluster.worker_id)
        .await
        .with_context(|| format!("failed to claim worker id {}", args.cluster.worker_id))?;
    // The renewal stops when `release` runs at shutdown.
    lease.spawn_renewal();

    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let state = Arc::new(api::AppState {
        store: store::ChatStore::new(client),
        ids: lease.generator(),
        bucket_ms: args.bucket_ms,
        appended: tokio::sync::broadcast::channel(STREAM_NOTICE_CAPACITY).0,
        shutdown,
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
    tracing::info!(address = %local, worker_id = args.cluster.worker_id, "kv-chat listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        // Open WebSocket streams would keep the graceful shutdown waiting.
        shutdown_sender.send_replace(true);
    })
    .await
    .context("HTTP server failed")?;

    if let Err(error) = lease.release().await {
        tracing::warn!(%error, worker_id = args.cluster.worker_id, "failed to release the worker lease");
    }
    tracing::info!("kv-chat stopped");
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
