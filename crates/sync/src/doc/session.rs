//! `session/<id>`: Y.Map `meta` (title, workspace, model, status, runner, usage) and Y.Array
//! `messages`. Each message is a Y.Map {id, role, author, created, blocks: Y.Array}; each block a
//! Y.Map {type, …} whose growing text (text, thinking, tool result content) is a Y.Text, so a
//! stream of small appends merges and every peer, a browser included, sees it live.
//!
//! Everything the runner needs to continue a session lives here; nothing lives only in a process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, Doc, GetString, Map, MapPrelim, MapRef, Out, ReadTxn, Text,
    TextPrelim, TextRef, Transact, TransactionMut,
};

use super::DocError;
use super::read;

mod codec;
#[cfg(test)]
mod tests;

use codec::{read_message, usage_any, usage_from_any, write_block};

const META: &str = "meta";
const MESSAGES: &str = "messages";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Idle,
    Running,
    WaitingApproval,
    Interrupted,
    Done,
    Failed,
    /// A status written by a newer peer; shown as is, never acted on.
    #[serde(untagged)]
    Other(String),
}

impl SessionStatus {
    pub fn as_str(&self) -> &str {
        match self {
            SessionStatus::Idle => "idle",
            SessionStatus::Running => "running",
            SessionStatus::WaitingApproval => "waiting_approval",
            SessionStatus::Interrupted => "interrupted",
            SessionStatus::Done => "done",
            SessionStatus::Failed => "failed",
            SessionStatus::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "idle" => SessionStatus::Idle,
            "running" => SessionStatus::Running,
            "waiting_approval" => SessionStatus::WaitingApproval,
            "interrupted" => SessionStatus::Interrupted,
            "done" => SessionStatus::Done,
            "failed" => SessionStatus::Failed,
            other => SessionStatus::Other(other.to_owned()),
        }
    }
}

/// Who runs the session: a mirror of the hub's lease, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    pub device: String,
    pub epoch: u64,
    pub expires_ms: u64,
}

/// A request to move the session to another runner (`to` is a device id, or `cloud`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRequest {
    pub to: String,
    pub by: String,
    pub requested_ms: u64,
}

/// Token counts and cost; cost in millionths of a US dollar, so sums are exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_micros: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
        self.cost_micros += o.cost_micros;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub title: String,
    pub workspace: String,
    pub model: String,
    pub status: SessionStatus,
    pub runner: Option<Runner>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "system" => Some(Role::System),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    AlwaysAllow,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::AlwaysAllow => "always_allow",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "allow" => Some(Decision::Allow),
            "deny" => Some(Decision::Deny),
            "always_allow" => Some(Decision::AlwaysAllow),
            _ => None,
        }
    }
}

