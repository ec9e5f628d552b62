//! Placement across relays (issue 23): which relays a full or draining relay sends an agent to.
//!
//! The rule (docs/placement.md):
//! * a **candidate** is another relay whose record is fresh (written within
//!   [`PlacementRules::fresh_for`]), `ready`, not draining, and below its soft limit
//!   (`sessions < soft_max_sessions`). A relay above its soft limit or draining is never a
//!   target, so a redirect never lands where it would be redirected again by the same view;
//! * candidates in the relay's own region come first, then the others;
//! * within each group, most free capacity first (`soft_max_sessions - sessions`, minus the
//!   agents this relay already sent there since its view of the fleet was read: records are
//!   refreshed every few seconds, and without that count every agent redirected or drained in
//!   the meantime would rush the relay that looked emptiest); ties in random order. Successive
//!   agents therefore fill the candidates level, which is what spreads a drain.

use crate::registry::RelayRecord;

/// Tunables of the rule.
#[derive(Debug, Clone)]
pub struct PlacementRules {
    /// A record older than this (ms) is ignored (its relay may be gone).
    pub fresh_for_ms: u64,
    /// Most relays named in one Redirect / Drain / Registered.fleet.
    pub max_targets: usize,
}

impl Default for PlacementRules {
    fn default() -> Self {
        PlacementRules {
            fresh_for_ms: 30_000,
            max_targets: 8,
        }
    }
}

/// Whether `r` may receive agents from another relay.
pub fn is_candidate(r: &RelayRecord, now_unix_ms: u64, rules: &PlacementRules) -> bool {
    !r.draining
        && r.state == "ready"
        && r.sessions < r.soft_max_sessions
        && now_unix_ms.saturating_sub(r.updated_unix_ms) <= rules.fresh_for_ms
        && !r.address.is_empty()
}

/// Free capacity below the soft limit.
pub fn free(r: &RelayRecord) -> u64 {
    r.soft_max_sessions.saturating_sub(r.sessions)
}

/// Candidates other than `me`, best first: same region (when `region` is set) first, then the
/// rest, each group by free capacity after subtracting `sent(relay_id)` (agents this relay has
/// already sent there since the view was read, so a stale view does not herd every agent to the
/// relay that looked emptiest); ties in a random order (`uniform`, numbers in [0, 1)).
pub fn rank<'a>(
    me: &str,
    region: Option<&str>,
    relays: &'a [RelayRecord],
    now_unix_ms: u64,
    rules: &PlacementRules,
    sent: impl Fn(&str) -> u64,
    mut uniform: impl FnMut() -> f64,
) -> Vec<&'a RelayRecord> {
    let mut keyed: Vec<(bool, u64, f64, &RelayRecord)> = relays
        .iter()
        .filter(|r| r.relay_id != me && is_candidate(r, now_unix_ms, rules))
        .map(|r| {
            let same_region = region.is_some() && r.region.as_deref() == region;
            let room = free(r).saturating_sub(sent(&r.relay_id));
            (same_region, room, uniform(), r)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.total_cmp(&a.2)));
    keyed
        .into_iter()
        .take(rules.max_targets)
        .map(|(_, _, _, r)| r)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, region: &str, sessions: u64, soft: u64) -> RelayRecord {
        RelayRecord {
            relay_id: id.into(),
            address: format!("{id}:4433"),
            http_address: String::new(),
            region: Some(region.into()),
            zone: None,
            sessions,
            soft_max_sessions: soft,
            max_sessions: soft * 2,
            cpu_percent: 0.0,
            state: "ready".into(),
            draining: false,
            version: "t".into(),
            updated_unix_ms: 1000,
        }
    }

    /// A small deterministic uniform source in (0, 1].
    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
        }
    }

    #[test]
    fn never_targets_full_draining_stale_or_self() {
        let mut draining = rec("d", "eu", 0, 10);
        draining.draining = true;
        let mut stale = rec("s", "eu", 0, 10);
        stale.updated_unix_ms = 0;
        let mut starting = rec("st", "eu", 0, 10);
        starting.state = "starting".into();
        let relays = vec![
            rec("me", "eu", 0, 10),
            rec("full", "eu", 10, 10),
            draining,
            stale,
            starting,
            rec("ok", "us", 9, 10),
        ];
        let rules = PlacementRules {
            fresh_for_ms: 500,
            ..PlacementRules::default()
        };
        let got: Vec<_> = rank("me", Some("eu"), &relays, 1200, &rules, |_| 0, lcg(1))
            .iter()
            .map(|r| r.relay_id.as_str())
            .collect();
        assert_eq!(got, vec!["ok"]);
    }

    #[test]
    fn same_region_first() {
        let relays = vec![rec("us1", "us", 0, 1000), rec("eu1", "eu", 900, 1000)];
        for seed in 0..50 {
            let got = rank(
                "me",
                Some("eu"),
                &relays,
                1000,
                &PlacementRules::default(),
                |_| 0,
                lcg(seed),
            );
            assert_eq!(got[0].relay_id, "eu1");
            assert_eq!(got.len(), 2);
        }
    }

    #[test]
    fn counting_sent_agents_fills_candidates_level() {
        // Free 300 / 100: the first 200 go to "a", then they alternate.
        let relays = vec![rec("a", "eu", 700, 1000), rec("b", "eu", 900, 1000)];
        let mut sent: std::collections::HashMap<String, u64> = Default::default();
        let mut next = lcg(7);
        for _ in 0..300 {
            let first = rank(
                "me",
                None,
                &relays,
                1000,
                &PlacementRules::default(),
                |id| sent.get(id).copied().unwrap_or(0),
                &mut next,
            )[0]
            .relay_id
            .clone();
            *sent.entry(first).or_default() += 1;
        }
        assert_eq!(sent.get("a"), Some(&250));
        assert_eq!(sent.get("b"), Some(&50));
    }
}
