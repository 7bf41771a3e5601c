//! kv-chat against a real 3-node cluster: two app instances write to one
//! channel at once, also while a node is killed, and the paged history and
//! the since-cursor reads must return every message exactly once, in order.
//!
//! Needs the kv-node binary next to kv-chat (`cargo build -p kv-node`).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{start_chat, wait_until, TestCluster};

/// Messages each writer sends per round.
const MESSAGES_PER_WRITER: usize = 30;
/// Narrow buckets spread a round over many buckets, so the reads walk the
/// bucket index instead of finding everything in one bucket.
const TEST_BUCKET_MS: &str = "200";
/// Limits far above the test's request rate.
const HIGH_LIMITS: [&str; 4] = [
    "--rate-limit-per-second",
    "100000",
    "--rate-limit-burst",
    "100000",
];

/// A message as the test reads it back.
#[derive(Clone, Debug)]
struct Received {
    id: u64,
    content: String,
}

fn id_of(value: &Value) -> u64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("id {value} is not a string"))
        .parse()
        .unwrap_or_else(|_| panic!("id {value} is not decimal"))
}

fn received(message: &Value) -> Received {
    Received {
        id: id_of(&message["message_id"]),
        content: message["content"]
            .as_str()
            .expect("content is a string")
            .to_string(),
    }
}

async fn create_group(http: &reqwest::Client, base: &str, members: &[&str]) -> u64 {
    let response = http
        .post(format!("{base}/api/v1/channels"))
        .json(&json!({ "kind": "group", "members": members }))
        .send()
        .await
        .expect("create channel request");
    assert_eq!(response.status(), StatusCode::CREATED);
    let channel: Value = response.json().await.expect("channel JSON");
    id_of(&channel["channel_id"])
}

/// Sends `count` messages `<tag>-<i>` one after the other and bumps
/// `sent` after each; panics on any reply other than 201.
async fn write_messages(
    http: reqwest::Client,
    base: String,
    channel: u64,
    user: &'static str,
    tag: String,
    count: usize,
    sent: Arc<AtomicUsize>,
) {
    for index in 0..count {
        let content = format!("{tag}-{index}");
        let response = http
            .post(format!("{base}/api/v1/channels/{channel}/messages"))
            .json(&json!({ "user_id": user, "content": content }))
            .send()
            .await
            .unwrap_or_else(|error| panic!("send {content}: {error}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "send {content}: {body}");
        sent.fetch_add(1, Ordering::SeqCst);
    }
}

/// Reads the whole history newest first in pages of `page` messages.
async fn read_history(
    http: &reqwest::Client,
    base: &str,
    channel: u64,
    page: usize,
) -> Vec<Received> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..10_000 {
        let mut url = format!("{base}/api/v1/channels/{channel}/messages?limit={page}");
        if let Some(before) = &before {
            url.push_str(&format!("&before={before}"));
        }
        let response = http.get(&url).send().await.expect("history request");
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        let body: Value = response.json().await.expect("history JSON");
        let messages = body["messages"].as_array().expect("messages array");
        assert!(
            messages.len() <= page,
            "page of {} for limit {page}",
            messages.len()
        );
        all.extend(messages.iter().map(received));
        match body["next_before"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => return all,
        }
    }
    panic!("history of channel {channel} did not end after 10000 pages");
}

/// Reads every message after `after`, oldest first, in pages of `page`.
async fn read_since(
    http: &reqwest::Client,
    base: &str,
    channel: u64,
    mut after: u64,
    page: usize,
) -> Vec<Received> {
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let url =
            format!("{base}/api/v1/channels/{channel}/messages/since?after={after}&limit={page}");
        let response = http.get(&url).send().await.expect("since request");
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        let body: Value = response.json().await.expect("since JSON");
        let messages = body["messages"].as_array().expect("messages array");
        if messages.is_empty() {
            assert_eq!(
                id_of(&body["next_after"]),
                after,
                "an empty page keeps the cursor"
            );
            return all;
        }
        all.extend(messages.iter().map(received));
        after = id_of(&body["next_after"]);
        assert_eq!(after, all.last().map(|message| message.id).unwrap_or(0));
    }
    panic!("since read of channel {channel} did not end after 10000 pages");
}

