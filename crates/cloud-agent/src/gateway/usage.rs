//! Usage through the gateway: the per-user table (`gateway_usage`), written off the request
//! path in batches, and the tap that reads usage from a passing SSE stream.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use jarvis_agent::runner::Pricing;
use jarvis_agent::sse::SseParser;
use jarvis_sync::doc::Usage;
use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::Value;

use crate::control::now_ms;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub user: String,
    pub token_id: i64,
    pub model: String,
    pub endpoint: &'static str,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_read_tokens: u64,
}

impl UsageRecord {
    fn usage(&self, pricing: &Pricing) -> Usage {
        let mut u = Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            cost_micros: 0,
        };
        u.cost_micros = pricing.cost_micros(&u);
        u
    }
}

/// The per-user usage table (`gateway_usage` in the hub's database, its own connection).
/// Records are written by one thread in batches, off the request path.
pub struct UsageLog {
    conn: Mutex<Connection>,
    tx: Mutex<Option<std::sync::mpsc::Sender<UsageRecord>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pricing: Pricing,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserUsage {
    pub requests: u64,
    #[serde(flatten)]
    pub usage: Usage,
}

impl UsageLog {
    pub fn open(path: &Path) -> anyhow::Result<Arc<UsageLog>> {
        use anyhow::Context;
        let open = || -> anyhow::Result<Connection> {
            let conn = Connection::open(path)
                .with_context(|| format!("opening {} for gateway usage", path.display()))?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // Usage is accounting, not an acknowledged edit: a commit is not fsynced (WAL with
            // NORMAL survives a crash of this process; a power cut may lose the last records).
            // Fsyncing every request's record cost more CPU than forwarding the request.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(conn)
        };
        let mut conn = open()?;
        // The tables are the hub database's migrations (`jarvis_control::schema`, the one place
        // its schema is written); applied here too so this store opens on its own (tests).
        jarvis_control::schema::migrate(&mut conn).context("migrating the hub database")?;
        let writer_conn = open()?;
        let (tx, rx) = std::sync::mpsc::channel::<UsageRecord>();
        let pricing = Pricing::default();
        let writer = std::thread::Builder::new()
            .name("gateway-usage".into())
            .spawn(move || write_usage(writer_conn, rx, pricing))
            .context("starting the usage writer")?;
        Ok(Arc::new(UsageLog {
            conn: Mutex::new(conn),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            pricing,
        }))
    }

    pub fn record(&self, r: UsageRecord) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => {
                if tx.send(r).is_err() {
                    tracing::error!("gateway usage writer has stopped; a record is lost");
                }
            }
            None => tracing::warn!(user = %r.user, "gateway usage after shutdown not recorded"),
        }
    }

    /// Stops taking records and waits until every one taken is written.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take()
            && w.join().is_err()
        {
            tracing::error!("gateway usage writer panicked");
        }
    }

    /// Usage per user since `since_ms` (`user` limits it to one).
    pub fn by_user(
        &self,
        user: Option<&str>,
        since_ms: u64,
    ) -> rusqlite::Result<HashMap<String, UserUsage>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT user_id, count(*), sum(input_tokens), sum(output_tokens),
                    sum(cache_write_tokens), sum(cache_read_tokens), sum(cost_micros)
             FROM gateway_usage WHERE (?1 IS NULL OR user_id = ?1) AND ts_ms >= ?2
             GROUP BY user_id",
        )?;
        let rows = stmt.query_map(params![user, since_ms as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                UserUsage {
                    requests: r.get::<_, i64>(1)? as u64,
                    usage: Usage {
                        input_tokens: r.get::<_, i64>(2)? as u64,
                        output_tokens: r.get::<_, i64>(3)? as u64,
                        cache_write_tokens: r.get::<_, i64>(4)? as u64,
                        cache_read_tokens: r.get::<_, i64>(5)? as u64,
                        cost_micros: r.get::<_, i64>(6)? as u64,
                    },
                },
            ))
        })?;
        rows.collect()
    }

    pub fn pricing(&self) -> Pricing {
        self.pricing
    }
}

