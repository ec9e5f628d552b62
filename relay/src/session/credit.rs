//! The reader's per-batch check of sequence, credits and rate quota, as one pure function.
//!
//! [`check_batch`] takes the batch, the agent's [`Window`] (a snapshot of its cursor) and the
//! time, and says what to do: forward the batch (trimmed of resent duplicates), drop it, nack it
//! for the rate quota, or end the session ([`End`]). It does no IO, reads no clock and records
//! no metric, so unit tests and the `credits` benchmark drive the very code the reader runs.
//!
//! The rules (DESIGN.md "Contract additions", `docs/protocol.md`):
//! * seqs start at 1; frames on a telemetry stream are consecutive (`seq` 0 or a gap ends the
//!   session with `PROTOCOL_VIOLATION`);
//! * frames at or below what was already forwarded are resent duplicates: dropped, not errors;
//! * the credit window is counted from the acks the agent received: at most `max_inflight`
//!   frames with seq above the last `Ack.up_to_seq` sent (or `resume_from_seq` right after
//!   `Registered`), i.e. every seq must be `<= acked + max_inflight`;
//! * after a quota nack for seq S, frames are discarded until S arrives again.

use std::time::Instant;

use contrail_protocol::{ErrorCode, TelemetryBatch};

use crate::quota::{SessionQuota, Verdict};

/// The agent's position the check runs against (read from its cursor once per batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Highest seq already handed to the sinks.
    pub forwarded: u64,
    /// Last `Ack.up_to_seq` sent to the agent (`resume_from_seq` before the first ack).
    pub acked: u64,
    /// The credit window, `limits.max_inflight`.
    pub max_inflight: u64,
}

impl Window {
    /// Highest seq the agent may send now.
    pub fn end(&self) -> u64 {
        self.acked.saturating_add(self.max_inflight)
    }
}

/// What the check keeps between batches of a session.
#[derive(Debug, Default)]
pub struct CreditState {
    /// The session's rate quota (`None`: no rate limit).
    pub quota: Option<SessionQuota>,
    /// After a quota nack for seq S: frames are discarded until S arrives again.
    pub rewind: Option<u64>,
}

impl CreditState {
    /// State for a new session.
    pub fn new(quota: Option<SessionQuota>) -> Self {
        CreditState {
            quota,
            rewind: None,
        }
    }
}

/// What to do with a batch that does not end the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Forward the batch (now trimmed to seqs `first..=last`).
    Forward {
        /// First seq forwarded (`Window::forwarded + 1`).
        first: u64,
        /// Last seq forwarded.
        last: u64,
        /// Frames discarded while waiting for a nacked seq to be resent.
        discarded: usize,
        /// Resent frames dropped as duplicates.
        duplicates: usize,
        /// Whether `last` is the window's last seq (the agent has no credit left).
        window_full: bool,
    },
    /// Nothing to forward: every frame was a duplicate or discarded after a nack.
    Dropped {
        /// Frames discarded while waiting for a nacked seq to be resent.
        discarded: usize,
        /// Resent frames dropped as duplicates.
        duplicates: usize,
    },
    /// Over the rate quota: the whole batch is discarded; nack `seq` (the agent resends from
    /// it after `retry_after_ms`).
    Nack {
        /// First seq to resend.
        seq: u64,
        /// Frames discarded (the batch, and any discarded while waiting for a resend).
        discarded: usize,
        /// Resent frames dropped as duplicates.
        duplicates: usize,
    },
}

