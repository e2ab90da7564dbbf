//! Background agent definitions: `.jarvis/agents/<name>.md` in a workspace, front matter (a
//! strict subset of YAML: `key: value`, inline `[a, b]` or block `- a` lists, `#` comments)
//! then the prompt. The files are ordinary workspace files, synced like any other; the API's
//! create and update write the same file through the hub, so there is one source of truth.
//!
//! ```text
//! ---
//! trigger: cron            # cron | files | webhook
//! schedule: "0 9 * * 1-5"  # cron: 5 fields, or 6 with seconds first
//! timezone: Europe/Berlin  # IANA name, default UTC
//! paths: ["src/**/*.rs"]   # files: globs over workspace paths
//! tools: [read, grep, glob, "bash(cargo test:*)"]   # allow rules
//! permission_mode: plan    # ask | accept-edits | plan | allow-all (default plan)
//! model: claude-sonnet-5-5
//! budget_usd: 0.50         # per run
//! daily_budget_usd: 2      # per agent and UTC day
//! missed: run_once         # run_once | skip (see the scheduler)
//! ---
//! The prompt…
//! ```
//!
//! Never: accept a definition that does not parse whole (unknown keys are errors, not ignored).

use std::str::FromStr;

use jarvis_agent::permissions::{Mode, Rule};
use jarvis_sync::doc::{EntryKind, FileEntry, FileText, WorkspaceIndex};
use jarvis_sync::hub::Hub;
use serde::Serialize;

pub use crate::approvals::AGENTS_DIR;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    Cron { schedule: String, timezone: String },
    Files { paths: Vec<String> },
    Webhook,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// A run missed while the server was down runs once on catch-up, if within the window.
    RunOnce,
    /// A missed run is skipped (recorded as such).
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentDef {
    pub name: String,
    pub description: String,
    pub trigger: Trigger,
    /// Permission rules allowed without asking (`read`, `bash(cargo test:*)`).
    pub tools: Vec<String>,
    pub permission_mode: String,
    pub model: Option<String>,
    pub budget_usd: Option<f64>,
    pub daily_budget_usd: Option<f64>,
    pub missed: Missed,
    pub prompt: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn line_err(line: usize, message: impl Into<String>) -> DefError {
    DefError::Line {
        line,
        message: message.into(),
    }
}

/// Agent names: file names under `.jarvis/agents/`, `[a-z0-9_-]`, 1 to 64.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    List(Vec<String>),
}

/// A scalar: quoted (`"…"` with `\"` and `\\`, or `'…'`) or bare up to a ` #` comment.
fn scalar(s: &str, line: usize) -> Result<(String, &str), DefError> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, c)) => out.push(c),
                    None => break,
                },
                '"' => return Ok((out, &rest[i + 1..])),
                c => out.push(c),
            }
        }
        return Err(line_err(line, "unterminated \"string\""));
    }
    if let Some(rest) = s.strip_prefix('\'') {
        return match rest.find('\'') {
            Some(i) => Ok((rest[..i].to_owned(), &rest[i + 1..])),
            None => Err(line_err(line, "unterminated 'string'")),
        };
    }
    let end = s
        .char_indices()
        .find(|&(i, c)| c == '#' && (i == 0 || s[..i].ends_with([' ', '\t'])))
        .map_or(s.len(), |(i, _)| i);
    Ok((s[..end].trim().to_owned(), ""))
}

fn rest_is_comment(rest: &str, line: usize) -> Result<(), DefError> {
    let r = rest.trim();
    if r.is_empty() || r.starts_with('#') {
        Ok(())
    } else {
        Err(line_err(line, format!("unexpected {r:?} after the value")))
    }
}

fn value(s: &str, line: usize) -> Result<Option<Val>, DefError> {
    let t = s.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    if let Some(mut rest) = t.strip_prefix('[') {
        let mut items = Vec::new();
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(']') {
                rest_is_comment(r, line)?;
                return Ok(Some(Val::List(items)));
            }
            if rest.is_empty() {
                return Err(line_err(line, "unterminated [list]"));
            }
            let (item, r) = if rest.starts_with(['"', '\'']) {
                scalar(rest, line)?
            } else {
                let end = rest.find([',', ']']).unwrap_or(rest.len());
                (rest[..end].trim().to_owned(), &rest[end..])
            };
            if item.is_empty() {
                return Err(line_err(line, "empty list item"));
            }
            items.push(item);
            rest = r.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            }
        }
    }
    let (v, rest) = scalar(t, line)?;
    rest_is_comment(rest, line)?;
    Ok(Some(Val::Str(v)))
}

