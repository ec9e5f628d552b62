//! Named scenarios (TOML files under `loadgen/scenarios/`, built into the binary) and the plan a
//! run executes once command-line overrides are applied.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The scenarios shipped in `loadgen/scenarios/`, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("max", include_str!("../scenarios/max.toml")),
    ("fleet", include_str!("../scenarios/fleet.toml")),
    ("conns", include_str!("../scenarios/conns.toml")),
    ("soak", include_str!("../scenarios/soak.toml")),
    ("cpu100", include_str!("../scenarios/cpu100.toml")),
    ("cpu10k", include_str!("../scenarios/cpu10k.toml")),
    ("conns100k", include_str!("../scenarios/conns100k.toml")),
    (
        "mavlink-fleet",
        include_str!("../scenarios/mavlink-fleet.toml"),
    ),
];

/// How fast each agent sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// As fast as credits allow.
    Max,
    /// Frames per second per agent (fixed schedule, coordinated-omission corrected).
    Hz(f64),
    /// Connect, then only heartbeats.
    Idle,
}

impl std::str::FromStr for Rate {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Rate> {
        match s.trim() {
            "max" => Ok(Rate::Max),
            "idle" | "0" => Ok(Rate::Idle),
            hz => {
                let v: f64 = hz
                    .trim_end_matches("hz")
                    .trim_end_matches("Hz")
                    .parse()
                    .with_context(|| format!("rate `{s}`: expected `max`, `idle` or Hz"))?;
                if !(v.is_finite() && v > 0.0 && v <= 1_000_000.0) {
                    bail!("rate `{s}` out of range (0, 1e6]");
                }
                Ok(Rate::Hz(v))
            }
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::Idle => f.write_str("idle"),
            Rate::Hz(v) => write!(f, "{v} Hz"),
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("duration `{s}`"))?;
    let secs = match unit {
        "ms" => v / 1_000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3_600.0,
        other => bail!("duration `{s}`: unknown unit `{other}` (ms, s, m, h)"),
    };
    if !(secs.is_finite() && (0.0..1e7).contains(&secs)) {
        bail!("duration `{s}` out of range");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Name shown in reports.
    pub name: Option<String>,
    /// Number of agents (each its own QUIC connection and agent id).
    pub agents: Option<usize>,
    /// `max`, `idle`, or Hz per agent.
    pub rate: Option<RateValue>,
    /// Payload bytes per frame, or `"mavlink-mix"`.
    pub payload: Option<PayloadValue>,
    /// Warm-up after every agent is connected (not measured).
    pub warmup: Option<String>,
    /// Measured duration.
    pub duration: Option<String>,
    /// Agents' start times are spread over this.
    pub ramp_up: Option<String>,
    /// Connects in flight at once.
    pub connect_concurrency: Option<usize>,
    /// Report latency and RSS every interval (soak).
    pub interval: Option<String>,
    /// Allowed errors / frames sent.
    pub max_error_rate: Option<f64>,
    /// Fraction of the agents that send at `rate` (spread evenly over the agents); the others
    /// stay idle with heartbeats. Default 1.
    pub streaming: Option<f64>,
    /// After every agent connected, this long with every agent idle (heartbeats only) before
    /// the streaming agents start; the report's `idle` section measures it.
    pub idle_phase: Option<String>,
}

/// What each frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// This many filler bytes.
    Bytes(usize),
    /// Real MAVLink packets in a vehicle's message mix (see `mavmix`).
    MavlinkMix,
}

impl std::str::FromStr for Payload {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Payload> {
        match s {
            "mavlink-mix" => Ok(Payload::MavlinkMix),
            n => n
                .parse()
                .map(Payload::Bytes)
                .map_err(|_| anyhow::anyhow!("payload `{s}`: a number of bytes or `mavlink-mix`")),
        }
    }
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Bytes(n) => write!(f, "{n} B"),
            Payload::MavlinkMix => f.write_str("mavlink-mix"),
        }
    }
}

