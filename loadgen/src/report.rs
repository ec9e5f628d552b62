//! The final report: one struct, printed as a table and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::hist::Percentiles;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `contrail`, `mqtt-qos0`, `mqtt-qos1`, `nats`, `nats-tls`.
    pub target: String,
    /// The command line.
    pub command: String,
    /// Agents (publishers).
    pub agents: usize,
    /// Rate per agent.
    pub rate: String,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Sessions that connected.
    pub sessions_connected: u64,
    /// Connect phase.
    pub connect: ConnectReport,
    /// Rates over the measured window.
    pub throughput: Throughput,
    /// Whole-run totals and exact loss accounting.
    pub totals: Totals,
    /// Send → ack latency (frames sent in the measured window).
    pub ack_latency: Option<Percentiles>,
    /// Send → subscriber latency (frames sent in the measured window).
    pub e2e_latency: Option<Percentiles>,
    /// Why e2e is missing, if it is.
    pub e2e_note: Option<String>,
    /// Where e2e latency accrues (the relay stamps each frame's receive time, so the split at
    /// it is exact when relay and load generator share a clock, e.g. one machine).
    pub e2e_split: Option<E2eSplit>,
    /// Errors by code.
    pub errors: BTreeMap<String, u64>,
    /// Errors per frame sent.
    pub error_rate: f64,
    /// Nacks received.
    pub nacks: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// The relay's process, when `--relay-pid` was given.
    pub relay: Option<RelayReport>,
    /// CPU the load generator itself used over the measured window, in cores.
    pub loadgen_cpu_cores: f64,
    /// UDP datagrams received on this machine over the measured window per frame acked (per
    /// frame sent without acks): every process's, so meaningful when the run has the machine
    /// to itself; on loopback each datagram sent is counted once.
    pub udp_datagrams_per_frame: Option<f64>,
    /// UDP receive-buffer overflows on this machine over the measured window (`RcvbufErrors`,
    /// every process's): each is a lost datagram.
    pub udp_rcvbuf_errors: Option<u64>,
    /// Per-interval figures (soak).
    pub intervals: Vec<IntervalReport>,
    /// The all-idle phase before streaming (scenario `idle_phase`), if the plan had one.
    pub idle: Option<IdleReport>,
    /// Pass/fail.
    pub verdict: Verdict,
}

/// Where end-to-end latency accrues: the load generator's own lateness, the rest after the
/// hand-over to the client library (every target), and the split at the relay's receive stamp
/// (Contrail only: a broker puts no receive time in what it delivers).
#[derive(Debug, Clone, Serialize, Default)]
pub struct E2eSplit {
    /// Intended send time → frame handed to the agent library or broker client (fixed-rate
    /// runs): time the load generator's own scheduling added.
    pub send_lag: Option<Percentiles>,
    /// Frame handed to the client library → the subscriber had it: e2e without the load
    /// generator's send lag (still with the client library's queueing in the load generator).
    pub handoff_to_subscriber: Option<Percentiles>,
    /// Send (intended, for fixed-rate runs) → the relay received the frame: client lag.
    pub to_relay: Option<Percentiles>,
    /// The relay received the frame → the subscriber had it: relay-side latency.
    pub relay_to_subscriber: Option<Percentiles>,
}

/// Connect phase.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ConnectReport {
    /// Successful connects per second over the connect phase.
    pub per_s: f64,
    /// Duration of the connect phase, seconds.
    pub seconds: f64,
    /// Connect + register time per agent.
    pub latency: Percentiles,
    /// Relay CPU (user + system) over the connect phase per agent connected, µs (with
    /// `--relay-pid`; includes whatever else the relay did meanwhile, e.g. early agents'
    /// traffic).
    pub relay_cpu_us_per_connect: Option<f64>,
    /// The load generator's own CPU over the connect phase per agent connected, µs.
    pub loadgen_cpu_us_per_connect: Option<f64>,
}

/// Frames per second over the measured window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Throughput {
    /// Sent.
    pub sent_per_s: f64,
    /// Acked (None when the target has no acks).
    pub acked_per_s: Option<f64>,
    /// Delivered to the subscriber (None without one).
    pub delivered_per_s: Option<f64>,
}

/// Whole-run counts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Totals {
    /// Frames sent.
    pub sent: u64,
    /// Frames acked (None when the target has no acks).
    pub acked: Option<u64>,
    /// Distinct frames delivered.
    pub delivered: Option<u64>,
    /// Frames acked (or sent, without acks) and never delivered.
    pub lost: Option<u64>,
    /// Frames delivered more than once.
    pub duplicates: Option<u64>,
    /// Frames sent but not acked when the run ended.
    pub unacked_at_end: Option<u64>,
}