/// Checks that `history` (newest first) contains each of `expected` exactly
/// once, in strictly decreasing id order, and that each writer's messages
/// keep their send order.
fn check_history(history: &[Received], expected: &BTreeSet<String>) {
    let contents: Vec<&str> = history
        .iter()
        .map(|message| message.content.as_str())
        .collect();
    let unique: BTreeSet<String> = contents.iter().map(|content| content.to_string()).collect();
    assert_eq!(
        unique.len(),
        contents.len(),
        "duplicated messages in history"
    );
    let missing: Vec<&String> = expected.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "history lost {} messages: {missing:?}",
        missing.len()
    );
    let extra: Vec<&String> = unique.difference(expected).collect();
    assert!(
        extra.is_empty(),
        "history has unexpected messages: {extra:?}"
    );

    for pair in history.windows(2) {
        assert!(
            pair[0].id > pair[1].id,
            "history out of order: {} ({}) before {} ({})",
            pair[0].id,
            pair[0].content,
            pair[1].id,
            pair[1].content
        );
    }

    // Oldest first, each writer's sequence numbers must count up.
    let mut last_index: HashMap<&str, i64> = HashMap::new();
    for message in history.iter().rev() {
        let (tag, index) = message
            .content
            .rsplit_once('-')
            .expect("content is tag-index");
        let index: i64 = index.parse().expect("index is a number");
        let previous = last_index.insert(tag, index).unwrap_or(-1);
        assert_eq!(index, previous + 1, "writer {tag} out of send order");
    }
}