/// `payload = 256` or `payload = "mavlink-mix"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PayloadValue {
    /// Bytes.
    Num(usize),
    /// `mavlink-mix` (or a number as text).
    Text(String),
}

impl PayloadValue {
    fn to_payload(&self) -> anyhow::Result<Payload> {
        match self {
            PayloadValue::Num(n) => Ok(Payload::Bytes(*n)),
            PayloadValue::Text(t) => t.parse(),
        }
    }
}

/// `rate = "max"` or `rate = 20`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RateValue {
    /// A number of Hz.
    Num(f64),
    /// `max`, `idle` or `"20"`.
    Text(String),
}

impl RateValue {
    fn to_rate(&self) -> anyhow::Result<Rate> {
        match self {
            RateValue::Num(v) => RateValue::Text(v.to_string()).to_rate(),
            RateValue::Text(t) => t.parse(),
        }
    }
}

impl ScenarioFile {
    /// A built-in name or a path to a TOML file.
    pub fn load(name_or_path: &str) -> anyhow::Result<ScenarioFile> {
        let text = match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, text)) => (*text).to_string(),
            None => {
                let path = Path::new(name_or_path);
                std::fs::read_to_string(path).with_context(|| {
                    let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                    format!(
                        "scenario `{name_or_path}` is neither a built-in ({}) nor a readable file",
                        names.join(", ")
                    )
                })?
            }
        };
        let mut s: ScenarioFile =
            toml::from_str(&text).with_context(|| format!("parsing scenario `{name_or_path}`"))?;
        if s.name.is_none() {
            s.name = Some(name_or_path.to_string());
        }
        Ok(s)
    }
}

/// What a run does, after scenario and flags are merged and validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenario name (or `adhoc`).
    pub name: String,
    /// Agents.
    pub agents: usize,
    /// Rate per agent.
    pub rate: Rate,
    /// Payload bytes (for `mavlink-mix`: the mix's mean packet size, rounded).
    pub payload: usize,
    /// Whether frames carry the MAVLink vehicle mix instead of filler bytes.
    pub mavlink_mix: bool,
    /// Unmeasured warm-up after all agents connected.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Start times spread over this.
    pub ramp_up: Duration,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Per-interval report period (zero: none).
    pub interval: Duration,
    /// Allowed errors per frame sent.
    pub max_error_rate: f64,
    /// Fraction of agents that stream (the rest idle).
    pub streaming: f64,
    /// All-idle phase after the connects, before streaming starts (zero: none).
    pub idle_phase: Duration,
}

/// Overrides from the command line (all optional).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--agents`.
    pub agents: Option<usize>,
    /// `--rate`.
    pub rate: Option<Rate>,
    /// `--payload`.
    pub payload: Option<Payload>,
    /// `--warmup`.
    pub warmup: Option<Duration>,
    /// `--duration`.
    pub duration: Option<Duration>,
    /// `--ramp-up`.
    pub ramp_up: Option<Duration>,
    /// `--connect-concurrency`.
    pub connect_concurrency: Option<usize>,
    /// `--interval`.
    pub interval: Option<Duration>,
    /// `--max-error-rate`.
    pub max_error_rate: Option<f64>,
    /// `--streaming`.
    pub streaming: Option<f64>,
    /// `--idle-phase`.
    pub idle_phase: Option<Duration>,
}