/// The relay's process.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RelayReport {
    /// Pid.
    pub pid: u32,
    /// RSS before any agent connected, KiB.
    pub rss_before_kib: u64,
    /// RSS once every agent connected (after a short settle), KiB.
    pub rss_connected_kib: u64,
    /// RSS at the end of the measured window, KiB.
    pub rss_end_kib: u64,
    /// (connected − before) / sessions, KiB.
    pub rss_per_session_kib: f64,
    /// Relay CPU (user + system) per acked frame over the measured window, ns.
    pub cpu_ns_per_frame: Option<f64>,
    /// Relay CPU over the window, in cores.
    pub cpu_cores: f64,
}

/// The idle phase: every agent connected, none streaming (heartbeats only).
#[derive(Debug, Clone, Serialize, Default)]
pub struct IdleReport {
    /// Its length, seconds.
    pub seconds: f64,
    /// Sessions connected at its start.
    pub sessions: u64,
    /// Relay CPU over it, in cores (with `--relay-pid`): heartbeats, routing refresh, resume
    /// table, whatever else runs while nothing streams.
    pub relay_cpu_cores: Option<f64>,
    /// Relay RSS at its end, KiB.
    pub relay_rss_kib: Option<u64>,
    /// This process's CPU over it, in cores.
    pub loadgen_cpu_cores: Option<f64>,
    /// UDP datagrams received per second on this machine over it.
    pub udp_datagrams_per_s: Option<f64>,
}

/// One interval of a soak run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct IntervalReport {
    /// End of the interval, seconds into the measured window.
    pub at_s: f64,
    /// Frames acked per second in the interval.
    pub acked_per_s: f64,
    /// Ack latency in the interval.
    pub ack_latency: Percentiles,
    /// E2E latency in the interval.
    pub e2e_latency: Percentiles,
    /// Relay RSS at the end, KiB.
    pub rss_kib: Option<u64>,
}

/// Whether the run passed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Verdict {
    /// No loss and errors within the threshold.
    pub ok: bool,
    /// Why not.
    pub reasons: Vec<String>,
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.3}M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k/s", v / 1e3)
    } else {
        format!("{v:.1}/s")
    }
}

/// One row of the latency table: percentiles in ms, then the sample count.
fn latency_row(s: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        s,
        "  {name:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        ms(p.p50_us),
        ms(p.p90_us),
        ms(p.p99_us),
        ms(p.p999_us),
        ms(p.max_us),
        p.count
    );
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1_000.0)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".into(), |v| v.to_string())
}

