//! The SQLite store: WAL journal, `synchronous=FULL` (a committed append survives power loss),
//! one connection for writes and one for reads so loads do not queue behind a large batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{AppendItem, CompactStats, LogStats, Store, StoreError, StoredDoc};

/// Bumped when the schema changes; a database from a newer build is refused, not guessed at.
const SCHEMA_VERSION: i64 = 1;

pub struct SqliteStore {
    writer: Mutex<Writer>,
    /// None for an in-memory store, whose second connection would be a different database.
    reader: Option<Mutex<Connection>>,
}

struct Writer {
    conn: Connection,
    /// Document name → row id, so a batch does not look names up once per update.
    ids: HashMap<String, i64>,
}

fn check_name(doc: &str) -> Result<(), StoreError> {
    if doc.is_empty() || doc.len() > 512 || doc.contains('\0') {
        return Err(StoreError::InvalidName(doc.to_owned()));
    }
    Ok(())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt {
            doc: String::new(),
            reason: format!(
                "database schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
            ),
        });
    }
    if version < 1 {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS documents (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL UNIQUE
             );
             CREATE TABLE IF NOT EXISTS updates (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 doc INTEGER NOT NULL REFERENCES documents(id),
                 data BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS updates_by_doc ON updates(doc, seq);
             CREATE TABLE IF NOT EXISTS snapshots (
                 doc INTEGER PRIMARY KEY REFERENCES documents(id),
                 data BLOB NOT NULL,
                 upto_seq INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY,
                 value BLOB NOT NULL
             );
             PRAGMA user_version = 1;",
        )?;
        tx.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Corrupt {
                doc: String::new(),
                reason: format!("cannot create {}: {e}", parent.display()),
            })?;
        }
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        let reader = Connection::open(path)?;
        configure(&reader)?;
        Ok(Self {
            writer: Mutex::new(Writer {
                conn,
                ids: HashMap::new(),
            }),
            reader: Some(Mutex::new(reader)),
        })
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Self {
            writer: Mutex::new(Writer {
                conn,
                ids: HashMap::new(),
            }),
            reader: None,
        })
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>, StoreError> {
        self.writer.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs a read on the reader connection, or on the writer for an in-memory store.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.reader {
            Some(r) => f(&*r.lock().map_err(|_| StoreError::Poisoned)?),
            None => f(&self.writer()?.conn),
        }
    }
}

fn doc_id(conn: &Connection, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM documents WHERE name = ?1")?
        .query_row(params![name], |r| r.get(0))
        .optional()?)
}