impl Plan {
    /// Scenario values, then overrides, then defaults; validated.
    pub fn build(file: Option<&ScenarioFile>, o: &Overrides) -> anyhow::Result<Plan> {
        let f = file.cloned().unwrap_or_default();
        let dur =
            |v: Option<Duration>, s: &Option<String>, d: Duration| -> anyhow::Result<Duration> {
                match (v, s) {
                    (Some(v), _) => Ok(v),
                    (None, Some(s)) => parse_duration(s),
                    (None, None) => Ok(d),
                }
            };
        let rate = match (o.rate, &f.rate) {
            (Some(r), _) => r,
            (None, Some(r)) => r.to_rate()?,
            (None, None) => Rate::Max,
        };
        let payload = match (o.payload, &f.payload) {
            (Some(p), _) => p,
            (None, Some(p)) => p.to_payload()?,
            (None, None) => Payload::Bytes(256),
        };
        let plan = Plan {
            name: f.name.clone().unwrap_or_else(|| "adhoc".into()),
            agents: o.agents.or(f.agents).unwrap_or(1),
            rate,
            payload: match payload {
                Payload::Bytes(n) => n,
                Payload::MavlinkMix => {
                    crate::mavmix::MavlinkMix::vehicle(1).mean_bytes().round() as usize
                }
            },
            mavlink_mix: payload == Payload::MavlinkMix,
            warmup: dur(o.warmup, &f.warmup, Duration::from_secs(1))?,
            duration: dur(o.duration, &f.duration, Duration::from_secs(10))?,
            ramp_up: dur(o.ramp_up, &f.ramp_up, Duration::ZERO)?,
            connect_concurrency: o
                .connect_concurrency
                .or(f.connect_concurrency)
                .unwrap_or(64),
            interval: dur(o.interval, &f.interval, Duration::ZERO)?,
            max_error_rate: o.max_error_rate.or(f.max_error_rate).unwrap_or(0.0),
            streaming: o.streaming.or(f.streaming).unwrap_or(1.0),
            idle_phase: dur(o.idle_phase, &f.idle_phase, Duration::ZERO)?,
        };
        plan.validate()?;
        Ok(plan)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.agents == 0 || self.agents > 1_000_000 {
            bail!("agents must be in 1..=1000000 (got {})", self.agents);
        }
        if self.payload > 60 * 1024 {
            bail!("payload {} exceeds 60 KiB", self.payload);
        }
        if self.connect_concurrency == 0 {
            bail!("connect_concurrency must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            bail!("max_error_rate must be in [0, 1]");
        }
        if self.duration.is_zero() {
            bail!("duration must be positive");
        }
        if !(self.streaming > 0.0 && self.streaming <= 1.0) {
            bail!("streaming must be in (0, 1] (got {})", self.streaming);
        }
        Ok(())
    }

    /// Whether agent `idx` sends at the plan's rate (else it stays idle): exactly
    /// max(1, round-down(`agents` × `streaming`)) agents do, spread evenly over the
    /// indices (with 0.01: agents 99, 199, 299, …).
    pub fn streams(&self, idx: usize) -> bool {
        let (k, n) = (self.streamers() as u128, self.agents.max(1) as u128);
        let i = idx as u128;
        (i + 1) * k / n > i * k / n
    }

    /// How many agents stream.
    pub fn streamers(&self) -> usize {
        if self.streaming >= 1.0 {
            self.agents
        } else {
            ((self.agents as f64 * self.streaming).floor() as usize).max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_scenario_parses_into_a_valid_plan() {
        for (name, _) in BUILTIN {
            let f = ScenarioFile::load(name).expect("parses");
            let p = Plan::build(Some(&f), &Overrides::default()).expect("valid");
            assert_eq!(&p.name, name);
        }
        let max = Plan::build(
            Some(&ScenarioFile::load("max").expect("max")),
            &Overrides::default(),
        )
        .expect("plan");
        assert_eq!((max.agents, max.rate, max.payload), (64, Rate::Max, 256));
        assert_eq!(max.duration, Duration::from_secs(10));
        let fleet = Plan::build(
            Some(&ScenarioFile::load("fleet").expect("fleet")),
            &Overrides::default(),
        )
        .expect("plan");
        assert_eq!((fleet.agents, fleet.rate), (2000, Rate::Hz(20.0)));
    }

    #[test]
    fn flags_override_the_scenario() {
        let f = ScenarioFile::load("soak").expect("soak");
        let o = Overrides {
            duration: Some(Duration::from_secs(30)),
            rate: Some(Rate::Hz(5.0)),
            ..Overrides::default()
        };
        let p = Plan::build(Some(&f), &o).expect("plan");
        assert_eq!(
            (p.duration, p.rate),
            (Duration::from_secs(30), Rate::Hz(5.0))
        );
        assert_eq!(p.interval, Duration::from_secs(30));
    }

    #[test]
    fn the_mavlink_mix_payload_comes_from_flags_or_scenario_files() {
        assert_eq!(
            "mavlink-mix".parse::<Payload>().expect("mix"),
            Payload::MavlinkMix
        );
        assert_eq!("64".parse::<Payload>().expect("bytes"), Payload::Bytes(64));
        assert!("mavlink".parse::<Payload>().is_err());
        let o = Overrides {
            payload: Some(Payload::MavlinkMix),
            ..Overrides::default()
        };
        let p = Plan::build(None, &o).expect("plan");
        assert!(p.mavlink_mix);
        assert!(
            (30..60).contains(&p.payload),
            "mean packet size {}",
            p.payload
        );
        let f: ScenarioFile =
            toml::from_str("agents = 10\nrate = 100\npayload = \"mavlink-mix\"").expect("toml");
        assert!(
            Plan::build(Some(&f), &Overrides::default())
                .expect("plan")
                .mavlink_mix
        );
        let f: ScenarioFile = toml::from_str("payload = 128").expect("toml");
        let p = Plan::build(Some(&f), &Overrides::default()).expect("plan");
        assert_eq!((p.payload, p.mavlink_mix), (128, false));
    }

    #[test]
    fn conns100k_streams_one_percent_after_an_idle_phase() {
        let p = Plan::build(
            Some(&ScenarioFile::load("conns100k").expect("conns100k")),
            &Overrides::default(),
        )
        .expect("plan");
        assert_eq!((p.agents, p.rate), (100_000, Rate::Hz(1.0)));
        assert!(
            p.idle_phase >= Duration::from_secs(30),
            "{:?}",
            p.idle_phase
        );
        let streaming: Vec<usize> = (0..p.agents).filter(|&i| p.streams(i)).collect();
        assert_eq!(streaming.len(), 1000);
        assert_eq!(p.streamers(), 1000);
        assert_eq!(&streaming[..3], &[99, 199, 299]);
    }

    #[test]
    fn the_streaming_fraction_is_exact_and_never_empty() {
        for (agents, f, want) in [(10, 0.5, 5), (7, 0.3, 2), (3, 0.01, 1), (250, 1.0, 250)] {
            let o = Overrides {
                agents: Some(agents),
                streaming: Some(f),
                ..Overrides::default()
            };
            let p = Plan::build(None, &o).expect("plan");
            let n = (0..agents).filter(|&i| p.streams(i)).count();
            assert_eq!((n, p.streamers()), (want, want), "{agents} agents x {f}");
        }
        for bad in [0.0, -0.5, 1.5] {
            let o = Overrides {
                streaming: Some(bad),
                ..Overrides::default()
            };
            assert!(Plan::build(None, &o).is_err(), "streaming {bad}");
        }
    }

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(
            parse_duration("500ms").expect("ms"),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("2m").expect("m"), Duration::from_secs(120));
        assert_eq!(parse_duration("3").expect("bare"), Duration::from_secs(3));
        assert!(parse_duration("3 parsecs").is_err());
        assert_eq!("max".parse::<Rate>().expect("max"), Rate::Max);
        assert_eq!("20".parse::<Rate>().expect("hz"), Rate::Hz(20.0));
        assert!("-1".parse::<Rate>().is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<ScenarioFile>("agentz = 3").is_err());
        let f: ScenarioFile = toml::from_str("agents = 0").expect("parses");
        assert!(Plan::build(Some(&f), &Overrides::default()).is_err());
    }
}
