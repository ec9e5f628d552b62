//! Following the relay's placement hints (issue 23): `Redirect` (instead of `Registered`),
//! `Drain.relays` and `Registered.fleet`.
//!
//! The rule that makes redirect loops impossible: a relay the agent was redirected away from is
//! remembered for [`REMEMBER_MIN`] or the Redirect's `reconnect_after_ms`, whichever is longer,
//! and a later Redirect never sends the agent back to it. When every target of a Redirect is such
//! a relay, the agent registers again with the relay that sent it, without the `redirect`
//! capability, and that relay must accept (or refuse for another reason): at most one hop, then
//! a place.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::proto::RelayEndpoint;

/// The capability an agent offers in `Register.capabilities` to be sent a `Redirect`.
pub const CAPABILITY_REDIRECT: &str = "redirect";

/// Shortest time a relay the agent was redirected away from is not returned to by a Redirect.
pub const REMEMBER_MIN: Duration = Duration::from_secs(10);

/// Most relays learned from `Registered.fleet` kept for fail-over (a relay drives this list).
pub const MAX_LEARNED: usize = 64;

/// Where the agent connects next.
#[derive(Debug, Default)]
pub(super) struct Placement {
    /// Targets named by the last Redirect or Drain, best first.
    pending: VecDeque<SocketAddr>,
    /// Relays the agent was redirected away from, until when.
    left: Vec<(SocketAddr, Instant)>,
    /// Relays learned from `Registered.fleet` (beyond the configured list).
    learned: Vec<SocketAddr>,
    /// The next Register omits the `redirect` capability (the relay must place the agent).
    no_redirect_once: bool,
}

impl Placement {
    /// The next address: a pending target, else the rotation over `configured` then `learned`.
    pub(super) fn next(&mut self, idx: usize, configured: &[SocketAddr]) -> SocketAddr {
        if let Some(a) = self.pending.pop_front() {
            return a;
        }
        let n = configured.len() + self.learned.len();
        let i = idx % n.max(1);
        configured
            .get(i)
            .or_else(|| self.learned.get(i - configured.len()))
            .copied()
            .unwrap_or(configured[0])
    }

    /// Whether the next Register offers the `redirect` capability (consumes the one-shot).
    pub(super) fn offer_redirect(&mut self) -> bool {
        !std::mem::take(&mut self.no_redirect_once)
    }

    /// A Redirect from `from`: the targets it names that the agent was not just redirected away
    /// from become the next addresses; with none left, the agent goes back to `from` without
    /// the capability.
    pub(super) fn on_redirect(
        &mut self,
        from: SocketAddr,
        targets: Vec<SocketAddr>,
        reconnect_after: Duration,
        now: Instant,
    ) {
        self.left.retain(|(_, until)| *until > now);
        let usable: VecDeque<SocketAddr> = targets
            .into_iter()
            .filter(|t| *t != from && !self.left.iter().any(|(a, _)| a == t))
            .collect();
        self.left
            .push((from, now + reconnect_after.max(REMEMBER_MIN)));
        if usable.is_empty() {
            self.pending = VecDeque::from([from]);
            self.no_redirect_once = true;
        } else {
            self.pending = usable;
        }
    }

    /// A Drain's targets (best first for this agent): tried before the configured list.
    pub(super) fn on_drain(&mut self, from: SocketAddr, targets: Vec<SocketAddr>) {
        self.pending = targets.into_iter().filter(|t| *t != from).collect();
    }

    /// `Registered.fleet`: remembered for fail-over.
    pub(super) fn on_fleet(&mut self, configured: &[SocketAddr], fleet: Vec<SocketAddr>) {
        for a in fleet {
            if self.learned.len() >= MAX_LEARNED {
                break;
            }
            if !configured.contains(&a) && !self.learned.contains(&a) {
                self.learned.push(a);
            }
        }
    }
}

/// Addresses of `relays` (`host:port`; names are resolved, unresolvable ones skipped), in order.
pub(super) async fn resolve(relays: &[RelayEndpoint]) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(relays.len());
    for r in relays.iter().take(MAX_LEARNED) {
        if let Ok(a) = r.address.parse::<SocketAddr>() {
            out.push(a);
            continue;
        }
        let looked = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host(r.address.as_str()),
        )
        .await;
        if let Ok(Ok(mut addrs)) = looked {
            if let Some(a) = addrs.next() {
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn redirect_goes_to_targets_in_order() {
        let mut p = Placement::default();
        let now = Instant::now();
        p.on_redirect(a(1), vec![a(2), a(3)], Duration::ZERO, now);
        assert!(p.offer_redirect());
        assert_eq!(p.next(0, &[a(1)]), a(2));
        assert_eq!(p.next(0, &[a(1)]), a(3));
        assert_eq!(p.next(0, &[a(1)]), a(1));
    }

    #[test]
    fn a_second_redirect_back_is_not_followed_and_the_agent_stays_without_the_capability() {
        let mut p = Placement::default();
        let now = Instant::now();
        // A sends the agent to B; B (stale view) sends it back to A.
        p.on_redirect(a(1), vec![a(2)], Duration::ZERO, now);
        assert_eq!(p.next(0, &[a(1)]), a(2));
        assert!(p.offer_redirect());
        p.on_redirect(
            a(2),
            vec![a(1)],
            Duration::ZERO,
            now + Duration::from_secs(1),
        );
        // Back to B, which must place it: no capability on that Register.
        assert_eq!(p.next(0, &[a(1)]), a(2));
        assert!(!p.offer_redirect());
        assert!(p.offer_redirect(), "one-shot");
    }

    #[test]
    fn the_memory_expires_after_the_longer_of_reconnect_after_and_the_minimum() {
        let mut p = Placement::default();
        let now = Instant::now();
        p.on_redirect(a(1), vec![a(2)], Duration::from_secs(30), now);
        let _ = p.next(0, &[a(1)]);
        p.on_redirect(
            a(2),
            vec![a(1)],
            Duration::ZERO,
            now + Duration::from_secs(20),
        );
        assert_eq!(p.next(0, &[a(1)]), a(2), "A still remembered at 20 s");
        p.on_redirect(
            a(2),
            vec![a(1)],
            Duration::ZERO,
            now + Duration::from_secs(31),
        );
        assert_eq!(p.next(0, &[a(1)]), a(1), "forgotten after 30 s");
    }

    #[test]
    fn fleet_extends_the_rotation_bounded() {
        let mut p = Placement::default();
        p.on_fleet(&[a(1)], (1..200).map(a).collect());
        assert_eq!(p.learned.len(), MAX_LEARNED);
        assert_eq!(p.next(0, &[a(1)]), a(1));
        assert_eq!(p.next(1, &[a(1)]), a(2));
        p.on_drain(a(1), vec![a(1), a(7)]);
        assert_eq!(p.next(0, &[a(1)]), a(7));
    }
}