fn expected_contents(tags: &[&str], count: usize) -> BTreeSet<String> {
    tags.iter()
        .flat_map(|tag| (0..count).map(move |index| format!("{tag}-{index}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_every_message() {
    let mut cluster = TestCluster::start(3).await;
    let endpoints = cluster.addresses();
    let root = cluster.root.path().to_path_buf();
    let mut args = vec!["--bucket-ms", TEST_BUCKET_MS];
    args.extend(HIGH_LIMITS);
    let app_a = start_chat(&root, "chat-a", &endpoints, 1, &args).await;
    let app_b = start_chat(&root, "chat-b", &endpoints, 2, &args).await;
    let base_a = format!("http://{}", app_a.address);
    let base_b = format!("http://{}", app_b.address);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let channel = create_group(&http, &base_a, &["alice", "bob"]).await;

    // Round 1: both instances append at once, every node up.
    let sent = Arc::new(AtomicUsize::new(0));
    let writer_a = tokio::spawn(write_messages(
        http.clone(),
        base_a.clone(),
        channel,
        "alice",
        "a1".into(),
        MESSAGES_PER_WRITER,
        sent.clone(),
    ));
    let writer_b = tokio::spawn(write_messages(
        http.clone(),
        base_b.clone(),
        channel,
        "bob",
        "b1".into(),
        MESSAGES_PER_WRITER,
        sent.clone(),
    ));
    writer_a.await.expect("writer a1");
    writer_b.await.expect("writer b1");

    let round_one = expected_contents(&["a1", "b1"], MESSAGES_PER_WRITER);
    let history = read_history(&http, &base_b, channel, 7).await;
    check_history(&history, &round_one);
    let since = read_since(&http, &base_a, channel, 0, 9).await;
    let since_ids: Vec<u64> = since.iter().map(|message| message.id).collect();
    let history_ids: Vec<u64> = history.iter().rev().map(|message| message.id).collect();
    assert_eq!(since_ids, history_ids, "since read differs from history");
    let round_one_end = *since_ids.last().expect("round 1 wrote messages");

    // Round 2: both append again and a node is killed part-way through.
    let sent = Arc::new(AtomicUsize::new(0));
    let writer_a = tokio::spawn(write_messages(
        http.clone(),
        base_a.clone(),
        channel,
        "alice",
        "a2".into(),
        MESSAGES_PER_WRITER,
        sent.clone(),
    ));
    let writer_b = tokio::spawn(write_messages(
        http.clone(),
        base_b.clone(),
        channel,
        "bob",
        "b2".into(),
        MESSAGES_PER_WRITER,
        sent.clone(),
    ));
    let kill_after = MESSAGES_PER_WRITER / 2;
    wait_until(
        Duration::from_secs(60),
        "writers to send half of round 2",
        || {
            let sent = sent.clone();
            async move { sent.load(Ordering::SeqCst) >= kill_after }
        },
    )
    .await;
    cluster.nodes[2].kill();
    writer_a.await.expect("writer a2");
    writer_b.await.expect("writer b2");
    assert!(!cluster.nodes[2].is_running());

    let everything = expected_contents(&["a1", "b1", "a2", "b2"], MESSAGES_PER_WRITER);
    let history = read_history(&http, &base_a, channel, 11).await;
    check_history(&history, &everything);

    // A reader that stopped at the end of round 1 gets exactly round 2.
    let round_two = read_since(&http, &base_b, channel, round_one_end, 8).await;
    let round_two_contents: BTreeSet<String> = round_two
        .iter()
        .map(|message| message.content.clone())
        .collect();
    assert_eq!(round_two.len(), 2 * MESSAGES_PER_WRITER, "since read count");
    assert_eq!(
        round_two_contents,
        expected_contents(&["a2", "b2"], MESSAGES_PER_WRITER)
    );
    for pair in round_two.windows(2) {
        assert!(pair[0].id < pair[1].id, "since read out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_cursor_and_request_errors() {
    let cluster = TestCluster::start(3).await;
    let endpoints = cluster.addresses();
    let mut args = vec!["--bucket-ms", TEST_BUCKET_MS];
    args.extend(HIGH_LIMITS);
    let app = start_chat(cluster.root.path(), "chat", &endpoints, 3, &args).await;
    let base = format!("http://{}", app.address);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");

    // Invalid channels.
    let cases = [
        json!({ "kind": "direct", "members": ["alice"] }),
        json!({ "kind": "direct", "members": ["alice", "bob", "carol"] }),
        json!({ "kind": "group", "members": [] }),
        json!({ "kind": "group", "members": ["bad/name"] }),
        json!({ "kind": "group", "members": (0..101).map(|i| format!("u{i}")).collect::<Vec<_>>() }),
    ];
    for case in cases {
        let response = http
            .post(format!("{base}/api/v1/channels"))
            .json(&case)
            .send()
            .await
            .expect("create channel request");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{case}");
    }

    let response = http
        .post(format!("{base}/api/v1/channels"))
        .json(&json!({ "kind": "direct", "members": ["bob", "alice"] }))
        .send()
        .await
        .expect("create direct channel");
    assert_eq!(response.status(), StatusCode::CREATED);
    let channel: Value = response.json().await.expect("channel JSON");
    assert_eq!(channel["members"], json!(["alice", "bob"]));
    let channel = id_of(&channel["channel_id"]);
    let messages_url = format!("{base}/api/v1/channels/{channel}/messages");

    // A non-member may not post; an unknown channel is 404; empty is 400.
    let response = http
        .post(&messages_url)
        .json(&json!({ "user_id": "mallory", "content": "hi" }))
        .send()
        .await
        .expect("post as non-member");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = http
        .post(format!("{base}/api/v1/channels/{}/messages", channel + 1))
        .json(&json!({ "user_id": "alice", "content": "hi" }))
        .send()
        .await
        .expect("post to unknown channel");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = http
        .post(&messages_url)
        .json(&json!({ "user_id": "alice", "content": "   " }))
        .send()
        .await
        .expect("post empty content");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = http
        .get(format!("{messages_url}?limit=0"))
        .send()
        .await
        .expect("history with limit 0");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Malformed bodies and query strings get the JSON error shape too.
    let response = http
        .post(&messages_url)
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .expect("post malformed JSON");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.expect("error JSON");
    assert!(error["error"].is_string(), "{error}");
    let response = http
        .get(format!("{messages_url}?limit=many"))
        .send()
        .await
        .expect("history with a non-numeric limit");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.expect("error JSON");
    assert!(error["error"].is_string(), "{error}");

    let mut ids = Vec::new();
    for index in 0..3 {
        let response = http
            .post(&messages_url)
            .json(&json!({ "user_id": "alice", "content": format!("m-{index}") }))
            .send()
            .await
            .expect("post message");
        assert_eq!(response.status(), StatusCode::CREATED);
        let message: Value = response.json().await.expect("message JSON");
        ids.push(id_of(&message["message_id"]));
    }

    // The read cursor starts at 0, moves forward and never back.
    let cursor_url = format!("{base}/api/v1/channels/{channel}/read-cursor/bob");
    let cursor: Value = http
        .get(&cursor_url)
        .send()
        .await
        .expect("get cursor")
        .json()
        .await
        .expect("cursor JSON");
    assert_eq!(id_of(&cursor["message_id"]), 0);
    for (set_to, expected) in [(ids[1], ids[1]), (ids[0], ids[1]), (ids[2], ids[2])] {
        let response = http
            .put(&cursor_url)
            .json(&json!({ "message_id": set_to.to_string() }))
            .send()
            .await
            .expect("put cursor");
        assert_eq!(response.status(), StatusCode::OK);
        let cursor: Value = response.json().await.expect("cursor JSON");
        assert_eq!(
            id_of(&cursor["message_id"]),
            expected,
            "after setting {set_to}"
        );
    }
    let cursor: Value = http
        .get(&cursor_url)
        .send()
        .await
        .expect("get cursor")
        .json()
        .await
        .expect("cursor JSON");
    assert_eq!(id_of(&cursor["message_id"]), ids[2]);
    let response = http
        .get(format!(
            "{base}/api/v1/channels/{channel}/read-cursor/mallory"
        ))
        .send()
        .await
        .expect("get non-member cursor");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // Unread messages of bob are those after his cursor: none left.
    let since: Value = http
        .get(format!("{messages_url}/since?after={}", ids[1]))
        .send()
        .await
        .expect("since request")
        .json()
        .await
        .expect("since JSON");
    let unread: Vec<u64> = since["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|message| id_of(&message["message_id"]))
        .collect();
    assert_eq!(unread, vec![ids[2]]);

    // An instance with a tiny limit returns 429 with the limit headers.
    let limited_args = ["--rate-limit-per-second", "1", "--rate-limit-burst", "2"];
    let limited = start_chat(
        cluster.root.path(),
        "chat-limited",
        &endpoints,
        4,
        &limited_args,
    )
    .await;
    let url = format!("http://{}/api/v1/channels/{channel}", limited.address);
    let mut rejected = None;
    for _ in 0..10 {
        let response = http.get(&url).send().await.expect("channel request");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            rejected = Some(response);
            break;
        }
    }
    let rejected = rejected.expect("10 quick requests over a burst of 2 get a 429");
    for header in ["retry-after", "x-ratelimit-limit", "x-ratelimit-remaining"] {
        assert!(
            rejected.headers().contains_key(header),
            "429 lacks {header}"
        );
    }
}

async fn send_message(
    http: &reqwest::Client,
    base: &str,
    channel: u64,
    user: &str,
    content: &str,
) -> u64 {
    let response = http
        .post(format!("{base}/api/v1/channels/{channel}/messages"))
        .json(&json!({ "user_id": user, "content": content }))
        .send()
        .await
        .unwrap_or_else(|error| panic!("send {content}: {error}"));
    assert_eq!(response.status(), StatusCode::CREATED, "send {content}");
    let message: Value = response.json().await.expect("message JSON");
    id_of(&message["message_id"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sends_each_message_once() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Frame;

    let cluster = TestCluster::start(3).await;
    let endpoints = cluster.addresses();
    let root = cluster.root.path().to_path_buf();
    let mut args = vec!["--bucket-ms", TEST_BUCKET_MS];
    args.extend(HIGH_LIMITS);
    let app_a = start_chat(&root, "chat-a", &endpoints, 5, &args).await;
    let mut app_b = start_chat(&root, "chat-b", &endpoints, 6, &args).await;
    let base_a = format!("http://{}", app_a.address);
    let base_b = format!("http://{}", app_b.address);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let channel = create_group(&http, &base_a, &["alice", "bob"]).await;

    // m-0 is before the stream's cursor; m-1 is after it but sent before
    // the stream opens, so the stream's first read must deliver it.
    let cursor = send_message(&http, &base_a, channel, "alice", "m-0").await;
    send_message(&http, &base_b, channel, "bob", "m-1").await;
    let url = format!(
        "ws://{}/api/v1/channels/{channel}/stream?after={cursor}",
        app_b.address
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("open the stream");

    // Messages through instance A reach B's stream by polling, those
    // through B by its own notice.
    for index in 2..8 {
        let (base, user) = if index % 2 == 0 {
            (&base_a, "alice")
        } else {
            (&base_b, "bob")
        };
        send_message(&http, base, channel, user, &format!("m-{index}")).await;
    }

    let mut delivered = Vec::new();
    while delivered.len() < 7 {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within 30 s; received {delivered:?}"))
            .expect("stream open")
            .expect("frame");
        if let Frame::Text(text) = frame {
            let message: Value = serde_json::from_str(text.as_str()).expect("message JSON");
            delivered.push(received(&message));
        }
    }
    let contents: Vec<&str> = delivered
        .iter()
        .map(|message| message.content.as_str())
        .collect();
    let expected: Vec<String> = (1..8).map(|index| format!("m-{index}")).collect();
    assert_eq!(contents, expected, "stream content or order");

    // Later polls read the same ids again and must not send them twice:
    // nothing arrives during three poll intervals.
    let extra = tokio::time::timeout(Duration::from_secs(3), socket.next()).await;
    if let Ok(Some(Ok(Frame::Text(text)))) = extra {
        panic!("stream sent a message twice or unexpectedly: {text}");
    }

    // A shutdown closes the open stream instead of waiting for it.
    let status = app_b.terminate(Duration::from_secs(20));
    let status = status.expect("kv-chat exits within 20 s of SIGTERM with a stream open");
    assert!(status.success(), "kv-chat exit status {status}");
}
