//! The state of the GitHub webhooks' routes and tasks.

use std::sync::Arc;

use crate::services::Services;
use crate::webhooks::store::Webhooks;

/// The state of the GitHub routes and review tasks: the shared services and the integration's
/// own.
#[derive(Clone)]
pub struct GithubApi {
    pub services: Services,
    pub webhooks: Arc<Webhooks>,
}

/// The shared services' handles read as the state's own (`api.control`, `api.cloud`).
impl std::ops::Deref for GithubApi {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}