/// Parses a definition file. `name` is the file name without `.md`.
pub fn parse(name: &str, text: &str) -> Result<AgentDef, DefError> {
    if !valid_name(name) {
        return Err(DefError::Invalid(format!(
            "agent name {name:?}: use a-z, 0-9, '-' and '_' (1 to 64)"
        )));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l.trim_end() == "---" => {}
        _ => {
            return Err(line_err(
                1,
                "a definition starts with a '---' front matter line",
            ));
        }
    }
    let mut fields: Vec<(String, Val, usize)> = Vec::new();
    let mut body_start = None;
    for (i, raw) in lines.by_ref() {
        let n = i + 1;
        if raw.trim_end() == "---" {
            body_start = Some(i + 1);
            break;
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(item) = trimmed
            .strip_prefix("- ")
            .or((trimmed == "-").then_some(""))
        {
            let Some((_, Val::List(list), _)) = fields.last_mut() else {
                return Err(line_err(
                    n,
                    "a '- item' line belongs under a key with no value",
                ));
            };
            let (v, rest) = scalar(item, n)?;
            rest_is_comment(rest, n)?;
            if v.is_empty() {
                return Err(line_err(n, "empty list item"));
            }
            list.push(v);
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            return Err(line_err(n, "nested values are not supported"));
        }
        let Some((key, rest)) = trimmed.split_once(':') else {
            return Err(line_err(
                n,
                format!("expected 'key: value', got {trimmed:?}"),
            ));
        };
        let key = key.trim().to_owned();
        if fields.iter().any(|(k, _, _)| *k == key) {
            return Err(line_err(n, format!("{key:?} is given twice")));
        }
        // A key with nothing after it opens a block list.
        let v = value(rest, n)?.unwrap_or(Val::List(Vec::new()));
        fields.push((key, v, n));
    }
    let Some(body_start) = body_start else {
        return Err(DefError::Invalid(
            "the front matter has no closing '---'".into(),
        ));
    };
    let prompt: String = text
        .lines()
        .skip(body_start)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned();
    if prompt.is_empty() {
        return Err(DefError::Invalid(
            "the prompt (after the front matter) is empty".into(),
        ));
    }
    let mut get = |key: &str| -> Option<(Val, usize)> {
        let i = fields.iter().position(|(k, _, _)| k == key)?;
        let (_, v, n) = fields.remove(i);
        Some((v, n))
    };
    let string = |v: Option<(Val, usize)>| -> Result<Option<String>, DefError> {
        match v {
            None => Ok(None),
            Some((Val::Str(s), _)) => Ok(Some(s)),
            Some((Val::List(_), n)) => Err(line_err(n, "expected a single value, not a list")),
        }
    };
    let list = |v: Option<(Val, usize)>| -> Vec<String> {
        match v {
            None => Vec::new(),
            Some((Val::Str(s), _)) => vec![s],
            Some((Val::List(l), _)) => l,
        }
    };
    let number = |v: Option<(Val, usize)>, key: &str| -> Result<Option<f64>, DefError> {
        match v {
            None => Ok(None),
            Some((Val::Str(s), n)) => match s.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(line_err(n, format!("{key}: a positive number of dollars"))),
            },
            Some((Val::List(_), n)) => Err(line_err(n, format!("{key}: a number, not a list"))),
        }
    };
    let trigger_kind = string(get("trigger"))?
        .ok_or_else(|| DefError::Invalid("trigger is required: cron, files or webhook".into()))?;
    let schedule = string(get("schedule"))?;
    let timezone = string(get("timezone"))?;
    let paths = list(get("paths"));
    let has_cron_fields = schedule.is_some() || timezone.is_some();
    let has_paths = !paths.is_empty();
    let trigger = match trigger_kind.as_str() {
        "cron" => {
            let schedule = schedule
                .ok_or_else(|| DefError::Invalid("a cron trigger needs a schedule".into()))?;
            croner::Cron::from_str(&schedule)
                .map_err(|e| DefError::Invalid(format!("schedule {schedule:?}: {e}")))?;
            let timezone = timezone.unwrap_or_else(|| "UTC".into());
            chrono_tz::Tz::from_str(&timezone)
                .map_err(|_| DefError::Invalid(format!("unknown time zone {timezone:?}")))?;
            Trigger::Cron { schedule, timezone }
        }
        "files" => {
            if paths.is_empty() {
                return Err(DefError::Invalid(
                    "a files trigger needs paths (globs)".into(),
                ));
            }
            for p in &paths {
                globset::Glob::new(p)
                    .map_err(|e| DefError::Invalid(format!("paths {p:?}: {e}")))?;
            }
            Trigger::Files { paths }
        }
        "webhook" => Trigger::Webhook,
        other => {
            return Err(DefError::Invalid(format!(
                "trigger {other:?}: use cron, files or webhook"
            )));
        }
    };
    if !matches!(trigger, Trigger::Cron { .. }) && has_cron_fields {
        return Err(DefError::Invalid(
            "schedule and timezone belong to a cron trigger".into(),
        ));
    }
    let tools = list(get("tools"));
    for t in &tools {
        Rule::parse(t).map_err(|e| DefError::Invalid(format!("tools: {e}")))?;
    }
    let permission_mode = string(get("permission_mode"))?.unwrap_or_else(|| "plan".into());
    if Mode::parse(&permission_mode).is_none() {
        return Err(DefError::Invalid(format!(
            "permission_mode {permission_mode:?}: ask, accept-edits, plan or allow-all"
        )));
    }
    let model = string(get("model"))?;
    let budget_usd = number(get("budget_usd"), "budget_usd")?;
    let daily_budget_usd = number(get("daily_budget_usd"), "daily_budget_usd")?;
    let missed = match string(get("missed"))?.as_deref() {
        None | Some("run_once") => Missed::RunOnce,
        Some("skip") => Missed::Skip,
        Some(other) => {
            return Err(DefError::Invalid(format!(
                "missed {other:?}: run_once or skip"
            )));
        }
    };
    let description = string(get("description"))?.unwrap_or_default();
    if let Some((key, _, n)) = fields.first() {
        return Err(line_err(*n, format!("unknown key {key:?}")));
    }
    if !matches!(trigger, Trigger::Files { .. }) && has_paths {
        return Err(DefError::Invalid("paths belong to a files trigger".into()));
    }
    Ok(AgentDef {
        name: name.to_owned(),
        description,
        trigger,
        tools,
        permission_mode,
        model,
        budget_usd,
        daily_budget_usd,
        missed,
        prompt,
    })
}