/// Why a batch ends the session. Allocation-free; the message is formatted only when sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum End {
    /// A frame with seq 0 (seqs start at 1).
    #[error("frame with seq 0: seqs start at 1")]
    SeqZero,
    /// The first new frame is not the one after the last forwarded.
    #[error("sequence gap: expected seq {expected}, got {got}")]
    Gap {
        /// The seq expected.
        expected: u64,
        /// The seq received.
        got: u64,
    },
    /// Frames of one stream are not consecutive.
    #[error("sequence gap: seq {got} after {after}")]
    NotConsecutive {
        /// The frame before.
        after: u64,
        /// The frame that does not follow it.
        got: u64,
    },
    /// A frame beyond the credit window.
    #[error(
        "frame {last} is beyond the credit window: at most max_inflight ({max_inflight}) frames \
         past the last ack sent ({acked}), so seq <= {end}"
    )]
    BeyondWindow {
        /// The offending seq.
        last: u64,
        /// Last ack sent to the agent.
        acked: u64,
        /// `max_inflight`.
        max_inflight: u64,
        /// `acked + max_inflight`.
        end: u64,
    },
    /// The agent kept sending after a quota nack instead of backing off, for too long.
    #[error("agent kept sending after a quota nack")]
    KeptSendingAfterNack,
    /// The agent stayed over its rate quota for too long.
    #[error("agent stayed over its rate quota")]
    OverQuota,
}

impl End {
    /// The close (and `Error`) code.
    pub fn code(&self) -> ErrorCode {
        match self {
            End::KeptSendingAfterNack | End::OverQuota => ErrorCode::QuotaExceeded,
            _ => ErrorCode::ProtocolViolation,
        }
    }
}

