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

/// A device mirroring a folder into a workspace: what [`mirrored_folder`] starts.
pub struct MirroredFolder {
    pub dir: std::path::PathBuf,
    pub client: Arc<SyncClient>,
    pub mirror: jarvis_sync::mirror::FileMirror,
}

/// The folder `tmp/<name>` (made if missing) mirrored into `workspace` by a new device whose
/// store is `tmp/<name>.db`.
pub async fn mirrored_folder(
    agent: &CloudAgent,
    token: &str,
    tmp: &Path,
    name: &str,
    workspace: &str,
) -> MirroredFolder {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let client = Arc::new(sync_client(agent, token, &tmp.join(format!("{name}.db"))));
    let mirror = jarvis_sync::mirror::FileMirror::start(&dir, workspace, client.clone(), None)
        .await
        .unwrap_or_else(|e| panic!("mirroring {}: {e}", dir.display()));
    MirroredFolder {
        dir,
        client,
        mirror,
    }
}
