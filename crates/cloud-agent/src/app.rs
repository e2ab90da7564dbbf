//! [`app`]: every feature's router put together — exactly what `jarvis-cloud serve` serves
//! (the connection-level limits of `crate::limits::serve` wrap it on the socket). Tests send
//! requests to it with `tower::ServiceExt::oneshot`; only crash, SIGTERM and handoff tests
//! start the process.
//!
//! Features, each owning its state and router: the hub's own routes (`/sync`, `/healthz`,
//! `/metrics`, blobs: [`crate::hub_routes`]), the API under `/api` ([`crate::api`] and the
//! secrets', approvals' and users' rules' routes), the LLM gateway ([`crate::gateway`]), GitHub
//! webhooks ([`crate::webhooks`]), background agents ([`crate::schedule`]), desktop updates
//! ([`crate::updates`]) and the web view ([`crate::webui`]).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;

use crate::gateway::Gateway;
use crate::hub_routes::AppState;
use crate::schedule::{Agents, AgentsApi};
use crate::services::Services;
use crate::webhooks::{GithubApi, Webhooks};

/// Every feature's state, as `server::build` makes it.
#[derive(Clone)]
pub struct Parts {
    pub hub: AppState,
    pub services: Services,
    pub gateway: Arc<Gateway>,
    pub webhooks: Arc<Webhooks>,
    pub agents: Arc<Agents>,
    /// The first hour in the browser: owner setup, provider, first workspace, invitations.
    pub onboarding: Option<crate::onboarding::Onboarding>,
    /// Where published desktop updates live (`<data>/updates`).
    pub data_dir: PathBuf,
    pub ui: crate::webui::UiArgs,
}

impl Parts {
    pub fn github(&self) -> GithubApi {
        GithubApi {
            services: self.services.clone(),
            webhooks: self.webhooks.clone(),
        }
    }

    pub fn scheduler(&self) -> AgentsApi {
        AgentsApi {
            services: self.services.clone(),
            agents: self.agents.clone(),
            webhooks: self.webhooks.clone(),
        }
    }
}

/// The router exactly as served.
pub fn app(parts: &Parts) -> Router {
    let api: Router = Router::new()
        .merge(crate::api::openapi::router())
        .merge(crate::api::pairing::router())
        .merge(crate::api::accounts::router())
        .merge(crate::api::workspaces::router())
        .merge(crate::api::sessions::router())
        .merge(crate::api::leases::router())
        .merge(crate::api::reports::router())
        .with_state(parts.services.clone());
    let router = crate::hub_routes::router(parts.hub.clone())
        .merge(api)
        .merge(crate::api::secrets::router(parts.services.clone()))
        .merge(crate::gateway::router(parts.gateway.clone()))
        .merge(crate::webhooks::router(parts.github()))
        .merge(crate::schedule::router(parts.scheduler()))
        .merge(crate::updates::router(parts.data_dir.clone()));
    let router = match &parts.onboarding {
        Some(o) => router.merge(crate::onboarding::router(o.clone())),
        None => router,
    };
    crate::webui::with_ui(router, &parts.ui)
}
