//! `jarvis-bench cache`: how much of a long session's input is read from the prompt cache. A
//! 40-request session (tool steps, one automatic compaction, a final answer) is replayed by the
//! real turn loop against a fake provider that applies Anthropic's documented prompt-cache
//! rules, and the share of input tokens read from cache and the cost with and without caching
//! are reported.
//!
//! The rules the fake applies (Anthropic's prompt-caching documentation):
//! - the prompt is tools, then system, then messages; a cache entry is the exact prefix up to
//!   and including a block marked `cache_control` (a breakpoint);
//! - a prefix shorter than the model's minimum (1,024 tokens) is not cached;
//! - on a request, each breakpoint also checks earlier block boundaries, up to 20 blocks back,
//!   for an entry, and the longest hit is read;
//! - an entry lives 5 minutes, refreshed each time it is read;
//! - tokens: bytes / 4 per block (the fake's rule throughout).
//!
//! Usage is reported as the API does: `cache_read_input_tokens` (the hit), then
//! `cache_creation_input_tokens` (from the hit to the last breakpoint), then `input_tokens`
//! (after the last breakpoint).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jarvis_agent::models::{ModelInfo, Pricing};
use jarvis_agent::permissions::{Mode, Permissions};
use jarvis_agent::runner::{Outcome, Runner, RunnerConfig};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::doc::{Block, SessionDoc};
use jarvis_testkit::agent::{is_summary_request, last_step};
use jarvis_testkit::fake::{FakeOptions, FakeResponse, FakeServer, RecordedRequest, reply};
use serde_json::{Value, json};

#[derive(clap::Parser, Clone)]
pub struct CacheArgs {
    /// Model requests in the session (tool steps + one summary + the final answer).
    #[arg(long, default_value_t = 40)]
    pub turns: u32,
    /// The context window the runner works with; sized so one compaction happens.
    #[arg(long, default_value_t = 14_000)]
    pub window: u64,
    /// Bytes each tool step adds (the file it writes).
    #[arg(long, default_value_t = 1_500)]
    pub step_bytes: usize,
    /// Simulated seconds between requests (against the 5-minute cache lifetime).
    #[arg(long, default_value_t = 20)]
    pub turn_seconds: u64,
    /// Model whose prices the costs use.
    #[arg(long, default_value = jarvis_agent::models::DEFAULT_MODEL)]
    pub model: String,
    /// Write the Markdown table here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const MIN_CACHEABLE: u64 = 1_024;
const LOOKBACK: usize = 20;
const TTL_SECONDS: u64 = 300;

/// One prompt block: its cumulative prefix hash and token count, and whether it is a
/// breakpoint.
struct PromptBlock {
    prefix: u64,
    tokens_through: u64,
    breakpoint: bool,
}

/// The usage the API would report for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    pub input: u64,
    pub cache_write: u64,
    pub cache_read: u64,
}

impl CacheUsage {
    pub fn total(&self) -> u64 {
        self.input + self.cache_write + self.cache_read
    }
}

/// The cache of one organisation: prefix hash → (tokens, expiry in simulated seconds).
#[derive(Default)]
pub struct PromptCache {
    entries: HashMap<u64, (u64, u64)>,
    pub now: u64,
}

fn hash(prev: u64, v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prev.hash(&mut h);
    v.to_string().hash(&mut h);
    h.finish()
}

/// The blocks of a Messages request body in cache order, `cache_control` removed for hashing.
fn blocks(body: &Value) -> Vec<PromptBlock> {
    let mut out = Vec::new();
    let mut prefix = 0u64;
    let mut tokens = 0u64;
    let mut push = |v: &Value, role: Option<&str>| {
        let breakpoint = v.get("cache_control").is_some();
        let mut bare = v.clone();
        if let Some(o) = bare.as_object_mut() {
            o.remove("cache_control");
        }
        let keyed = json!({"role": role, "block": bare});
        prefix = hash(prefix, &keyed);
        tokens += (bare.to_string().len() as u64).div_ceil(4);
        out.push(PromptBlock {
            prefix,
            tokens_through: tokens,
            breakpoint,
        });
    };
    for t in body["tools"].as_array().into_iter().flatten() {
        push(t, None);
    }
    for s in body["system"].as_array().into_iter().flatten() {
        push(s, Some("system"));
    }
    for m in body["messages"].as_array().into_iter().flatten() {
        let role = m["role"].as_str();
        match &m["content"] {
            Value::Array(parts) => parts.iter().for_each(|p| push(p, role)),
            other => push(other, role),
        }
    }
    out
}