/// The definitions in a workspace, as the hub holds them: (name, definition or error).
pub async fn load(hub: &Hub, workspace: &str) -> Vec<(String, Result<AgentDef, DefError>)> {
    load_hashed(hub, workspace)
        .await
        .into_iter()
        .map(|d| (d.name, d.def))
        .collect()
}

/// A definition with the hash of the exact text it was parsed from, for approval by content
/// ([`crate::approvals`]): what runs is what was approved.
#[derive(Debug, Clone)]
pub struct Hashed {
    pub name: String,
    pub path: String,
    /// `crate::approvals::content_hash` of the file's text; None when it could not be read.
    pub hash: Option<String>,
    pub def: Result<AgentDef, DefError>,
}

/// The definitions in a workspace with their content hashes.
pub async fn load_hashed(hub: &Hub, workspace: &str) -> Vec<Hashed> {
    let entries = match hub
        .read(&format!("ws/{workspace}/index"), |doc| {
            WorkspaceIndex::new(doc.clone())
                .list()
                .into_iter()
                .filter(|(p, _)| p.starts_with(AGENTS_DIR) && p.ends_with(".md"))
                .collect::<Vec<_>>()
        })
        .await
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(%workspace, error = %e, "reading a workspace index for agents failed");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (path, entry) in entries {
        let rel = &path[AGENTS_DIR.len()..path.len() - 3];
        if rel.contains('/') {
            continue;
        }
        let name = rel.to_owned();
        let text = match (&entry.kind, &entry.doc) {
            (EntryKind::Text, Some(doc)) => hub
                .read(&format!("ws/{workspace}/file/{doc}"), |d| {
                    FileText::new(d.clone()).text()
                })
                .await
                .map_err(|e| DefError::Invalid(format!("reading {path}: {e}"))),
            _ => Err(DefError::Invalid(format!("{path} is not a text file"))),
        };
        let hash = text.as_deref().ok().map(crate::approvals::content_hash);
        out.push(Hashed {
            def: text.and_then(|t| parse(&name, &t)),
            name,
            path,
            hash,
        });
    }
    out
}

/// The text of `.jarvis/agents/<name>.md`, if it exists as a text file.
pub async fn read_text(hub: &Hub, workspace: &str, name: &str) -> Option<String> {
    let path = format!("{AGENTS_DIR}{name}.md");
    let entry = hub
        .read(&format!("ws/{workspace}/index"), |doc| {
            WorkspaceIndex::new(doc.clone()).get(&path)
        })
        .await
        .ok()?
        .ok()??;
    if entry.deleted || entry.kind != EntryKind::Text {
        return None;
    }
    let doc = entry.doc?;
    hub.read(&format!("ws/{workspace}/file/{doc}"), |d| {
        FileText::new(d.clone()).text()
    })
    .await
    .ok()
}

