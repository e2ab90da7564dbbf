CREATE TABLE tokens (
                id INTEGER PRIMARY KEY,
                hash TEXT NOT NULL UNIQUE,
                label TEXT NOT NULL,
                scopes TEXT NOT NULL,
                read_only INTEGER NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0,
                created_ms INTEGER NOT NULL
            , user_id TEXT, device_id TEXT);
CREATE TABLE users (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                admin INTEGER NOT NULL,
                created_ms INTEGER NOT NULL
            );
CREATE TABLE devices (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                name TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            );
CREATE TABLE pairings (
                code TEXT PRIMARY KEY,
                device_code_hash TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                expires_ms INTEGER NOT NULL,
                approved_user TEXT,
                issued INTEGER NOT NULL DEFAULT 0
            );
CREATE TABLE workspaces (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                owner TEXT NOT NULL,
                created_ms INTEGER NOT NULL
            );
CREATE TABLE members (
                workspace TEXT NOT NULL,
                user_id TEXT NOT NULL,
                role TEXT NOT NULL,
                PRIMARY KEY (workspace, user_id)
            );
CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                workspace TEXT NOT NULL,
                owner TEXT NOT NULL,
                title TEXT NOT NULL,
                created_ms INTEGER NOT NULL
            );
CREATE INDEX sessions_by_workspace ON sessions (workspace);
CREATE TABLE leases (
                session TEXT PRIMARY KEY,
                device TEXT,
                epoch INTEGER NOT NULL,
                expires_ms INTEGER NOT NULL,
                pending_to TEXT,
                pending_by TEXT,
                expect TEXT NOT NULL DEFAULT '[]'
            );
CREATE TABLE audit (
                id INTEGER PRIMARY KEY,
                ts_ms INTEGER NOT NULL,
                user_id TEXT,
                device_id TEXT,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                detail TEXT NOT NULL
            );
CREATE TABLE documents (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL UNIQUE
             );
CREATE TABLE updates (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 doc INTEGER NOT NULL REFERENCES documents(id),
                 data BLOB NOT NULL
             );
CREATE INDEX updates_by_doc ON updates(doc, seq);
CREATE TABLE snapshots (
                 doc INTEGER PRIMARY KEY REFERENCES documents(id),
                 data BLOB NOT NULL,
                 upto_seq INTEGER NOT NULL
             );
CREATE TABLE meta (
                 key TEXT PRIMARY KEY,
                 value BLOB NOT NULL
             );
CREATE TABLE gateway_usage (
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
CREATE INDEX gateway_usage_by_user ON gateway_usage (user_id, ts_ms);
CREATE TABLE github_deliveries (
                delivery TEXT PRIMARY KEY,
                event TEXT NOT NULL,
                received_ms INTEGER NOT NULL,
                outcome TEXT NOT NULL
            );
CREATE TABLE github_reviews (
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
            );
CREATE TABLE agent_state (
                agent TEXT PRIMARY KEY,
                checked_ms INTEGER NOT NULL
            );
CREATE TABLE agent_runs (
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
CREATE INDEX agent_runs_by_status ON agent_runs (status);
