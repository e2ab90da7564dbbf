//! What a GitHub delivery says: its signature, the request it makes, and the review workspace
//! a pull request gets. Pure functions over the payload.

use hmac::{KeyInit, Mac};
use serde_json::Value;
use subtle::ConstantTimeEq;

/// `sha256=<hex>` over `body` with `secret`, checked in constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given))
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Review(PullRequest),
    Ping,
    Ignore(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub owner: String,
    pub repo: String,
    pub number: u64,
    pub title: String,
    pub base_ref: String,
    pub trigger: String,
}

/// Reads an event's payload (the shapes GitHub sends, see tests/fixtures/github).
pub fn classify(event: &str, payload: &Value, mention: &str) -> Request {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let repo = &payload["repository"];
    let owner = s(&repo["owner"]["login"]);
    let name = s(&repo["name"]);
    let action = payload["action"].as_str().unwrap_or_default();
    match event {
        "ping" => Request::Ping,
        "pull_request" => {
            if !matches!(action, "opened" | "synchronize") {
                return Request::Ignore(format!("pull_request {action}"));
            }
            let pr = &payload["pull_request"];
            match pr["number"].as_u64().or(payload["number"].as_u64()) {
                Some(number) if !owner.is_empty() && !name.is_empty() => {
                    Request::Review(PullRequest {
                        owner,
                        repo: name,
                        number,
                        title: s(&pr["title"]),
                        base_ref: s(&pr["base"]["ref"]),
                        trigger: format!("pull_request {action}"),
                    })
                }
                _ => Request::Ignore("pull_request payload without number or repository".into()),
            }
        }
        "issue_comment" => {
            if action != "created" {
                return Request::Ignore(format!("issue_comment {action}"));
            }
            let issue = &payload["issue"];
            if issue.get("pull_request").is_none_or(Value::is_null) {
                return Request::Ignore("a comment on an issue, not a pull request".into());
            }
            let body = payload["comment"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            let command = format!("{} review", mention.to_lowercase());
            if !body.contains(&command) {
                return Request::Ignore(format!("no {command:?} in the comment"));
            }
            // Anyone can comment on a public repository; only people with a hand in it may
            // spend the team's budget on a review.
            let association = payload["comment"]["author_association"]
                .as_str()
                .unwrap_or("NONE");
            if !matches!(association, "OWNER" | "MEMBER" | "COLLABORATOR") {
                return Request::Ignore(format!(
                    "the review command from a commenter who is {association}, not an owner, \
                     member or collaborator"
                ));
            }
            match issue["number"].as_u64() {
                Some(number) if !owner.is_empty() && !name.is_empty() => {
                    Request::Review(PullRequest {
                        owner,
                        repo: name,
                        number,
                        title: s(&issue["title"]),
                        base_ref: s(&repo["default_branch"]),
                        trigger: format!(
                            "comment by {}",
                            payload["comment"]["user"]["login"]
                                .as_str()
                                .unwrap_or("someone")
                        ),
                    })
                }
                _ => Request::Ignore("issue_comment payload without number or repository".into()),
            }
        }
        other => Request::Ignore(format!("event {other}")),
    }
}

/// A string as an id segment: letters, digits, '-' and '_' (ids take nothing else; a '.' in a
/// repository's name once made its workspace id invalid, so its pull requests were never
/// reviewed).
pub(crate) fn valid_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A short hash of the repository's exact name: keeps `a.b` and `a-b` apart once both are
/// spelled as ids.
pub(crate) fn repo_hash(owner: &str, repo: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(format!("{owner}/{repo}").as_bytes())[..4])
}

/// The review workspace of a pull request: a valid id (at most 64 characters) for any
/// repository name GitHub allows.
pub fn review_workspace(owner: &str, repo: &str, number: u64) -> String {
    let tail = format!("-{number}-{}", repo_hash(owner, repo));
    let head: String = format!("gh-{}-{}", valid_id_part(owner), valid_id_part(repo))
        .chars()
        .take(64 - tail.len())
        .collect();
    format!("{head}{tail}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_verify_only_for_the_exact_body_and_secret() {
        // The example from GitHub's "Validating webhook deliveries" documentation.
        assert!(signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
        ));
        let body = br#"{"action":"opened"}"#;
        let good = sign("s3cret", body);
        assert!(signature_valid(b"s3cret", body, Some(&good)));
        assert!(!signature_valid(b"other", body, Some(&good)));
        assert!(!signature_valid(
            b"s3cret",
            br#"{"action":"closed"}"#,
            Some(&good)
        ));
        for bad in [
            None,
            Some(""),
            Some("sha1=abc"),
            Some("sha256=zz"),
            Some("sha256=abcd"),
        ] {
            assert!(!signature_valid(b"s3cret", body, bad), "{bad:?}");
        }
    }

    #[test]
    fn every_repository_name_makes_a_valid_review_workspace() {
        for (owner, repo) in [
            ("Codertocat", "Hello-World"),
            ("octo", "app.js"),
            ("octo", "app-js"),
            ("o", ".github"),
            ("o", &"x".repeat(100)),
        ] {
            let w = review_workspace(owner, repo, 12345);
            assert!(crate::control::valid_id(&w), "{owner}/{repo}: {w}");
        }
        // '.' and '-' spell the same id segment; the hash keeps the workspaces apart.
        assert_ne!(
            review_workspace("octo", "app.js", 1),
            review_workspace("octo", "app-js", 1)
        );
    }
}
