//! Builds sink specs from configuration: the one place that maps a sink type to its folder.

use super::{Filter, SinkCommon, SinkSpec};
use crate::config::{ConfigError, SinkConfig, SinkKind};

fn invalid(cfg: &SinkConfig, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: format!("sinks.{}.{key}", cfg.name),
        reason: reason.into(),
    }
}

/// The spec of one configured sink; `live` is the subscriber registry a `live` sink feeds.
pub fn build_with(
    cfg: &SinkConfig,
    live: Option<&std::sync::Arc<super::live::SubscriberRegistry>>,
) -> Result<SinkSpec, ConfigError> {
    let filter = Filter::new(
        &cfg.include_kinds,
        &cfg.exclude_kinds,
        &cfg.include_agents,
        &cfg.exclude_agents,
        None,
    )
    .map_err(|e| invalid(cfg, "include_agents", e.to_string()))?;
    let mut common = SinkCommon::new(cfg.name.clone(), cfg.required);
    common.when_full = cfg.when_full;
    common.queue_batches = cfg.queue_batches;
    common.filter = filter;
    let setting = |e: super::setting::InvalidSetting| invalid(cfg, e.key, e.reason);
    let factory = match &cfg.kind {
        SinkKind::Stdout(_) => super::stdout::factory(),
        SinkKind::File(c) => {
            c.validate().map_err(setting)?;
            super::file::factory(c.clone())
        }
        SinkKind::Live(_) => super::live::factory(live.cloned().ok_or_else(|| {
            invalid(
                cfg,
                "type",
                "a live sink needs the relay's subscriber registry",
            )
        })?),
        SinkKind::RedisStreams(c) => super::redis_streams::factory(c.settings().map_err(setting)?),
        SinkKind::NatsJetstream(c) => {
            super::nats_jetstream::factory(c.settings().map_err(setting)?)
        }
    };
    Ok(SinkSpec { common, factory })
}

/// The default when no sink is configured: one required stdout sink.
pub fn default_specs() -> Vec<SinkSpec> {
    vec![SinkSpec {
        common: SinkCommon::new("stdout", true),
        factory: super::stdout::factory(),
    }]
}
