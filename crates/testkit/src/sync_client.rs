//! A sync client against a [`CloudAgent`], with its own SQLite store — the factory the sync
//! tests share.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jarvis_sync::client::{ClientConfig, SyncClient};
use jarvis_sync::store::SqliteStore;

use crate::CloudAgent;

/// A client whose store is the file `db`, retrying quickly (20–200 ms) so reconnects are fast.
pub fn sync_client(agent: &CloudAgent, token: &str, db: &Path) -> SyncClient {
    sync_client_with_backoff(
        agent,
        token,
        db,
        Duration::from_millis(20),
        Duration::from_millis(200),
    )
}

/// [`sync_client`] with the given reconnect backoff (slow retries let a test watch the state
/// between a closed socket and the next try).
pub fn sync_client_with_backoff(
    agent: &CloudAgent,
    token: &str,
    db: &Path,
    min: Duration,
    max: Duration,
) -> SyncClient {
    let store =
        SqliteStore::open(db).unwrap_or_else(|e| panic!("opening the store {}: {e}", db.display()));
    let mut config = ClientConfig::new(agent.sync_url(), token);
    config.min_backoff = min;
    config.max_backoff = max;
    SyncClient::start(config, Arc::new(store))
}
