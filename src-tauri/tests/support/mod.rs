//! Shared by the desktop tests that need a cloud session to come to need the person.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;

use jarvis_agent::testing::{FakeResponse, FakeServer, reply};
use jarvis_e2e::CloudAgent;
use serde_json::json;

/// The approval id the planning model's write asks for.
pub const PLAN_APPROVAL: &str = "ap-toolu_plan";

/// A real `jarvis-cloud` in `data` whose runner's model (a fake speaking real SSE) first writes
/// plan.md — a call that needs approval in ask mode — then closes with a sentence; and the
/// token of its user "dana". Keep the server and the fake alive for the test.
pub async fn cloud_with_planning_model(data: &Path) -> (FakeServer, CloudAgent, String) {
    let fake = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "I will write the plan.",
                &[(
                    "toolu_plan",
                    "write",
                    json!({"path": "plan.md", "content": "# Plan\n"}),
                )],
                (10, 5, 0, 0),
            ),
            &[64],
        ),
        FakeResponse::sse(&reply("The plan is written.", &[], (10, 5, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let token = jarvis_e2e::add_user(data, "dana").unwrap();
    let fake_url = fake.url();
    let agent = CloudAgent::start_with_env(
        data,
        0,
        &[
            ("ANTHROPIC_BASE_URL", fake_url.as_str()),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("JARVIS_SANDBOX", "limits"),
        ],
    )
    .unwrap();
    (fake, agent, token)
}
