//! The state of the background agents' routes and tasks.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::http::caller::Auth;
use crate::schedule::store::Agents;
use crate::services::Services;

/// The state of the background agents' routes and loop: the shared services and the
/// scheduler's own.
#[derive(Clone)]
pub struct AgentsApi {
    pub services: Services,
    pub agents: Arc<Agents>,
    /// Signed webhook triggers record each delivery once in the GitHub integration's
    /// deliveries table (a replay is refused).
    pub webhooks: Arc<crate::webhooks::store::Webhooks>,
}

/// The shared services' handles read as the state's own (`api.control`, `api.hub`).
impl std::ops::Deref for AgentsApi {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

impl FromRef<AgentsApi> for Auth {
    fn from_ref(s: &AgentsApi) -> Auth {
        s.services.auth.clone()
    }
}