impl PromptCache {
    /// Applies the rules to one request; returns its usage and updates the cache.
    pub fn request(&mut self, body: &Value) -> CacheUsage {
        let blocks = blocks(body);
        let total = blocks.last().map_or(0, |b| b.tokens_through);
        let now = self.now;
        let live = |e: &(u64, u64)| e.1 > now;
        // The longest hit: at a breakpoint or up to 20 block boundaries before one.
        let mut hit: Option<usize> = None;
        for (b, block) in blocks.iter().enumerate() {
            if !block.breakpoint {
                continue;
            }
            let from = b.saturating_sub(LOOKBACK);
            for j in (from..=b).rev() {
                if self.entries.get(&blocks[j].prefix).is_some_and(live) {
                    if hit.is_none_or(|h| j > h) {
                        hit = Some(j);
                    }
                    break;
                }
            }
        }
        let read = hit.map_or(0, |j| blocks[j].tokens_through);
        if let Some(j) = hit
            && let Some(e) = self.entries.get_mut(&blocks[j].prefix)
        {
            e.1 = now + TTL_SECONDS;
        }
        // Every breakpoint's prefix is written (or refreshed) if long enough.
        let mut last_cached = read;
        for block in blocks.iter().filter(|b| b.breakpoint) {
            if block.tokens_through >= MIN_CACHEABLE {
                self.entries
                    .insert(block.prefix, (block.tokens_through, now + TTL_SECONDS));
                last_cached = last_cached.max(block.tokens_through);
            }
        }
        CacheUsage {
            cache_read: read,
            cache_write: last_cached - read,
            input: total - last_cached,
        }
    }
}

struct Record {
    usage: CacheUsage,
    output: u64,
    summary: bool,
}

pub async fn run(args: CacheArgs) -> Result<()> {
    if args.turns < 5 {
        bail!("--turns must be at least 5");
    }
    // Tool steps: every request but the summary and the final answer.
    let steps = args.turns - 2;
    let cache = Arc::new(Mutex::new(PromptCache::default()));
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let (c, r) = (cache.clone(), records.clone());
    let (step_bytes, turn_seconds) = (args.step_bytes, args.turn_seconds);
    let responder = move |req: &RecordedRequest| {
        let mut cache = c.lock().unwrap_or_else(|p| p.into_inner());
        cache.now += turn_seconds;
        let usage = cache.request(&req.body);
        drop(cache);
        let summary = is_summary_request(&req.body);
        let done = last_step(&req.body);
        let (text, tools) = if summary {
            (
                format!(
                    "The user asked for {steps} steps. Wrote steps/1.txt through steps/{done}.txt."
                ),
                vec![],
            )
        } else if done >= steps {
            (format!("All {steps} steps are done."), vec![])
        } else {
            let n = done + 1;
            let input = json!({"path": format!("steps/{n}.txt"),
                "content": format!("step {n}\n{}", "x".repeat(step_bytes))});
            (String::new(), vec![(format!("toolu_{n:04}"), input)])
        };
        let output = (text.len() as u64
            + tools
                .iter()
                .map(|t| t.1.to_string().len() as u64)
                .sum::<u64>())
        .div_ceil(4);
        r.lock().unwrap_or_else(|p| p.into_inner()).push(Record {
            usage,
            output,
            summary,
        });
        let calls: Vec<(&str, &str, Value)> = tools
            .iter()
            .map(|(id, input)| (id.as_str(), "write", input.clone()))
            .collect();
        FakeResponse::sse(
            &reply(
                &text,
                &calls,
                (usage.input, output, usage.cache_write, usage.cache_read),
            ),
            &[1024],
        )
    };
    let server = FakeServer::start_with(
        vec![],
        FakeOptions {
            keep_alive: true,
            responder: Some(Arc::new(responder)),
        },
    )
    .await?;
    let provider = jarvis_agent::anthropic::AnthropicProvider::new(
        &server.url(),
        jarvis_agent::anthropic::Auth::ApiKey("bench-not-a-key".into()),
        Default::default(),
    );
    let dir = tempfile::tempdir()?;
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "bench", &format!("Do the {steps} steps."));
    let pricing = ModelInfo::resolve(&args.model).pricing;
    let info = ModelInfo::custom("bench-model", args.window, 8_192, pricing);
    let mut config = RunnerConfig::for_model("bench-model", &info, "bench");
    config.flush_interval = Duration::from_millis(5);
    let mut runner = Runner::new(
        doc.clone(),
        &provider,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::AcceptEdits),
        config,
    );
    let outcome = runner
        .run(&tokio_util::sync::CancellationToken::new())
        .await;
    if outcome != Outcome::EndTurn {
        bail!("the replayed session ended {outcome:?}");
    }
    let compactions = doc
        .messages()
        .iter()
        .flat_map(|m| m.blocks.iter())
        .filter(|b| matches!(b, Block::Compaction { .. }))
        .count();
    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
    let table = report(&records, compactions, &args, &pricing)?;
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn share(records: &[Record]) -> f64 {
    let read: u64 = records.iter().map(|r| r.usage.cache_read).sum();
    let total: u64 = records.iter().map(|r| r.usage.total()).sum();
    if total == 0 {
        0.0
    } else {
        read as f64 / total as f64
    }
}

