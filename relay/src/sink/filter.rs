//! Include/exclude filters by frame kind, agent-id pattern, flight id and MAVLink message name.

use std::sync::Arc;

use contrail_protocol::{AgentId, FrameView};
use globset::{Glob, GlobSet, GlobSetBuilder};

use super::SinkBatch;

/// Which frames a sink (or subscriber) takes. Empty include lists admit everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include_kinds: Vec<u32>,
    exclude_kinds: Vec<u32>,
    include_agents: Option<AgentPatterns>,
    exclude_agents: Option<AgentPatterns>,
    flight_id: Option<String>,
    /// MAVLink message ids admitted (empty: no name filter); sorted.
    include_mavlink: Vec<u32>,
    /// MAVLink message ids refused; sorted.
    exclude_mavlink: Vec<u32>,
}

/// A glob pattern did not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad agent pattern {pattern:?}: {reason}")]
pub struct FilterError {
    /// The pattern.
    pub pattern: String,
    /// Why.
    pub reason: String,
}

/// Agent-id globs. The common shapes skip globset, which builds a path candidate on every
/// call (≈ 2% of relay CPU in `fleet`, where each batch is one frame): a literal id
/// (`drone-7`) compares by equality, a literal prefix and a trailing `*` (`drone-*`) by
/// `starts_with` (globset's `*` crosses `/` too, so the two agree).
#[derive(Debug, Clone)]
struct AgentPatterns {
    exact: Vec<String>,
    prefixes: Vec<String>,
    globs: Option<GlobSet>,
}

impl AgentPatterns {
    fn is_match(&self, id: &str) -> bool {
        self.exact.iter().any(|e| e == id)
            || self.prefixes.iter().any(|p| id.starts_with(p.as_str()))
            || self.globs.as_ref().is_some_and(|g| g.is_match(id))
    }
}

fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

fn agent_patterns(patterns: &[String]) -> Result<Option<AgentPatterns>, FilterError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = AgentPatterns {
        exact: Vec::new(),
        prefixes: Vec::new(),
        globs: None,
    };
    let mut b = GlobSetBuilder::new();
    let mut general = 0;
    for p in patterns {
        // Every pattern is parsed, so a bad one is refused whichever way it would match.
        let glob = Glob::new(p).map_err(|e| FilterError {
            pattern: p.clone(),
            reason: e.to_string(),
        })?;
        match p.strip_suffix('*') {
            _ if is_literal(p) => set.exact.push(p.clone()),
            Some(prefix) if is_literal(prefix) => set.prefixes.push(prefix.to_string()),
            _ => {
                b.add(glob);
                general += 1;
            }
        }
    }
    if general > 0 {
        set.globs = Some(b.build().map_err(|e| FilterError {
            pattern: patterns.join(","),
            reason: e.to_string(),
        })?);
    }
    Ok(Some(set))
}

impl Filter {
    /// Builds a filter; agent patterns are globs (`drone-*`).
    pub fn new(
        include_kinds: &[u32],
        exclude_kinds: &[u32],
        include_agents: &[String],
        exclude_agents: &[String],
        flight_id: Option<String>,
    ) -> Result<Self, FilterError> {
        let mut inc = include_kinds.to_vec();
        inc.sort_unstable();
        let mut exc = exclude_kinds.to_vec();
        exc.sort_unstable();
        Ok(Filter {
            include_kinds: inc,
            exclude_kinds: exc,
            include_agents: agent_patterns(include_agents)?,
            exclude_agents: agent_patterns(exclude_agents)?,
            flight_id: flight_id.filter(|f| !f.is_empty()),
            include_mavlink: Vec::new(),
            exclude_mavlink: Vec::new(),
        })
    }

