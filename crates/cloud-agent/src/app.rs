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
    /// A request body that sends nothing for this long is refused (408).
    pub body_idle: std::time::Duration,
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

/// The router exactly as served. Body limits are per group of routes (tower-http's
/// `RequestBodyLimitLayer`: the group's largest handler's; a handler's `Body<T, MAX>` may take
/// less), and every body that stalls longer than `body_idle` ends with 408
/// (`RequestBodyTimeoutLayer`). Blobs stream up to their own limit (`--max-blob-bytes`, checked
/// as they are written); the gateway checks its own after authenticating the member, to answer
/// in Anthropic's shape.
pub fn app(parts: &Parts) -> Router {
    use crate::http::body::{DEFAULT, LARGE, MESSAGE, limit};
    let api: Router = Router::new()
        .merge(crate::api::openapi::router())
        .merge(crate::api::pairing::router().layer(limit(DEFAULT)))
        .merge(crate::api::accounts::router().layer(limit(DEFAULT)))
        .merge(crate::api::workspaces::router().layer(limit(DEFAULT)))
        .merge(crate::api::sessions::router().layer(limit(MESSAGE)))
        .merge(crate::api::leases::router().layer(limit(LARGE)))
        .merge(crate::api::reports::router().layer(limit(DEFAULT)))
        .merge(crate::api::secrets::router().layer(limit(DEFAULT)))
        .merge(crate::devenv::routes::router().layer(limit(DEFAULT)))
        .with_state(parts.services.clone());
    let router = crate::hub_routes::router(parts.hub.clone())
        .merge(api)
        .merge(crate::gateway::router(parts.gateway.clone()))
        .merge(crate::webhooks::router(parts.github()).layer(limit(crate::webhooks::MAX_PAYLOAD)))
        .merge(crate::schedule::router(parts.scheduler()).layer(limit(MESSAGE)))
        .merge(crate::updates::router(parts.data_dir.clone()));
    // Onboarding's handlers bound their own bodies (uploads are larger than a message).
    let router = match &parts.onboarding {
        Some(o) => router.merge(crate::onboarding::router(o.clone())),
        None => router,
    };
    let router = router
        .layer(axum::middleware::map_response(
            crate::http::error::layer_refusals,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            parts.body_idle,
        ));
    crate::webui::with_ui(router, &parts.ui)
}
