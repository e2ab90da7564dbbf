//! What the hub database (`<data>/hub.db`) holds, in one place, as numbered migrations applied
//! in order, each in its own transaction and recorded in `control_migrations` (version, name,
//! time). `PRAGMA user_version` is not ours: the same file holds the sync store's tables
//! (`documents`, `updates`, `snapshots`, `meta`, see [`SYNC_STORE_TABLES`]), and
//! `jarvis_sync::store::SqliteStore` versions those with it.
//!
//! Databases from before migrations existed (commit db3b687 and earlier) have some or all of
//! the tables and no `control_migrations`: every migration up to [`LEGACY_VERSION`] was written
//! to be idempotent (`IF NOT EXISTS`, a column added only when missing), so such a database is
//! brought to the current version by applying them all. Migrations after [`LEGACY_VERSION`]
//! run exactly once and need not be.
//!
//! To add a migration: append a [`Migration`] with the next version to [`MIGRATIONS`]; never
//! edit or reorder one that has shipped. The tests check that a fresh database and an upgraded
//! db3b687 one end with the same schema.
//!
//! Never: change the schema outside a migration; reuse a version number.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::model::{ADMIN_USER, now_ms};

/// One schema change.
#[derive(Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub up: fn(&Transaction) -> rusqlite::Result<()>,
}

/// The last migration that existed (as ad-hoc `CREATE IF NOT EXISTS` code) before databases
/// recorded their version: it and every earlier one must stay idempotent.
pub const LEGACY_VERSION: u32 = 11;

/// The sync store's tables in the same file (`jarvis_sync::store::SqliteStore` owns them).
pub const SYNC_STORE_TABLES: &[&str] = &["documents", "updates", "snapshots", "meta"];

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "identities, workspaces, sessions, leases, audit",
        up: baseline,
    },
    Migration {
        version: 2,
        name: "tokens belong to users and devices",
        up: tokens_belong_to_users,
    },
    Migration {
        version: 3,
        name: "pairings pass on the approver's grant",
        up: pairings_pass_on_grants,
    },
    Migration {
        version: 4,
        name: "document and blob quotas",
        up: quotas,
    },
    Migration {
        version: 5,
        name: "run settings",
        up: run_settings,
    },
    Migration {
        version: 6,
        name: "secrets",
        up: secrets,
    },
    Migration {
        version: 7,
        name: "configuration approvals",
        up: config_approvals,
    },
    Migration {
        version: 8,
        name: "always-allow rules and user memory",
        up: user_rules,
    },
    Migration {
        version: 9,
        name: "gateway usage",
        up: gateway_usage,
    },
    Migration {
        version: 10,
        name: "GitHub deliveries and reviews",
        up: github,
    },
    Migration {
        version: 11,
        name: "background agents",
        up: agents,
    },
    Migration {
        version: 12,
        name: "onboarding: owner setup and invitations",
        up: onboarding,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the hub database is at schema version {found}, newer than this build ({known}); run a newer jarvis-cloud"
    )]
    TooNew { found: u32, known: u32 },
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: u32,
        name: &'static str,
        source: rusqlite::Error,
    },
    #[error("reading the schema version: {0}")]
    Db(#[from] rusqlite::Error),
}

/// The newest migration applied (0: none).
pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    let has_table = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'control_migrations'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_table {
        return Ok(0);
    }
    conn.query_row(
        "SELECT coalesce(max(version), 0) FROM control_migrations",
        [],
        |r| r.get(0),
    )
}

/// Brings the database to the current version; returns it.
pub fn migrate(conn: &mut Connection) -> Result<u32, SchemaError> {
    apply(conn, MIGRATIONS)
}

