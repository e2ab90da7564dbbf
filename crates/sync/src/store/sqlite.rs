//! TEMPORARY placeholder written by the lead so the crate compiles; helper-2 replaces it.
use super::*;
pub struct SqliteStore;
impl Store for SqliteStore {
    fn append(&self, _: &[AppendItem<'_>]) -> Result<(), StoreError> { Err(StoreError::Poisoned) }
    fn load(&self, _: &str) -> Result<StoredDoc, StoreError> { Err(StoreError::Poisoned) }
    fn compact(&self, _: &str) -> Result<CompactStats, StoreError> { Err(StoreError::Poisoned) }
    fn log_stats(&self, _: &str) -> Result<LogStats, StoreError> { Err(StoreError::Poisoned) }
    fn list_docs(&self) -> Result<Vec<String>, StoreError> { Err(StoreError::Poisoned) }
    fn get_meta(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> { Err(StoreError::Poisoned) }
    fn put_meta(&self, _: &str, _: &[u8]) -> Result<(), StoreError> { Err(StoreError::Poisoned) }
}
