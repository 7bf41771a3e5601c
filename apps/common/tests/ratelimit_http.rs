//! The rate-limit layer on a real HTTP server on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use kv_apps_common::ratelimit::{self, RateLimit};

async fn serve(limit: Arc<RateLimit>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(ratelimit::layer(limit));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (address, server)
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn layer_limits_with_headers() {
    // One token per second, so the bucket cannot refill between the
    // requests below unless a request takes longer than a second.
    let (address, server) = serve(Arc::new(RateLimit::new(1, 3))).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{address}/");

    let first = http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit"), "3");
    assert_eq!(header(&first, "x-ratelimit-remaining"), "2");

    let mut limited = None;
    for _ in 0..10 {
        let response = http.get(&url).send().await.unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let limited = limited.expect("no 429 within 11 requests at a burst of 3");
    assert_eq!(header(&limited, "x-ratelimit-limit"), "3");
    assert_eq!(header(&limited, "x-ratelimit-remaining"), "0");
    let retry_after: u64 = header(&limited, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "retry-after {retry_after}");
    let body = limited.text().await.unwrap();
    assert!(body.contains("too many requests"), "body {body:?}");

    server.abort();
}
