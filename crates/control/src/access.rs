//! The one authorization rule of the server: what a bearer token may do, decided from the
//! token's user (admin or not), its scopes, its read-only flag and the user's role in the
//! workspace concerned. The HTTP API, the blob routes, the LLM gateway, `/metrics`, the session
//! change stream and the sync socket's [`jarvis_sync::hub::Authorizer`] all ask [`decide`];
//! nothing else grants power.
//!
//! This module is pure (no database, no I/O, no axum): callers look the facts up and pass them
//! in, so it moves unchanged wherever the control plane goes.
//!
//! The rule, in words:
//! - **Admin powers** (users, every token and device, the audit log, any workspace) belong only
//!   to an admin user's token that has the full scope `*` and is writable. A scoped or
//!   read-only token of the admin user is an ordinary member's token within its scopes.
//! - **Read-only** tokens read and never change anything, anywhere.
//! - **Scopes** bound every document a token reaches; a workspace as a whole (its members, its
//!   configuration, its agents) needs a scope that covers every document of it (`ws/<id>/*`,
//!   a shorter prefix or `*`). The gateway needs the scope `gateway` (or `*`), `/metrics` the
//!   scope `metrics` (or `*`) and an admin user.
//! - **Unowned documents** (no workspace or session registered for them) are nobody's data:
//!   an admin user's token may open them within its scopes, nobody else's.
//! - **Roles**: a viewer reads; an editor also writes documents, runs sessions and proposes
//!   configuration; an owner also manages members and approves configuration that runs code.
//!   Not a member: the workspace does not exist as far as the caller can tell.
//!
//! Never: grant anything from a document's content, or from a request body's claims.

use serde::Serialize;

/// A user's role in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Editor,
    Owner,
}

impl Role {
    /// `member` is the name editors had before viewers existed.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" | "member" => Some(Role::Editor),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Owner => "owner",
        }
    }
}

/// What a token carries, as the control plane resolved it.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The token's user is an admin.
    pub admin_user: bool,
    pub scopes: &'a [String],
    pub read_only: bool,
}

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    /// Change content, run or steer sessions, propose configuration, spend model budget.
    Write,
    /// Change who may do what: members, configuration approval, users.
    Manage,
}