fn load_with(conn: &Connection, doc: &str) -> Result<StoredDoc, StoreError> {
    let Some(id) = doc_id(conn, doc)? else {
        return Ok(StoredDoc::default());
    };
    let snapshot: Option<Vec<u8>> = conn
        .prepare_cached("SELECT data FROM snapshots WHERE doc = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    let mut stmt = conn.prepare_cached("SELECT data FROM updates WHERE doc = ?1 ORDER BY seq")?;
    let updates = stmt
        .query_map(params![id], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(StoredDoc { snapshot, updates })
}

impl Store for SqliteStore {
    fn append(&self, items: &[AppendItem<'_>]) -> Result<(), StoreError> {
        for i in items {
            check_name(i.doc)?;
        }
        let mut w = self.writer()?;
        let Writer { conn, ids } = &mut *w;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut new_ids: Vec<(String, i64)> = Vec::new();
        {
            let mut insert_doc = tx.prepare_cached(
                "INSERT INTO documents (name) VALUES (?1) ON CONFLICT(name) DO NOTHING",
            )?;
            let mut select_doc = tx.prepare_cached("SELECT id FROM documents WHERE name = ?1")?;
            let mut insert_update =
                tx.prepare_cached("INSERT INTO updates (doc, data) VALUES (?1, ?2)")?;
            for item in items {
                let id = match ids.get(item.doc).copied().or_else(|| {
                    new_ids
                        .iter()
                        .find(|(n, _)| n == item.doc)
                        .map(|(_, id)| *id)
                }) {
                    Some(id) => id,
                    None => {
                        insert_doc.execute(params![item.doc])?;
                        let id: i64 = select_doc.query_row(params![item.doc], |r| r.get(0))?;
                        new_ids.push((item.doc.to_owned(), id));
                        id
                    }
                };
                insert_update.execute(params![id, item.update])?;
            }
        }
        tx.commit()?;
        // Only cache ids once they are committed, so a rolled-back batch leaves no stale id.
        ids.extend(new_ids);
        Ok(())
    }

    fn load(&self, doc: &str) -> Result<StoredDoc, StoreError> {
        check_name(doc)?;
        self.read(|c| load_with(c, doc))
    }

    fn compact(&self, doc: &str) -> Result<CompactStats, StoreError> {
        check_name(doc)?;
        let mut w = self.writer()?;
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(id) = doc_id(&tx, doc)? else {
            return Ok(CompactStats::default());
        };
        let stored = load_with(&tx, doc)?;
        let max_seq: Option<i64> = tx
            .prepare_cached("SELECT max(seq) FROM updates WHERE doc = ?1")?
            .query_row(params![id], |r| r.get(0))?;
        let Some(max_seq) = max_seq else {
            return Ok(CompactStats::default());
        };
        let snapshot = stored.merged(doc)?;
        tx.prepare_cached(
            "INSERT INTO snapshots (doc, data, upto_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT(doc) DO UPDATE SET data = excluded.data, upto_seq = excluded.upto_seq",
        )?
        .execute(params![id, snapshot, max_seq])?;
        tx.prepare_cached("DELETE FROM updates WHERE doc = ?1 AND seq <= ?2")?
            .execute(params![id, max_seq])?;
        tx.commit()?;
        Ok(CompactStats {
            merged_entries: stored.updates.len() as u64,
            snapshot_bytes: snapshot.len() as u64,
        })
    }

    fn log_stats(&self, doc: &str) -> Result<LogStats, StoreError> {
        check_name(doc)?;
        self.read(|c| {
            let Some(id) = doc_id(c, doc)? else {
                return Ok(LogStats::default());
            };
            let (entries, bytes): (i64, i64) = c
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(length(data)), 0) FROM updates WHERE doc = ?1",
                )?
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(LogStats {
                entries: entries as u64,
                bytes: bytes as u64,
            })
        })
    }

    fn list_docs(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT name FROM documents d WHERE EXISTS (SELECT 1 FROM updates u WHERE u.doc = d.id)
                 OR EXISTS (SELECT 1 FROM snapshots s WHERE s.doc = d.id) ORDER BY name",
            )?;
            let names = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(names)
        })
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()?)
        })
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let w = self.writer()?;
        w.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

    use super::*;

    fn edit(doc: &Doc, at: u32, s: &str) -> Vec<u8> {
        let before = doc.transact().state_vector();
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), at, s);
        doc.transact().encode_diff_v1(&before)
    }

    fn replay(stored: &StoredDoc) -> String {
        let d = Doc::new();
        {
            let mut txn = d.transact_mut();
            for u in stored.snapshot.iter().chain(stored.updates.iter()) {
                txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
            }
        }
        d.get_or_insert_text("t").get_string(&d.transact())
    }

    #[test]
    fn append_load_compact_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/store.db");
        let source = Doc::new();
        {
            let store = SqliteStore::open(&path).unwrap();
            let mut updates = Vec::new();
            for i in 0..50u32 {
                updates.push(edit(
                    &source,
                    i,
                    &((b'a' + (i % 26) as u8) as char).to_string(),
                ));
            }
            for chunk in updates.chunks(7) {
                let items: Vec<_> = chunk
                    .iter()
                    .map(|u| AppendItem {
                        doc: "session/a",
                        update: u,
                    })
                    .collect();
                store.append(&items).unwrap();
            }
            store
                .append(&[AppendItem {
                    doc: "session/b",
                    update: &updates[0],
                }])
                .unwrap();
            let stored = store.load("session/a").unwrap();
            assert_eq!(stored.updates, updates, "order preserved");
            let want = source
                .get_or_insert_text("t")
                .get_string(&source.transact());
            assert_eq!(replay(&stored), want);
            assert_eq!(store.log_stats("session/a").unwrap().entries, 50);

            let stats = store.compact("session/a").unwrap();
            assert_eq!(stats.merged_entries, 50);
            assert_eq!(store.log_stats("session/a").unwrap(), LogStats::default());
            let compacted = store.load("session/a").unwrap();
            assert!(compacted.updates.is_empty());
            assert_eq!(replay(&compacted), want);

            // Appends after a compaction land after the snapshot.
            let more = edit(&source, 0, "Z");
            store
                .append(&[AppendItem {
                    doc: "session/a",
                    update: &more,
                }])
                .unwrap();
            store.put_meta("k", b"v").unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let want = source
            .get_or_insert_text("t")
            .get_string(&source.transact());
        assert_eq!(replay(&store.load("session/a").unwrap()), want);
        assert_eq!(store.list_docs().unwrap(), vec!["session/a", "session/b"]);
        assert_eq!(store.get_meta("k").unwrap(), Some(b"v".to_vec()));
        assert!(store.load("session/none").unwrap().is_empty());
    }

    #[test]
    fn a_batch_with_a_bad_item_stores_nothing() {
        let store = SqliteStore::open_in_memory().unwrap();
        let u = edit(&Doc::new(), 0, "x");
        let bad = [
            AppendItem {
                doc: "session/ok",
                update: &u,
            },
            AppendItem {
                doc: "",
                update: &u,
            },
        ];
        assert!(matches!(
            store.append(&bad),
            Err(StoreError::InvalidName(_))
        ));
        assert!(store.load("session/ok").unwrap().is_empty());
        assert!(store.list_docs().unwrap().is_empty());
    }

    #[test]
    fn corrupt_updates_fail_compaction_and_keep_the_log() {
        let store = SqliteStore::open_in_memory().unwrap();
        let good = edit(&Doc::new(), 0, "x");
        store
            .append(&[
                AppendItem {
                    doc: "session/c",
                    update: &good,
                },
                AppendItem {
                    doc: "session/c",
                    update: &[0xff, 0xff, 0xff],
                },
            ])
            .unwrap();
        assert!(matches!(
            store.compact("session/c"),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(store.load("session/c").unwrap().updates.len(), 2);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&path).err().unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    const CHILD_ENV: &str = "JARVIS_STORE_CRASH_CHILD";

    /// Child half of `committed_appends_survive_kill_9`: appends forever, printing each index
    /// after its transaction committed.
    #[test]
    fn crash_child_writer() {
        let Ok(path) = std::env::var(CHILD_ENV) else {
            return;
        };
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        let doc = Doc::new();
        for i in 0u32.. {
            let u = edit(&doc, 0, &format!("<{i}>"));
            store
                .append(&[AppendItem {
                    doc: "session/crash",
                    update: &u,
                }])
                .unwrap();
            println!("{i}");
        }
    }

    #[test]
    fn committed_appends_survive_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.db");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sqlite::tests::crash_child_writer",
                "--nocapture",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut committed = Vec::new();
        while committed.len() < 200 {
            let Some(Ok(line)) = lines.next() else { break };
            if let Ok(i) = line.trim().parse::<u32>() {
                committed.push(i);
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            committed.len() >= 200,
            "child wrote only {} updates",
            committed.len()
        );
        let store = SqliteStore::open(&path).unwrap();
        let text = replay(&store.load("session/crash").unwrap());
        for i in committed {
            assert!(
                text.contains(&format!("<{i}>")),
                "committed update {i} lost"
            );
        }
    }
}
