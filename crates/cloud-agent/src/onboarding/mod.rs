//! The first hour in the browser, without a terminal: the one-time setup code that creates the
//! owner account ([`setup`]), the model provider tested with one request and kept in the secret
//! store's server scope, taken up by the running cloud runner at once ([`providers`]), a first
//! workspace — empty, uploaded, or cloned from a git URL whose destination is checked
//! ([`workspaces`]) — invitations by link ([`invites`]), and Retry of a failed turn
//! ([`retry`]). Its own state and router, merged into the app by `server::build`.

pub mod invites;
pub mod providers;
pub mod retry;
pub mod setup;
pub mod workspaces;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use rusqlite::Connection;

use crate::http::{ApiError, ErrorCode};
use crate::services::Services as Api;

/// Options of `jarvis-cloud serve` for onboarding.
#[derive(Debug, Clone, clap::Args)]
pub struct OnboardingArgs {
    /// How long the setup code printed at the first start stays valid, in seconds (a restart
    /// prints a new one while the owner account does not exist).
    #[arg(long, env = "JARVIS_SETUP_CODE_TTL_SECS", default_value_t = 3600)]
    pub setup_code_ttl_secs: u64,
    /// FOR TESTS ONLY: git hosts (`host` or `host:port`) a workspace may be cloned from even
    /// though they are loopback or private addresses, over plain http. Empty in production:
    /// clones then go to public https hosts only.
    #[arg(
        long = "test-allow-git-host",
        env = "JARVIS_TEST_ALLOW_GIT_HOSTS",
        value_delimiter = ',',
        hide = true
    )]
    pub test_allow_git_hosts: Vec<String>,
}

#[derive(Clone)]
pub struct Onboarding {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api,
    db: Mutex<Connection>,
    setup: Mutex<Option<setup::SetupCode>>,
    data_dir: PathBuf,
    args: OnboardingArgs,
    default_model: String,
}

impl std::ops::Deref for Onboarding {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.inner.api
    }
}

impl Onboarding {
    /// Opens the onboarding tables. `fresh`: the data dir had no token before this start, so
    /// the owner account is still to be created; while it is, every start prints a new setup
    /// code with the address to open.
    pub fn open(
        db: &Path,
        data_dir: &Path,
        api: Api,
        args: &OnboardingArgs,
        default_model: &str,
        fresh: bool,
        address: &str,
    ) -> anyhow::Result<Onboarding> {
        use anyhow::Context;
        let conn = Connection::open(db)
            .with_context(|| format!("opening the onboarding tables in {}", db.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // The tables are the control plane's migration 12 (`jarvis_control::schema`), applied
        // by `Control::open` on this same file before this runs.
        if fresh {
            conn.execute(
                "INSERT OR IGNORE INTO onboarding_state (key, value) VALUES ('owner', 'pending')",
                [],
            )?;
        }
        let o = Onboarding {
            inner: Arc::new(Inner {
                api,
                db: Mutex::new(conn),
                setup: Mutex::new(None),
                data_dir: data_dir.to_owned(),
                args: args.clone(),
                default_model: default_model.to_owned(),
            }),
        };
        if o.setup_pending()
            .map_err(|e| anyhow::anyhow!("reading the onboarding state: {}", e.message))?
        {
            let code = o.new_setup_code();
            // Printed once, for the operator: stdout, never the log.
            println!(
                "first start: open {address}/#setup={code} to create the owner account \
                 (setup code {code}: single use, valid {} min; a restart prints a new one)",
                args.setup_code_ttl_secs.div_ceil(60)
            );
        }
        Ok(o)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.inner.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn db_error(e: rusqlite::Error) -> ApiError {
    tracing::error!(error = %e, "onboarding database error");
    ApiError::new(ErrorCode::Internal, "database error")
}

/// The onboarding routes, merged into the app.
pub fn router(o: Onboarding) -> Router {
    Router::new()
        .route("/api/setup", get(setup::status).post(setup::create_owner))
        .route(
            "/api/server/provider",
            get(providers::show).put(providers::save),
        )
        .route("/api/onboarding/workspace", post(workspaces::create))
        .route("/api/invites", post(invites::create))
        .route("/api/invites/{code}", get(invites::show))
        .route("/api/invites/{code}/accept", post(invites::accept))
        .route("/api/sessions/{id}/retry", post(retry::retry))
        .with_state(o)
}

/// The signed-in caller ([`crate::http::Caller`]: token, then the per-token rate limit) for
/// this router's state.
pub struct Who(pub crate::control::Identity);

impl axum::extract::FromRequestParts<Onboarding> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        o: &Onboarding,
    ) -> Result<Self, Self::Rejection> {
        let crate::http::Caller(who) =
            crate::http::Caller::from_request_parts(parts, &o.inner.api).await?;
        Ok(Who(who))
    }
}

/// A random code of `n` characters from an alphabet without look-alikes (no 0/O, 1/I/L).
pub(crate) fn random_code(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    (0..n)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(crate) fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}