/// What it is asked for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Server-wide administration: users, everyone's tokens and devices, the audit log.
    Server,
    /// `/metrics`.
    Metrics,
    /// The LLM gateway (`/v1/messages`): spends the team's model budget.
    Gateway,
    /// The caller's own tokens, devices and pairing approvals.
    Account,
    /// The caller's own secrets: any of their tokens lists the names; changing them needs a
    /// full-scope writable token (a token narrowed to one session must not swap the
    /// credentials every run of the user gets).
    OwnSecrets,
    /// One document (a sync name) and the user's role in its workspace (None: no member, or
    /// no workspace).
    Document { name: &'a str, role: Option<Role> },
    /// A workspace as a whole.
    Workspace { id: &'a str, role: Option<Role> },
    /// A document that belongs to no workspace or session the server knows (no registry row):
    /// nobody's data yet. An admin user's token may open it within its scopes (tools, scripts,
    /// a device syncing before the workspace is registered); nobody else may.
    Unowned { name: &'a str },
}

/// Why not. `NotFound` is for targets the caller may not know exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this is a read-only token")]
    ReadOnly,
    #[error("the token's scopes do not cover {0}")]
    Scope(String),
    #[error("this needs an admin user's full-scope, writable token")]
    NotAdmin,
    #[error("this needs the {0} role in the workspace")]
    Role(&'static str),
    #[error("this needs a full-scope token (--scope '*')")]
    FullScope,
    #[error("not found")]
    NotFound,
}

/// A scope covers a document name: an exact name, or a prefix ending in `*`.
pub fn scope_matches(scope: &str, name: &str) -> bool {
    match scope.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => scope == name,
    }
}

/// Whether `scopes` cover every name that the scope `wanted` covers (a grant passed on: a
/// paired device, a token revoked by another, a whole workspace).
pub fn covers(scopes: &[String], wanted: &str) -> bool {
    scopes
        .iter()
        .any(|s| match (s.strip_suffix('*'), wanted.strip_suffix('*')) {
            (Some(p), Some(w)) => w.starts_with(p),
            (Some(p), None) => wanted.starts_with(p),
            (None, Some(_)) => false,
            (None, None) => s == wanted,
        })
}

/// Whether one grant is within another: every scope covered, read-only if the other is, and
/// no admin user's grant inside an ordinary user's.
pub fn within(inner: &Grant, outer: &Grant) -> bool {
    (inner.read_only || !outer.read_only)
        && (!inner.admin_user || outer.admin_user)
        && inner.scopes.iter().all(|s| covers(outer.scopes, s))
}

/// Admin powers: an admin user's token with the full scope, writable.
pub fn admin_powers(g: &Grant) -> bool {
    g.admin_user && !g.read_only && g.scopes.iter().any(|s| s == "*")
}

/// The rule.
pub fn decide(g: &Grant, target: Target, action: Action) -> Result<(), Denied> {
    if g.read_only && action != Action::Read {
        return Err(Denied::ReadOnly);
    }
    let admin = admin_powers(g);
    match target {
        Target::Server => admin.then_some(()).ok_or(Denied::NotAdmin),
        Target::Metrics => {
            if !g.admin_user {
                return Err(Denied::NotAdmin);
            }
            covers(g.scopes, "metrics")
                .then_some(())
                .ok_or_else(|| Denied::Scope("metrics".into()))
        }
        Target::Gateway => {
            // Every model request spends money: it is a write, never allowed a read-only
            // token (refused above).
            if action == Action::Read {
                return Err(Denied::ReadOnly);
            }
            covers(g.scopes, "gateway")
                .then_some(())
                .ok_or_else(|| Denied::Scope("gateway".into()))
        }
        Target::Account => Ok(()),
        Target::OwnSecrets => {
            if action == Action::Read || g.scopes.iter().any(|s| s == "*") {
                Ok(())
            } else {
                Err(Denied::FullScope)
            }
        }
        Target::Document { name, role } => {
            if !g.scopes.iter().any(|s| scope_matches(s, name)) {
                return Err(Denied::Scope(name.to_owned()));
            }
            if admin {
                return Ok(());
            }
            need_role(role.ok_or(Denied::NotFound)?, action)
        }
        Target::Unowned { name } => {
            if !g.scopes.iter().any(|s| scope_matches(s, name)) {
                return Err(Denied::Scope(name.to_owned()));
            }
            g.admin_user.then_some(()).ok_or(Denied::NotFound)
        }
        Target::Workspace { id, role } => {
            let whole = format!("ws/{id}/*");
            if !covers(g.scopes, &whole) {
                return Err(Denied::Scope(whole));
            }
            if admin {
                return Ok(());
            }
            need_role(role.ok_or(Denied::NotFound)?, action)
        }
    }
}

fn need_role(role: Role, action: Action) -> Result<(), Denied> {
    let least = match action {
        Action::Read => Role::Viewer,
        Action::Write => Role::Editor,
        Action::Manage => Role::Owner,
    };
    if role >= least {
        Ok(())
    } else {
        Err(Denied::Role(least.as_str()))
    }
}

/// What a token may do, in words: printed by `jarvis-cloud token create` and returned by
/// `GET /api/me`, so no recipe's power is a surprise.
pub fn describe(g: &Grant) -> Vec<String> {
    let mut out = Vec::new();
    let scopes = g.scopes.join(", ");
    if admin_powers(g) {
        out.push(
            "ADMIN POWERS: creates users, lists and revokes everyone's tokens and devices, reads \
             the audit log, every workspace and every session"
                .into(),
        );
    } else if g.admin_user {
        out.push(format!(
            "no admin powers (only the admin user's --scope '*' without --read-only has them): \
             acts as an ordinary member within {scopes}"
        ));
    } else {
        out.push(format!(
            "an ordinary member's token: workspaces where the user is a member, within {scopes}"
        ));
    }
    if g.read_only {
        out.push(
            "read-only: reads documents and sessions; changes nothing, makes no model requests"
                .into(),
        );
    } else {
        out.push(
            "writes where the user's role allows: editors edit files and run sessions, owners \
             also manage members and approve agents; viewers only read"
                .into(),
        );
    }
    out.push(if !g.read_only && covers(g.scopes, "gateway") {
        "may use the LLM gateway (/v1/messages), spending the team's model budget".into()
    } else {
        "may not use the LLM gateway (that needs the scope 'gateway' or '*', writable)".into()
    });
    if g.admin_user && covers(g.scopes, "metrics") {
        out.push("may read /metrics".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn admin_powers_need_the_admin_users_full_writable_token() {
        let full = s(&["*"]);
        let team = s(&["ws/team/*"]);
        for (admin_user, scopes, read_only, powers) in [
            (true, &full, false, true),
            (true, &full, true, false),
            (true, &team, false, false),
            (true, &team, true, false),
            (false, &full, false, false),
        ] {
            let g = Grant {
                admin_user,
                scopes,
                read_only,
            };
            assert_eq!(admin_powers(&g), powers, "{g:?}");
            assert_eq!(
                decide(&g, Target::Server, Action::Read).is_ok(),
                powers,
                "{g:?}"
            );
        }
    }

    #[test]
    fn roles_scopes_and_read_only_combine() {
        let team = s(&["ws/team/*", "session/*"]);
        let g = Grant {
            admin_user: false,
            scopes: &team,
            read_only: false,
        };
        let doc = |role| Target::Document {
            name: "ws/team/index",
            role,
        };
        assert_eq!(decide(&g, doc(None), Action::Read), Err(Denied::NotFound));
        assert!(decide(&g, doc(Some(Role::Viewer)), Action::Read).is_ok());
        assert_eq!(
            decide(&g, doc(Some(Role::Viewer)), Action::Write),
            Err(Denied::Role("editor"))
        );
        assert!(decide(&g, doc(Some(Role::Editor)), Action::Write).is_ok());
        let other = Target::Document {
            name: "ws/other/index",
            role: Some(Role::Owner),
        };
        assert!(matches!(
            decide(&g, other, Action::Read),
            Err(Denied::Scope(_))
        ));
        let ws = |role| Target::Workspace { id: "team", role };
        assert_eq!(
            decide(&g, ws(Some(Role::Editor)), Action::Manage),
            Err(Denied::Role("owner"))
        );
        assert!(decide(&g, ws(Some(Role::Owner)), Action::Manage).is_ok());
        let ro = Grant {
            read_only: true,
            ..g
        };
        assert_eq!(
            decide(&ro, ws(Some(Role::Owner)), Action::Manage),
            Err(Denied::ReadOnly)
        );
        assert!(decide(&ro, ws(Some(Role::Owner)), Action::Read).is_ok());
        // A scope on one file of a workspace does not cover the workspace.
        let one = s(&["ws/team/index"]);
        let narrow = Grant { scopes: &one, ..g };
        assert!(decide(&narrow, ws(Some(Role::Owner)), Action::Read).is_err());
    }

    #[test]
    fn unowned_documents_open_for_admin_users_within_scope_only() {
        let team = s(&["ws/team/*"]);
        let g = |admin_user, read_only| Grant {
            admin_user,
            scopes: &team,
            read_only,
        };
        let t = Target::Unowned {
            name: "ws/team/index",
        };
        assert!(decide(&g(true, false), t, Action::Write).is_ok());
        assert_eq!(
            decide(&g(true, true), t, Action::Write),
            Err(Denied::ReadOnly)
        );
        assert!(decide(&g(true, true), t, Action::Read).is_ok());
        assert_eq!(
            decide(&g(false, false), t, Action::Read),
            Err(Denied::NotFound)
        );
        let other = Target::Unowned {
            name: "ws/other/index",
        };
        assert!(decide(&g(true, false), other, Action::Read).is_err());
    }

    #[test]
    fn own_secrets_change_only_with_a_full_scope_writable_token() {
        let full = s(&["*"]);
        let one = s(&["session/s1"]);
        let g = |scopes, read_only| Grant {
            admin_user: false,
            scopes,
            read_only,
        };
        let t = Target::OwnSecrets;
        assert!(decide(&g(&one, false), t, Action::Read).is_ok());
        assert!(decide(&g(&one, true), t, Action::Read).is_ok());
        assert_eq!(
            decide(&g(&one, false), t, Action::Manage),
            Err(Denied::FullScope)
        );
        assert_eq!(
            decide(&g(&one, false), t, Action::Write),
            Err(Denied::FullScope)
        );
        assert_eq!(
            decide(&g(&full, true), t, Action::Manage),
            Err(Denied::ReadOnly)
        );
        assert!(decide(&g(&full, false), t, Action::Manage).is_ok());
    }

    #[test]
    fn the_gateway_and_metrics_need_their_scopes() {
        let one = s(&["session/s1"]);
        let gw = s(&["gateway"]);
        let full = s(&["*"]);
        let g = |scopes, read_only, admin_user| Grant {
            admin_user,
            scopes,
            read_only,
        };
        assert!(decide(&g(&one, false, false), Target::Gateway, Action::Write).is_err());
        assert!(decide(&g(&gw, false, false), Target::Gateway, Action::Write).is_ok());
        assert!(decide(&g(&full, true, false), Target::Gateway, Action::Write).is_err());
        assert!(decide(&g(&full, false, false), Target::Metrics, Action::Read).is_err());
        assert!(decide(&g(&full, true, true), Target::Metrics, Action::Read).is_ok());
        assert!(decide(&g(&one, false, true), Target::Metrics, Action::Read).is_err());
    }

    #[test]
    fn a_grant_passed_on_stays_within_the_givers() {
        let team = s(&["ws/team/*"]);
        let sub = s(&["ws/team/index", "ws/team/f*"]);
        let wider = s(&["ws/*"]);
        let star = s(&["*"]);
        let g = |scopes, read_only| Grant {
            admin_user: false,
            scopes,
            read_only,
        };
        assert!(within(&g(&sub, false), &g(&team, false)));
        assert!(within(&g(&team, false), &g(&team, false)));
        assert!(!within(&g(&wider, false), &g(&team, false)));
        assert!(!within(&g(&star, false), &g(&team, false)));
        assert!(!within(&g(&team, false), &g(&team, true)));
        assert!(within(&g(&team, true), &g(&star, false)));
        assert!(!covers(&team, "ws/teammate/*"));
    }

    #[test]
    fn descriptions_say_when_a_token_has_no_admin_powers() {
        let team = s(&["ws/team/*"]);
        let d = describe(&Grant {
            admin_user: true,
            scopes: &team,
            read_only: true,
        })
        .join("\n");
        assert!(d.contains("no admin powers"), "{d}");
        assert!(d.contains("read-only"), "{d}");
        assert!(d.contains("may not use the LLM gateway"), "{d}");
        let full = s(&["*"]);
        let d = describe(&Grant {
            admin_user: true,
            scopes: &full,
            read_only: false,
        })
        .join("\n");
        assert!(d.starts_with("ADMIN POWERS"), "{d}");
    }
}