/// One content block, as a plain value (what `messages()` returns and `append_*` takes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    Thinking {
        text: String,
        signature: Option<String>,
    },
    ToolUse {
        id: String,
        name: String,
        /// The tool input as JSON text.
        input: String,
        /// pending, running, done, error, … (free-form, set by the runner).
        status: String,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
    Approval {
        id: String,
        tool_use_id: String,
        tool: String,
        summary: String,
        decision: Option<Decision>,
        decided_by: Option<String>,
        decided_at: Option<u64>,
    },
    /// A summary that stands in for the messages up to and including `upto` in every later
    /// model request (automatic or `/compact` compaction). The messages stay for readers; a
    /// view shows this block collapsed, with how many messages and tokens it replaced.
    Compaction {
        summary: String,
        /// Id of the last message the summary covers.
        upto: String,
        /// How many messages it replaced, and the size of the request it replaced (tokens).
        replaced: u32,
        tokens_before: u64,
        /// `auto`, or `manual` for `/compact`.
        trigger: String,
        /// What the user asked the summary to focus on (`/compact <focus>`).
        focus: Option<String>,
    },
    /// A typed system note (a limit that ended a run, a deprecated model, a stopped background
    /// command): `kind` says which, so a view can act on it; `text` says what to do.
    Notice {
        kind: String,
        text: String,
    },
    /// A block a newer peer wrote, or one too malformed to read; kept, shown, never acted on.
    Unknown {
        kind: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub role: Role,
    pub author: String,
    pub created_ms: u64,
    pub blocks: Vec<Block>,
}

/// A message to append; same shape as [`Message`].
pub type NewMessage = Message;

/// A handle on one block, for streaming into its text without any lookup.
#[derive(Clone)]
pub struct BlockRef {
    message: String,
    index: u32,
    /// None for blocks without text (tool_use, approval).
    text: Option<TextRef>,
}

impl BlockRef {
    pub fn message_id(&self) -> &str {
        &self.message
    }

    pub fn index(&self) -> u32 {
        self.index
    }
}

/// The typed view of a session document. Cheap to clone; all clones share one position cache.
#[derive(Clone)]
pub struct SessionDoc {
    doc: Doc,
    meta: MapRef,
    messages: ArrayRef,
    /// Message id → last known index. Concurrent appends can shift positions, so a hit is
    /// verified and a miss or mismatch falls back to a scan.
    positions: Arc<Mutex<HashMap<String, u32>>>,
}

impl SessionDoc {
    /// Wraps a document (fresh, or one a sync client keeps in sync).
    pub fn new(doc: Doc) -> Self {
        let meta = doc.get_or_insert_map(META);
        let messages = doc.get_or_insert_array(MESSAGES);
        SessionDoc {
            doc,
            meta,
            messages,
            positions: Arc::default(),
        }
    }

    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    pub fn meta(&self) -> SessionMeta {
        let txn = self.doc.transact();
        let m = &self.meta;
        let runner = match m.get(&txn, "runner") {
            Some(Out::Any(Any::Map(r))) => {
                match (r.get("device"), r.get("epoch"), r.get("expires")) {
                    (Some(Any::String(d)), Some(e), Some(x)) => {
                        match (read::any_u64(e), read::any_u64(x)) {
                            (Some(epoch), Some(expires_ms)) => Some(Runner {
                                device: d.to_string(),
                                epoch,
                                expires_ms,
                            }),
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let usage = match m.get(&txn, "usage") {
            Some(Out::Any(a)) => usage_from_any(&a),
            _ => Usage::default(),
        };
        SessionMeta {
            title: read::string(m, &txn, "title").unwrap_or_default(),
            workspace: read::string(m, &txn, "workspace").unwrap_or_default(),
            model: read::string(m, &txn, "model").unwrap_or_default(),
            status: read::string(m, &txn, "status")
                .map(|s| SessionStatus::parse(&s))
                .unwrap_or(SessionStatus::Idle),
            runner,
            usage,
        }
    }

    fn set(&self, key: &str, value: Any) {
        let mut txn = self.doc.transact_mut();
        self.meta.insert(&mut txn, key, value);
    }

    pub fn set_title(&self, title: &str) {
        self.set("title", title.into());
    }

    pub fn set_workspace(&self, workspace: &str) {
        self.set("workspace", workspace.into());
    }

    pub fn set_model(&self, model: &str) {
        self.set("model", model.into());
    }

    pub fn set_status(&self, status: &SessionStatus) {
        self.set("status", status.as_str().into());
    }

    pub fn set_runner(&self, runner: Option<&Runner>) {
        let value = match runner {
            Some(r) => Any::from(HashMap::from([
                ("device".to_owned(), Any::from(r.device.as_str())),
                ("epoch".to_owned(), Any::from(r.epoch as i64)),
                ("expires".to_owned(), Any::from(r.expires_ms as i64)),
            ])),
            None => Any::Null,
        };
        self.set("runner", value);
    }

    /// A free-form string setting in `meta` (permission mode, rules): settings travel with
    /// the session so every runner applies the same ones.
    pub fn set_setting(&self, key: &str, value: &str) {
        self.set(&format!("setting.{key}"), value.into());
    }

    pub fn setting(&self, key: &str) -> Option<String> {
        let txn = self.doc.transact();
        read::string(&self.meta, &txn, &format!("setting.{key}"))
    }

    /// A pending request to move the session's runner, mirrored from the hub's lease table
    /// so the current runner sees it at once and stops at a safe point.
    pub fn set_handoff(&self, request: Option<&HandoffRequest>) {
        let value = match request {
            Some(r) => Any::from(HashMap::from([
                ("to".to_owned(), Any::from(r.to.as_str())),
                ("by".to_owned(), Any::from(r.by.as_str())),
                ("requested".to_owned(), Any::from(r.requested_ms as i64)),
            ])),
            None => Any::Null,
        };
        self.set("handoff", value);
    }

    pub fn handoff(&self) -> Option<HandoffRequest> {
        let txn = self.doc.transact();
        match self.meta.get(&txn, "handoff") {
            Some(Out::Any(Any::Map(r))) => match (r.get("to"), r.get("by"), r.get("requested")) {
                (Some(Any::String(to)), Some(Any::String(by)), Some(at)) => Some(HandoffRequest {
                    to: to.to_string(),
                    by: by.to_string(),
                    requested_ms: read::any_u64(at).unwrap_or(0),
                }),
                _ => None,
            },
            _ => None,
        }
    }

    /// Asks whoever runs the session to stop now (any replica may ask). Returns the request's
    /// number; a runner stops when the number changes from the one it started with.
    pub fn request_interrupt(&self, by: &str) -> u64 {
        let next = self.interrupt_count() + 1;
        self.set(
            "interrupt",
            Any::from(HashMap::from([
                ("n".to_owned(), Any::from(next as i64)),
                ("by".to_owned(), Any::from(by)),
            ])),
        );
        next
    }

    /// How many interrupts have been requested (0 if none ever was).
    pub fn interrupt_count(&self) -> u64 {
        let txn = self.doc.transact();
        match self.meta.get(&txn, "interrupt") {
            Some(Out::Any(Any::Map(r))) => r.get("n").and_then(read::any_u64).unwrap_or(0),
            _ => 0,
        }
    }

    /// Removes every block of a message: a reply whose stream failed part-way is streamed again
    /// from the start into the same message, so readers never see its text twice.
    pub fn clear_blocks(&self, message_id: &str) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        let blocks = self.blocks_of(&txn, message_id)?;
        let n = blocks.len(&txn);
        if n > 0 {
            blocks.remove_range(&mut txn, 0, n);
        }
        Ok(())
    }

    /// Marks a reply that was cut short by a handoff: kept for the reader, and a runner that
    /// continues the session asks the model again instead of taking it as the last word.
    pub fn mark_cut(&self, message_id: &str) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        let (_, m) = self
            .find(&txn, message_id)
            .ok_or_else(|| DocError::UnknownMessage(message_id.to_owned()))?;
        m.insert(&mut txn, "cut", true);
        Ok(())
    }

    /// Ids of the messages marked with [`mark_cut`](Self::mark_cut).
    pub fn cut_messages(&self) -> std::collections::HashSet<String> {
        let txn = self.doc.transact();
        self.messages
            .iter(&txn)
            .filter_map(|m| match m {
                Out::YMap(m) if read::bool(&m, &txn, "cut") == Some(true) => {
                    read::string(&m, &txn, "id")
                }
                _ => None,
            })
            .collect()
    }

    /// Adds one turn's usage to the session totals. Only the session's runner writes usage, so
    /// this read-modify-write does not race with another writer.
    pub fn add_usage(&self, turn: &Usage) {
        let mut total = self.meta().usage;
        total.add(turn);
        let value = Any::from(HashMap::from([
            ("input".to_owned(), Any::from(total.input_tokens as i64)),
            ("output".to_owned(), Any::from(total.output_tokens as i64)),
            (
                "cache_read".to_owned(),
                Any::from(total.cache_read_tokens as i64),
            ),
            (
                "cache_write".to_owned(),
                Any::from(total.cache_write_tokens as i64),
            ),
            (
                "cost_micros".to_owned(),
                Any::from(total.cost_micros as i64),
            ),
        ]));
        self.set("usage", value);
    }

    /// The context meter: how many input tokens the next model request is expected to carry,
    /// and the model's window. Written by the runner before each request.
    pub fn set_context(&self, tokens: u64, window: u64) {
        let mut txn = self.doc.transact_mut();
        self.meta
            .insert(&mut txn, "context_tokens", Any::from(tokens as i64));
        self.meta
            .insert(&mut txn, "context_window", Any::from(window as i64));
    }

    /// `(tokens, window)` as last written by [`SessionDoc::set_context`].
    pub fn context(&self) -> Option<(u64, u64)> {
        let txn = self.doc.transact();
        Some((
            read::u64(&self.meta, &txn, "context_tokens")?,
            read::u64(&self.meta, &txn, "context_window")?,
        ))
    }

    /// Background commands the runner has running, for every device to list: id → summary
    /// (the command line). Written only by the session's runner.
    pub fn set_background(&self, shells: &[(String, String)]) {
        let value = Any::from(
            shells
                .iter()
                .map(|(id, cmd)| (id.clone(), Any::from(cmd.as_str())))
                .collect::<HashMap<String, Any>>(),
        );
        self.set("background", value);
    }

    pub fn background(&self) -> Vec<(String, String)> {
        let txn = self.doc.transact();
        let mut out: Vec<(String, String)> = match self.meta.get(&txn, "background") {
            Some(Out::Any(Any::Map(m))) => m
                .iter()
                .filter_map(|(k, v)| match v {
                    Any::String(s) => Some((k.clone(), s.to_string())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        out.sort();
        out
    }

    /// Number of messages.
    pub fn len(&self) -> u32 {
        self.messages.len(&self.doc.transact())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find<T: ReadTxn>(&self, txn: &T, id: &str) -> Option<(u32, MapRef)> {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = positions.get(id)
            && let Some(Out::YMap(m)) = self.messages.get(txn, i)
            && read::string(&m, txn, "id").as_deref() == Some(id)
        {
            return Some((i, m));
        }
        // Scan from the end: the message wanted is almost always a recent one.
        let len = self.messages.len(txn);
        for i in (0..len).rev() {
            if let Some(Out::YMap(m)) = self.messages.get(txn, i)
                && let Some(mid) = read::string(&m, txn, "id")
            {
                let hit = mid == id;
                positions.insert(mid, i);
                if hit {
                    return Some((i, m));
                }
            }
        }
        None
    }

    /// Appends a message with its initial blocks, in one transaction.
    pub fn append_message(&self, msg: &NewMessage) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        if self.find(&txn, &msg.id).is_some() {
            return Err(DocError::DuplicateMessage(msg.id.clone()));
        }
        let m: MapRef = self.messages.push_back(&mut txn, MapPrelim::default());
        m.insert(&mut txn, "id", msg.id.as_str());
        m.insert(&mut txn, "role", msg.role.as_str());
        m.insert(&mut txn, "author", msg.author.as_str());
        m.insert(&mut txn, "created", Any::from(msg.created_ms as i64));
        let blocks: ArrayRef = m.insert(&mut txn, "blocks", ArrayPrelim::default());
        for b in &msg.blocks {
            write_block(&mut txn, &blocks, b);
        }
        let index = self.messages.len(&txn) - 1;
        self.positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(msg.id.clone(), index);
        Ok(())
    }

    fn blocks_of<T: ReadTxn>(&self, txn: &T, message_id: &str) -> Result<ArrayRef, DocError> {
        let (_, m) = self
            .find(txn, message_id)
            .ok_or_else(|| DocError::UnknownMessage(message_id.to_owned()))?;
        match m.get(txn, "blocks") {
            Some(Out::YArray(a)) => Ok(a),
            _ => Err(DocError::Malformed(format!("message {message_id} blocks"))),
        }
    }

    /// Appends a block to a message; the returned handle streams into its text.
    pub fn append_block(&self, message_id: &str, block: &Block) -> Result<BlockRef, DocError> {
        let mut txn = self.doc.transact_mut();
        let blocks = self.blocks_of(&txn, message_id)?;
        let index = blocks.len(&txn);
        let text = write_block(&mut txn, &blocks, block);
        Ok(BlockRef {
            message: message_id.to_owned(),
            index,
            text,
        })
    }

    /// A streaming handle on an existing block (after a restart, say).
    pub fn block_ref(&self, message_id: &str, index: u32) -> Result<BlockRef, DocError> {
        let txn = self.doc.transact();
        let blocks = self.blocks_of(&txn, message_id)?;
        let b = match blocks.get(&txn, index) {
            Some(Out::YMap(b)) => b,
            _ => {
                return Err(DocError::NoSuchBlock {
                    message: message_id.to_owned(),
                    index,
                });
            }
        };
        let key = match read::string(&b, &txn, "type").as_deref() {
            Some("tool_result") => "content",
            _ => "text",
        };
        let text = match b.get(&txn, key) {
            Some(Out::YText(text)) => Some(text),
            _ => None,
        };
        Ok(BlockRef {
            message: message_id.to_owned(),
            index,
            text,
        })
    }

    /// Appends streamed text to a block: one small transaction, no lookup.
    pub fn push_text(&self, block: &BlockRef, text: &str) -> Result<(), DocError> {
        let t = block.text.as_ref().ok_or_else(|| DocError::NotText {
            message: block.message.clone(),
            index: block.index,
        })?;
        let mut txn = self.doc.transact_mut();
        t.push(&mut txn, text);
        Ok(())
    }

    /// The block of type `kind` whose `id` is `id`, searching recent messages first.
    fn find_block<T: ReadTxn>(&self, txn: &T, kind: &str, id: &str) -> Option<MapRef> {
        let len = self.messages.len(txn);
        for i in (0..len).rev() {
            let Some(Out::YMap(m)) = self.messages.get(txn, i) else {
                continue;
            };
            let Some(Out::YArray(blocks)) = m.get(txn, "blocks") else {
                continue;
            };
            for b in blocks.iter(txn) {
                if let Out::YMap(b) = b
                    && read::string(&b, txn, "type").as_deref() == Some(kind)
                    && read::string(&b, txn, "id").as_deref() == Some(id)
                {
                    return Some(b);
                }
            }
        }
        None
    }

    /// Records the signature that seals a streamed thinking block.
    pub fn set_thinking_signature(
        &self,
        block: &BlockRef,
        signature: &str,
    ) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        let blocks = self.blocks_of(&txn, &block.message)?;
        match blocks.get(&txn, block.index) {
            Some(Out::YMap(b)) => {
                b.insert(&mut txn, "signature", signature);
                Ok(())
            }
            _ => Err(DocError::NoSuchBlock {
                message: block.message.clone(),
                index: block.index,
            }),
        }
    }

    /// Records one model turn's usage on its message (the session totals are `add_usage`).
    pub fn set_message_usage(&self, message_id: &str, usage: &Usage) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        let (_, m) = self
            .find(&txn, message_id)
            .ok_or_else(|| DocError::UnknownMessage(message_id.to_owned()))?;
        m.insert(&mut txn, "usage", usage_any(usage));
        Ok(())
    }

    pub fn message_usage(&self, message_id: &str) -> Option<Usage> {
        let txn = self.doc.transact();
        let (_, m) = self.find(&txn, message_id)?;
        match m.get(&txn, "usage") {
            Some(Out::Any(a)) => Some(usage_from_any(&a)),
            _ => None,
        }
    }

    /// Sets the status of the tool_use block with `tool_use_id`.
    pub fn set_tool_status(&self, tool_use_id: &str, status: &str) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        let b = self
            .find_block(&txn, "tool_use", tool_use_id)
            .ok_or_else(|| DocError::Malformed(format!("no tool_use {tool_use_id}")))?;
        b.insert(&mut txn, "status", status);
        Ok(())
    }

    /// Records the answer to an approval. The first answer wins: a second answer is refused
    /// with the first one in the error. (Two devices answering at the same moment while apart
    /// converge to one answer by the CRDT's rule; the runner acts on the converged value.)
    pub fn answer_approval(
        &self,
        approval_id: &str,
        decision: Decision,
        by: &str,
        at_ms: u64,
    ) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        let b = self
            .find_block(&txn, "approval", approval_id)
            .ok_or_else(|| DocError::UnknownApproval(approval_id.to_owned()))?;
        if let Some(d) = read::string(&b, &txn, "decision") {
            return Err(DocError::AlreadyAnswered {
                id: approval_id.to_owned(),
                decision: d,
                by: read::string(&b, &txn, "decided_by").unwrap_or_default(),
            });
        }
        b.insert(&mut txn, "decision", decision.as_str());
        b.insert(&mut txn, "decided_by", by);
        b.insert(&mut txn, "decided_at", Any::from(at_ms as i64));
        Ok(())
    }

    /// Approvals still waiting for an answer, with the id of the message holding each.
    pub fn pending_approvals(&self) -> Vec<(String, Block)> {
        self.messages()
            .into_iter()
            .flat_map(|m| {
                let id = m.id;
                m.blocks.into_iter().filter_map(move |b| match &b {
                    Block::Approval { decision: None, .. } => Some((id.clone(), b)),
                    _ => None,
                })
            })
            .collect()
    }

    /// Every message as plain values. Malformed messages are skipped (and logged); malformed
    /// blocks become [`Block::Unknown`].
    pub fn messages(&self) -> Vec<Message> {
        let txn = self.doc.transact();
        self.messages
            .iter(&txn)
            .filter_map(|m| match m {
                Out::YMap(m) => {
                    let msg = read_message(&txn, &m);
                    if msg.is_none() {
                        tracing::warn!("skipping a malformed message in a session document");
                    }
                    msg
                }
                _ => None,
            })
            .collect()
    }

    pub fn message(&self, id: &str) -> Option<Message> {
        let txn = self.doc.transact();
        let (_, m) = self.find(&txn, id)?;
        read_message(&txn, &m)
    }
}