/// Checks one decoded batch at `now` against `window`, trimming it to what is to be
/// forwarded. The caller forwards on [`Accepted::Forward`] and then moves its cursor's
/// `forwarded` to `last`.
pub fn check_batch(
    state: &mut CreditState,
    batch: &mut TelemetryBatch,
    window: Window,
    now: Instant,
) -> Result<Accepted, End> {
    let mut discarded = 0;
    if let Some(resend) = state.rewind {
        // Frames the agent sent before it saw our nack: discard up to the resend of `resend`.
        discarded = batch.skip_until_seq(resend);
        if batch.is_empty() {
            // An agent that keeps sending instead of backing off stays over quota.
            if let Some(q) = state.quota.as_mut() {
                if q.still_over(now) == Verdict::Close {
                    return Err(End::KeptSendingAfterNack);
                }
            }
            return Ok(Accepted::Dropped {
                discarded,
                duplicates: 0,
            });
        }
        state.rewind = None;
    }
    let metas = batch.metas();
    let Some(first) = metas.first().map(|m| m.seq) else {
        return Ok(Accepted::Dropped {
            discarded,
            duplicates: 0,
        });
    };
    if first == 0 {
        return Err(End::SeqZero);
    }
    // One pass over the batch: every frame follows the one before (duplicates included: a
    // resend is the same consecutive run again).
    for (i, m) in metas.iter().enumerate().skip(1) {
        // (`m.seq < first`: a run wrapping past u64::MAX is not consecutive.)
        if m.seq != first.wrapping_add(i as u64) || m.seq < first {
            return Err(End::NotConsecutive {
                after: metas[i - 1].seq,
                got: m.seq,
            });
        }
    }
    let last = metas[metas.len() - 1].seq;
    if first > window.forwarded.saturating_add(1) {
        return Err(End::Gap {
            expected: window.forwarded.saturating_add(1),
            got: first,
        });
    }
    let duplicates = if first <= window.forwarded {
        batch.skip_through(window.forwarded)
    } else {
        0
    };
    if batch.is_empty() {
        return Ok(Accepted::Dropped {
            discarded,
            duplicates,
        });
    }
    let first = window.forwarded + 1;
    if let Some(quota) = state.quota.as_mut() {
        match quota.check(batch.len() as u64, batch.data().len() as u64, now) {
            Verdict::Accept => {}
            Verdict::Nack => {
                state.rewind = Some(first);
                return Ok(Accepted::Nack {
                    seq: first,
                    discarded: discarded + batch.len(),
                    duplicates,
                });
            }
            Verdict::Close => return Err(End::OverQuota),
        }
    }
    let end = window.end();
    if last > end {
        return Err(End::BeyondWindow {
            last,
            acked: window.acked,
            max_inflight: window.max_inflight,
            end,
        });
    }
    Ok(Accepted::Forward {
        first,
        last,
        discarded,
        duplicates,
        window_full: last == end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::QuotaConfig;
    use bytes::BytesMut;
    use contrail_protocol::FrameCodec;
    use std::time::Duration;

    fn batch_of(seqs: &[u64]) -> TelemetryBatch {
        let mut b = BytesMut::new();
        for &seq in seqs {
            contrail_protocol::codec::encode_telemetry(&mut b, seq, 1, 0, 1, "", b"xy", "");
        }
        let mut metas = Vec::new();
        FrameCodec::default()
            .decode_telemetry_batch(&mut b, &mut metas)
            .expect("decodes")
            .expect("complete")
    }

    fn run(seqs: &[u64], w: Window) -> (Result<Accepted, End>, Vec<u64>) {
        let mut state = CreditState::default();
        let mut b = batch_of(seqs);
        let r = check_batch(&mut state, &mut b, w, Instant::now());
        (r, b.metas().iter().map(|m| m.seq).collect())
    }

    fn w(forwarded: u64, acked: u64, max_inflight: u64) -> Window {
        Window {
            forwarded,
            acked,
            max_inflight,
        }
    }

    fn range(a: u64, b: u64) -> Vec<u64> {
        (a..=b).collect()
    }

    #[test]
    fn seq_zero_is_a_violation_wherever_it_is() {
        assert_eq!(run(&[0], w(0, 0, 8)).0, Err(End::SeqZero));
        assert_eq!(run(&[0, 1, 2], w(0, 0, 8)).0, Err(End::SeqZero));
        // Seq 0 used to be dropped silently as a duplicate of "nothing forwarded yet".
        assert_eq!(run(&[0], w(5, 5, 8)).0, Err(End::SeqZero));
        assert_eq!(
            run(&[1, 0], w(0, 0, 8)).0,
            Err(End::NotConsecutive { after: 1, got: 0 })
        );
        assert_eq!(End::SeqZero.code(), ErrorCode::ProtocolViolation);
    }

    #[test]
    fn the_first_frame_is_seq_1_and_frames_are_consecutive() {
        let (r, left) = run(&[1, 2, 3], w(0, 0, 8));
        assert_eq!(
            r,
            Ok(Accepted::Forward {
                first: 1,
                last: 3,
                discarded: 0,
                duplicates: 0,
                window_full: false
            })
        );
        assert_eq!(left, vec![1, 2, 3]);
        assert_eq!(
            run(&[2, 3], w(0, 0, 8)).0,
            Err(End::Gap {
                expected: 1,
                got: 2
            })
        );
        assert_eq!(
            run(&[1, 2, 4], w(0, 0, 8)).0,
            Err(End::NotConsecutive { after: 2, got: 4 })
        );
        assert_eq!(
            run(&[u64::MAX, 0], w(u64::MAX - 1, u64::MAX - 1, 8)).0,
            Err(End::NotConsecutive {
                after: u64::MAX,
                got: 0
            }),
            "no wrapping past u64::MAX"
        );
        assert_eq!(
            run(&[1, 2, 2], w(0, 0, 8)).0,
            Err(End::NotConsecutive { after: 2, got: 2 }),
            "a repeated seq inside a run"
        );
        assert_eq!(
            run(&[12], w(10, 10, 8)).0,
            Err(End::Gap {
                expected: 11,
                got: 12
            })
        );
    }

    #[test]
    fn resent_duplicates_are_dropped_and_the_rest_forwarded() {
        let (r, left) = run(&range(3, 7), w(5, 5, 8));
        assert_eq!(
            r,
            Ok(Accepted::Forward {
                first: 6,
                last: 7,
                discarded: 0,
                duplicates: 3,
                window_full: false
            })
        );
        assert_eq!(left, vec![6, 7]);
        let (r, left) = run(&range(1, 5), w(5, 5, 8));
        assert_eq!(
            r,
            Ok(Accepted::Dropped {
                discarded: 0,
                duplicates: 5
            })
        );
        assert!(left.is_empty());
        assert_eq!(
            run(&[3, 7], w(10, 10, 8)).0,
            Err(End::NotConsecutive { after: 3, got: 7 }),
            "resent frames are a consecutive run too"
        );
    }

    #[test]
    fn the_window_is_counted_from_the_last_ack_sent() {
        // Acked 3, window 16: seq 19 is the last allowed, whatever was forwarded.
        let (r, _) = run(&range(11, 19), w(10, 3, 16));
        assert_eq!(
            r,
            Ok(Accepted::Forward {
                first: 11,
                last: 19,
                discarded: 0,
                duplicates: 0,
                window_full: true
            })
        );
        let (r, _) = run(&range(11, 20), w(10, 3, 16));
        let e = r.expect_err("seq 20 is beyond 3 + 16");
        assert_eq!(
            e,
            End::BeyondWindow {
                last: 20,
                acked: 3,
                max_inflight: 16,
                end: 19
            }
        );
        assert_eq!(e.code(), ErrorCode::ProtocolViolation);
        let text = e.to_string();
        assert!(
            text.contains("max_inflight (16)")
                && text.contains("last ack sent (3)")
                && text.contains("<= 19"),
            "{text}"
        );
        // Exactly one frame in a window of one.
        assert!(matches!(
            run(&[1], w(0, 0, 1)).0,
            Ok(Accepted::Forward {
                window_full: true,
                ..
            })
        ));
        assert!(matches!(
            run(&[1, 2], w(0, 0, 1)).0,
            Err(End::BeyondWindow { last: 2, .. })
        ));
    }

    #[test]
    fn quota_nack_discards_until_the_nacked_seq_returns() {
        let now = Instant::now();
        let cfg = QuotaConfig {
            frames_per_sec: 2,
            burst_frames: 2,
            close_after_ms: 1_000,
            ..QuotaConfig::default()
        };
        let mut state = CreditState::new(SessionQuota::new(&cfg, now));
        let win = |f| w(f, f, 100);
        let mut b = batch_of(&[1]);
        assert!(matches!(
            check_batch(&mut state, &mut b, win(0), now),
            Ok(Accepted::Forward { last: 1, .. })
        ));
        let mut b = batch_of(&[2, 3]);
        assert_eq!(
            check_batch(&mut state, &mut b, win(1), now),
            Ok(Accepted::Nack {
                seq: 2,
                discarded: 2,
                duplicates: 0
            })
        );
        // Frames sent before the agent saw the nack are discarded ...
        let mut b = batch_of(&[4, 5]);
        assert_eq!(
            check_batch(&mut state, &mut b, win(1), now + Duration::from_millis(10)),
            Ok(Accepted::Dropped {
                discarded: 2,
                duplicates: 0
            })
        );
        // ... until the resend from seq 2, which is forwarded once tokens are back.
        let mut b = batch_of(&[6, 2, 3]);
        let later = now + Duration::from_secs(3);
        assert!(matches!(
            check_batch(&mut state, &mut b, win(1), later),
            Ok(Accepted::Forward {
                first: 2,
                last: 3,
                discarded: 1,
                ..
            })
        ));
        assert_eq!(state.rewind, None);
    }

    #[test]
    fn an_agent_that_keeps_sending_after_a_nack_is_closed() {
        let now = Instant::now();
        let cfg = QuotaConfig {
            frames_per_sec: 1,
            burst_frames: 1,
            close_after_ms: 500,
            ..QuotaConfig::default()
        };
        let mut state = CreditState::new(SessionQuota::new(&cfg, now));
        let win = |f| w(f, f, 100);
        let mut b = batch_of(&[1, 2, 3]);
        assert!(matches!(
            check_batch(&mut state, &mut b, win(0), now),
            Ok(Accepted::Nack { seq: 1, .. })
        ));
        let mut b = batch_of(&[4]);
        assert_eq!(
            check_batch(&mut state, &mut b, win(0), now + Duration::from_millis(600)),
            Err(End::KeptSendingAfterNack)
        );
    }
}