impl Report {
    /// Decides the verdict: loss, or an error rate above `max_error_rate`, fails.
    pub fn judge(&mut self, max_error_rate: f64) {
        let mut reasons = Vec::new();
        if let Some(lost) = self.totals.lost.filter(|l| *l > 0) {
            reasons.push(format!("{lost} frames lost"));
        }
        if self.error_rate > max_error_rate {
            reasons.push(format!(
                "error rate {:.6} above {max_error_rate}",
                self.error_rate
            ));
        }
        if self.sessions_connected < self.agents as u64 {
            reasons.push(format!(
                "{} of {} agents never connected",
                self.agents as u64 - self.sessions_connected,
                self.agents
            ));
        }
        self.verdict = Verdict {
            ok: reasons.is_empty(),
            reasons,
        };
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} · target {} · {} agents · rate {} · payload {} B · {:.1} s measured",
            self.scenario, self.target, self.agents, self.rate, self.payload_bytes, self.duration_s
        );
        let _ = writeln!(
            s,
            "connect   {} sessions in {:.2} s = {}  (p50 {} ms, p99 {} ms){}",
            self.sessions_connected,
            self.connect.seconds,
            rate(self.connect.per_s),
            ms(self.connect.latency.p50_us),
            ms(self.connect.latency.p99_us),
            match (
                self.connect.relay_cpu_us_per_connect,
                self.connect.loadgen_cpu_us_per_connect
            ) {
                (Some(r), Some(l)) => format!("  cpu/connect relay {r:.0} µs, loadgen {l:.0} µs"),
                (None, Some(l)) => format!("  cpu/connect loadgen {l:.0} µs"),
                _ => String::new(),
            }
        );
        if let Some(i) = &self.idle {
            let _ = writeln!(
                s,
                "idle      {} sessions for {:.1} s: relay cpu {} cores, rss {} KiB; loadgen {} cores; {} UDP datagrams/s",
                i.sessions,
                i.seconds,
                i.relay_cpu_cores.map_or("n/a".into(), |c| format!("{c:.3}")),
                opt(i.relay_rss_kib),
                i.loadgen_cpu_cores.map_or("n/a".into(), |c| format!("{c:.3}")),
                i.udp_datagrams_per_s.map_or("n/a".into(), |c| format!("{c:.0}")),
            );
        }
        let _ = writeln!(
            s,
            "throughput  sent {}   acked {}   delivered {}",
            rate(self.throughput.sent_per_s),
            self.throughput.acked_per_s.map_or("n/a".into(), rate),
            self.throughput.delivered_per_s.map_or("n/a".into(), rate)
        );
        let _ = writeln!(
            s,
            "totals    sent {}  acked {}  delivered {}  lost {}  dups {}  unacked-at-end {}",
            self.totals.sent,
            opt(self.totals.acked),
            opt(self.totals.delivered),
            opt(self.totals.lost),
            opt(self.totals.duplicates),
            opt(self.totals.unacked_at_end)
        );
        let _ = writeln!(
            s,
            "latency (ms)                    p50      p90      p99    p99.9      max    samples"
        );
        for (name, p) in [("ack", &self.ack_latency), ("e2e", &self.e2e_latency)] {
            match p {
                Some(p) => latency_row(&mut s, name, p),
                None => {
                    let _ = writeln!(s, "  {name:<24} n/a");
                }
            }
        }
        if let Some(split) = &self.e2e_split {
            let rows = [
                ("  send lag", split.send_lag.as_ref()),
                ("  handed→sub", split.handoff_to_subscriber.as_ref()),
                ("  client lag (→relay rx)", split.to_relay.as_ref()),
                ("  relay-side (rx→sub)", split.relay_to_subscriber.as_ref()),
            ];
            for (name, p) in rows {
                if let Some(p) = p.filter(|p| p.count > 0) {
                    latency_row(&mut s, name, p);
                }
            }
        }
        if let Some(note) = &self.e2e_note {
            let _ = writeln!(s, "  e2e: {note}");
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            s,
            "errors    {errors}  (rate {:.2e})  nacks {}  reconnects {}  (loadgen cpu {:.2} cores{})",
            self.error_rate,
            self.nacks,
            self.reconnects,
            self.loadgen_cpu_cores,
            self.udp_datagrams_per_frame
                .map_or(String::new(), |d| format!(", {d:.2} UDP datagrams/frame machine-wide"))
        );
        if let Some(n) = self.udp_rcvbuf_errors {
            let _ = writeln!(
                s,
                "udp       RcvbufErrors {n} (machine-wide, /proc/net/snmp: datagrams dropped on full receive buffers)"
            );
        }
        if let Some(r) = &self.relay {
            let _ = writeln!(
                s,
                "relay     pid {}  rss before {} KiB, connected {} KiB, end {} KiB  → {:.2} KiB/session;  cpu {:.2} cores{}",
                r.pid,
                r.rss_before_kib,
                r.rss_connected_kib,
                r.rss_end_kib,
                r.rss_per_session_kib,
                r.cpu_cores,
                r.cpu_ns_per_frame
                    .map_or(String::new(), |c| format!(", {c:.0} ns/frame"))
            );
        }
        for i in &self.intervals {
            let _ = writeln!(
                s,
                "  interval @{:>7.1}s  acked {}  ack p99 {} ms  e2e p99 {} ms  rss {}",
                i.at_s,
                rate(i.acked_per_s),
                ms(i.ack_latency.p99_us),
                ms(i.e2e_latency.p99_us),
                opt(i.rss_kib.map(|k| format!("{k} KiB")))
            );
        }
        let _ = writeln!(
            s,
            "verdict   {}",
            if self.verdict.ok {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", self.verdict.reasons.join("; "))
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_or_errors_fail_the_run() {
        let mut r = Report {
            agents: 2,
            sessions_connected: 2,
            totals: Totals {
                lost: Some(0),
                ..Totals::default()
            },
            ..Report::default()
        };
        r.judge(0.0);
        assert!(r.verdict.ok);
        r.totals.lost = Some(3);
        r.error_rate = 0.01;
        r.judge(0.001);
        assert!(!r.verdict.ok);
        assert_eq!(r.verdict.reasons.len(), 2);
        assert!(r.table().contains("FAIL: 3 frames lost"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["totals"]["lost"], 3);
    }
}
