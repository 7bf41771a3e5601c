//! kv-shortener against a real 3-node cluster: the HTTP API, redirects,
//! click counts, the rate limit, duplicate worker ids, two instances racing
//! on one URL, and a node killed while the service runs.
//!
//! Needs the kv-node binary next to kv-shortener (`cargo build -p kv-node`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use kv_client::ids::{IdGenerator, SystemClock};
use kv_shortener::base62;
use kv_shortener::store::{index_key, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{http_client, spawn_shortener, start_shortener, TestCluster};

/// Limits far above the request rate of these tests.
const HIGH_LIMITS: [&str; 4] = [
    "--rate-limit-per-second",
    "100000",
    "--rate-limit-burst",
    "100000",
];

/// Sends `POST /api/v1/data/shorten` and returns the status and JSON body.
async fn shorten(http: &reqwest::Client, address: &str, long_url: &str) -> (StatusCode, Value) {
    let response = http
        .post(format!("http://{address}/api/v1/data/shorten"))
        .json(&json!({ "longUrl": long_url }))
        .send()
        .await
        .expect("send shorten request");
    let status = response.status();
    let body = response.json::<Value>().await.expect("JSON body");
    (status, body)
}

/// Shortens `long_url` and returns the code, asserting success.
async fn shorten_code(http: &reqwest::Client, address: &str, long_url: &str) -> String {
    let (status, body) = shorten(http, address, long_url).await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "shorten {long_url} at {address}: status {status}, body {body}"
    );
    body["code"].as_str().expect("code in body").to_string()
}

