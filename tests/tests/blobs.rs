//! `PUT/GET /blobs/<hash>` on a real `jarvis-cloud`.
#![allow(clippy::unwrap_used)]

use jarvis_testkit::{CloudAgent, create_token, hub_with_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_verified_authorised_and_streamed() {
    let (_tmp, data, rw) = hub_with_token(&["ws/w1/*"]);
    let ro = create_token(&data, &["ws/w1/*"], true).unwrap();
    let other = create_token(&data, &["ws/w2/*"], false).unwrap();
    let admin = create_token(&data, &["*"], false).unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let http = reqwest::Client::new();
    // Scoped tokens of the admin user are a member's: the workspace must exist, with the
    // admin as its owner.
    let r = http
        .post(agent.http_url("/api/workspaces"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"id": "w1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = |h: &str| agent.http_url(&format!("/blobs/{h}"));
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let hash = blake3::hash(&big).to_hex().to_string();
    let put = |h: &str, token: &str, body: Vec<u8>| {
        http.put(url(h))
            .bearer_auth(token)
            .header("x-jarvis-workspace", "w1")
            .body(body)
            .send()
    };

    let r = put(&hash, &rw, big.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .get(url(&hash))
        .bearer_auth(&ro)
        .header("x-jarvis-workspace", "w1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());
    // Idempotent re-upload.
    assert_eq!(put(&hash, &rw, big.clone()).await.unwrap().status(), 200);

    // Bytes that do not hash to the name: refused, nothing stored.
    let claimed = blake3::hash(b"the real content").to_hex().to_string();
    let r = put(&claimed, &rw, b"tampered".to_vec()).await.unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "hash_mismatch");
    let r = http
        .get(url(&claimed))
        .bearer_auth(&rw)
        .header("x-jarvis-workspace", "w1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Auth: none, another workspace's token, read-only writes, bad names.
    assert_eq!(
        http.get(url(&hash))
            .header("x-jarvis-workspace", "w1")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = http
        .get(url(&hash))
        .bearer_auth(&other)
        .header("x-jarvis-workspace", "w1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Refusals are tested with small bodies: the hub answers before reading the body, and a
    // client still streaming a large one may see the connection close before the answer.
    assert_eq!(put(&hash, &ro, vec![0; 16]).await.unwrap().status(), 403);
    assert_eq!(
        put("..%2F..%2Fetc", &rw, vec![1]).await.unwrap().status(),
        400
    );
    let r = http
        .put(url(&hash))
        .bearer_auth(&rw)
        .header("x-jarvis-workspace", "../w1")
        .body(vec![1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Blobs are per workspace: w2's token cannot read w1's blob even by asking as w2.
    let r = http
        .get(url(&hash))
        .bearer_auth(&other)
        .header("x-jarvis-workspace", "w2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