/// Writes (or replaces) `.jarvis/agents/<name>.md` in a workspace through the hub: the file
/// document first, then the index entry that points at it, so no device sees an empty file.
pub async fn write(hub: &Hub, workspace: &str, name: &str, text: &str) -> Result<(), String> {
    let path = format!("{AGENTS_DIR}{name}.md");
    let index_name = format!("ws/{workspace}/index");
    let existing = hub
        .read(&index_name, |doc| {
            WorkspaceIndex::new(doc.clone()).get(&path)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let doc_id = match existing {
        Some(FileEntry {
            kind: EntryKind::Text,
            doc: Some(d),
            ..
        }) => d,
        _ => format!("{:016x}", rand::random::<u64>()),
    };
    hub.edit(&format!("ws/{workspace}/file/{doc_id}"), |doc| {
        FileText::new(doc.clone()).apply_text_diff(text)
    })
    .await
    .map_err(|e| e.to_string())?;
    let entry = FileEntry {
        kind: EntryKind::Text,
        doc: Some(doc_id),
        hash: None,
        base: None,
        size: text.len() as u64,
        mode: 0o644,
        modified_ms: crate::control::now_ms(),
        deleted: false,
    };
    hub.edit(&index_name, |doc| {
        WorkspaceIndex::new(doc.clone()).upsert(&path, &entry)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Deletes the definition file (a tombstone in the index, as the mirror makes).
pub async fn remove(hub: &Hub, workspace: &str, name: &str) -> Result<bool, String> {
    let path = format!("{AGENTS_DIR}{name}.md");
    hub.edit(&format!("ws/{workspace}/index"), |doc| {
        WorkspaceIndex::new(doc.clone()).mark_deleted(&path, crate::control::now_ms())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agents");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_str().unwrap().to_owned();
            let def = parse(&name, &std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(!def.prompt.is_empty());
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn front_matter_fields_lists_and_comments() {
        let def = parse(
            "nightly",
            "---\n# a comment\ntrigger: cron\nschedule: \"30 2 * * *\"   # nightly\n\
             timezone: Europe/Berlin\ntools:\n  - read\n  - \"bash(cargo test:*)\"\n\
             permission_mode: accept-edits\nbudget_usd: 0.25\nmissed: skip\n---\n\nDo it.\n",
        )
        .unwrap();
        assert_eq!(
            def.trigger,
            Trigger::Cron {
                schedule: "30 2 * * *".into(),
                timezone: "Europe/Berlin".into()
            }
        );
        assert_eq!(def.tools, vec!["read", "bash(cargo test:*)"]);
        assert_eq!(def.permission_mode, "accept-edits");
        assert_eq!(def.budget_usd, Some(0.25));
        assert_eq!(def.missed, Missed::Skip);
        assert_eq!(def.prompt, "Do it.");
        let def = parse(
            "docs",
            "---\ntrigger: files\npaths: [\"src/**/*.rs\", 'docs/*.md']\n---\nUpdate.",
        )
        .unwrap();
        assert_eq!(
            def.trigger,
            Trigger::Files {
                paths: vec!["src/**/*.rs".into(), "docs/*.md".into()]
            }
        );
        assert_eq!(def.permission_mode, "plan");
    }

    #[test]
    fn malformed_definitions_are_refused_with_a_reason() {
        let cases = [
            ("no front matter", "hello"),
            ("unclosed", "---\ntrigger: cron\n"),
            ("unknown key", "---\ntrigger: webhook\ncolour: blue\n---\nx"),
            (
                "bad cron",
                "---\ntrigger: cron\nschedule: every day\n---\nx",
            ),
            (
                "bad tz",
                "---\ntrigger: cron\nschedule: 0 9 * * *\ntimezone: Mars/Olympus\n---\nx",
            ),
            ("no paths", "---\ntrigger: files\n---\nx"),
            (
                "bad mode",
                "---\ntrigger: webhook\npermission_mode: yolo\n---\nx",
            ),
            (
                "bad budget",
                "---\ntrigger: webhook\nbudget_usd: -1\n---\nx",
            ),
            (
                "bad rule",
                "---\ntrigger: webhook\ntools: [\"bash(\"]\n---\nx",
            ),
            ("twice", "---\ntrigger: webhook\ntrigger: cron\n---\nx"),
            ("empty prompt", "---\ntrigger: webhook\n---\n  \n"),
            ("nested", "---\ntrigger: webhook\nmodel:\n  name: x\n---\nx"),
            ("unterminated", "---\ntrigger: \"webhook\n---\nx"),
            (
                "paths on cron",
                "---\ntrigger: cron\nschedule: 0 9 * * *\npaths: [a]\n---\nx",
            ),
        ];
        for (what, text) in cases {
            assert!(parse("a", text).is_err(), "{what} was accepted");
        }
        assert!(parse("Bad Name", "---\ntrigger: webhook\n---\nx").is_err());
    }
}