fn cost(records: &[Record], p: &Pricing, cached: bool) -> f64 {
    records
        .iter()
        .map(|r| {
            let u = &r.usage;
            let input = if cached {
                u.input as f64 * p.input
                    + u.cache_write as f64 * p.cache_write
                    + u.cache_read as f64 * p.cache_read
            } else {
                u.total() as f64 * p.input
            };
            (input + r.output as f64 * p.output) / 1e6
        })
        .sum()
}

fn report(records: &[Record], compactions: usize, args: &CacheArgs, p: &Pricing) -> Result<String> {
    let n = records.len();
    let at = records
        .iter()
        .position(|r| r.summary)
        .context("no compaction happened: lower --window or raise --step-bytes")?;
    let after_two = &records[2.min(n)..];
    let across = &records[at..];
    let input: u64 = records.iter().map(|r| r.usage.total()).sum();
    let with = cost(records, p, true);
    let without = cost(records, p, false);
    Ok(format!(
        "Machine: {}. Command: `jarvis-bench cache --turns {} --window {} --step-bytes {} --turn-seconds {}`. Prices: {} (${}/${} per MTok in/out, cache write ${}, read ${}).\n\n\
         | requests | compactions (summary at request) | input tokens | read from cache after request 2 | read from cache from the compaction on | cost with caching | cost without | saved |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {n} | {compactions} (#{}) | {input} | {:.1}% | {:.1}% | ${with:.4} | ${without:.4} | {:.0}% |\n",
        crate::machine(),
        args.turns,
        args.window,
        args.step_bytes,
        args.turn_seconds,
        args.model,
        p.input,
        p.output,
        p.cache_write,
        p.cache_read,
        at + 1,
        share(after_two) * 100.0,
        share(across) * 100.0,
        (1.0 - with / without) * 100.0,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(tail: usize, cached_tail: bool) -> Value {
        let big = "t".repeat(4_400); // 1,100 tokens: over the minimum on its own
        let mut messages = Vec::new();
        for i in 0..tail {
            let mut block = json!({"type": "text", "text": format!("message {i}")});
            if cached_tail && i + 1 == tail {
                block["cache_control"] = json!({"type": "ephemeral"});
            }
            messages.push(
                json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": [block]}),
            );
        }
        json!({"tools": [{"name": "t", "description": big, "cache_control": {"type": "ephemeral"}}],
               "system": [], "messages": messages})
    }

    #[test]
    fn prefix_lookback_minimum_and_ttl() {
        let mut c = PromptCache::default();
        let first = c.request(&body(2, true));
        assert_eq!(first.cache_read, 0);
        assert!(first.cache_write > MIN_CACHEABLE);
        // Two blocks more: the previous tail is found by the lookback and read.
        let second = c.request(&body(4, true));
        assert_eq!(second.cache_read, first.cache_write);
        // More than 20 blocks later without an entry in between: only the tools prefix hits.
        let far = c.request(&body(30, true));
        assert!(far.cache_read < second.total());
        // After the 5-minute lifetime nothing is read.
        c.now += TTL_SECONDS + 1;
        assert_eq!(c.request(&body(30, true)).cache_read, 0);
        // A prefix under the minimum is never written.
        let mut c = PromptCache::default();
        let small = json!({"tools": [], "system": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}], "messages": []});
        assert_eq!(c.request(&small).cache_write, 0);
    }
}
