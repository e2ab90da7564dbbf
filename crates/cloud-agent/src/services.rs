//! [`Services`]: the handles every feature's routes and background tasks share — the control
//! plane, the hub, the cloud runner, the sessions service, the stores of secrets, approvals and
//! users' rules, and the budgets. Built once by `server::build`; each feature keeps its own
//! state beside it (the gateway, GitHub webhooks, background agents).
//!
//! Never: name a feature's state here, so no feature depends on another through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::FromRef;
use jarvis_sync::hub::Hub;
use tokio::sync::Notify;

use crate::control::Control;
use crate::http::caller::Auth;
use crate::http::limiter::Anonymous;
use crate::runner::Cloud;
use crate::sessions::Sessions;

#[derive(Clone)]
pub struct Services {
    pub control: Arc<Control>,
    pub cloud: Arc<Cloud>,
    pub hub: Hub,
    /// Bearer tokens and their per-token budget.
    pub auth: Auth,
    /// Budgets of the endpoints anyone may call (pairing, webhooks), per address.
    pub anonymous: Arc<Anonymous>,
    pub sessions: Arc<Sessions>,
    pub secrets: Arc<crate::secrets::SecretStore>,
    pub approvals: Arc<crate::approvals::Approvals>,
    /// "Always allow" rules per user and workspace, and users' memory for cloud runs.
    pub user_rules: Arc<crate::user_rules::UserRules>,
    /// Model requests members made through the LLM gateway, for `/api/usage`.
    pub gateway_usage: Arc<crate::gateway::usage::UsageLog>,
    /// Wakes the scheduler of background agents (an approved or edited definition).
    pub scheduler: Arc<Wake>,
}

impl FromRef<Services> for Auth {
    fn from_ref(s: &Services) -> Auth {
        s.auth.clone()
    }
}

/// A request to look again at once: set by whoever changed something, taken by the loop that
/// acts on it (the scheduler re-reads agent definitions).
#[derive(Default)]
pub struct Wake {
    pending: AtomicBool,
    notify: Notify,
}

impl Wake {
    pub fn poke(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Whether a poke arrived since the last call.
    pub fn take(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }
}
