//! kv-drive against a real 3-node cluster: uploads and downloads through
//! blocks, revisions, block dedupe, sharing and 403s, conflicted copies
//! from concurrent edits, and the change feed.
//!
//! Needs the kv-node binary next to kv-drive (`cargo build -p kv-node`).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{start_drive, Process, TestCluster};

/// Default block size of kv-drive, 1 MiB.
const BLOCK_BYTES: usize = 1024 * 1024;
/// Limits far above the test's request rate, and a short feed settle
/// time so feed reads need not wait long.
const APP_ARGS: [&str; 6] = [
    "--rate-limit-per-second",
    "100000",
    "--rate-limit-burst",
    "100000",
    "--feed-settle-ms",
    "300",
];

/// Returns `len` bytes of a fixed pseudo-random sequence (xorshift64), so
/// no two blocks of one file are equal by accident.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

struct Drive {
    http: reqwest::Client,
    base: String,
}

impl Drive {
    fn new(app: &Process) -> Drive {
        Drive {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
            base: format!("http://{}/api/v1", app.address),
        }
    }

    async fn mkdir(&self, user: &str, owner: &str, path: &str) -> StatusCode {
        self.http
            .post(format!("{}/folders/{owner}/{path}", self.base))
            .header("X-User", user)
            .send()
            .await
            .expect("create folder request")
            .status()
    }

    async fn upload(
        &self,
        user: &str,
        owner: &str,
        path: &str,
        data: Vec<u8>,
        device: &str,
        base: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .put(format!("{}/files/{owner}/{path}", self.base))
            .header("X-User", user)
            .header("X-Device", device)
            .body(data);
        if let Some(base) = base {
            request = request.header("If-Match", base);
        }
        let response = request.send().await.expect("upload request");
        let status = response.status();
        (status, response.json().await.expect("upload reply is JSON"))
    }

    async fn download(
        &self,
        user: &str,
        owner: &str,
        path: &str,
        revision: Option<&str>,
    ) -> (StatusCode, Vec<u8>) {
        let mut url = format!("{}/files/{owner}/{path}", self.base);
        if let Some(revision) = revision {
            url.push_str(&format!("?revision={revision}"));
        }
        let response = self
            .http
            .get(url)
            .header("X-User", user)
            .send()
            .await
            .expect("download request");
        let status = response.status();
        let body = response.bytes().await.expect("download body").to_vec();
        (status, body)
    }

    async fn get_json(&self, user: &str, path_and_query: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .header("X-User", user)
            .send()
            .await
            .expect("GET request");
        let status = response.status();
        (status, response.json().await.expect("reply is JSON"))
    }

    async fn share(
        &self,
        user: &str,
        owner: &str,
        path: &str,
        grantee: &str,
        access: &str,
    ) -> StatusCode {
        self.http
            .post(format!("{}/shares/{owner}/{path}", self.base))
            .header("X-User", user)
            .json(&json!({ "user": grantee, "access": access }))
            .send()
            .await
            .expect("share request")
            .status()
    }

