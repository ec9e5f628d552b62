//! Name templates with an `{agent_id}` placeholder (Redis stream keys, NATS subjects), parsed
//! once at configuration time and rendered into a reused buffer per batch.

/// The placeholder a template may contain (any number of times).
pub const AGENT_ID: &str = "{agent_id}";

/// A parsed template: literal pieces with the agent id between each pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<String>,
}

impl Template {
    /// Parses `text`; every `{agent_id}` becomes a placeholder, everything else is literal.
    pub fn parse(text: &str) -> Template {
        Template {
            pieces: text.split(AGENT_ID).map(str::to_owned).collect(),
        }
    }

    /// Whether the agent id appears (otherwise every agent shares one name).
    pub fn has_placeholder(&self) -> bool {
        self.pieces.len() > 1
    }

    /// The literal text before the first placeholder (the whole text without one).
    pub fn prefix(&self) -> &str {
        self.pieces.first().map(String::as_str).unwrap_or("")
    }

    /// Replaces `out` with the template rendered for `agent_id`.
    pub fn render_into(&self, out: &mut String, agent_id: &str) {
        out.clear();
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.push_str(agent_id);
            }
            out.push_str(piece);
        }
    }

    /// The template rendered for `agent_id`.
    pub fn render(&self, agent_id: &str) -> String {
        let mut s = String::new();
        self.render_into(&mut s, agent_id);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_and_literals() {
        let t = Template::parse("contrail:telemetry:{agent_id}");
        assert!(t.has_placeholder());
        assert_eq!(t.prefix(), "contrail:telemetry:");
        assert_eq!(t.render("drone-1"), "contrail:telemetry:drone-1");
        let t = Template::parse("{agent_id}/x/{agent_id}");
        assert_eq!(t.render("a"), "a/x/a");
        let t = Template::parse("all");
        assert!(!t.has_placeholder());
        assert_eq!(t.render("a"), "all");
        assert_eq!(t.prefix(), "all");
    }
}
