//! The Messages request built from the transcript.

use super::*;

/// The Messages request for the transcript: user and assistant turns alternate (consecutive
/// same-role messages are merged), approvals and system notes stay out, every tool_use gets a
/// tool_result (a call the user never let run is reported as such), cache breakpoints are set.
pub fn build_request(config: &RunnerConfig, messages: &[Message]) -> MessagesRequest {
    let mut api: Vec<ApiMessage> = Vec::new();
    let mut open_calls: Vec<String> = Vec::new();
    for m in messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => continue,
        };
        let mut content = Vec::new();
        if role == "user" {
            // Results first: the API wants them at the start of the user turn.
            for b in &m.blocks {
                if let Block::ToolResult {
                    tool_use_id,
                    content: c,
                    is_error,
                } = b
                {
                    open_calls.retain(|id| id != tool_use_id);
                    content.push(ContentBlock::ToolResult {
                        tool_use_id: tool_use_id.clone(),
                        content: c.clone(),
                        is_error: *is_error,
                        cache_control: None,
                    });
                }
            }
            for id in open_calls.drain(..) {
                content.insert(
                    0,
                    ContentBlock::ToolResult {
                        tool_use_id: id,
                        content: "Not run: the user sent a new message instead.".into(),
                        is_error: true,
                        cache_control: None,
                    },
                );
            }
        }
        for b in &m.blocks {
            match b {
                Block::Text { text } if !text.is_empty() => content.push(ContentBlock::Text {
                    text: text.clone(),
                    cache_control: None,
                }),
                Block::Thinking {
                    text,
                    signature: Some(sig),
                } if role == "assistant" => content.push(ContentBlock::Thinking {
                    thinking: text.clone(),
                    signature: sig.clone(),
                }),
                Block::ToolUse {
                    id, name, input, ..
                } if role == "assistant" => {
                    open_calls.push(id.clone());
                    content.push(ContentBlock::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                        input: serde_json::from_str(input)
                            .unwrap_or(Value::Object(Default::default())),
                        cache_control: None,
                    });
                }
                _ => {}
            }
        }
        if content.is_empty() {
            continue;
        }
        match api.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => api.push(ApiMessage {
                role: role.to_owned(),
                content,
            }),
        }
    }
    MessagesRequest {
        model: config.model.clone(),
        max_tokens: config.max_tokens,
        system: vec![SystemBlock {
            kind: "text".into(),
            text: config.system_prompt.clone(),
            cache_control: None,
        }],
        messages: api,
        tools: ToolBox::definitions(),
        stream: true,
    }
    .with_cache_breakpoints()
}