    /// Reads the feed of `user` until it lists at least `count` changes,
    /// since a change becomes visible only after the settle time.
    async fn feed_until(&self, user: &str, count: usize) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let feed = self.feed(user).await;
            if feed.len() >= count || Instant::now() >= deadline {
                return feed;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Pages through the whole change feed of `user` two changes at a
    /// time and returns `(id, kind, path)` of each change in feed order.
    async fn feed(&self, user: &str) -> Vec<(String, String, String)> {
        let mut cursor = String::new();
        let mut seen = Vec::new();
        loop {
            let (status, page) = self
                .get_json(user, &format!("/changes?cursor={cursor}&limit=2"))
                .await;
            assert_eq!(status, StatusCode::OK, "change feed: {page}");
            let changes = page["changes"].as_array().expect("changes array").clone();
            if changes.is_empty() {
                return seen;
            }
            for change in &changes {
                seen.push((
                    change["id"].as_str().expect("change id").to_string(),
                    change["kind"].as_str().expect("change kind").to_string(),
                    change["path"].as_str().expect("change path").to_string(),
                ));
            }
            cursor = page["cursor"].as_str().expect("cursor").to_string();
        }
    }
}

fn revision_id(upload: &Value) -> String {
    upload["revision"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("upload reply has no revision id: {upload}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_blocks_sharing_and_feed() {
    let cluster = TestCluster::start(3).await;
    let app = start_drive(
        cluster.root.path(),
        "drive",
        &cluster.addresses(),
        1,
        &APP_ARGS,
    )
    .await;
    let drive = Drive::new(&app);

    // Folders: the parent must exist, and creating twice is harmless.
    assert_eq!(
        drive.mkdir("ann", "ann", "docs/deep").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(drive.mkdir("ann", "ann", "docs").await, StatusCode::CREATED);
    assert_eq!(drive.mkdir("ann", "ann", "docs").await, StatusCode::OK);
    assert_eq!(
        drive.mkdir("ann", "ann", "docs/deep").await,
        StatusCode::CREATED
    );
    assert_eq!(
        drive.mkdir("ann", "ann", "private").await,
        StatusCode::CREATED
    );

    // A file of three full blocks and a partial one.
    let big = content(1, 3 * BLOCK_BYTES + 12_345);
    let (status, first) = drive
        .upload("ann", "ann", "docs/big.bin", big.clone(), "laptop", None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["blocks_written"], 4);
    assert_eq!(first["blocks_reused"], 0);
    assert_eq!(first["revision"]["size"], big.len() as u64);
    assert_eq!(first["conflicted"], false);
    let (status, body) = drive.download("ann", "ann", "docs/big.bin", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body == big,
        "download of docs/big.bin differs from the upload"
    );

    // The same content under another name reuses every block.
    let (status, copy) = drive
        .upload(
            "ann",
            "ann",
            "docs/deep/copy.bin",
            big.clone(),
            "laptop",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{copy}");
    assert_eq!(copy["blocks_written"], 0);
    assert_eq!(copy["blocks_reused"], 4);
    let client = kv_client::Client::connect(&cluster.addresses())
        .await
        .expect("connect a kv client");
    for hash in first["revision"]["blocks"].as_array().expect("block list") {
        let key = format!("drive/block/{}", hash.as_str().expect("hash"));
        let read = client.get(&key).await.expect("read a block");
        assert_eq!(read.values.len(), 1, "{key} is stored more than once");
    }

    // A second revision changes one block; both stay downloadable.
    let mut edited = big.clone();
    edited[BLOCK_BYTES + 7] ^= 0xff;
    let (status, second) = drive
        .upload(
            "ann",
            "ann",
            "docs/big.bin",
            edited.clone(),
            "laptop",
            Some(&revision_id(&first)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["blocks_written"], 1);
    assert_eq!(second["blocks_reused"], 3);
    assert_eq!(second["conflicted"], false);
    let (_, head) = drive.download("ann", "ann", "docs/big.bin", None).await;
    assert!(
        head == edited,
        "main head of docs/big.bin is not the second upload"
    );
    let (_, old) = drive
        .download("ann", "ann", "docs/big.bin", Some(&revision_id(&first)))
        .await;
    assert!(old == big, "first revision of docs/big.bin changed");
    let (status, revisions) = drive.get_json("ann", "/revisions/ann/docs/big.bin").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = revisions["revisions"]
        .as_array()
        .expect("revision list")
        .iter()
        .map(|revision| revision["id"].as_str().expect("revision id"))
        .collect();
    assert_eq!(listed, [revision_id(&first), revision_id(&second)]);
    assert_eq!(revisions["main_head"], json!(revision_id(&second)));

    // An empty file has no blocks and downloads empty.
    let (status, empty) = drive
        .upload("ann", "ann", "docs/empty.txt", Vec::new(), "laptop", None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{empty}");
    let (_, body) = drive.download("ann", "ann", "docs/empty.txt", None).await;
    assert!(body.is_empty());

    // The listing shows folders and files with their head revision.
    let (status, listing) = drive.get_json("ann", "/list/ann/docs").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["big.bin", "deep", "empty.txt"]);

    // Sharing: bob gets 403 until ann shares, then read access only.
    let (status, _) = drive.download("bob", "ann", "docs/big.bin", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = drive.get_json("bob", "/list/ann/docs").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        drive.share("bob", "ann", "docs", "bob", "write").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        drive.share("ann", "ann", "docs", "bob", "read").await,
        StatusCode::OK
    );
    let (status, body) = drive.download("bob", "ann", "docs/big.bin", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == edited, "bob's download of a shared file differs");
    let (status, _) = drive
        .upload("bob", "ann", "docs/bob.txt", b"hi".to_vec(), "phone", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = drive.get_json("bob", "/list/ann/private").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Write access on the folder lets bob upload below it.
    assert_eq!(
        drive.share("ann", "ann", "docs/deep", "bob", "write").await,
        StatusCode::OK
    );
    let (status, by_bob) = drive
        .upload(
            "bob",
            "ann",
            "docs/deep/bob.txt",
            b"from bob".to_vec(),
            "phone",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{by_bob}");
    assert_eq!(by_bob["revision"]["author"], "bob");

    // Feed of ann: every change exactly once, in id order.
    let expected_ann: BTreeSet<(&str, &str)> = [
        ("folder_created", "docs"),
        ("folder_created", "docs/deep"),
        ("folder_created", "private"),
        ("revision_added", "docs/big.bin"),
        ("revision_added", "docs/deep/copy.bin"),
        ("revision_added", "docs/empty.txt"),
        ("shared", "docs"),
        ("shared", "docs/deep"),
        ("revision_added", "docs/deep/bob.txt"),
    ]
    .into_iter()
    .collect();
    // docs/big.bin has two revisions, so ann's feed lists 10 changes.
    let expected_ann_count = expected_ann.len() + 1;
    let ann_feed = drive.feed_until("ann", expected_ann_count).await;
    assert_eq!(
        ann_feed.len(),
        expected_ann_count,
        "ann's feed: {ann_feed:?}"
    );
    let ids: Vec<u64> = ann_feed
        .iter()
        .map(|(id, _, _)| id.parse().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "feed ids are not increasing: {ids:?}"
    );
    let kinds: BTreeSet<(&str, &str)> = ann_feed
        .iter()
        .map(|(_, kind, path)| (kind.as_str(), path.as_str()))
        .collect();
    assert_eq!(kinds, expected_ann);

    // Feed of bob: the shares and the changes under shared items made after
    // them, and nothing from before the share.
    let expected_bob: Vec<(&str, &str)> = vec![
        ("shared", "docs"),
        ("shared", "docs/deep"),
        ("revision_added", "docs/deep/bob.txt"),
    ];
    let bob_feed = drive.feed_until("bob", expected_bob.len()).await;
    let bob_kinds: Vec<(&str, &str)> = bob_feed
        .iter()
        .map(|(_, kind, path)| (kind.as_str(), path.as_str()))
        .collect();
    assert_eq!(bob_kinds, expected_bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_keep_conflicted_copy() {
    let cluster = TestCluster::start(3).await;
    let endpoints = cluster.addresses();
    let first_app = start_drive(cluster.root.path(), "drive-a", &endpoints, 1, &APP_ARGS).await;
    let second_app = start_drive(cluster.root.path(), "drive-b", &endpoints, 2, &APP_ARGS).await;
    let laptop = Drive::new(&first_app);
    let phone = Drive::new(&second_app);

    let (status, base) = laptop
        .upload(
            "ann",
            "ann",
            "notes.txt",
            b"base\n".to_vec(),
            "laptop",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{base}");
    let base_id = revision_id(&base);

    // Two devices edit the same base at once through two app instances.
    let laptop_text = b"base\nfrom the laptop\n".to_vec();
    let phone_text = b"base\nfrom the phone\n".to_vec();
    let ((laptop_status, laptop_reply), (phone_status, phone_reply)) = tokio::join!(
        laptop.upload(
            "ann",
            "ann",
            "notes.txt",
            laptop_text.clone(),
            "laptop",
            Some(&base_id)
        ),
        phone.upload(
            "ann",
            "ann",
            "notes.txt",
            phone_text.clone(),
            "phone",
            Some(&base_id)
        ),
    );
    assert_eq!(laptop_status, StatusCode::CREATED, "{laptop_reply}");
    assert_eq!(phone_status, StatusCode::CREATED, "{phone_reply}");
    let laptop_id = revision_id(&laptop_reply);
    let phone_id = revision_id(&phone_reply);

    // The smaller revision id is the main line; the other is the copy.
    let (main_id, copy_id, copy_device, main_text, copy_text) =
        if laptop_id.parse::<u64>().unwrap() < phone_id.parse::<u64>().unwrap() {
            (&laptop_id, &phone_id, "phone", &laptop_text, &phone_text)
        } else {
            (&phone_id, &laptop_id, "laptop", &phone_text, &laptop_text)
        };
    let (status, revisions) = laptop.get_json("ann", "/revisions/ann/notes.txt").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        revisions["revisions"].as_array().expect("revisions").len(),
        3
    );
    assert_eq!(revisions["main_head"], json!(main_id));
    assert_eq!(revisions["conflicted_heads"], json!([copy_id]));

    let (status, listing) = phone.get_json("ann", "/list/ann").await;
    assert_eq!(status, StatusCode::OK);
    let entries = listing["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{listing}");
    let copies = entries[0]["conflicted_copies"].as_array().expect("copies");
    assert_eq!(copies.len(), 1, "{listing}");
    assert_eq!(copies[0]["revision"], json!(copy_id));
    assert_eq!(
        copies[0]["name"],
        json!(format!("notes (conflicted copy, ann on {copy_device}).txt"))
    );

    // Both edits stay readable byte for byte.
    let (_, body) = phone.download("ann", "ann", "notes.txt", None).await;
    assert!(&body == main_text, "main head differs from its upload");
    let (_, body) = phone
        .download("ann", "ann", "notes.txt", Some(copy_id))
        .await;
    assert!(
        &body == copy_text,
        "conflicted copy differs from its upload"
    );

    // A stale base after the fact is a conflicted copy too, never an
    // overwrite of the main head.
    let (status, stale) = laptop
        .upload(
            "ann",
            "ann",
            "notes.txt",
            b"stale edit\n".to_vec(),
            "tablet",
            Some(&base_id),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{stale}");
    assert_eq!(stale["conflicted"], true);
    assert_eq!(stale["main_head"], json!(main_id));

    // An unknown base revision is rejected.
    let (status, _) = laptop
        .upload(
            "ann",
            "ann",
            "notes.txt",
            b"x".to_vec(),
            "laptop",
            Some("12345"),
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
}
