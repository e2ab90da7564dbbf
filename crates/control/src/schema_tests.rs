#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;
use crate::Control;

/// The schema as comparable text: every object's type, name and SQL, whitespace normalised
/// (builds differ in indentation; SQLite keeps the text it was given).
fn schema(path: &Path) -> Vec<(String, String, String)> {
    let conn = Connection::open(path).unwrap();
    let mut st = conn
        .prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)))
        .unwrap()
        .map(|r| {
            let (t, n, sql) = r.unwrap();
            let sql = sql
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace("( ", "(")
                .replace(" )", ")")
                .replace(" ,", ",");
            (t, n, sql)
        })
        .collect()
}

fn tables(path: &Path) -> Vec<String> {
    schema(path)
        .into_iter()
        .filter(|(t, _, _)| t == "table")
        .map(|(_, n, _)| n)
        .collect()
}

/// Opens the file as the server does: the sync store first, then the control plane.
fn open_as_the_server(path: &Path) -> Control {
    jarvis_sync::store::SqliteStore::open(path).unwrap();
    Control::open(path).unwrap().0
}

const TOKEN: &str = "jt_db3b687alicetoken";

/// A hub database shaped as commit db3b687 left it (its schema dumped from the upgrade
/// fixture), with a user, a token, a workspace, a session and a lease.
fn db3b687(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(include_str!("testdata/db3b687-schema.sql"))
        .unwrap();
    conn.execute_batch("PRAGMA user_version = 1;").unwrap();
    conn.execute_batch(
        "INSERT INTO users VALUES ('u-admin', 'admin', 1, 1), ('u-alice', 'alice', 0, 2);
         INSERT INTO workspaces VALUES ('w1', 'Notes', 'u-alice', 3);
         INSERT INTO members VALUES ('w1', 'u-alice', 'member');
         INSERT INTO sessions VALUES ('s1', 'w1', 'u-alice', 'first', 4);
         INSERT INTO leases VALUES ('s1', 'laptop', 3, 99999999999999, NULL, NULL, '[]');
         INSERT INTO audit VALUES (1, 5, 'u-alice', 't-1', 'token.create', 'x', '');",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO tokens (id, hash, label, scopes, read_only, revoked, created_ms, user_id)
         VALUES (1, ?1, 'alice', '*', 0, 0, 6, 'u-alice')",
        params![crate::model::hash(TOKEN)],
    )
    .unwrap();
}

#[test]
fn a_fresh_and_an_upgraded_db3b687_database_end_with_the_same_schema() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.db");
    let old = dir.path().join("old.db");
    open_as_the_server(&fresh);
    db3b687(&old);
    let before = tables(&old);
    open_as_the_server(&old);
    assert_eq!(schema(&fresh), schema(&old));
    // Every table an old build made is in the schema.
    let now = tables(&fresh);
    for t in before {
        assert!(now.contains(&t), "{t} is not made by any migration");
    }
    for t in SYNC_STORE_TABLES {
        assert!(now.iter().any(|n| n == t), "{t}");
    }
    let latest = MIGRATIONS.last().unwrap().version;
    for p in [&fresh, &old] {
        assert_eq!(version(&Connection::open(p).unwrap()).unwrap(), latest);
    }
}

#[test]
fn an_upgraded_db3b687_database_keeps_its_users_tokens_workspaces_sessions_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    db3b687(&old);
    let c = open_as_the_server(&old);
    let who = c.identify(TOKEN).unwrap();
    assert_eq!(
        (who.user.as_str(), who.user_name.as_str()),
        ("u-alice", "alice")
    );
    let ws = c.workspaces(&who).unwrap();
    assert_eq!(ws.len(), 1);
    assert_eq!((ws[0].id.as_str(), ws[0].role.as_str()), ("w1", "editor"));
    assert_eq!(c.sessions(&who, None).unwrap()[0].title, "first");
    let lease = c.lease("s1").unwrap();
    assert_eq!((lease.device.as_deref(), lease.epoch), (Some("laptop"), 3));
    assert_eq!(c.audit_log(10).unwrap().len(), 1);
    // Opening again changes nothing.
    drop(c);
    let s = schema(&old);
    open_as_the_server(&old);
    assert_eq!(schema(&old), s);
}

