//! kv-shortener: URL shortener service on a ringkv cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kv_apps_common::flags::{self, ClusterArgs, LimitArgs};
use kv_apps_common::ratelimit::{self, RateLimit};
use kv_apps_common::worker;
use kv_shortener::clicks::ClickCounter;
use kv_shortener::http::{self, AppState, Redirect};
use kv_shortener::store::Store;

/// Name of the app in worker-lease keys (`apps/shortener/workers/<id>`).
const APP_NAME: &str = "shortener";

/// URL shortener on a ringkv cluster.
///
/// POST /api/v1/data/shorten {"longUrl": "https://..."} returns
/// {"shortUrl", "code", "longUrl"}; GET /{code} redirects to the long URL;
/// GET /api/v1/stats/{code} returns the click count; GET / is an HTML form.
#[derive(Parser, Debug)]
#[command(name = "kv-shortener", version)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(flatten)]
    limits: LimitArgs,

    /// Address and port the HTTP server listens on.
    #[arg(long, env = "SHORTENER_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,

    /// Prefix of the short URLs returned by the API, such as
    /// https://sho.rt; defaults to http://<listen address>.
    #[arg(long, env = "SHORTENER_BASE_URL")]
    base_url: Option<String>,

    /// HTTP status of redirects: 301 (permanent, cached by browsers, so
    /// repeat visits are not counted) or 302 (every visit is counted).
    #[arg(long, value_enum, default_value = "301")]
    redirect: RedirectStatus,

    /// Seconds between flushes of the in-memory click counters to the
    /// cluster.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    clicks_flush_secs: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RedirectStatus {
    #[value(name = "301")]
    MovedPermanently,
    #[value(name = "302")]
    Found,
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

    let client = flags::connect(&args.cluster).await?;
    let lease = worker::claim_worker(&client, APP_NAME, args.cluster.worker_id)
        .await
        .context("failed to claim the worker id")?;
    let renewal = lease.spawn_renewal();

    let store = Store::new(client, lease.generator());
    let clicks = Arc::new(ClickCounter::default());
    let (stop_flusher, flusher_stop) = tokio::sync::watch::channel(false);
    let flusher = {
        let clicks = Arc::clone(&clicks);
        let store = store.clone();
        let interval = Duration::from_secs(args.clicks_flush_secs);
        tokio::spawn(async move { clicks.flush_every(&store, interval, flusher_stop).await })
    };

    let base_url = args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let state = Arc::new(AppState {
        store: store.clone(),
        clicks: Arc::clone(&clicks),
        base_url: base_url.trim_end_matches('/').to_string(),
        redirect: match args.redirect {
            RedirectStatus::MovedPermanently => Redirect::Permanent,
            RedirectStatus::Found => Redirect::Temporary,
        },
    });
    let limit = Arc::new(RateLimit::new(
        args.limits.rate_limit_per_second,
        args.limits.rate_limit_burst,
    ));
    let app = http::router(state).layer(ratelimit::layer(limit));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    tracing::info!(
        listen = %args.listen,
        %base_url,
        worker_id = lease.worker_id,
        "kv-shortener started"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("HTTP server failed")?;

    tracing::info!("kv-shortener stopping: flushing clicks and releasing the worker id");
    stop_flusher.send_replace(true);
    if let Err(error) = flusher.await {
        tracing::error!(%error, "click flush task failed");
    }
    let failed = clicks.flush(&store).await;
    if failed > 0 {
        tracing::error!(
            codes = failed,
            "click counts of some codes were lost at shutdown"
        );
    }
    renewal.abort();
    if let Err(error) = lease.release().await {
        tracing::error!(%error, "failed to release the worker lease; it expires by itself");
    }
    tracing::info!("kv-shortener stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