/// Sends `GET /{code}` and returns the status and Location header.
async fn follow(http: &reqwest::Client, address: &str, code: &str) -> (StatusCode, Option<String>) {
    let response = http
        .get(format!("http://{address}/{code}"))
        .send()
        .await
        .expect("send redirect request");
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_string());
    (response.status(), location)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortener_api_on_cluster() {
    let cluster = TestCluster::start(3).await;
    let root = cluster.root.path();
    let endpoints = cluster.addresses();
    let http = http_client();

    let mut args_301 = HIGH_LIMITS.to_vec();
    args_301.extend(["--clicks-flush-secs", "1"]);
    let mut args_302 = args_301.clone();
    args_302.extend(["--redirect", "302"]);
    let first = start_shortener(root, &endpoints, 1, &args_301).await;
    let second = start_shortener(root, &endpoints, 2, &args_302).await;
    let a = first.address.as_str();
    let b = second.address.as_str();

    // Shorten: 201 with a short URL under the base URL.
    let (status, body) = shorten(&http, a, "https://Example.com/docs?page=1").await;
    assert_eq!(status, StatusCode::CREATED, "body {body}");
    let code = body["code"].as_str().unwrap().to_string();
    assert!(code.len() >= 7, "code {code} is shorter than 7 characters");
    assert!(base62::decode(&code).is_some(), "code {code} is not base62");
    assert_eq!(body["shortUrl"], format!("http://{a}/{code}"));
    assert_eq!(body["longUrl"], "https://example.com/docs?page=1");

    // Redirects: 301 by default, 302 with --redirect 302.
    let (status, location) = follow(&http, a, &code).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(location.as_deref(), Some("https://example.com/docs?page=1"));
    let (status, location) = follow(&http, b, &code).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(location.as_deref(), Some("https://example.com/docs?page=1"));

    // The same URL twice, through either instance, gives one code.
    let (status, again) = shorten(&http, a, "https://example.com/docs?page=1").await;
    assert_eq!(status, StatusCode::OK, "body {again}");
    assert_eq!(again["code"], code.as_str());
    assert_eq!(
        shorten_code(&http, b, "https://example.com/docs?page=1").await,
        code
    );
    let other = shorten_code(&http, b, "https://example.com/other").await;
    assert_ne!(other, code, "different URLs got one code");

    // Bad input: 400 with a message.
    for bad in [
        "ftp://example.com/file",
        "not a url",
        "",
        "javascript:alert(1)",
    ] {
        let (status, body) = shorten(&http, a, bad).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "longUrl {bad:?}: body {body}"
        );
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("longUrl"),
            "longUrl {bad:?}: message {message:?}"
        );
    }
    let response = http
        .post(format!("http://{a}/api/v1/data/shorten"))
        .header("content-type", "application/json")
        .body("{\"url\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Unknown codes: 404, for valid and invalid base62.
    for unknown in ["zzzzzzzzz", "bad.code", "0000"] {
        let (status, _) = follow(&http, a, unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "code {unknown:?}");
    }

    // The HTML form and its form-encoded post.
    let page = http.get(format!("http://{a}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("<form"));
    let posted = http
        .post(format!("http://{a}/api/v1/data/shorten"))
        .form(&[("longUrl", "https://example.com/docs?page=1")])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    assert!(posted.text().await.unwrap().contains(&code));

    // Clicks: one redirect through each instance above, two more here. The
    // total is the sum of both instances' flushed counters.
    follow(&http, a, &code).await;
    follow(&http, b, &code).await;
    let stats_url = format!("http://{b}/api/v1/stats/{code}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let stats: Value = http
            .get(&stats_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["clicks"] == 4 && stats["unflushedClicks"] == 0 {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "clicks not flushed within 30 s: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last["longUrl"], "https://example.com/docs?page=1");

    // A second process with a live worker id exits at start.
    let mut duplicate = spawn_shortener(root, &endpoints, 1, &HIGH_LIMITS);
    let status = duplicate
        .wait_exit(Duration::from_secs(30))
        .expect("a duplicate worker id must make kv-shortener exit");
    assert!(!status.success());
    let log = duplicate.log();
    assert!(
        log.contains("worker id 1 of app shortener is in use"),
        "log:\n{log}"
    );

    // Two instances race on one new URL: both read an empty index, both
    // create a code and both index it, which leaves two siblings.
    let client = cluster.client().await;
    let racer = |worker_id| {
        let generator = IdGenerator::new(worker_id, Arc::new(SystemClock), 0).unwrap();
        Store::new(client.clone(), Arc::new(generator))
    };
    let (racer_one, racer_two) = (racer(900), racer(901));
    let raced_url = "https://example.com/raced";
    let read_one = racer_one.read_index(raced_url).await.unwrap();
    let read_two = racer_two.read_index(raced_url).await.unwrap();
    assert!(read_one.entries.is_empty());
    let entry_one = racer_one.create_code(raced_url).await.unwrap();
    let entry_two = racer_two.create_code(raced_url).await.unwrap();
    let first_written = racer_one
        .add_index_entry(raced_url, &entry_one, &read_one.context)
        .await
        .unwrap();
    assert_eq!(first_written, entry_one);
    let second_written = racer_two
        .add_index_entry(raced_url, &entry_two, &read_two.context)
        .await
        .unwrap();
    let canonical = if entry_one.id < entry_two.id {
        &entry_one
    } else {
        &entry_two
    };

    for entry in [&entry_one, &entry_two] {
        for address in [a, b] {
            let (status, location) = follow(&http, address, &entry.code).await;
            assert!(status.is_redirection(), "code {} at {address}", entry.code);
            assert_eq!(location.as_deref(), Some(raced_url));
        }
    }
    assert_eq!(shorten_code(&http, a, raced_url).await, canonical.code);
    assert_eq!(shorten_code(&http, b, raced_url).await, canonical.code);
    assert_eq!(
        &second_written, canonical,
        "the later writer must see the race"
    );
    let index = client.get(index_key(raced_url)).await.unwrap();
    assert_eq!(index.values.len(), 1, "index siblings were not resolved");

    // Siblings that no writer resolved (say, both instances crashed right
    // after their index writes) are resolved by the next read.
    let unresolved_url = "https://example.com/unresolved";
    let entry_three = racer_one.create_code(unresolved_url).await.unwrap();
    let entry_four = racer_two.create_code(unresolved_url).await.unwrap();
    for entry in [&entry_four, &entry_three] {
        let value = serde_json::to_vec(entry).unwrap();
        client
            .put(index_key(unresolved_url), value, None)
            .await
            .unwrap();
    }
    let index = client.get(index_key(unresolved_url)).await.unwrap();
    assert_eq!(
        index.values.len(),
        2,
        "blind writes must leave two siblings"
    );
    assert!(entry_three.id < entry_four.id);
    assert_eq!(
        shorten_code(&http, b, unresolved_url).await,
        entry_three.code
    );
    assert_eq!(
        shorten_code(&http, a, unresolved_url).await,
        entry_three.code
    );
    let index = client.get(index_key(unresolved_url)).await.unwrap();
    assert_eq!(
        index.values.len(),
        1,
        "a read must write back the canonical entry"
    );

    // The rate limit: 429 with Retry-After and the limit headers.
    let limited = start_shortener(
        root,
        &endpoints,
        3,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "3"],
    )
    .await;
    let mut rejected = None;
    for _ in 0..20 {
        let response = http
            .get(format!("http://{}/{code}", limited.address))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            rejected = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(header(&response, "x-ratelimit-limit"), "3");
    }
    let rejected = rejected.expect("no 429 within 20 requests at a burst of 3");
    assert_eq!(header(&rejected, "x-ratelimit-limit"), "3");
    assert_eq!(header(&rejected, "x-ratelimit-remaining"), "0");
    let retry_after: u64 = header(&rejected, "retry-after").parse().unwrap();
    assert!(retry_after >= 1, "retry-after {retry_after}");

    drop(limited);
    let mut first = first;
    let mut second = second;
    assert!(first.stop().unwrap().success(), "log:\n{}", first.log());
    assert!(second.stop().unwrap().success(), "log:\n{}", second.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortener_survives_node_kill() {
    let mut cluster = TestCluster::start(3).await;
    let endpoints = cluster.addresses();
    let http = http_client();
    let mut shortener = start_shortener(cluster.root.path(), &endpoints, 7, &HIGH_LIMITS).await;
    let address = shortener.address.clone();

    let before: Vec<(String, String)> = {
        let mut codes = Vec::new();
        for index in 0..5 {
            let long_url = format!("https://example.com/before/{index}");
            codes.push((shorten_code(&http, &address, &long_url).await, long_url));
        }
        codes
    };

    cluster.nodes[1].kill();

    // Every request must succeed with one of three nodes down.
    for index in 0..10 {
        let long_url = format!("https://example.com/after/{index}");
        let code = shorten_code(&http, &address, &long_url).await;
        let (status, location) = follow(&http, &address, &code).await;
        assert_eq!(status, StatusCode::MOVED_PERMANENTLY, "new code {code}");
        assert_eq!(location.as_deref(), Some(long_url.as_str()));
    }
    for (code, long_url) in &before {
        let (status, location) = follow(&http, &address, code).await;
        assert_eq!(status, StatusCode::MOVED_PERMANENTLY, "old code {code}");
        assert_eq!(location.as_deref(), Some(long_url.as_str()));
        assert_eq!(&shorten_code(&http, &address, long_url).await, code);
    }

    assert!(
        shortener.stop().unwrap().success(),
        "log:\n{}",
        shortener.log()
    );
}
