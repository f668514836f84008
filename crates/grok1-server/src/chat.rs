//! The chat template. Grok-1 is a base model: it continues text. A transcript
//! written as plain labelled turns, ending with the assistant's label, makes
//! its most likely continuation the assistant's reply, and the label of the
//! next user turn marks where that reply ends:
//!
//! ```text
//! {system}\n\n                 (only when there is a system message)
//! User: {message}\n\n
//! Tool result: {message}\n\n   (a tool's answer to a call)
//! Assistant: {message}\n\n     (earlier assistant turns)
//! User: {message}\n\n
//! Assistant:
//! ```
//!
//! Generation stops where the model starts a new user turn ([`TURN_SEPARATORS`]:
//! `"\n\nUser:"`, or `"\nUser:"` after a single newline), at the
//! end-of-sequence token, or at the token limit; the reply loses the space the
//! label leaves before it.

/// Where an assistant reply ends (the longer first, so a reply ending in a
/// blank line loses it).
pub const TURN_SEPARATORS: [&str; 2] = ["\n\nUser:", "\nUser:"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering the assistant's call before it.
    Tool,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" | "developer" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

/// What follows an assistant reply in [`render`]'s transcript up to the
/// assistant's next turn: a user message and the assistant's label. A
/// conversation kept as tokens appends this to the reply as generated.
pub fn next_turn(message: &str) -> String {
    format!("\n\nUser: {}\n\nAssistant:", message.trim())
}

/// Renders a conversation as the prompt of the assistant's next turn.
pub fn render(messages: &[(Role, String)]) -> String {
    let mut out = String::new();
    for (role, text) in messages {
        let text = text.trim();
        match role {
            Role::System => {
                out.push_str(text);
                out.push_str("\n\n");
            }
            Role::User => {
                out.push_str("User: ");
                out.push_str(text);
                out.push_str("\n\n");
            }
            Role::Assistant => {
                out.push_str("Assistant: ");
                out.push_str(text);
                out.push_str("\n\n");
            }
            Role::Tool => {
                out.push_str("Tool result: ");
                out.push_str(text);
                out.push_str("\n\n");
            }
        }
    }
    out.push_str("Assistant:");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_turn_continues_the_transcript_after_a_reply() {
        let before = render(&[(Role::User, "Hi!".into())]);
        let after = render(&[
            (Role::User, "Hi!".into()),
            (Role::Assistant, "Hello.".into()),
            (Role::User, " 2+2? ".into()),
        ]);
        assert_eq!(format!("{before} Hello.{}", next_turn(" 2+2? ")), after);
    }

    #[test]
    fn renders_labelled_turns_ending_with_the_assistant_label() {
        let prompt = render(&[
            (Role::System, "You are Grok.".into()),
            (Role::User, "Hi!".into()),
            (Role::Assistant, " Hello. ".into()),
            (Role::User, "2+2?".into()),
        ]);
        assert_eq!(
            prompt,
            "You are Grok.\n\nUser: Hi!\n\nAssistant: Hello.\n\nUser: 2+2?\n\nAssistant:"
        );
    }
}
