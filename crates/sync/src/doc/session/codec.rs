//! How messages, blocks and usage are laid out in the session document's Y types, both ways.

use super::*;

pub(super) fn usage_any(u: &Usage) -> Any {
    Any::from(HashMap::from([
        ("input".to_owned(), Any::from(u.input_tokens as i64)),
        ("output".to_owned(), Any::from(u.output_tokens as i64)),
        (
            "cache_read".to_owned(),
            Any::from(u.cache_read_tokens as i64),
        ),
        (
            "cache_write".to_owned(),
            Any::from(u.cache_write_tokens as i64),
        ),
        ("cost_micros".to_owned(), Any::from(u.cost_micros as i64)),
    ]))
}

pub(super) fn usage_from_any(a: &Any) -> Usage {
    let Any::Map(u) = a else {
        return Usage::default();
    };
    let f = |k: &str| u.get(k).and_then(read::any_u64).unwrap_or(0);
    Usage {
        input_tokens: f("input"),
        output_tokens: f("output"),
        cache_read_tokens: f("cache_read"),
        cache_write_tokens: f("cache_write"),
        cost_micros: f("cost_micros"),
    }
}

pub(super) fn write_block(
    txn: &mut TransactionMut,
    blocks: &ArrayRef,
    block: &Block,
) -> Option<TextRef> {
    let b: MapRef = blocks.push_back(txn, MapPrelim::default());
    match block {
        Block::Text { text } => {
            b.insert(txn, "type", "text");
            Some(b.insert(txn, "text", TextPrelim::new(text.as_str())))
        }
        Block::Thinking { text, signature } => {
            b.insert(txn, "type", "thinking");
            if let Some(s) = signature {
                b.insert(txn, "signature", s.as_str());
            }
            Some(b.insert(txn, "text", TextPrelim::new(text.as_str())))
        }
        Block::ToolUse {
            id,
            name,
            input,
            status,
        } => {
            b.insert(txn, "type", "tool_use");
            b.insert(txn, "id", id.as_str());
            b.insert(txn, "name", name.as_str());
            b.insert(txn, "input", input.as_str());
            b.insert(txn, "status", status.as_str());
            None
        }
        Block::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => {
            b.insert(txn, "type", "tool_result");
            b.insert(txn, "tool_use_id", tool_use_id.as_str());
            b.insert(txn, "is_error", *is_error);
            Some(b.insert(txn, "content", TextPrelim::new(content.as_str())))
        }
        Block::Approval {
            id,
            tool_use_id,
            tool,
            summary,
            decision,
            decided_by,
            decided_at,
        } => {
            b.insert(txn, "type", "approval");
            b.insert(txn, "id", id.as_str());
            b.insert(txn, "tool_use_id", tool_use_id.as_str());
            b.insert(txn, "tool", tool.as_str());
            b.insert(txn, "summary", summary.as_str());
            if let Some(d) = decision {
                b.insert(txn, "decision", d.as_str());
            }
            if let Some(by) = decided_by {
                b.insert(txn, "decided_by", by.as_str());
            }
            if let Some(at) = decided_at {
                b.insert(txn, "decided_at", Any::from(*at as i64));
            }
            None
        }
        Block::Compaction {
            summary,
            upto,
            replaced,
            tokens_before,
            trigger,
            focus,
        } => {
            b.insert(txn, "type", "compaction");
            b.insert(txn, "upto", upto.as_str());
            b.insert(txn, "replaced", Any::from(i64::from(*replaced)));
            b.insert(txn, "tokens_before", Any::from(*tokens_before as i64));
            b.insert(txn, "trigger", trigger.as_str());
            if let Some(f) = focus {
                b.insert(txn, "focus", f.as_str());
            }
            Some(b.insert(txn, "summary", TextPrelim::new(summary.as_str())))
        }
        Block::Notice { kind, text } => {
            b.insert(txn, "type", "notice");
            b.insert(txn, "kind", kind.as_str());
            Some(b.insert(txn, "text", TextPrelim::new(text.as_str())))
        }
        Block::Unknown { kind } => {
            b.insert(txn, "type", kind.as_str());
            None
        }
    }
}

pub(super) fn read_message<T: ReadTxn>(txn: &T, m: &MapRef) -> Option<Message> {
    let id = read::string(m, txn, "id")?;
    let role = Role::parse(&read::string(m, txn, "role")?)?;
    let blocks = match m.get(txn, "blocks") {
        Some(Out::YArray(a)) => a
            .iter(txn)
            .map(|b| match b {
                Out::YMap(b) => read_block(txn, &b),
                _ => Block::Unknown {
                    kind: "malformed".into(),
                },
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(Message {
        id,
        role,
        author: read::string(m, txn, "author").unwrap_or_default(),
        created_ms: read::u64(m, txn, "created").unwrap_or(0),
        blocks,
    })
}

pub(super) fn read_block<T: ReadTxn>(txn: &T, b: &MapRef) -> Block {
    let s = |k: &str| read::string(b, txn, k);
    let kind = s("type").unwrap_or_else(|| "malformed".into());
    let text = |k: &str| match b.get(txn, k) {
        Some(Out::YText(t)) => Some(t.get_string(txn)),
        Some(Out::Any(Any::String(s))) => Some(s.to_string()),
        _ => None,
    };
    let unknown = || Block::Unknown { kind: kind.clone() };
    match kind.as_str() {
        "text" => text("text").map_or_else(unknown, |text| Block::Text { text }),
        "thinking" => text("text").map_or_else(unknown, |text| Block::Thinking {
            text,
            signature: s("signature"),
        }),
        "tool_use" => match (s("id"), s("name")) {
            (Some(id), Some(name)) => Block::ToolUse {
                id,
                name,
                input: s("input").unwrap_or_else(|| "{}".into()),
                status: s("status").unwrap_or_default(),
            },
            _ => unknown(),
        },
        "tool_result" => match s("tool_use_id") {
            Some(tool_use_id) => Block::ToolResult {
                tool_use_id,
                content: text("content").unwrap_or_default(),
                is_error: read::bool(b, txn, "is_error").unwrap_or(false),
            },
            None => unknown(),
        },
        "approval" => match (s("id"), s("tool_use_id")) {
            (Some(id), Some(tool_use_id)) => Block::Approval {
                id,
                tool_use_id,
                tool: s("tool").unwrap_or_default(),
                summary: s("summary").unwrap_or_default(),
                decision: s("decision").and_then(|d| Decision::parse(&d)),
                decided_by: s("decided_by"),
                decided_at: read::u64(b, txn, "decided_at"),
            },
            _ => unknown(),
        },
        "compaction" => match (text("summary"), s("upto")) {
            (Some(summary), Some(upto)) => Block::Compaction {
                summary,
                upto,
                replaced: read::u64(b, txn, "replaced")
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                tokens_before: read::u64(b, txn, "tokens_before").unwrap_or(0),
                trigger: s("trigger").unwrap_or_default(),
                focus: s("focus"),
            },
            _ => unknown(),
        },
        "notice" => match (s("kind"), text("text")) {
            (Some(kind), Some(text)) => Block::Notice { kind, text },
            _ => unknown(),
        },
        _ => unknown(),
    }
}