fn write_usage(mut conn: Connection, rx: std::sync::mpsc::Receiver<UsageRecord>, pricing: Pricing) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO gateway_usage (ts_ms, user_id, token_id, model, endpoint, status,
                       input_tokens, output_tokens, cache_write_tokens, cache_read_tokens,
                       cost_micros) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for r in &batch {
                    // Each request at its model's list prices (the model table), else the default.
                    let p = jarvis_agent::models::ModelInfo::lookup(&r.model)
                        .map_or(pricing, |m| m.pricing);
                    let u = r.usage(&p);
                    stmt.execute(params![
                        now_ms() as i64,
                        r.user,
                        r.token_id,
                        r.model,
                        r.endpoint,
                        r.status,
                        u.input_tokens as i64,
                        u.output_tokens as i64,
                        u.cache_write_tokens as i64,
                        u.cache_read_tokens as i64,
                        u.cost_micros as i64
                    ])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, records = batch.len(), "writing gateway usage failed");
        }
    }
}

/// Takes the counts a `usage` object carries (message_start's are the input side and a first
/// output count; message_delta's are cumulative).
pub(crate) fn apply_usage(record: &mut UsageRecord, u: &Value) {
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    if let Some(n) = get("input_tokens") {
        record.input_tokens = n;
    }
    if let Some(n) = get("output_tokens") {
        record.output_tokens = n;
    }
    if let Some(n) = get("cache_creation_input_tokens") {
        record.cache_write_tokens = n;
    }
    if let Some(n) = get("cache_read_input_tokens") {
        record.cache_read_tokens = n;
    }
}

/// Watches a passing SSE stream for usage; records it when the stream ends or is dropped
/// (a client that hangs up mid-reply still pays for what was generated).
pub(crate) struct UsageTap {
    pub(crate) parser: SseParser,
    pub(crate) record: Option<UsageRecord>,
    pub(crate) usage: Arc<UsageLog>,
}

impl UsageTap {
    fn observe(&mut self, chunk: &[u8]) {
        let Some(record) = self.record.as_mut() else {
            return;
        };
        let events = match self.parser.feed(chunk) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "gateway: unreadable SSE from upstream; usage may be incomplete");
                return;
            }
        };
        for e in events {
            match e.event.as_str() {
                "message_start" => {
                    if let Ok(v) = serde_json::from_str::<Value>(&e.data) {
                        let m = &v["message"];
                        if let Some(model) = m.get("model").and_then(Value::as_str) {
                            record.model = model.to_owned();
                        }
                        if let Some(u) = m.get("usage") {
                            apply_usage(record, u);
                        }
                    }
                }
                "message_delta" => {
                    if let Ok(v) = serde_json::from_str::<Value>(&e.data)
                        && let Some(u) = v.get("usage")
                    {
                        apply_usage(record, u);
                    }
                }
                _ => {}
            }
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            self.usage.record(r);
        }
    }
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        self.finish();
    }
}

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The upstream body, chunk by chunk, unchanged, with the usage tap looking on.
pub(crate) struct Tapped {
    pub(crate) inner: ByteStream,
    pub(crate) tap: UsageTap,
}

impl Stream for Tapped {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.tap.observe(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.tap.finish();
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_taken_from_start_and_delta_events_split_anywhere() {
        let events = jarvis_testkit::fake::reply("hello there", &[], (120, 42, 30, 900));
        let body = jarvis_testkit::fake::sse_body(&events);
        for split in [1, 7, 64, body.len()] {
            let dir = tempfile::tempdir().unwrap();
            let log = UsageLog::open(&dir.path().join("u.db")).unwrap();
            let mut tap = UsageTap {
                parser: SseParser::new(),
                record: Some(UsageRecord {
                    user: "u1".into(),
                    ..Default::default()
                }),
                usage: log.clone(),
            };
            for c in body.as_bytes().chunks(split) {
                tap.observe(c);
            }
            let r = tap.record.clone().unwrap();
            assert_eq!(
                (
                    r.model.as_str(),
                    r.input_tokens,
                    r.output_tokens,
                    r.cache_write_tokens,
                    r.cache_read_tokens
                ),
                ("fake-model", 120, 42, 30, 900),
                "split {split}"
            );
            drop(tap);
            log.close();
            let by = log.by_user(None, 0).unwrap();
            let u = &by["u1"];
            assert_eq!(u.requests, 1);
            // Cache writes are priced (3.75 $/Mtok here), not free.
            let p = Pricing::default();
            let want =
                (120.0 * p.input + 42.0 * p.output + 30.0 * p.cache_write + 900.0 * p.cache_read)
                    .round() as u64;
            assert_eq!(u.usage.cost_micros, want);
        }
    }
}
