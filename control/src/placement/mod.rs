//! Placement across relays (issue 23): which relays a full or draining relay sends an agent to.
//!
//! The rule (docs/placement.md):
//! * a **candidate** is another relay whose record is fresh (written within
//!   [`PlacementRules::fresh_for`]), `ready`, not draining, and below its soft limit
//!   (`sessions < soft_max_sessions`). A relay above its soft limit or draining is never a
//!   target, so a redirect never lands where it would be redirected again by the same view;
//! * candidates in the relay's own region come first, then the others;
//! * within each group the order is a random draw weighted by free capacity
//!   (`soft_max_sessions - sessions`, Efraimidis–Spirakis keys): the least loaded relay is the
//!   likeliest first, yet agents redirected on the same (up to a few seconds stale) view spread
//!   over all candidates in proportion to their room instead of rushing the one that looked
//!   emptiest. A drain draws a fresh order per agent.

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
/// rest, each group in a random order weighted by free capacity. `uniform` yields numbers in
/// (0, 1] (the caller's RNG; tests pass a fixed sequence).
pub fn rank<'a>(
    me: &str,
    region: Option<&str>,
    relays: &'a [RelayRecord],
    now_unix_ms: u64,
    rules: &PlacementRules,
    mut uniform: impl FnMut() -> f64,
) -> Vec<&'a RelayRecord> {
    let mut keyed: Vec<(bool, f64, &RelayRecord)> = relays
        .iter()
        .filter(|r| r.relay_id != me && is_candidate(r, now_unix_ms, rules))
        .map(|r| {
            let same_region = region.is_some() && r.region.as_deref() == region;
            // u^(1/w): sorting by it descending draws without replacement with probability
            // proportional to w.
            let u = uniform().clamp(f64::MIN_POSITIVE, 1.0);
            let key = u.powf(1.0 / free(r) as f64);
            (same_region, key, r)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
    keyed
        .into_iter()
        .take(rules.max_targets)
        .map(|(_, _, r)| r)
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
        let got: Vec<_> = rank("me", Some("eu"), &relays, 1200, &rules, lcg(1))
            .iter()
            .map(|r| r.relay_id.as_str())
            .collect();
        assert_eq!(got, vec!["ok"]);
    }

    #[test]
    fn same_region_first() {
        let relays = vec![rec("us1", "us", 0, 1000), rec("eu1", "eu", 900, 1000)];
        for seed in 0..50 {
            let got = rank("me", Some("eu"), &relays, 1000, &PlacementRules::default(), lcg(seed));
            assert_eq!(got[0].relay_id, "eu1");
            assert_eq!(got.len(), 2);
        }
    }

    #[test]
    fn first_choice_spreads_in_proportion_to_free_capacity() {
        // Free 300 / 100: about 3 of 4 agents are sent first to "a".
        let relays = vec![rec("a", "eu", 700, 1000), rec("b", "eu", 900, 1000)];
        let mut next = lcg(7);
        let n = 4000;
        let a_first = (0..n)
            .filter(|_| {
                rank("me", None, &relays, 1000, &PlacementRules::default(), &mut next)[0].relay_id
                    == "a"
            })
            .count();
        let share = a_first as f64 / n as f64;
        assert!((0.70..0.80).contains(&share), "share {share}");
    }
}
