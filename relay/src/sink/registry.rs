//! Builds sink specs from configuration: the one place that maps a sink type to its folder.

use super::file::{FileFormat, FileSettings};
use super::{Filter, SinkCommon, SinkSpec};
use crate::config::{ConfigError, SinkConfig, SinkType};

/// The spec of one configured sink (a `live` sink needs [`build_with`]).
pub fn build(cfg: &SinkConfig) -> Result<SinkSpec, ConfigError> {
    build_with(cfg, None)
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
    .map_err(|e| ConfigError::Invalid {
        field: format!("sinks.{}.include_agents", cfg.name),
        reason: e.to_string(),
    })?
    .with_mavlink_names(&cfg.include_mavlink, &cfg.exclude_mavlink)
    .map_err(|e| ConfigError::Invalid {
        field: format!("sinks.{}.include_mavlink", cfg.name),
        reason: e.to_string(),
    })?;
    let mut common = SinkCommon::new(cfg.name.clone(), cfg.required);
    common.when_full = cfg.when_full;
    common.queue_batches = cfg.queue_batches;
    common.filter = filter;
    let factory = match cfg.kind {
        SinkType::Stdout => super::stdout::factory(),
        SinkType::File => super::file::factory(FileSettings {
            path: cfg.path.clone().ok_or_else(|| ConfigError::Invalid {
                field: format!("sinks.{}.path", cfg.name),
                reason: "file sinks need a path".into(),
            })?,
            format: cfg.format.unwrap_or(FileFormat::Ndjson),
            rotate_bytes: cfg.rotate_bytes.unwrap_or(0),
            fsync: cfg.fsync.unwrap_or(false),
        }),
        SinkType::Live => {
            super::live::factory(live.cloned().ok_or_else(|| ConfigError::Invalid {
                field: format!("sinks.{}.type", cfg.name),
                reason: "a live sink needs the relay's subscriber registry".into(),
            })?)
        }
        SinkType::RedisStreams => {
            super::redis_streams::factory(super::redis_streams::settings(cfg)?)
        }
        SinkType::NatsJetstream => {
            super::nats_jetstream::factory(super::nats_jetstream::settings(cfg)?)
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
