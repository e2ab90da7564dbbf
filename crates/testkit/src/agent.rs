//! The agent runtime set up against a [`FakeServer`]: the provider and runner settings the
//! agent's tests share, and readers for the long-run requests (compaction, numbered steps).

use std::collections::BTreeMap;
use std::time::Duration;

use jarvis_agent::anthropic::{AnthropicProvider, Auth, Retry};
use jarvis_agent::compaction::SUMMARY_PROMPT;
use jarvis_agent::runner::RunnerConfig;
use serde_json::Value;

use crate::fake::FakeServer;

/// An Anthropic provider pointed at `server`, with a dummy key and quick retries (3 attempts,
/// 5–20 ms apart) so overload answers do not slow the tests.
pub fn provider(server: &FakeServer) -> AnthropicProvider {
    AnthropicProvider::new(
        &server.url(),
        Auth::ApiKey("sk-test-not-a-real-key".into()),
        BTreeMap::new(),
    )
    .with_retry(Retry {
        attempts: 3,
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    })
}

/// Runner settings for `fake-model` on device `laptop`, flushing every millisecond so tests
/// see each step in the document at once.
pub fn runner_config() -> RunnerConfig {
    let mut c = RunnerConfig::new("fake-model", "laptop");
    c.flush_interval = Duration::from_millis(1);
    c
}

/// Whether a Messages request body is the compaction's summary request (its last user block
/// starts with the summary prompt).
pub fn is_summary_request(body: &Value) -> bool {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .and_then(|c| c.last())
        .and_then(|b| b["text"].as_str())
        .is_some_and(|t| t.starts_with(SUMMARY_PROMPT))
}

/// The highest `N` of a `steps/N.txt` the transcript in a Messages request body mentions (long
/// runs write one file a step); 0 when none.
pub fn last_step(body: &Value) -> u32 {
    let text = body["messages"].to_string();
    let mut best = 0;
    for part in text.split("steps/").skip(1) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if part[digits.len()..].starts_with(".txt") {
            best = best.max(digits.parse().unwrap_or(0));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn last_step_reads_the_highest_step_file() {
        let body = json!({"messages": [{"content": "wrote steps/3.txt and steps/12.txt, not steps/40.md"}]});
        assert_eq!(last_step(&body), 12);
        assert_eq!(last_step(&json!({"messages": []})), 0);
    }

    #[test]
    fn a_summary_request_ends_with_the_summary_prompt() {
        let ask = |t: &str| json!({"messages": [{"content": [{"type": "text", "text": t}]}]});
        assert!(is_summary_request(&ask(&format!("{SUMMARY_PROMPT} more"))));
        assert!(!is_summary_request(&ask("hello")));
    }
}