/// Applies `migrations` not yet recorded, in order, each with its record in one immediate
/// transaction: a failing migration leaves the database at the previous version, and two
/// processes opening the same file apply each migration once.
pub fn apply(conn: &mut Connection, migrations: &[Migration]) -> Result<u32, SchemaError> {
    let known = migrations.last().map_or(0, |m| m.version);
    let found = version(conn)?;
    if found > known {
        return Err(SchemaError::TooNew { found, known });
    }
    if found == 0 && legacy_tables_present(conn)? {
        tracing::info!(
            "the hub database predates schema versions: applying every migration to adopt it"
        );
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS control_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_ms INTEGER NOT NULL
        );",
    )?;
    for m in migrations {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done = tx
            .query_row(
                "SELECT 1 FROM control_migrations WHERE version = ?1",
                params![m.version],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if done {
            continue;
        }
        let fail = |source| SchemaError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        (m.up)(&tx).map_err(fail)?;
        tx.execute(
            "INSERT INTO control_migrations (version, name, applied_ms) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now_ms() as i64],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied a hub database migration"
        );
    }
    Ok(version(conn)?)
}

fn legacy_tables_present(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tokens'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn has_column(tx: &Transaction, table: &str, column: &str) -> rusqlite::Result<bool> {
    let cols: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map(params![table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(cols.iter().any(|c| c == column))
}

/// Adds a column unless a database from before migrations has it already.
fn add_column(tx: &Transaction, table: &str, column: &str, def: &str) -> rusqlite::Result<()> {
    if !has_column(tx, table, column)? {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def};"))?;
    }
    Ok(())
}

// The table texts below are the ones earlier builds created, column for column: a database
// they made and one these migrations make must end alike (checked by the tests).

fn baseline(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS tokens (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            label TEXT NOT NULL,
            scopes TEXT NOT NULL,
            read_only INTEGER NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            admin INTEGER NOT NULL,
            created_ms INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS devices (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            name TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS pairings (
            code TEXT PRIMARY KEY,
            device_code_hash TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            expires_ms INTEGER NOT NULL,
            approved_user TEXT,
            issued INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS workspaces (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            owner TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS members (
            workspace TEXT NOT NULL,
            user_id TEXT NOT NULL,
            role TEXT NOT NULL,
            PRIMARY KEY (workspace, user_id)
        );
        CREATE TABLE IF NOT EXISTS sessions (
            id TEXT PRIMARY KEY,
            workspace TEXT NOT NULL,
            owner TEXT NOT NULL,
            title TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS sessions_by_workspace ON sessions (workspace);
        CREATE TABLE IF NOT EXISTS leases (
            session TEXT PRIMARY KEY,
            device TEXT,
            epoch INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            pending_to TEXT,
            pending_by TEXT,
            expect TEXT NOT NULL DEFAULT '[]'
        );
        CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            user_id TEXT,
            device_id TEXT,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL
        );",
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO users (id, name, admin, created_ms) VALUES (?1, 'admin', 1, ?2)",
        params![ADMIN_USER, now_ms() as i64],
    )?;
    Ok(())
}

/// Tokens made before users existed belong to the admin.
fn tokens_belong_to_users(tx: &Transaction) -> rusqlite::Result<()> {
    add_column(tx, "tokens", "user_id", "TEXT")?;
    add_column(tx, "tokens", "device_id", "TEXT")?;
    tx.execute(
        "UPDATE tokens SET user_id = ?1 WHERE user_id IS NULL",
        params![ADMIN_USER],
    )?;
    Ok(())
}

/// A pairing passes on the approver's grant, never more; pending ones are capped per address.
fn pairings_pass_on_grants(tx: &Transaction) -> rusqlite::Result<()> {
    add_column(tx, "pairings", "scopes", "TEXT")?;
    add_column(tx, "pairings", "read_only", "INTEGER NOT NULL DEFAULT 1")?;
    add_column(tx, "pairings", "origin", "TEXT NOT NULL DEFAULT ''")
}

fn quotas(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS document_owners (
            name TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS document_owners_by_user ON document_owners (user_id);
        CREATE TABLE IF NOT EXISTS blob_owners (
            workspace TEXT NOT NULL,
            hash TEXT NOT NULL,
            user_id TEXT NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (workspace, hash)
        );
        CREATE INDEX IF NOT EXISTS blob_owners_by_user ON blob_owners (user_id);",
    )
}

fn run_settings(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS session_settings (
            session TEXT PRIMARY KEY,
            settings TEXT NOT NULL
        );",
    )
}

fn secrets(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS secrets (
            scope TEXT NOT NULL,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            nonce BLOB NOT NULL,
            ciphertext BLOB NOT NULL,
            updated_ms INTEGER NOT NULL,
            updated_by TEXT NOT NULL,
            PRIMARY KEY (scope, owner, name)
        );",
    )
}

fn config_approvals(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS config_approvals (
            workspace TEXT NOT NULL,
            kind TEXT NOT NULL,
            path TEXT NOT NULL,
            hash TEXT NOT NULL,
            approved_by TEXT NOT NULL,
            approved_ms INTEGER NOT NULL,
            PRIMARY KEY (workspace, kind, path, hash)
        );
        CREATE TABLE IF NOT EXISTS untrusted_workspaces (
            workspace TEXT PRIMARY KEY,
            reason TEXT NOT NULL
        );",
    )
}

fn user_rules(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS always_allow (
            user TEXT NOT NULL,
            workspace TEXT NOT NULL,
            rule TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            PRIMARY KEY (user, workspace, rule)
        );
        CREATE TABLE IF NOT EXISTS user_memory (
            user TEXT PRIMARY KEY,
            text TEXT NOT NULL,
            updated_ms INTEGER NOT NULL
        );",
    )
}

