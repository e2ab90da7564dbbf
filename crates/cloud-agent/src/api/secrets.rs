//! Secrets over HTTP: the server's (admins), a user's own and a workspace's (its owners) —
//! names only, never values, in every answer. Thin: authorize, call the store
//! (`crate::secrets::SecretStore`), audit.

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::control::Identity;
use crate::http::{ApiError, Body, Caller};
use crate::secrets::{Scope, SecretError};
use crate::services::Services as Api;

pub fn router() -> Router<Api> {
    Router::new()
        .route("/api/secrets/server", get(list_server))
        .route(
            "/api/secrets/server/{name}",
            put(set_server).delete(delete_server),
        )
        .route("/api/secrets/user", get(list_user))
        .route(
            "/api/secrets/user/{name}",
            put(set_user).delete(delete_user),
        )
        .route("/api/workspaces/{id}/secrets", get(list_workspace))
        .route(
            "/api/workspaces/{id}/secrets/{name}",
            put(set_workspace).delete(delete_workspace),
        )
}

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> Self {
        match &e {
            SecretError::Invalid(_) => {
                ApiError::new(crate::http::ErrorCode::InvalidRequest, e.to_string())
            }
            SecretError::NotFound(_) => {
                ApiError::new(crate::http::ErrorCode::NotFound, e.to_string())
            }
            SecretError::Store(_) | SecretError::Decrypt => {
                tracing::error!(error = %e, "secret store");
                ApiError::new(crate::http::ErrorCode::Storage, "the secret store failed")
            }
        }
    }
}

/// Who may change a scope: admins the server's, a user their own, a workspace's owner its.
/// Who may list or change the secrets of a scope, by the one authorization rule
/// (`access::decide`): server secrets need admin powers; a user's own secrets
/// (`Target::OwnSecrets`) any of their tokens may list, only a full-scope writable one may
/// change (a token narrowed to one session must not swap the credentials every run of the user
/// uses); workspace secrets are listed by members who may read the workspace and changed by
/// its owners.
fn authorize(api: &Api, who: &Identity, scope: &Scope, write: bool) -> Result<(), ApiError> {
    use crate::access::{Action, Target};
    let action = if write { Action::Manage } else { Action::Read };
    match scope {
        Scope::Server => who.may(Target::Server, action)?,
        Scope::User(u) => {
            if *u != who.user {
                return Err(ApiError::new(
                    crate::http::ErrorCode::Forbidden,
                    "not your secrets",
                ));
            }
            who.may(Target::OwnSecrets, action)?;
        }
        Scope::Workspace(id) => {
            api.control.check_workspace_for(who, id, action)?;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct SetSecret {
    value: String,
}

type Reply = Result<Json<Value>, ApiError>;

fn list(api: &Api, who: &Identity, scope: Scope) -> Reply {
    authorize(api, who, &scope, false)?;
    Ok(Json(json!({"secrets": api.secrets.list(&scope)?})))
}

fn set(api: &Api, who: &Identity, scope: Scope, name: &str, value: &str) -> Reply {
    authorize(api, who, &scope, true)?;
    api.secrets.set(&scope, name, value, &who.user)?;
    api.control
        .audit(Some(who), "secret.set", &scope.target(name), "");
    Ok(Json(
        json!({"name": name, "scope": scope.parts().0, "set": true}),
    ))
}

fn delete(api: &Api, who: &Identity, scope: Scope, name: &str) -> Reply {
    authorize(api, who, &scope, true)?;
    // Deleting is idempotent: a secret that is already gone is the outcome asked for.
    let deleted = match api.secrets.delete(&scope, name) {
        Ok(()) => true,
        Err(SecretError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if deleted {
        api.control
            .audit(Some(who), "secret.delete", &scope.target(name), "");
    }
    Ok(Json(
        json!({"name": name, "scope": scope.parts().0, "deleted": deleted}),
    ))
}

async fn list_server(State(api): State<Api>, Caller(who): Caller) -> Reply {
    list(&api, &who, Scope::Server)
}

async fn set_server(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(name): UrlPath<String>,
    Body(b): Body<SetSecret>,
) -> Reply {
    set(&api, &who, Scope::Server, &name, &b.value)
}

async fn delete_server(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(name): UrlPath<String>,
) -> Reply {
    delete(&api, &who, Scope::Server, &name)
}

async fn list_user(State(api): State<Api>, Caller(who): Caller) -> Reply {
    let scope = Scope::User(who.user.clone());
    list(&api, &who, scope)
}

async fn set_user(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(name): UrlPath<String>,
    Body(b): Body<SetSecret>,
) -> Reply {
    let scope = Scope::User(who.user.clone());
    set(&api, &who, scope, &name, &b.value)
}

async fn delete_user(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(name): UrlPath<String>,
) -> Reply {
    let scope = Scope::User(who.user.clone());
    delete(&api, &who, scope, &name)
}

async fn list_workspace(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
) -> Reply {
    list(&api, &who, Scope::Workspace(id))
}

async fn set_workspace(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Body(b): Body<SetSecret>,
) -> Reply {
    set(&api, &who, Scope::Workspace(id), &name, &b.value)
}

async fn delete_workspace(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Reply {
    delete(&api, &who, Scope::Workspace(id), &name)
}
