//! The cloud copy as a dev environment: git travels with the session ([`git`], [`routes`]),
//! the workspace's environment file ([`environment`]) and its network policy enforced by a
//! per-workspace egress proxy ([`egress`]).

pub mod egress;
pub mod environment;
pub mod git;
pub mod routes;
pub mod setup;

/// Where pull requests are opened (`JARVIS_GITHUB_API`, default the public API); tests point it
/// at a fake.
pub fn github_api() -> String {
    std::env::var("JARVIS_GITHUB_API")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "https://api.github.com".into())
}

/// Variables the processes of a session that came with a repository get: the agent's branch,
/// the branch it started from, the remote, the GitHub API base. None for other sessions.
pub fn session_env(data_dir: &std::path::Path, session: &str) -> Vec<(String, String)> {
    let Ok(Some(r)) = git::load(data_dir, session) else {
        return Vec::new();
    };
    let mut env = vec![
        ("JARVIS_GIT_BRANCH".to_owned(), r.agent_branch),
        ("GITHUB_API_URL".to_owned(), github_api()),
    ];
    if let Some(remote) = r.state.remote {
        env.push(("JARVIS_GIT_REMOTE".to_owned(), remote));
    }
    if let Some(base) = r.state.branch {
        env.push(("JARVIS_GIT_BASE".to_owned(), base));
    }
    env
}

/// A system line in the session (shown, never sent to the model).
pub fn note(doc: &jarvis_sync::doc::SessionDoc, text: &str) {
    let msg = jarvis_sync::doc::Message {
        id: format!("s-{:016x}", rand::random::<u64>()),
        role: jarvis_sync::doc::Role::System,
        author: crate::control::CLOUD_DEVICE.into(),
        created_ms: crate::control::now_ms(),
        blocks: vec![jarvis_sync::doc::Block::Text {
            text: text.to_owned(),
        }],
    };
    if let Err(e) = doc.append_message(&msg) {
        tracing::warn!(error = %e, "writing a system note failed");
    }
}

/// As [`note`], unless the session's latest line with the same opening says the same.
pub fn note_once(doc: &jarvis_sync::doc::SessionDoc, text: &str) {
    let prefix = text.split(':').next().unwrap_or_default();
    let last = doc
        .messages()
        .into_iter()
        .rev()
        .find_map(|m| match m.blocks.as_slice() {
            [jarvis_sync::doc::Block::Text { text: t }]
                if m.role == jarvis_sync::doc::Role::System && t.starts_with(prefix) =>
            {
                Some(t.clone())
            }
            _ => None,
        });
    if last.as_deref() != Some(text) {
        note(doc, text);
    }
}