// The next three groups belong to the cloud agent's gateway, GitHub and scheduler modules,
// which read and write them on their own connections; they are listed here so the schema
// has one home.

fn gateway_usage(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS gateway_usage (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            user_id TEXT NOT NULL,
            token_id INTEGER NOT NULL,
            model TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            status INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cache_write_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL,
            cost_micros INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS gateway_usage_by_user ON gateway_usage (user_id, ts_ms);",
    )
}

fn github(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS github_deliveries (
            delivery TEXT PRIMARY KEY,
            event TEXT NOT NULL,
            received_ms INTEGER NOT NULL,
            outcome TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS github_reviews (
            session TEXT PRIMARY KEY,
            delivery TEXT NOT NULL,
            owner TEXT NOT NULL,
            repo TEXT NOT NULL,
            number INTEGER NOT NULL,
            head_sha TEXT NOT NULL,
            started_ms INTEGER NOT NULL,
            posted_ms INTEGER,
            review_id INTEGER,
            error TEXT
        );",
    )
}

/// The first hour in the browser (`jarvis_cloud::onboarding`): whether the owner is still to be
/// created, and invitation links (only their hash is kept).
fn onboarding(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE onboarding_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE invites (
            code_hash TEXT PRIMARY KEY,
            created_by TEXT NOT NULL,
            admin INTEGER NOT NULL,
            workspace TEXT,
            role TEXT,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            used_by TEXT,
            used_ms INTEGER
        );",
    )
}

fn agents(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS agent_state (
            agent TEXT PRIMARY KEY,
            checked_ms INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS agent_runs (
            id INTEGER PRIMARY KEY,
            agent TEXT NOT NULL,
            workspace TEXT NOT NULL,
            name TEXT NOT NULL,
            scheduled_ms INTEGER NOT NULL,
            trigger TEXT NOT NULL,
            detail TEXT NOT NULL,
            status TEXT NOT NULL,
            session TEXT,
            owner TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            cost_micros INTEGER NOT NULL DEFAULT 0,
            note TEXT NOT NULL DEFAULT '',
            UNIQUE (agent, scheduled_ms)
        );
        CREATE INDEX IF NOT EXISTS agent_runs_by_status ON agent_runs (status);
        CREATE TABLE IF NOT EXISTS agent_webhook_secrets (
            agent TEXT PRIMARY KEY,
            secret TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        );",
    )
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
