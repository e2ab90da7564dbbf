//! [`Control`]'s workspaces, members, the session registry, quotas, run settings and document
//! access (the sync socket's [`Authorizer`]). Every check here is the one rule,
//! [`access::decide`], given the caller's role as the store answers it.

use jarvis_sync::hub::{Access, Authorizer};

use crate::access::{self, Action, Role, Target};
use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::model::{Identity, RunSettings, SessionRow, Workspace, now_ms, valid_id};

impl Control {
    /// `user`'s role in a workspace; None when not a member.
    pub fn role(&self, workspace: &str, user: &str) -> Result<Option<Role>> {
        self.store.role(workspace, user)
    }

    /// The one rule for a target inside a workspace. A workspace the caller is not a member of
    /// (and has no admin powers over) is `NotFound`, whatever else is wrong, so ids are not
    /// disclosed.
    fn decide_in<'a>(
        &self,
        who: &Identity,
        workspace: &str,
        target: impl FnOnce(Option<Role>) -> Target<'a>,
        action: Action,
        missing: impl Fn() -> ControlError,
    ) -> Result<Option<Role>> {
        if !self.store.workspace_exists(workspace)? {
            return Err(missing());
        }
        let role = self.store.role(workspace, &who.user)?;
        if role.is_none() && !who.admin {
            return Err(missing());
        }
        access::decide(&who.grant(), target(role), action).map_err(|d| match d {
            access::Denied::NotFound => missing(),
            other => ControlError::Forbidden(other.to_string()),
        })?;
        Ok(role)
    }

    /// Checks that `who` may `action` a workspace as a whole (its listing, members, agents,
    /// configuration); returns the caller's role.
    pub fn check_workspace_for(
        &self,
        who: &Identity,
        workspace: &str,
        action: Action,
    ) -> Result<Option<Role>> {
        self.decide_in(
            who,
            workspace,
            |role| Target::Workspace {
                id: workspace,
                role,
            },
            action,
            || ControlError::NotFound(format!("no workspace {workspace:?}")),
        )
    }

    /// Checks that `who` may read a workspace as a whole.
    pub fn check_workspace(&self, who: &Identity, workspace: &str) -> Result<()> {
        self.check_workspace_for(who, workspace, Action::Read)
            .map(|_| ())
    }

    /// The owner of a workspace (None: no such workspace).
    pub fn workspace_owner(&self, workspace: &str) -> Result<Option<String>> {
        self.store.workspace_owner(workspace)
    }

    /// Creates a workspace owned by `who`, or returns it if it exists and `who` may use it.
    pub fn ensure_workspace(&self, who: &Identity, id: &str, name: &str) -> Result<Workspace> {
        if !valid_id(id) {
            return Err(ControlError::Invalid(format!(
                "invalid workspace id {id:?}: letters, digits, '-', '_', '.', up to 128"
            )));
        }
        if who.read_only {
            return Err(ControlError::Forbidden("read-only token".into()));
        }
        if !access::covers(&who.scopes, &format!("ws/{id}/*")) {
            return Err(ControlError::Forbidden(format!(
                "the token's scopes do not cover ws/{id}/*"
            )));
        }
        let name = if name.is_empty() { id } else { name };
        if self
            .store
            .create_workspace(id, name, &who.user, now_ms() as i64)?
            && let Err(e) = self.charge_document(who, &format!("ws/{id}/index"))
        {
            // Over quota: the workspace is not kept.
            self.store.delete_workspace(id)?;
            return Err(e);
        }
        self.check_workspace(who, id)
            .map_err(|_| ControlError::Conflict(format!("workspace id {id:?} is taken")))?;
        self.workspace(who, id)
    }

    pub fn workspace(&self, who: &Identity, id: &str) -> Result<Workspace> {
        self.check_workspace(who, id)?;
        self.workspaces(who)?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("no workspace {id:?}")))
    }

    /// Workspaces whose index the caller may read.
    pub fn workspaces(&self, who: &Identity) -> Result<Vec<Workspace>> {
        Ok(self
            .store
            .workspaces_of(&who.user, who.admin)?
            .into_iter()
            .map(|mut w| {
                // Stored before viewers existed as `member`: shown as what it means.
                if let Some(r) = Role::parse(&w.role) {
                    w.role = r.as_str().to_owned();
                }
                w
            })
            .filter(|w| {
                let index = format!("ws/{}/index", w.id);
                access::decide(
                    &who.grant(),
                    Target::Document {
                        name: &index,
                        role: Role::parse(&w.role),
                    },
                    Action::Read,
                )
                .is_ok()
            })
            .collect())
    }

    /// Adds, changes (`role` owner, editor or viewer) or removes (`role` None) a member; only
    /// an owner (or admin powers) may, with a token that covers the whole workspace.
    pub fn set_member(
        &self,
        who: &Identity,
        workspace: &str,
        user: &str,
        role: Option<&str>,
    ) -> Result<()> {
        self.check_workspace_for(who, workspace, Action::Manage)
            .map_err(|e| match e {
                ControlError::Forbidden(m) => ControlError::Forbidden(format!(
                    "only the workspace's owner can change its members: {m}"
                )),
                other => other,
            })?;
        let target = self
            .store
            .user_by_name(user)?
            .ok_or_else(|| ControlError::NotFound(format!("no user {user:?}")))?;
        let role = role
            .map(|r| {
                Role::parse(r).ok_or_else(|| {
                    ControlError::Invalid(format!("role {r:?}: use owner, editor or viewer"))
                })
            })
            .transpose()?;
        self.store.set_role(workspace, &target.id, role)
    }

    // ---- sessions ---------------------------------------------------------------------------

    pub fn session(&self, id: &str) -> Result<Option<SessionRow>> {
        self.store.session(id)
    }

    /// The session, if `who` may see it; otherwise `NotFound` (ids are not disclosed).
    pub fn check_session(&self, who: &Identity, id: &str) -> Result<SessionRow> {
        self.check_session_for(who, id, Action::Read)
    }

    /// The session, if `who` may `action` it (read it, or write to it: messages, answers,
    /// handoffs, leases).
    pub fn check_session_for(
        &self,
        who: &Identity,
        id: &str,
        action: Action,
    ) -> Result<SessionRow> {
        let missing = || ControlError::NotFound(format!("no session {id:?}"));
        let row = self.store.session(id)?.ok_or_else(missing)?;
        let name = format!("session/{id}");
        self.decide_in(
            who,
            &row.workspace,
            |role| Target::Document { name: &name, role },
            action,
            missing,
        )?;
        Ok(row)
    }

    /// Registers a session in a workspace (idempotent for the same workspace): the caller must
    /// be able to write the session's document there.
    pub fn register_session(
        &self,
        who: &Identity,
        id: &str,
        workspace: &str,
        title: &str,
    ) -> Result<SessionRow> {
        if !valid_id(id) {
            return Err(ControlError::Invalid(format!("invalid session id {id:?}")));
        }
        if who.read_only {
            return Err(ControlError::Forbidden("read-only token".into()));
        }
        let elsewhere =
            || ControlError::Conflict(format!("session {id:?} belongs to another workspace"));
        if self.store.session(id)?.is_some() {
            // Someone else's session is taken without saying whose.
            let row = self.check_session_for(who, id, Action::Write)?;
            if row.workspace != workspace {
                return Err(elsewhere());
            }
            return Ok(row);
        }
        let name = format!("session/{id}");
        self.decide_in(
            who,
            workspace,
            |role| Target::Document { name: &name, role },
            Action::Write,
            || ControlError::NotFound(format!("no workspace {workspace:?}")),
        )?;
        self.charge_document(who, &name)?;
        self.store.insert_session(&SessionRow {
            id: id.to_owned(),
            workspace: workspace.to_owned(),
            owner: who.user.clone(),
            title: title.to_owned(),
            created_ms: now_ms() as i64,
        })?;
        let row = self
            .check_session(who, id)
            .map_err(|_| ControlError::Conflict(format!("session id {id:?} is taken")))?;
        if row.workspace != workspace {
            return Err(elsewhere());
        }
        Ok(row)
    }

    pub fn sessions(&self, who: &Identity, workspace: Option<&str>) -> Result<Vec<SessionRow>> {
        // The same rule as for one session: a token scoped to some sessions lists those.
        Ok(self
            .store
            .sessions_of(&who.user, who.admin, workspace)?
            .into_iter()
            .filter(|(row, role)| {
                let name = format!("session/{}", row.id);
                access::decide(
                    &who.grant(),
                    Target::Document {
                        name: &name,
                        role: *role,
                    },
                    Action::Read,
                )
                .is_ok()
            })
            .map(|(row, _)| row)
            .collect())
    }

    // ---- quotas -------------------------------------------------------------------------------

    /// Charges a document to `who` the first time it is seen (later openers are not charged);
    /// refused once the user's quota is reached. The server itself is never charged.
    pub fn charge_document(&self, who: &Identity, name: &str) -> Result<()> {
        if who.token_id == 0 || self.quotas.documents == 0 {
            return Ok(());
        }
        if !self
            .store
            .charge_document(name, &who.user, self.quotas.documents, now_ms() as i64)?
        {
            return Err(ControlError::Forbidden(format!(
                "document quota reached: {} documents per user",
                self.quotas.documents
            )));
        }
        Ok(())
    }

    /// Bytes `who` may still upload as new blobs (None: no quota, or this blob is charged
    /// already and costs nothing).
    pub fn blob_allowance(
        &self,
        who: &Identity,
        workspace: &str,
        hash: &str,
    ) -> Result<Option<u64>> {
        if who.token_id == 0 || self.quotas.blob_bytes == 0 {
            return Ok(None);
        }
        if self.store.blob_charged(workspace, hash)? {
            return Ok(None);
        }
        let used = self.store.blob_bytes_of(&who.user)?;
        Ok(Some(self.quotas.blob_bytes.saturating_sub(used)))
    }

    /// Records a stored blob against whoever uploaded it first.
    pub fn record_blob(
        &self,
        who: &Identity,
        workspace: &str,
        hash: &str,
        size: u64,
    ) -> Result<()> {
        self.store.record_blob(workspace, hash, &who.user, size)
    }

    // ---- run settings -----------------------------------------------------------------------

    /// Records a session's run settings once, when it is created; false if it had some (they
    /// are never rewritten: a later `start_session` with the same id cannot change them).
    pub fn init_run_settings(&self, session: &str, settings: &RunSettings) -> Result<bool> {
        self.store.init_run_settings(session, settings)
    }

    /// Changes a session's permission mode and/or model in its authoritative run settings
    /// (`PATCH /api/sessions/{id}`); the caller has checked the right to.
    pub fn update_run_settings(
        &self,
        session: &str,
        permission_mode: Option<&str>,
        model: Option<&str>,
    ) -> Result<RunSettings> {
        self.store.update_run_settings(session, &mut |s| {
            if let Some(m) = permission_mode {
                s.permission_mode = Some(m.to_owned());
            }
            if let Some(m) = model {
                s.model = Some(m.to_owned());
            }
        })
    }

    /// The authoritative run settings of a session (None: none were recorded; the runner
    /// then uses the safest defaults, never the session document's copy).
    pub fn run_settings(&self, session: &str) -> Result<Option<RunSettings>> {
        self.store.run_settings(session)
    }

    // ---- documents --------------------------------------------------------------------------

    /// Document-level access for the sync socket and the blob routes, by the one rule:
    /// read-write where the caller may write the document, read-only where it may only read.
    pub fn document_access(&self, who: &Identity, document: &str) -> Result<Access> {
        let name = jarvis_sync::doc::DocName::parse(document)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let grant = who.grant();
        // The workspace the document belongs to, if the server knows one.
        let workspace = if let Some(s) = name.session_id() {
            self.store.session(s)?.map(|row| row.workspace)
        } else if let Some(w) = name.workspace() {
            self.store.workspace_exists(w)?.then(|| w.to_owned())
        } else {
            return Err(ControlError::Forbidden(format!("no access to {document}")));
        };
        let target = match &workspace {
            Some(w) => Target::Document {
                name: document,
                role: self.store.role(w, &who.user)?,
            },
            None => Target::Unowned { name: document },
        };
        let refused = |d: access::Denied| match d {
            access::Denied::NotFound => match name.session_id() {
                Some(s) if workspace.is_none() => {
                    ControlError::Forbidden(format!("no session {s:?}"))
                }
                _ => ControlError::Forbidden(format!("no access to {document}")),
            },
            access::Denied::Scope(_) => {
                ControlError::Forbidden(format!("token has no access to {document}"))
            }
            other => ControlError::Forbidden(other.to_string()),
        };
        if access::decide(&grant, target, Action::Write).is_ok() {
            return Ok(Access::ReadWrite);
        }
        access::decide(&grant, target, Action::Read).map_err(refused)?;
        Ok(Access::ReadOnly)
    }
}

impl Authorizer for Control {
    fn authorize(&self, token: &str, document: &str) -> Result<Access, String> {
        let unavailable = |e: ControlError| match e {
            ControlError::Db(e) => {
                tracing::error!(error = %e, "access check failed");
                "access check unavailable".to_owned()
            }
            other => other.to_string(),
        };
        let who = self.identify(token).map_err(|e| e.to_string())?;
        let access = self.document_access(&who, document).map_err(unavailable)?;
        // A workspace file opened for writing may be a new document: charged to its first
        // writer, within their quota.
        if access == Access::ReadWrite && document.contains("/file/") {
            self.charge_document(&who, document).map_err(unavailable)?;
        }
        Ok(access)
    }
}
