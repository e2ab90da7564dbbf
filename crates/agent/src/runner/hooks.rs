//! Where the runner calls Claude Code hooks (SessionStart, UserPromptSubmit, PreToolUse,
//! PostToolUse, Stop) and expands workspace slash commands in a new prompt.

use super::*;

impl<'a> Runner<'a> {
    /// SessionStart hooks, once per runner: "startup" the first time the session runs,
    /// "resume" after that. What they print is context for the model.
    pub(super) async fn session_start_hooks(&mut self) {
        if self.session_started {
            return;
        }
        self.session_started = true;
        let Some(hooks) = self
            .hooks
            .as_ref()
            .filter(|h| h.has(HookEvent::SessionStart))
        else {
            return;
        };
        let source = if self.session.setting("hooks_started").is_some() {
            "resume"
        } else {
            "startup"
        };
        self.session.set_setting("hooks_started", "1");
        let o = hooks
            .run(HookEvent::SessionStart, None, json!({ "source": source }))
            .await;
        self.hook_context = o.context;
        for n in o.notices {
            self.note(&format!("Hook: {n}"));
        }
    }

    /// A new prompt that is `/name args` for a workspace command gets the command's text as a
    /// second block (the model sees both, as Claude Code shows it the command and its
    /// expansion), and the command's approved `allowed-tools` apply for this run. Each prompt
    /// once (`commands_prompt` setting).
    pub(super) fn expand_command(&mut self) {
        if self.commands.is_empty() {
            return;
        }
        let messages = self.session.messages();
        let Some(last) = messages.iter().rev().find(|m| m.role != Role::System) else {
            return;
        };
        let [Block::Text { text }] = last.blocks.as_slice() else {
            return;
        };
        if last.role != Role::User
            || !text.trim_start().starts_with('/')
            || self.session.setting("commands_prompt").as_deref() == Some(last.id.as_str())
        {
            return;
        }
        self.session.set_setting("commands_prompt", &last.id);
        let Ok(crate::commands::Expanded::Prompt {
            text: expanded,
            allow,
            warnings,
            ..
        }) = crate::commands::expand(text, &self.commands)
        else {
            // Built-ins belong to the composer; anything else is ordinary text.
            return;
        };
        let block = Block::Text {
            text: format!("<command-expansion>\n{expanded}\n</command-expansion>"),
        };
        if let Err(e) = self.session.append_block(&last.id, &block) {
            tracing::error!(error = %e, "adding a command's expansion failed");
            return;
        }
        for w in warnings {
            self.note(&format!("Warning: {w}"));
        }
        self.permissions.allow.extend(allow);
    }

    /// UserPromptSubmit hooks for a new prompt (each prompt once, even across restarts): a
    /// block keeps the prompt in the transcript for the user but never sends it.
    pub(super) async fn prompt_hooks(&mut self) -> Option<Outcome> {
        let hooks = self
            .hooks
            .as_ref()
            .filter(|h| h.has(HookEvent::UserPromptSubmit))?;
        let messages = self.session.messages();
        let last = messages.iter().rev().find(|m| m.role != Role::System)?;
        let prompt: Vec<&str> = last
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let is_prompt = last.role == Role::User
            && !prompt.is_empty()
            && !last
                .blocks
                .iter()
                .any(|b| matches!(b, Block::ToolResult { .. }));
        if !is_prompt || self.session.setting("hooks_prompt").as_deref() == Some(last.id.as_str()) {
            return None;
        }
        self.session.set_setting("hooks_prompt", &last.id);
        let o = hooks
            .run(
                HookEvent::UserPromptSubmit,
                None,
                json!({ "prompt": prompt.join("\n") }),
            )
            .await;
        for n in &o.notices {
            self.note(&format!("Hook: {n}"));
        }
        if let Some(reason) = o.block {
            self.note(&format!(
                "Prompt blocked by a UserPromptSubmit hook: {reason}"
            ));
            if let Err(e) = self.session.mark_cut(&last.id) {
                tracing::error!(error = %e, "keeping a blocked prompt from the model failed");
                return Some(Outcome::Failed(e.to_string()));
            }
            return Some(Outcome::EndTurn);
        }
        for c in o.context {
            let text = format!("<user-prompt-submit-hook>\n{c}\n</user-prompt-submit-hook>");
            if let Err(e) = self.session.append_block(&last.id, &Block::Text { text }) {
                tracing::error!(error = %e, "adding a hook's context failed");
            }
        }
        None
    }

    /// PreToolUse hooks for a call the rules did not deny: a block or a hook's "deny" refuses
    /// it with the hook's reason (which the model sees); "ask" and "allow" replace the verdict.
    pub(super) async fn pre_tool_hooks(
        &self,
        tool: &str,
        input: &Value,
        verdict: Verdict,
    ) -> Verdict {
        let Some(hooks) = self.hooks.as_ref().filter(|h| h.has(HookEvent::PreToolUse)) else {
            return verdict;
        };
        let o = hooks
            .run(
                HookEvent::PreToolUse,
                Some(tool),
                Hooks::tool_payload(tool, input),
            )
            .await;
        for n in &o.notices {
            self.note(&format!("Hook: {n}"));
        }
        if let Some(reason) = o.block {
            return Verdict::Deny(format!("Blocked by a PreToolUse hook: {reason}"));
        }
        match o.permission {
            Some((PermissionDecision::Deny, reason)) => {
                Verdict::Deny(format!("Denied by a PreToolUse hook: {reason}"))
            }
            Some((PermissionDecision::Ask, _)) => Verdict::Ask,
            Some((PermissionDecision::Allow, _)) => Verdict::Allow,
            None => verdict,
        }
    }

    /// PostToolUse hooks: they see the result; what they block with or add reaches the model
    /// with the result.
    pub(super) async fn post_tool_hooks(
        &self,
        id: &str,
        tool: &str,
        input: &Value,
        out: &mut crate::tools::ToolOutput,
    ) {
        let Some(hooks) = self
            .hooks
            .as_ref()
            .filter(|h| h.has(HookEvent::PostToolUse))
        else {
            return;
        };
        let mut payload = Hooks::tool_payload(tool, input);
        payload["tool_use_id"] = json!(id);
        payload["tool_response"] = json!({"content": out.content, "is_error": out.is_error});
        let o = hooks.run(HookEvent::PostToolUse, Some(tool), payload).await;
        for n in &o.notices {
            self.note(&format!("Hook: {n}"));
        }
        if let Some(reason) = o.block {
            out.content
                .push_str(&format!("\n\nPostToolUse hook feedback:\n{reason}"));
        }
        for c in o.context {
            out.content.push_str(&format!("\n\n{c}"));
        }
    }

    /// Stop hooks when the model ends its turn: a block is the reason to go on.
    pub(super) async fn stop_hooks(&self, active: bool) -> Option<String> {
        let hooks = self.hooks.as_ref().filter(|h| h.has(HookEvent::Stop))?;
        let o = hooks
            .run(HookEvent::Stop, None, json!({ "stop_hook_active": active }))
            .await;
        for n in &o.notices {
            self.note(&format!("Hook: {n}"));
        }
        o.block
    }
}