#[test]
fn migrations_from_before_versions_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    open_as_the_server(&path);
    let s = schema(&path);
    let mut conn = Connection::open(&path).unwrap();
    for m in MIGRATIONS.iter().filter(|m| m.version <= LEGACY_VERSION) {
        let tx = conn.transaction().unwrap();
        (m.up)(&tx).unwrap_or_else(|e| panic!("migration {} again: {e}", m.version));
        tx.commit().unwrap();
    }
    drop(conn);
    assert_eq!(schema(&path), s);
    // Versions are numbered 1, 2, 3, … in order.
    for (i, m) in MIGRATIONS.iter().enumerate() {
        assert_eq!(m.version as usize, i + 1, "{}", m.name);
    }
}

fn bad(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch("CREATE TABLE half_done (x INTEGER);")?;
    tx.execute_batch("ALTER TABLE no_such_table ADD COLUMN y TEXT;")
}

fn good(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch("CREATE TABLE half_done (x INTEGER);")
}

#[test]
fn a_migration_failing_midway_leaves_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("h.db")).unwrap();
    let mut list: Vec<Migration> = MIGRATIONS.iter().take(2).copied().collect();
    list.push(Migration {
        version: 3,
        name: "fails midway",
        up: bad,
    });
    let e = apply(&mut conn, &list).unwrap_err();
    assert!(
        matches!(e, SchemaError::Migration { version: 3, .. }),
        "{e}"
    );
    assert_eq!(version(&conn).unwrap(), 2);
    let half: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE name = 'half_done'",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap();
    assert_eq!(half, None, "the failed migration's first statement stayed");
    // The earlier ones are applied and kept; a fixed migration then applies.
    assert!(
        conn.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))
            .is_ok()
    );
    list[2] = Migration {
        version: 3,
        name: "fixed",
        up: good,
    };
    assert_eq!(apply(&mut conn, &list).unwrap(), 3);
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("h.db")).unwrap();
    migrate(&mut conn).unwrap();
    conn.execute(
        "INSERT INTO control_migrations (version, name, applied_ms) VALUES (999, 'future', 0)",
        [],
    )
    .unwrap();
    assert!(matches!(
        migrate(&mut conn),
        Err(SchemaError::TooNew { found: 999, .. })
    ));
}

#[test]
fn tokens_from_before_users_existed_become_the_admins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE tokens (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            label TEXT NOT NULL,
            scopes TEXT NOT NULL,
            read_only INTEGER NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL
        );",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO tokens (hash, label, scopes, read_only, created_ms)
         VALUES (?1, 'old', '*', 0, 1)",
        params![crate::model::hash(TOKEN)],
    )
    .unwrap();
    drop(conn);
    let c = open_as_the_server(&path);
    let who = c.identify(TOKEN).unwrap();
    assert_eq!(who.user, ADMIN_USER);
    assert!(who.admin);
}

/// The schema has one home: the server's sources create no table and change no schema of
/// their own (stores that open the hub database apply the migrations instead). Shown to fail
/// on a planted statement by `schema_statements_are_found` below.
#[test]
fn the_server_writes_no_schema_of_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud-agent/src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
    }
    assert!(
        files.len() > 20,
        "read {} files under {}",
        files.len(),
        src.display()
    );
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| schema_statements(&std::fs::read_to_string(f).unwrap()) > 0)
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "schema written outside crates/control/src/schema.rs (add a migration instead): {offenders:?}"
    );
}

/// How many schema statements a source text holds.
fn schema_statements(text: &str) -> usize {
    ["CREATE TABLE", "CREATE INDEX", "ALTER TABLE", "DROP TABLE"]
        .iter()
        .map(|s| text.matches(s).count())
        .sum()
}

#[test]
fn schema_statements_are_found() {
    assert_eq!(
        schema_statements("conn.execute_batch(\"CREATE TABLE IF NOT EXISTS t (a);\")"),
        1
    );
    assert_eq!(schema_statements("ALTER TABLE t ADD COLUMN b"), 1);
    assert_eq!(schema_statements("SELECT * FROM t"), 0);
}