    /// Adds MAVLink message-name lists (`"ATTITUDE"`; names of the `common` and
    /// `ardupilotmega` dialects). With an include list only MAVLink frames (content type
    /// `application/x-mavlink`) of those names pass; an exclude list refuses MAVLink frames of
    /// those names and lets everything else through. The name is read from the packet header's
    /// message id (no decoding, no checksum).
    pub fn with_mavlink_names(
        mut self,
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, FilterError> {
        let ids = |names: &[String]| -> Result<Vec<u32>, FilterError> {
            let mut ids = names
                .iter()
                .map(|n| {
                    crate::mavlink::packet::message_id(n).ok_or_else(|| FilterError {
                        pattern: n.clone(),
                        reason:
                            "not a MAVLink message name of the common or ardupilotmega dialects"
                                .into(),
                    })
                })
                .collect::<Result<Vec<u32>, _>>()?;
            ids.sort_unstable();
            ids.dedup();
            Ok(ids)
        };
        self.include_mavlink = ids(include)?;
        self.exclude_mavlink = ids(exclude)?;
        Ok(self)
    }

    /// Whether every frame passes (lets sinks skip per-frame checks).
    pub fn is_pass_all(&self) -> bool {
        self.include_kinds.is_empty()
            && self.exclude_kinds.is_empty()
            && self.include_agents.is_none()
            && self.exclude_agents.is_none()
            && self.flight_id.is_none()
            && self.include_mavlink.is_empty()
            && self.exclude_mavlink.is_empty()
    }

    /// Agent check, once per batch.
    pub fn admits_agent(&self, agent: &AgentId) -> bool {
        if let Some(inc) = &self.include_agents {
            if !inc.is_match(agent.as_str()) {
                return false;
            }
        }
        if let Some(exc) = &self.exclude_agents {
            if exc.is_match(agent.as_str()) {
                return false;
            }
        }
        true
    }

    /// Every frame of `batches` this filter admits, in order, with its batch and the batch's
    /// index: the one loop every sink writes with (the agent check runs once per batch).
    pub fn admitted<'a>(
        &'a self,
        batches: &'a [Arc<SinkBatch>],
    ) -> impl Iterator<Item = (usize, &'a SinkBatch, FrameView<'a>)> + 'a {
        let pass_all = self.is_pass_all();
        batches
            .iter()
            .enumerate()
            .filter(move |(_, b)| pass_all || self.admits_agent(&b.origin.agent_id))
            .flat_map(move |(i, b)| {
                b.frames
                    .iter()
                    .filter(move |f| {
                        pass_all
                            || (self.admits_frame(f.kind(), f.flight_id())
                                && self.admits_mavlink(f.content_type(), f.payload()))
                    })
                    .map(move |f| (i, &**b, f))
            })
    }

    /// Per-frame check of the MAVLink message-name lists (true when there are none).
    #[inline]
    pub fn admits_mavlink(&self, content_type: &str, payload: &[u8]) -> bool {
        if self.include_mavlink.is_empty() && self.exclude_mavlink.is_empty() {
            return true;
        }
        let id = (content_type == crate::mavlink::CONTENT_TYPE)
            .then(|| crate::mavlink::packet::header(payload).ok())
            .flatten()
            .map(|h| h.message_id);
        match id {
            Some(id) => {
                (self.include_mavlink.is_empty() || self.include_mavlink.binary_search(&id).is_ok())
                    && self.exclude_mavlink.binary_search(&id).is_err()
            }
            None => self.include_mavlink.is_empty(),
        }
    }

    /// Per-frame check of kind and flight id.
    #[inline]
    pub fn admits_frame(&self, kind: u32, flight_id: &str) -> bool {
        (self.include_kinds.is_empty() || self.include_kinds.binary_search(&kind).is_ok())
            && self.exclude_kinds.binary_search(&kind).is_err()
            && self.flight_id.as_deref().is_none_or(|f| f == flight_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_kind_agent_and_flight() {
        let f = Filter::new(
            &[1, 2],
            &[2],
            &["drone-*".into()],
            &["drone-bad*".into()],
            Some("f1".into()),
        )
        .expect("filter");
        assert!(f.admits_agent(&AgentId::new("drone-7").expect("id")));
        assert!(!f.admits_agent(&AgentId::new("rover-1").expect("id")));
        assert!(!f.admits_agent(&AgentId::new("drone-bad1").expect("id")));
        assert!(f.admits_frame(1, "f1"));
        assert!(!f.admits_frame(2, "f1"));
        assert!(!f.admits_frame(3, "f1"));
        assert!(!f.admits_frame(1, "f2"));
        assert!(Filter::default().is_pass_all());
    }

    #[test]
    fn mavlink_names_select_by_the_packet_header() {
        // A MAVLink 2 header of ATTITUDE (30) and one of HEARTBEAT (0); the checksum is not read.
        let attitude = [0xFD, 0, 0, 0, 1, 1, 1, 30, 0, 0, 0, 0];
        let heartbeat = [0xFD, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0];
        let mav = crate::mavlink::CONTENT_TYPE;
        let inc = Filter::default()
            .with_mavlink_names(&["ATTITUDE".into()], &[])
            .expect("names");
        assert!(!inc.is_pass_all());
        assert!(inc.admits_mavlink(mav, &attitude));
        assert!(!inc.admits_mavlink(mav, &heartbeat));
        assert!(!inc.admits_mavlink("application/octet-stream", &attitude));
        assert!(!inc.admits_mavlink(mav, b"garbage"));
        let exc = Filter::default()
            .with_mavlink_names(&[], &["ATTITUDE".into()])
            .expect("names");
        assert!(!exc.admits_mavlink(mav, &attitude));
        assert!(exc.admits_mavlink(mav, &heartbeat));
        assert!(exc.admits_mavlink("application/octet-stream", &attitude));
        let bad = Filter::default().with_mavlink_names(&["ATTITUD".into()], &[]);
        assert!(bad.is_err_and(|e| e.pattern == "ATTITUD"));
    }

    #[test]
    fn agent_patterns_match_as_globset_does() {
        let patterns = [
            "drone-7", "drone-*", "*", "", "a?c", "d[0-9]*", "x*y", "{p,q}-*", "lit\\*", "sub/*",
        ];
        let ids = [
            "drone-7",
            "drone-77",
            "drone-",
            "drone",
            "abc",
            "ac",
            "d1",
            "d12x",
            "dx",
            "xy",
            "x-long-y",
            "p-1",
            "q-",
            "r-1",
            "lit*",
            "lit",
            "sub/a",
            "sub/a/b",
            "",
            "drone-7/x",
        ];
        for p in patterns {
            let mut b = GlobSetBuilder::new();
            b.add(Glob::new(p).expect("glob"));
            let reference = b.build().expect("set");
            let ours = agent_patterns(&[p.to_string()])
                .expect("patterns")
                .expect("some");
            for id in ids {
                assert_eq!(
                    ours.is_match(id),
                    reference.is_match(id),
                    "pattern {p:?}, id {id:?}"
                );
            }
        }
        let bad = agent_patterns(&["drone-*".into(), "[".into()]);
        assert!(bad.is_err(), "a bad pattern is refused beside good ones");
    }
}
