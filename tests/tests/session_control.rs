//! Mid-session control over the real server: `PATCH /api/sessions/{id}` changes a session's
//! model and permission mode in its document (the runner applies them before its next
//! request; see the agent's long_tasks tests), refuses bad values with `{code, message}`, and
//! refuses read-only tokens.
#![allow(clippy::unwrap_used)]

use jarvis_testkit::http::call;
use jarvis_testkit::{CloudAgent, create_token, hub_with_token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_model_and_permission_mode() {
    let (_tmp, data, token) = hub_with_token(&["*"]);
    let reader = create_token(&data, &["*"], true).unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let base = format!("http://127.0.0.1:{}", agent.port);
    let (s, v) = call(
        &base,
        "POST",
        "/api/workspaces",
        &token,
        Some(json!({"id": "w1"})),
    )
    .await;
    assert!(s == 200 || s == 201, "{s} {v}");
    let (s, v) = call(
        &base,
        "POST",
        "/api/sessions",
        &token,
        Some(json!({"id": "s1", "workspace": "w1", "model": "claude-sonnet-4-5", "permission_mode": "ask"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    let (s, v) = call(
        &base,
        "PATCH",
        "/api/sessions/s1",
        &token,
        Some(json!({"model": "claude-sonnet-5-5", "permission_mode": "accept-edits"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"model": "claude-sonnet-5-5", "permission_mode": "accept-edits"})
    );
    let (_, v) = call(&base, "GET", "/api/sessions/s1", &token, None).await;
    assert_eq!(v["model"], "claude-sonnet-5-5", "{v}");

    // Only the mode: the model stays.
    let (s, v) = call(
        &base,
        "PATCH",
        "/api/sessions/s1",
        &token,
        Some(json!({"permission_mode": "plan"})),
    )
    .await;
    assert_eq!(
        (s, &v["model"], &v["permission_mode"]),
        (200, &json!("claude-sonnet-5-5"), &json!("plan"))
    );

    for bad in [
        json!({"permission_mode": "yolo"}),
        json!({"model": ""}),
        json!({"model": "a b"}),
    ] {
        let (s, v) = call(
            &base,
            "PATCH",
            "/api/sessions/s1",
            &token,
            Some(bad.clone()),
        )
        .await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["code"], "invalid_request", "{v}");
    }
    let (s, v) = call(
        &base,
        "PATCH",
        "/api/sessions/s1",
        &reader,
        Some(json!({"model": "claude-opus-5"})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, _) = call(
        &base,
        "PATCH",
        "/api/sessions/nope",
        &token,
        Some(json!({"model": "claude-opus-5"})),
    )
    .await;
    assert_eq!(s, 404);
}
